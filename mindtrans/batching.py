"""Encoded pairs -> padded training batches, two ways.

``BucketBatcher`` groups pairs of similar length into padded ``(batch, length)`` arrays
(one shape per length bucket) and serves a worker's shard through ``mindspore.dataset``;
``PackedBatcher`` puts several pairs in each row, so that every batch has one shape.

MindSpore is only imported by ``BucketBatcher.dataset``; everything else is NumPy.
"""
from __future__ import annotations

import math

import numpy as np

from mindtrans.data import PAD

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
