"""Text → token ids → padded batches.

The pipeline, step by step:

1. ``load_split`` reads one split of a parallel corpus as ``(german, english)`` pairs.
2. ``tokenize`` lowercases a sentence and splits it into words and punctuation.
3. ``Vocab.build`` maps every frequent token to an integer id; ``Vocab.encode`` applies it.
4. ``encode_pairs`` turns sentence pairs into ``int32`` id arrays framed by ``<bos>``/``<eos>``.
5. ``BucketBatcher`` groups pairs of similar length into padded ``(batch, length)`` arrays
   and serves them through ``mindspore.dataset``.

MindSpore is only imported by ``BucketBatcher.dataset``; everything else is plain Python
and NumPy.
"""
from __future__ import annotations

import heapq
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SPECIALS = ("<unk>", "<pad>", "<bos>", "<eos>")
UNK, PAD, BOS, EOS = 0, 1, 2, 3

CORPORA = ("multi30k", "synthetic")

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- tokens
def tokenize(text: str) -> list[str]:
    """Lowercase ``text`` and split it into words and single punctuation marks.

    ``\\w`` is Unicode-aware, so umlauts and ß stay inside their words:
    ``tokenize("Die Straße!") == ["die", "straße", "!"]``.
    """
    return _TOKEN_RE.findall(text.lower())


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
    text = "".join(pieces)
    first = next((j for j, ch in enumerate(text) if ch.isalnum()), None)
    if first is not None and text[first].isalpha():
        text = text[:first] + text[first].upper() + text[first + 1:]
    return text


