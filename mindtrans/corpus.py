"""A small synthetic German–English corpus that the package generates itself.

Nothing here is copied from Multi30k: a hand-written lexicon (people, animals, things,
clothes, places, colours, numbers, verbs) and a tiny grammar produce image-caption-like
pairs such as

    Zwei Hunde spielen im Schnee.            Two dogs play in the snow.
    Ein kleiner Junge in einem roten Hemd    A little boy in a red shirt
    wirft einen Ball am Strand.              throws a ball on the beach.

German agreement is generated, not looked up: articles and adjective endings follow
gender, number and case (nominative subject, accusative object, dative after
``in``/``an``/``auf``/``vor``/``neben``/``unter`` and ``mit``), weak nouns take ``-en``
(``einen Jungen``), dative plurals take ``-n`` (``mit zwei Hunden``) and ``in dem`` /
``an dem`` contract to ``im`` / ``am``. The corpus is small and regular enough for a
small Transformer to learn in minutes on a CPU, which makes it the default for quick
runs and tests; use Multi30k (``mindtrans fetch``) for real results.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mindtrans.files import atomic_write_text

SPLITS = ("train", "val", "test2016")


@dataclass(frozen=True)
class Noun:
    de: str
    de_pl: str
    gender: str  # "m", "f" or "n"
    en: str
    en_pl: str
    weak: bool = False  # weak masculine: -en outside the nominative singular (der Junge, den Jungen)

    def form(self, case: str, plural: bool) -> str:
        """The German noun for ``case`` in {"nom", "acc", "dat"}."""
        if plural:
            # Dative plural adds -n unless the plural already ends in -n or -s.
            return self.de_pl + "n" if case == "dat" and self.de_pl[-1] not in "ns" else self.de_pl
        return self.de_pl if self.weak and case != "nom" else self.de


def _n(de, de_pl, gender, en, en_pl=None, weak=False):
    return Noun(de, de_pl, gender, en, en_pl or en + "s", weak)


PEOPLE = [
    _n("Mann", "Männer", "m", "man", "men"),
    _n("Frau", "Frauen", "f", "woman", "women"),
    _n("Junge", "Jungen", "m", "boy", weak=True),
    _n("Mädchen", "Mädchen", "n", "girl"),
    _n("Kind", "Kinder", "n", "child", "children"),
    _n("Arbeiter", "Arbeiter", "m", "worker"),
    _n("Polizist", "Polizisten", "m", "police officer", weak=True),
    _n("Tourist", "Touristen", "m", "tourist", weak=True),
    _n("Musiker", "Musiker", "m", "musician"),
    _n("Koch", "Köche", "m", "cook"),
    _n("Radfahrer", "Radfahrer", "m", "cyclist"),
    _n("Sängerin", "Sängerinnen", "f", "singer"),
]
DOGS = [_n("Hund", "Hunde", "m", "dog")]
ANIMALS = DOGS + [
    _n("Katze", "Katzen", "f", "cat"),
    _n("Pferd", "Pferde", "n", "horse"),
    _n("Vogel", "Vögel", "m", "bird"),
    _n("Schaf", "Schafe", "n", "sheep", "sheep"),
    _n("Kuh", "Kühe", "f", "cow"),
]
THINGS = {
    "ball": _n("Ball", "Bälle", "m", "ball"),
    "stick": _n("Stock", "Stöcke", "m", "stick"),
    "book": _n("Buch", "Bücher", "n", "book"),
    "newspaper": _n("Zeitung", "Zeitungen", "f", "newspaper"),
    "letter": _n("Brief", "Briefe", "m", "letter"),
    "map": _n("Karte", "Karten", "f", "map"),
    "guitar": _n("Gitarre", "Gitarren", "f", "guitar"),
    "apple": _n("Apfel", "Äpfel", "m", "apple"),
    "banana": _n("Banane", "Bananen", "f", "banana"),
    "cake": _n("Kuchen", "Kuchen", "m", "cake"),
    "sandwich": _n("Sandwich", "Sandwiches", "n", "sandwich", "sandwiches"),
    "bag": _n("Tasche", "Taschen", "f", "bag"),
    "box": _n("Kiste", "Kisten", "f", "box", "boxes"),
    "backpack": _n("Rucksack", "Rucksäcke", "m", "backpack"),
    "basket": _n("Korb", "Körbe", "m", "basket"),
    "flower": _n("Blume", "Blumen", "f", "flower"),
    "bottle": _n("Flasche", "Flaschen", "f", "bottle"),
    "umbrella": _n("Regenschirm", "Regenschirme", "m", "umbrella"),
    "camera": _n("Kamera", "Kameras", "f", "camera"),
    "picture": _n("Bild", "Bilder", "n", "picture"),
    "kite": _n("Drachen", "Drachen", "m", "kite"),
}
CLOTHES = [
    _n("Hemd", "Hemden", "n", "shirt"),
    _n("Jacke", "Jacken", "f", "jacket"),
    _n("Hut", "Hüte", "m", "hat"),
    _n("Kleid", "Kleider", "n", "dress", "dresses"),
    _n("Mantel", "Mäntel", "m", "coat"),
    _n("Pullover", "Pullover", "m", "sweater"),
    _n("Mütze", "Mützen", "f", "cap"),
]

# (German stem, English)
COLOURS = [("rot", "red"), ("blau", "blue"), ("grün", "green"), ("gelb", "yellow"),
           ("schwarz", "black"), ("weiß", "white"), ("braun", "brown"), ("grau", "gray")]
PERSON_ADJECTIVES = [("jung", "young"), ("alt", "old"), ("klein", "little"), ("groß", "tall"),
                     ("glücklich", "happy"), ("lächelnd", "smiling"), ("blond", "blond")]
ANIMAL_ADJECTIVES = [("klein", "small"), ("groß", "big"), ("jung", "young"), ("braun", "brown"),
                     ("schwarz", "black"), ("weiß", "white")]
PLACE_ADJECTIVES = [("groß", "big"), ("klein", "small"), ("alt", "old"), ("ruhig", "quiet")]
NUMBERS = [("zwei", "two"), ("drei", "three"), ("vier", "four"), ("fünf", "five")]


@dataclass(frozen=True)
class Place:
    noun: Noun
    preps: tuple[tuple[str, str], ...]  # (German preposition, English preposition)
    mass: bool = False  # "im Schnee" / "in the snow": definite only, no adjective
    water: bool = False  # where swimming makes sense


def _p(de, gender, en, preps, mass=False, water=False):
    return Place(Noun(de, de, gender, en, en), tuple(preps), mass, water)


PLACES = [
    _p("Park", "m", "park", [("in", "in")]),
    _p("Garten", "m", "garden", [("in", "in")]),
    _p("Wald", "m", "forest", [("in", "in")]),
    _p("Stadt", "f", "city", [("in", "in")]),
    _p("Küche", "f", "kitchen", [("in", "in")]),
    _p("Strand", "m", "beach", [("an", "on")]),
    _p("Straße", "f", "street", [("auf", "on")]),
    _p("Bank", "f", "bench", [("auf", "on"), ("neben", "next to")]),
    _p("Brücke", "f", "bridge", [("auf", "on"), ("unter", "under")]),
    _p("Markt", "m", "market", [("auf", "at")]),
    _p("Bühne", "f", "stage", [("auf", "on")]),
    _p("Feld", "n", "field", [("auf", "in")]),
    _p("Haus", "n", "house", [("vor", "in front of"), ("neben", "next to")]),
    _p("Baum", "m", "tree", [("unter", "under"), ("neben", "next to")]),
    _p("Wand", "f", "wall", [("vor", "in front of")]),
    _p("Schnee", "m", "snow", [("in", "in")], mass=True),
    _p("Gras", "n", "grass", [("in", "in")], mass=True),
    _p("Sand", "m", "sand", [("in", "in")], mass=True),
    _p("Regen", "m", "rain", [("in", "in")], mass=True),
    _p("Wasser", "n", "water", [("in", "in")], mass=True, water=True),
    _p("Meer", "n", "ocean", [("in", "in")], mass=True, water=True),
    _p("See", "m", "lake", [("in", "in")], water=True),
    _p("Schwimmbecken", "n", "pool", [("in", "in")], water=True),
]


@dataclass(frozen=True)
class Verb:
    de: str  # 3rd person singular, e.g. "fährt Fahrrad"
    de_pl: str  # 3rd person plural, e.g. "fahren Fahrrad"
    en: str
    en_pl: str
    subjects: str  # which subjects: "person", "animal" (dogs included), "dog", "any"
    objects: tuple[str, ...] = ()  # keys of THINGS, or "animal"; empty for intransitive verbs
    water: bool = False  # needs a water place


def _v(de, de_pl, en, en_pl, subjects="any", objects=(), water=False):
    return Verb(de, de_pl, en, en_pl, subjects, tuple(objects), water)


_FOOD = ("apple", "banana", "cake", "sandwich")
_CARRIED = ("bag", "box", "backpack", "basket", "umbrella", "camera", "guitar", "flower")
VERBS = [
    # intransitive
    _v("rennt", "rennen", "runs", "run"),
    _v("springt", "springen", "jumps", "jump"),
    _v("schläft", "schlafen", "sleeps", "sleep"),
    _v("sitzt", "sitzen", "sits", "sit"),
    _v("steht", "stehen", "stands", "stand"),
    _v("spielt", "spielen", "plays", "play"),
    _v("schwimmt", "schwimmen", "swims", "swim", water=True),
    _v("wartet", "warten", "waits", "wait", "person"),
    _v("lacht", "lachen", "laughs", "laugh", "person"),
    _v("tanzt", "tanzen", "dances", "dance", "person"),
    _v("singt", "singen", "sings", "sing", "person"),
    _v("spaziert", "spazieren", "walks", "walk", "person"),
    _v("fährt Fahrrad", "fahren Fahrrad", "rides a bicycle", "ride bicycles", "person"),
    _v("spielt Fußball", "spielen Fußball", "plays soccer", "play soccer", "person"),
    _v("macht ein Foto", "machen ein Foto", "takes a picture", "take a picture", "person"),
    _v("bellt", "bellen", "barks", "bark", "dog"),
    # transitive: the object is accusative
    _v("hält", "halten", "holds", "hold", "person", ("ball", "book", "newspaper", "map", "bottle",
                                                    "flower", "umbrella", "camera", "kite", "animal")),
    _v("wirft", "werfen", "throws", "throw", "person", ("ball", "stick")),
    _v("fängt", "fangen", "catches", "catch", "animal", ("ball", "stick")),
    _v("fängt", "fangen", "catches", "catch", "person", ("ball",)),
    _v("liest", "lesen", "reads", "read", "person", ("book", "newspaper", "letter", "map")),
    _v("isst", "essen", "eats", "eat", "person", _FOOD),
    _v("trägt", "tragen", "carries", "carry", "person", _CARRIED + ("animal",)),
    _v("trägt", "tragen", "carries", "carry", "dog", ("stick", "ball")),
    _v("kauft", "kaufen", "buys", "buy", "person", _FOOD + ("flower", "newspaper", "bag", "camera")),
    _v("sucht", "suchen", "looks for", "look for", "any", ("ball", "stick", "animal")),
    _v("malt", "malen", "paints", "paint", "person", ("picture", "flower", "animal")),
    _v("beobachtet", "beobachten", "watches", "watch", "any", ("animal",)),
    _v("füttert", "füttern", "feeds", "feed", "person", ("animal",)),
    _v("streichelt", "streicheln", "pets", "pet", "person", ("animal",)),
    _v("spielt", "spielen", "plays", "play", "person", ("guitar",)),
]

# Article and adjective endings, by article kind ("indef", "def", or "none" before a
# bare plural), case and gender ("pl" for plural).
_INDEF = {"nom": {"m": "ein", "f": "eine", "n": "ein"},
          "acc": {"m": "einen", "f": "eine", "n": "ein"},
          "dat": {"m": "einem", "f": "einer", "n": "einem"}}
_DEF_DAT = {"m": "dem", "f": "der", "n": "dem"}
_ADJ_ENDING = {("indef", "nom"): {"m": "er", "f": "e", "n": "es"},
               ("indef", "acc"): {"m": "en", "f": "e", "n": "es"},
               ("indef", "dat"): {"m": "en", "f": "en", "n": "en"},
               ("def", "dat"): {"m": "en", "f": "en", "n": "en"},
               ("none", "nom"): {"pl": "e"},
               ("none", "acc"): {"pl": "e"},
               ("none", "dat"): {"pl": "en"}}
_CONTRACTIONS = {("in", "dem"): "im", ("an", "dem"): "am"}


def _a(word: str) -> str:
    """The English indefinite article for ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def noun_phrase(noun: Noun, case: str, count: int = 1, adjective=None) -> tuple[str, str]:
    """An indefinite noun phrase ``(german, english)``.

    ``count`` 1 gives ``ein``/``a``; 2–5 give a number; 0 gives a bare plural
    (``in roten Hemden`` / ``in red shirts``). ``adjective`` is a ``(stem, english)`` pair.
    """
    plural = count != 1
    kind = "indef" if count == 1 else "none"
    gender = "pl" if plural else noun.gender
    de = [noun.form(case, plural)]
    en = [noun.en_pl if plural else noun.en]
    if adjective:
        de.insert(0, adjective[0] + _ADJ_ENDING[kind, case][gender])
        en.insert(0, adjective[1])
    if count == 1:
        de.insert(0, _INDEF[case][noun.gender])
        en.insert(0, _a(en[0]))
    elif count > 1:
        de.insert(0, NUMBERS[count - 2][0])
        en.insert(0, NUMBERS[count - 2][1])
    return " ".join(de), " ".join(en)


