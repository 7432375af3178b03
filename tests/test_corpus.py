"""Tests for mindtrans.corpus: the generated German–English caption corpus."""
import re

import pytest

from mindtrans.corpus import (ANIMALS, CLOTHES, PEOPLE, PLACES, THINGS, noun_phrase, place_phrase,
                              synthetic_pairs, write_synthetic)
from mindtrans.data import UNK, Vocab, load_split, tokenize

NOUNS = {n.de: n for n in PEOPLE + ANIMALS + CLOTHES + list(THINGS.values())}
PLACE = {p.noun.de: p for p in PLACES}


def test_synthetic_pairs_are_deterministic_and_distinct():
    pairs = synthetic_pairs(500, seed=3)
    assert pairs == synthetic_pairs(500, seed=3)
    assert pairs != synthetic_pairs(500, seed=4)
    assert len({de for de, _ in pairs}) == 500
    for de, en in pairs:
        assert de[0].isupper() and en[0].isupper() and de.endswith(".") and en.endswith(".")


@pytest.mark.parametrize("noun, case, count, adjective, expected", [
    ("Mann", "nom", 1, ("alt", "old"), ("ein alter Mann", "an old man")),
    ("Frau", "nom", 1, ("jung", "young"), ("eine junge Frau", "a young woman")),
    ("Mädchen", "nom", 1, ("klein", "little"), ("ein kleines Mädchen", "a little girl")),
    ("Junge", "acc", 1, ("klein", "little"), ("einen kleinen Jungen", "a little boy")),
    ("Junge", "nom", 1, None, ("ein Junge", "a boy")),
    ("Ball", "acc", 1, ("rot", "red"), ("einen roten Ball", "a red ball")),
    ("Zeitung", "acc", 1, None, ("eine Zeitung", "a newspaper")),
    ("Buch", "acc", 1, ("blau", "blue"), ("ein blaues Buch", "a blue book")),
    ("Regenschirm", "acc", 1, None, ("einen Regenschirm", "an umbrella")),
    ("Hemd", "dat", 1, ("rot", "red"), ("einem roten Hemd", "a red shirt")),
    ("Jacke", "dat", 1, ("grün", "green"), ("einer grünen Jacke", "a green jacket")),
    ("Hund", "nom", 2, ("klein", "small"), ("zwei kleine Hunde", "two small dogs")),
    ("Hund", "dat", 3, ("klein", "small"), ("drei kleinen Hunden", "three small dogs")),
    ("Kind", "acc", 5, None, ("fünf Kinder", "five children")),
    ("Hut", "dat", 0, ("weiß", "white"), ("weißen Hüten", "white hats")),
    ("Polizist", "dat", 4, None, ("vier Polizisten", "four police officers")),
])
def test_noun_phrase_agreement(noun, case, count, adjective, expected):
    assert noun_phrase(NOUNS[noun], case, count, adjective) == expected


@pytest.mark.parametrize("place, prep, definite, adjective, expected", [
    ("Park", ("in", "in"), True, None, ("im Park", "in the park")),
    ("Park", ("in", "in"), True, ("groß", "big"), ("im großen Park", "in the big park")),
    ("Strand", ("an", "on"), True, None, ("am Strand", "on the beach")),
    ("Straße", ("auf", "on"), True, None, ("auf der Straße", "on the street")),
    ("Schnee", ("in", "in"), True, None, ("im Schnee", "in the snow")),
    ("Haus", ("vor", "in front of"), False, ("alt", "old"),
     ("vor einem alten Haus", "in front of an old house")),
    ("Küche", ("in", "in"), False, None, ("in einer Küche", "in a kitchen")),
])
def test_place_phrase_uses_the_dative(place, prep, definite, adjective, expected):
    assert place_phrase(PLACE[place], prep, definite, adjective) == expected


def test_articles_agree_with_noun_gender_across_the_corpus():
    allowed = {"m": {"ein", "einen", "einem"}, "f": {"eine", "einer"}, "n": {"ein", "einem"}}
    endings = {"ein": {"m": "er", "n": "es"}}  # nominative after "ein" (accusative neuter too)
    phrase = re.compile(r"\b([Ee]ine[mnr]?|[Ee]in)\s+(?:(\w+)\s+)?([A-ZÄÖÜ]\w*)")
    checked = 0
    for de, _ in synthetic_pairs(3000, seed=0):
        assert " in dem " not in de and " an dem " not in de
        for article, adjective, noun in phrase.findall(de):
            if noun not in NOUNS:
                continue
            gender = NOUNS[noun].gender
            assert article.lower() in allowed[gender], de
            if adjective and article.lower() == "ein":
                assert adjective.endswith(endings["ein"][gender]), de
            if adjective and article.lower() in {"einen", "einem", "einer"}:
                assert adjective.endswith("en"), de
            checked += 1
    assert checked > 3000


def test_subject_number_matches_in_both_languages():
    numbers = {"Zwei": "Two", "Drei": "Three", "Vier": "Four", "Fünf": "Five"}
    for de, en in synthetic_pairs(1000, seed=1):
        first = de.split()[0]
        if first in numbers:
            assert en.split()[0] == numbers[first], (de, en)
        else:
            assert first in {"Ein", "Eine"} and en.split()[0] in {"A", "An"}, (de, en)


def test_write_synthetic_layout_and_load_split(tmp_path):
    out = write_synthetic(tmp_path, n_train=200, n_val=30, n_test=40, seed=7)
    assert out == tmp_path / "synthetic"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{split}.{lang}" for split in ("train", "val", "test2016") for lang in ("de", "en"))
    text = (out / "train.de").read_text(encoding="utf-8")
    assert text.endswith(".\n") and text.count("\n") == 200
    splits = {s: load_split(tmp_path, s, corpus="synthetic") for s in ("train", "val", "test2016")}
    assert [len(splits[s]) for s in ("train", "val", "test2016")] == [200, 30, 40]
    assert splits["train"] + splits["val"] + splits["test2016"] == synthetic_pairs(270, seed=7)
    german = [{de for de, _ in pairs} for pairs in splits.values()]
    assert not (german[0] & german[1] or german[0] & german[2] or german[1] & german[2])
    write_synthetic(tmp_path, n_train=200, n_val=30, n_test=40, seed=7)
    assert (out / "train.de").read_text(encoding="utf-8") == text


def test_default_corpus_is_small_and_covered_by_training_vocab(tmp_path):
    write_synthetic(tmp_path)
    train = load_split(tmp_path, "train", corpus="synthetic")
    test = load_split(tmp_path, "test2016", corpus="synthetic")
    assert (len(train), len(load_split(tmp_path, "val", corpus="synthetic")), len(test)) == (6000, 300, 300)
    for side in (0, 1):
        vocab = Vocab.build(tokenize(pair[side]) for pair in train)
        assert 100 < len(vocab) < 500
        ids = [i for pair in test for i in vocab.encode(tokenize(pair[side]))]
        assert ids.count(UNK) / len(ids) < 0.01