# --------------------------------------------------------------------------- files
def default_file_mode() -> int:
    """0o666 minus the process umask: the mode a plain open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and ``os.replace``.

    Readers see either the old file or the complete new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp makes it private; a bundle is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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


# --------------------------------------------------------------------------- corpora
def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip() for line in f]


def read_parallel(src_path, tgt_path) -> list[tuple[str, str]]:
    """Read two line-aligned files into ``(source, target)`` pairs.

    Every line is kept (including the last one), with trailing whitespace removed.
    """
    src, tgt = _read_lines(Path(src_path)), _read_lines(Path(tgt_path))
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
    """Tokenize and encode sentence pairs as ``int32`` arrays ``[<bos>, ..., <eos>]``.

    A side longer than ``max_len`` ids (``<bos>``/``<eos>`` included) is cut to
    ``max_len`` with ``<eos>`` kept last; the result's ``n_truncated`` counts the pairs
    that lost tokens on either side.
    """
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len must leave room for <bos> and <eos>, got {max_len}")
    out = EncodedPairs()
    for src, tgt in pairs:
        src_ids, cut_src = _frame(src_vocab.encode(tokenize(src)), max_len)
        tgt_ids, cut_tgt = _frame(tgt_vocab.encode(tokenize(tgt)), max_len)
        out.append((src_ids, tgt_ids))
        out.n_truncated += cut_src or cut_tgt
    if out.n_truncated:
        log.warning("truncated %d of %d pairs to max_len=%d", out.n_truncated, len(out), max_len)
    return out


# --------------------------------------------------------------------------- batching
DEFAULT_BOUNDARIES = (8, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def bucket_lengths(max_len: int, boundaries=None) -> tuple[int, ...]:
    """The padded lengths used for batching: the boundaries below ``max_len``, then ``max_len``."""
    boundaries = DEFAULT_BOUNDARIES if boundaries is None else boundaries
    if any(int(b) < 1 for b in boundaries):
        raise ValueError(f"bucket boundaries must be positive, got {boundaries}")
    return tuple(sorted({int(b) for b in boundaries if b < max_len} | {max_len}))


def bucket_batch_size(batch_tokens: int, length: int) -> int:
    """Rows per batch for one bucket: ``batch_tokens // length``, a multiple of 8 when ≥ 8."""
    size = max(1, batch_tokens // length)
    return size // 8 * 8 if size >= 8 else size


def fixed_length_padding_ratio(encoded_pairs, length: int = 32) -> float:
    """Pad fraction if every sentence were padded (or cut) to ``length``, as the original lesson did."""
    real = sum(min(len(s), length) + min(len(t), length) for s, t in encoded_pairs)
    return 1.0 - real / (2 * length * len(encoded_pairs))


class BucketBatcher:
    """Length-bucketed padded batches through ``mindspore.dataset``.

    Each pair goes to the smallest bucket length ``L`` (see ``bucket_lengths``) that
    holds both its sides; both ``src`` and ``tgt`` are padded with ``PAD`` to ``L``.
    A bucket's batches have ``bucket_batch_size(batch_tokens, L)`` rows, so one batch
    holds at most ``batch_tokens`` positions per side (unless a single row is longer).
    Only a few shapes ever occur (see ``shapes``), which keeps graph compilation cheap.

    Per epoch the plan shuffles pairs within each bucket, cuts the buckets into
    batches and shuffles the batch order; it depends only on ``seed`` and ``epoch``.
    With ``num_shards > 1`` shard ``shard_id`` takes every ``num_shards``-th batch of
    that plan, starting at batch ``shard_id``; shards may then differ by one batch,
    unless ``drop_remainder`` is set, which also trims the plan to a multiple of
    ``num_shards`` batches so that all shards take the same number of steps.
    """

    def __init__(self, encoded_pairs, batch_tokens: int = 4096, boundaries=None, max_len: int = 128,
                 shuffle: bool = True, seed: int = 0, drop_remainder: bool = False,
                 num_shards: int = 1, shard_id: int = 0):
        if not encoded_pairs:
            raise ValueError("no pairs to batch")
        if batch_tokens < 1 or max_len < 1 or seed < 0:
            raise ValueError("batch_tokens and max_len must be positive and seed non-negative")
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be in [0, {num_shards}), got {shard_id}")
        self.pairs = list(encoded_pairs)
        self.src_lens = np.array([len(s) for s, _ in self.pairs])
        self.tgt_lens = np.array([len(t) for _, t in self.pairs])
        lengths = np.maximum(self.src_lens, self.tgt_lens)
        if lengths.max() > max_len:
            n = int((lengths > max_len).sum())
            raise ValueError(f"{n} pairs are longer than max_len={max_len} (longest: {lengths.max()}); "
                             f"encode them with encode_pairs(..., max_len={max_len})")
        self.boundaries = bucket_lengths(max_len, boundaries)
        self.batch_sizes = tuple(bucket_batch_size(batch_tokens, b) for b in self.boundaries)
        bucket_of = np.searchsorted(self.boundaries, lengths)
        self.buckets = [np.flatnonzero(bucket_of == k) for k in range(len(self.boundaries))]
        self.pad_to = np.array(self.boundaries)[bucket_of]
        self.batch_tokens, self.max_len = batch_tokens, max_len
        self.shuffle, self.seed, self.drop_remainder = shuffle, seed, drop_remainder
        self.num_shards, self.shard_id = num_shards, shard_id

    def _num_batches_all_shards(self) -> int:
        full = [len(m) // b for m, b in zip(self.buckets, self.batch_sizes)]
        if self.drop_remainder:
            total = sum(full)
            return total - total % self.num_shards
        return sum(full) + sum(len(m) % b > 0 for m, b in zip(self.buckets, self.batch_sizes))

    def __len__(self) -> int:
        """Batches per epoch in this shard."""
        return len(range(self.shard_id, self._num_batches_all_shards(), self.num_shards))

    def plan(self, epoch: int) -> list[np.ndarray]:
        """This shard's batches for ``epoch``, each an array of pair indices."""
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for members, size in zip(self.buckets, self.batch_sizes):
            if self.shuffle:
                members = rng.permutation(members)
            stop = len(members) - len(members) % size if self.drop_remainder else len(members)
            batches += [members[i:i + size] for i in range(0, stop, size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        batches = batches[:self._num_batches_all_shards()]
        return batches[self.shard_id::self.num_shards]

    def shapes(self) -> set[tuple[int, int]]:
        """Every ``(batch, length)`` shape a batch can have (the same for all epochs)."""
        shapes = set()
        for members, size, length in zip(self.buckets, self.batch_sizes, self.boundaries):
            if len(members) >= size:
                shapes.add((size, length))
            if len(members) % size and not self.drop_remainder:
                shapes.add((len(members) % size, length))
        return shapes

    def collate(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """Pair indices (all from one bucket) → ``(src, tgt)``, each ``(B, L)`` int32 padded with PAD."""
        length = int(self.pad_to[indices[0]])
        src = np.full((len(indices), length), PAD, dtype=np.int32)
        tgt = np.full((len(indices), length), PAD, dtype=np.int32)
        for row, i in enumerate(indices):
            s, t = self.pairs[i]
            src[row, :len(s)] = s
            tgt[row, :len(t)] = t
        return src, tgt

    def dataset(self, epoch: int, skip_batches: int = 0):
        """A ``mindspore.dataset.GeneratorDataset`` of this epoch's batches.

        Columns ``["src", "tgt"]``, int32, each ``(B, L)``. ``skip_batches`` drops the
        first batches of the plan, to resume an interrupted epoch exactly.
        """
        import mindspore.dataset as ds

        batches = self.plan(epoch)
        if not batches:
            raise ValueError("this shard has no batches; use fewer shards or drop_remainder=False")
        if not 0 <= skip_batches < len(batches):
            raise ValueError(f"skip_batches must be in [0, {len(batches)}) for this epoch's "
                             f"{len(batches)} batches, got {skip_batches}")
        return ds.GeneratorDataset(_Batches(self, batches[skip_batches:]), column_names=["src", "tgt"],
                                   shuffle=False, num_parallel_workers=1, python_multiprocessing=False)

    def padding_ratio(self, epoch: int = 0) -> float:
        """Fraction of pad positions among all ``src`` + ``tgt`` positions of the epoch's batches."""
        real = total = 0
        for batch in self.plan(epoch):
            real += int(self.src_lens[batch].sum() + self.tgt_lens[batch].sum())
            total += 2 * len(batch) * int(self.pad_to[batch[0]])
        return 1.0 - real / total


class PackedBatcher:
    """Sentence pairs packed several to a row, in batches that all have one shape.

    Each row holds whole pairs one after another: sources in ``src``, targets in
    ``tgt_in``/``labels``; segment ids say which pair a position belongs to (0 is
    padding) and positions restart at 0 with every sentence. With masks that keep
    attention inside a segment (``mindtrans.attention.segment_mask``) the model computes
    for each pair exactly what it would on that pair alone, but every batch is
    ``(rows, length)``: one static graph serves the whole epoch, and the rows are
    nearly full instead of padded to a bucket length.

    ``length`` defaults to the longest side (a target counts ``<bos>`` .. last word, its
    decoder input), rounded up to a multiple of 8; ``rows = batch_tokens // length``.
    An epoch has a fixed number of batches: the fewest that hold every pair. Each epoch
    the pairs are shuffled, placed longest first (equal lengths in random order) into the
    fullest row that still holds both sides (best fit), the rows shuffled and cut into
    batches; the plan depends only on ``seed`` and ``epoch``. Planning an epoch looks at
    every row for every pair: about a second for Multi30k's 29,000 pairs, too slow for
    corpora of millions, which should use ``BucketBatcher``.
    """

    def __init__(self, encoded_pairs, batch_tokens: int = 4096, length: int | None = None, shuffle: bool = True,
                 seed: int = 0):
        if not encoded_pairs:
            raise ValueError("no pairs to batch")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.pairs = list(encoded_pairs)
        self.src_lens = np.array([len(s) for s, _ in self.pairs])
        self.tgt_lens = np.array([len(t) - 1 for _, t in self.pairs])  # decoder input: <bos> .. last word
        longest = int(max(self.src_lens.max(), self.tgt_lens.max()))
        self.length = int(length) if length is not None else -(-longest // 8) * 8
        if self.length < longest:
            raise ValueError(f"length={self.length} is shorter than the longest sentence ({longest} tokens); "
                             f"pass a larger length or encode the pairs with a smaller max_len")
        if batch_tokens < self.length:
            raise ValueError(f"batch_tokens={batch_tokens} cannot hold one row of {self.length} positions; "
                             f"raise batch_tokens to at least {self.length}")
        self.rows = batch_tokens // self.length
        self.batch_tokens, self.shuffle, self.seed = batch_tokens, shuffle, seed
        self.num_batches = self._fewest_batches()
        self.left_out = 0

    def __len__(self) -> int:
        """Batches per epoch (the same every epoch)."""
        return self.num_batches

    def shapes(self) -> set[tuple[int, int]]:
        """The one ``(rows, length)`` shape of every batch."""
        return {(self.rows, self.length)}

    def plan(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's batches: each a list of ``rows`` rows, each row a list of pair indices.

        A pair that fits in no row (possible only with very uneven lengths) sits this
        epoch out; ``left_out`` then counts it.
        """
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.pairs)) if self.shuffle else np.arange(len(self.pairs))
        rows, self.left_out = self._pack(order, self.num_batches)
        if self.shuffle:
            rows = [rows[k] for k in rng.permutation(len(rows))]
        return [rows[b * self.rows:(b + 1) * self.rows] for b in range(self.num_batches)]

    def _fewest_batches(self) -> int:
        """The fewest batches `_pack` fits every pair into (in the unshuffled order)."""
        order = np.arange(len(self.pairs))

        def fits(num_batches):
            return self._pack(order, num_batches)[1] == 0

        # Full rows on the longer side would need `bound` batches: fewer cannot hold the pairs.
        bound = math.ceil(max(self.src_lens.sum(), self.tgt_lens.sum()) / (self.rows * self.length))
        low, high, step = bound - 1, bound, 1
        while not fits(high):
            low, high, step = high, high + step, 2 * step
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if fits(middle) else (middle, high)
        return high

    def _pack(self, order, num_batches: int) -> tuple[list[list[int]], int]:
        """Pairs in `order`, longest first (a stable sort), each into the fullest row that still
        holds both its sides (best fit). Returns (num_batches * rows rows of pair indices, how
        many pairs fitted nowhere)."""
        order = order[np.argsort(-np.maximum(self.src_lens, self.tgt_lens)[order], kind="stable")]
        n_rows = num_batches * self.rows
        src_left = np.full(n_rows, self.length)
        tgt_left = np.full(n_rows, self.length)
        rows, left_out = [[] for _ in range(n_rows)], 0
        for i in order:
            fits = (src_left >= self.src_lens[i]) & (tgt_left >= self.tgt_lens[i])
            room = np.where(fits, src_left + tgt_left, 2 * self.length + 1)
            k = int(np.argmin(room))
            if not fits[k]:
                left_out += 1
                continue
            rows[k].append(int(i))
            src_left[k] -= self.src_lens[i]
            tgt_left[k] -= self.tgt_lens[i]
        return rows, left_out

    def collate(self, batch) -> tuple[np.ndarray, ...]:
        """Rows of pair indices -> ``(src, src_segments, src_positions, tgt_in, tgt_segments, tgt_positions,
        labels)``, each ``(rows, length)`` int32. ``labels`` holds the next target token, ``PAD`` where
        there is none; segments number the pairs of a row from 1 (0 is padding)."""
        shape = (self.rows, self.length)
        src, tgt_in, labels = (np.full(shape, PAD, dtype=np.int32) for _ in range(3))
        src_seg, src_pos, tgt_seg, tgt_pos = (np.zeros(shape, dtype=np.int32) for _ in range(4))
        for r, row in enumerate(batch):
            s_at = t_at = 0
            for segment, i in enumerate(row, start=1):
                s, t = self.pairs[i]
                n, m = len(s), len(t) - 1
                src[r, s_at:s_at + n], src_seg[r, s_at:s_at + n], src_pos[r, s_at:s_at + n] = s, segment, np.arange(n)
                tgt_in[r, t_at:t_at + m], labels[r, t_at:t_at + m] = t[:-1], t[1:]
                tgt_seg[r, t_at:t_at + m], tgt_pos[r, t_at:t_at + m] = segment, np.arange(m)
                s_at, t_at = s_at + n, t_at + m
        return src, src_seg, src_pos, tgt_in, tgt_seg, tgt_pos, labels

    def padding_ratio(self, epoch: int = 0) -> float:
        """Fraction of pad positions among all ``src`` + ``tgt_in`` positions of the epoch's batches."""
        real = int(self.src_lens.sum() + self.tgt_lens.sum())
        return 1.0 - real / (2 * self.num_batches * self.rows * self.length)


class _Batches:
    """Random-access source for ``GeneratorDataset``: item ``k`` is the ``k``-th planned batch."""

    def __init__(self, batcher: BucketBatcher, batches: list[np.ndarray]):
        self.batcher, self.batches = batcher, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batcher.collate(self.batches[k])