def place_phrase(place: Place, prep: tuple[str, str], definite: bool, adjective=None) -> tuple[str, str]:
    """A dative prepositional phrase, e.g. ``("im großen Park", "in the big park")``."""
    if not definite:
        np_de, np_en = noun_phrase(place.noun, "dat", 1, adjective)
        return f"{prep[0]} {np_de}", f"{prep[1]} {np_en}"
    article = _DEF_DAT[place.noun.gender]
    de = [_CONTRACTIONS.get((prep[0], article)) or f"{prep[0]} {article}"]
    en = [prep[1], "the"]
    if adjective:
        de.append(adjective[0] + _ADJ_ENDING["def", "dat"][place.noun.gender])
        en.append(adjective[1])
    return " ".join(de + [place.noun.de]), " ".join(en + [place.noun.en])


def _count(rng: random.Random, p_plural: float) -> int:
    return rng.randint(2, 1 + len(NUMBERS)) if rng.random() < p_plural else 1


def _sentence(rng: random.Random) -> tuple[str, str]:
    is_person = rng.random() < 0.7
    subject = rng.choice(PEOPLE if is_person else ANIMALS)
    kinds = {"any", "person"} if is_person else {"any", "animal"} | ({"dog"} if subject in DOGS else set())
    verb = rng.choice([v for v in VERBS if v.subjects in kinds])

    count = _count(rng, 0.35)
    adjectives = PERSON_ADJECTIVES if is_person else ANIMAL_ADJECTIVES
    adjective = rng.choice(adjectives) if rng.random() < 0.4 else None
    de, en = noun_phrase(subject, "nom", count, adjective)
    if is_person and rng.random() < 0.3:
        clothes = noun_phrase(rng.choice(CLOTHES), "dat", 1 if count == 1 else 0, rng.choice(COLOURS))
        de, en = f"{de} in {clothes[0]}", f"{en} in {clothes[1]}"

    de, en = [de, verb.de if count == 1 else verb.de_pl], [en, verb.en if count == 1 else verb.en_pl]
    if verb.objects:
        kind = rng.choice(verb.objects)
        if kind == "animal":
            obj, obj_adjs = rng.choice(ANIMALS), ANIMAL_ADJECTIVES
        else:
            obj, obj_adjs = THINGS[kind], () if kind in _FOOD else COLOURS
        obj_adj = rng.choice(obj_adjs) if obj_adjs and rng.random() < 0.3 else None
        obj_de, obj_en = noun_phrase(obj, "acc", _count(rng, 0.15), obj_adj)
        de.append(obj_de)
        en.append(obj_en)

    places = [p for p in PLACES if p.water] if verb.water else [p for p in PLACES if not p.water]
    if verb.water or rng.random() < 0.6:
        place = rng.choice(places)
        definite = place.mass or rng.random() < 0.6
        adjective = rng.choice(PLACE_ADJECTIVES) if not place.mass and rng.random() < 0.2 else None
        pp_de, pp_en = place_phrase(place, rng.choice(place.preps), definite, adjective)
        de.append(pp_de)
        en.append(pp_en)

    de, en = " ".join(de), " ".join(en)
    return de[0].upper() + de[1:] + ".", en[0].upper() + en[1:] + "."


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` pairs with distinct German sides, the same for the same ``seed``."""
    rng = random.Random(seed)
    pairs: dict[str, str] = {}
    for _ in range(20 * n + 100):
        if len(pairs) == n:
            return list(pairs.items())
        de, en = _sentence(rng)
        pairs.setdefault(de, en)
    raise ValueError(f"the grammar did not produce {n} distinct sentences")


def write_synthetic(data_dir, n_train: int = 6000, n_val: int = 300, n_test: int = 300,
                    seed: int = 0) -> Path:
    """Write ``<data_dir>/synthetic/{train,val,test2016}.{de,en}`` and return that folder.

    Same layout as Multi30k, so ``load_split(data_dir, split, corpus="synthetic")``
    reads it. All pairs are distinct, so the splits do not overlap.
    """
    pairs = synthetic_pairs(n_train + n_val + n_test, seed)
    out = Path(data_dir) / "synthetic"
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test2016": (n_train + n_val, n_train + n_val + n_test)}
    for split in SPLITS:
        lo, hi = bounds[split]
        for lang, col in (("de", 0), ("en", 1)):
            atomic_write_text(out / f"{split}.{lang}", "".join(p[col] + "\n" for p in pairs[lo:hi]))
    return out


def resolve_corpus(data_dir, corpus: str) -> str:
    """'auto' picks Multi30k when its files are in `data_dir`, else the embedded synthetic corpus
    (`explain_corpus` says why); a Multi30k directory with only some of its files raises."""
    if corpus != "auto":
        return corpus
    present, missing = _multi30k_files(data_dir)
    if present and missing:
        raise FileNotFoundError(f"Multi30k in {Path(data_dir) / 'multi30k'} is incomplete (missing "
                                f"{', '.join(missing)}): run `mindtrans fetch --data-dir {data_dir}` to complete it, "
                                f"or pass --corpus synthetic")
    return "multi30k" if present else "synthetic"


def explain_corpus(data_dir, corpus: str) -> str:
    """One line on why `resolve_corpus(data_dir, corpus)` chose what it chose."""
    if corpus != "auto":
        return f"corpus {corpus}: as asked"
    chosen = resolve_corpus(data_dir, corpus)
    where = Path(data_dir) / "multi30k"
    if chosen == "multi30k":
        return f"corpus auto: Multi30k, found in {where}"
    return (f"corpus auto: the embedded synthetic corpus, since {where} holds no Multi30k "
            f"(`mindtrans fetch --data-dir {data_dir}` downloads it)")


def _multi30k_files(data_dir) -> tuple:
    """(present, missing) names of the six Multi30k files in `data_dir`."""
    from mindtrans.fetch import TEXT_SHA256, multi30k_dir

    present = [name for name in TEXT_SHA256 if (multi30k_dir(data_dir) / name).is_file()]
    return present, [name for name in TEXT_SHA256 if name not in present]


def ensure_corpus(data_dir, corpus: str) -> None:
    """Write the synthetic corpus on first use; Multi30k must be fetched (`mindtrans fetch`).

    Every file training reads is checked, not just the first: the workers of an msrun job
    may get here at the same time, and each file is written atomically, with the same text.
    """
    root = Path(data_dir) / "synthetic"
    needed = [root / f"{split}.{lang}" for split in ("train", "val") for lang in ("de", "en")]
    if corpus == "synthetic" and not all(path.is_file() for path in needed):
        write_synthetic(data_dir)
