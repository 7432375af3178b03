"""Text → token ids → padded batches.

The pipeline, step by step:

1. ``load_split`` reads one split of a parallel corpus as ``(german, english)`` pairs.
2. ``tokenize`` lowercases a sentence and splits it into words and punctuation.
3. ``Vocab.build`` maps every frequent token to an integer id; ``Vocab.encode`` applies it.
4. ``encode_pairs`` turns sentence pairs into ``int32`` id arrays framed by ``<bos>``/``<eos>``.
5. ``mindtrans.batching`` groups the encoded pairs into padded batches.

Plain Python and NumPy: no MindSpore.
"""
from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np

from mindtrans.files import atomic_write_text

log = logging.getLogger(__name__)

SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")
UNK, PAD, BOS, EOS = 0, 1, 2, 3

CORPORA = ("multi30k", "synthetic")

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
UTF8_BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark some Windows editors put first


# --------------------------------------------------------------------------- tokens
def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words and single punctuation marks.

    ``\\w`` is Unicode-aware, so umlauts and ß stay inside their words:
    ``tokenize("Die Straße!") == ["die", "straße", "!"]``. The text is read in NFC form first,
    so an umlaut typed as a letter plus a combining mark is the same word.
    """
    return _TOKEN_RE.findall(unicodedata.normalize("NFC", text).lower())


_NO_SPACE_BEFORE = set(".,!?;:)]}%“”")
_NO_SPACE_AFTER = set("([{„")
_WORD_JOINERS = {"-", "'"}  # "t - shirt" -> "t-shirt", "man ' s" -> "man's"
_NUMBER_JOINERS = {".", ","}  # "3 . 5" -> "3.5", "1 , 000" -> "1,000"


def _is_word(token: str | None) -> bool:
    return token is not None and token[0].isalnum()


def _is_number(token: str | None) -> bool:
    return token is not None and token.isdigit()


def detokenize(tokens: list[str]) -> str:
    """Join tokens back into a readable sentence (a heuristic inverse of ``tokenize``).

    Rules: no space before ``. , ! ? ; : )`` or a closing quote, none after ``(`` or an
    opening quote (German ``„…“``; straight ``"`` quotes alternate open/close); a ``-`` or ``'`` between
    two words is glued to both (``t - shirt`` → ``t-shirt``, ``man ' s`` → ``man's``), as
    is ``.``/``,`` between two numbers; the first letter is capitalised. Lowercasing is
    not undone (``mcdonald`` stays lowercase), so the output is for reading and for
    BLEU against lowercased references, not an exact inverse.
    """
    pieces: list[str] = []
    quote_open = glue_next = False
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i > 0 else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        joiner = (tok in _WORD_JOINERS and _is_word(prev) and _is_word(nxt)) or (
            tok in _NUMBER_JOINERS and _is_number(prev) and _is_number(nxt))
        closing_quote = tok == '"' and quote_open
        if tok == '"':
            quote_open = not quote_open
        space = (bool(pieces) and not glue_next and not joiner and not closing_quote
                 and tok not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER)
        glue_next = joiner or (tok == '"' and not closing_quote)
        pieces.append(" " + tok if space else tok)
    first = next((j for j, tok in enumerate(tokens) if tok in SPECIALS or tok[:1].isalnum()), None)
    if first is not None and tokens[first] not in SPECIALS:  # "<unk> people ..." stays as it is
        pieces[first] = pieces[first].replace(tokens[first], tokens[first][0].upper() + tokens[first][1:], 1)
    return "".join(pieces)


# --------------------------------------------------------------------------- vocabulary
class Vocab:
    """A token ↔ id mapping whose first four ids are always ``SPECIALS``.

    ``itos[i]`` is the token with id ``i``; ``stoi[token]`` is its id.
    """

    _FORMAT = "mindtrans.vocab"

    def __init__(self, itos: list[str]):
        itos = list(itos)
        if tuple(itos[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {itos[:len(SPECIALS)]}")
        if not all(isinstance(t, str) for t in itos):
            raise ValueError("vocabulary tokens must be strings")
        stoi = {tok: i for i, tok in enumerate(itos)}
        if len(stoi) != len(itos):
            dupes = sorted(t for t, c in Counter(itos).items() if c > 1)
            raise ValueError(f"vocabulary has duplicate tokens: {dupes[:10]}")
        self.itos = itos
        self.stoi = stoi

    @classmethod
    def build(cls, token_lists, min_freq: int = 2, max_size: int | None = None) -> "Vocab":
        """Build from an iterable of token lists.

        Keeps tokens seen at least ``min_freq`` times, most frequent first, ties in
        alphabetical order (so the result does not depend on input order). ``max_size``
        caps the total size, specials included.
        """
        if max_size is not None and max_size < len(SPECIALS):
            raise ValueError(f"max_size must be at least {len(SPECIALS)}, got {max_size}")
        counts = Counter(tok for tokens in token_lists for tok in tokens)
        for special in SPECIALS:
            counts.pop(special, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[:max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token) -> bool:
        return token in self.stoi

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: list[str], add_bos_eos: bool = False) -> list[int]:
        """Token list → id list; unknown tokens become ``UNK``."""
        ids = [self.stoi.get(tok, UNK) for tok in tokens]
        return [BOS, *ids, EOS] if add_bos_eos else ids

    def decode(self, ids, strip_special: bool = True) -> list[str]:
        """Id sequence → token list.

        With ``strip_special`` decoding stops at the first ``<eos>`` and skips ``<pad>``
        and ``<bos>``; ``<unk>`` is kept, since it stands for a real word.
        """
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is out of range for a vocabulary of size {len(self)}")
            if strip_special:
                if i == EOS:
                    break
                if i in (PAD, BOS):
                    continue
            tokens.append(self.itos[i])
        return tokens

    def encode_text(self, text: str) -> list[int]:
        """A raw sentence -> ids: tokenized (lowercased words), unknown words as ``UNK``."""
        return self.encode(tokenize(text))

    def decode_text(self, ids) -> str:
        """Ids -> a detokenized sentence (lowercase, as the words are)."""
        return detokenize(self.decode(ids))

    def words(self, ids) -> list[str]:
        """Ids -> the lowercased word tokens that tokenized BLEU compares."""
        return self.decode(ids)

    def save(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (atomically)."""
        payload = {"format": self._FORMAT, "version": 1, "itos": self.itos}
        atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=0) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        """Read a file written by ``save``; anything else raises ``ValueError``."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a mindtrans vocabulary file: {e}") from None
        if not isinstance(payload, dict) or payload.get("format") != cls._FORMAT \
                or not isinstance(payload.get("itos"), list):
            raise ValueError(f"{path} is not a mindtrans vocabulary file "
                             f"(expected a JSON object with format={cls._FORMAT!r} and an 'itos' list)")
        try:
            return cls(payload["itos"])
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def build_vocabs(train_pairs, min_freq: int) -> tuple:
    """Source and target vocabularies from the training split only."""
    src = Vocab.build((tokenize(s) for s, _ in train_pairs), min_freq=min_freq)
    tgt = Vocab.build((tokenize(t) for _, t in train_pairs), min_freq=min_freq)
    return src, tgt


# --------------------------------------------------------------------------- corpora
def decode_line(raw: bytes, where: str) -> str:
    """One line of input (bytes, without its ``\\n``) as text: UTF-8, trailing whitespace removed,
    in NFC form (an umlaut typed as a letter plus a combining mark reads as the one letter).

    A line that is not UTF-8, holds a NUL byte, or holds a carriage return that does not end
    it (old Mac line endings: the whole file would read as one line) raises ValueError naming
    ``where`` ("a.de line 3", "stdin line 3") and the fix.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text (byte {raw[err.start]:#04x}); is it the right file? "
                         f"Convert it with iconv -t UTF-8") from None
    if "\x00" in text:
        raise ValueError(f"{where} holds a NUL byte: a binary file, not text")
    text = text.rstrip()
    if "\r" in text:
        raise ValueError(f"{where} holds a carriage return (\\r) inside the line: lines must end with \\n; "
                         f"convert old Mac line endings with tr '\\r' '\\n'")
    return unicodedata.normalize("NFC", text)


def read_lines(path) -> list[str]:
    """The lines of a UTF-8 text file, each as ``decode_line`` reads it.

    Lines end at ``\\n`` (as ``wc -l`` counts them; a final ``\\r\\n`` is removed with the rest of
    the trailing whitespace). A UTF-8 byte-order mark at the start is dropped.
    """
    lines = Path(path).read_bytes().removeprefix(UTF8_BOM).split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last line
        lines.pop()
    return [decode_line(raw, f"{path} line {number}") for number, raw in enumerate(lines, 1)]


def read_parallel(src_path, tgt_path) -> list[tuple[str, str]]:
    """Read two line-aligned files into ``(source, target)`` pairs.

    Every line is kept (including the last one), with trailing whitespace removed; an empty
    file, or two files of different lengths, raise ValueError naming them.
    """
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    for path, lines in ((src_path, src), (tgt_path, tgt)):
        if not any(lines):
            raise ValueError(f"{path} holds no sentences")
    if len(src) != len(tgt):
        raise ValueError(f"parallel files are not aligned: {src_path} has {len(src)} lines "
                         f"but {tgt_path} has {len(tgt)}")
    return list(zip(src, tgt))


def load_split(data_dir, split: str, src_lang: str = "de", tgt_lang: str = "en",
               corpus: str = "multi30k") -> list[tuple[str, str]]:
    """Read ``<data_dir>/<corpus>/<split>.{src_lang,tgt_lang}``.

    ``corpus`` is ``"multi30k"`` (downloaded by ``mindtrans fetch``) or ``"synthetic"``
    (generated by ``mindtrans.corpus.write_synthetic``). Splits: train, val, test2016.
    """
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {CORPORA}")
    root = Path(data_dir).expanduser() / corpus
    paths = [root / f"{split}.{src_lang}", root / f"{split}.{tgt_lang}"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        if corpus == "multi30k":
            hint = f"run `mindtrans fetch --data-dir {data_dir}` to download Multi30k"
        else:
            hint = f"generate it with `mindtrans.corpus.write_synthetic({str(data_dir)!r})`"
        raise FileNotFoundError(f"{' and '.join(missing)} not found; {hint}")
    return read_parallel(*paths)


class EncodedPairs(list):
    """A list of ``(src_ids, tgt_ids)`` arrays that remembers how many pairs were truncated."""

    n_truncated: int = 0


def _frame(ids: list[int], max_len: int | None) -> tuple[np.ndarray, bool]:
    ids = [BOS, *ids, EOS]
    if max_len is not None and len(ids) > max_len:
        return np.array([*ids[:max_len - 1], EOS], dtype=np.int32), True
    return np.array(ids, dtype=np.int32), False


def encode_pairs(pairs, src_vocab: Vocab, tgt_vocab: Vocab, max_len: int | None = None) -> EncodedPairs:
    """Encode sentence pairs as ``int32`` arrays ``[<bos>, ..., <eos>]`` (``encode_text`` of
    either kind of vocabulary: words or subwords).

    A side longer than ``max_len`` ids (``<bos>``/``<eos>`` included) is cut to
    ``max_len`` with ``<eos>`` kept last; the result's ``n_truncated`` counts the pairs
    that lost tokens on either side.
    """
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must leave room for <bos> and <eos>, got {max_len}")
    out = EncodedPairs()
    for src, tgt in pairs:
        src_ids, cut_src = _frame(src_vocab.encode_text(src), max_len)
        tgt_ids, cut_tgt = _frame(tgt_vocab.encode_text(tgt), max_len)
        out.append((src_ids, tgt_ids))
        out.n_truncated += cut_src or cut_tgt
    if out.n_truncated:
        log.warning("truncated %d of %d pairs to max_len=%d", out.n_truncated, len(out), max_len)
    return out
