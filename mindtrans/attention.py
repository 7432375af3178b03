"""Scaled dot-product attention, its masks, and multi-head attention.

Masks are boolean and broadcast against attention scores of shape
(batch, heads, query_len, key_len): True means "may attend", False means "hidden".
"""

import mindspore as ms
from mindspore import nn, ops

from mindtrans.layers import Linear


def padding_mask(tokens, pad_id: int):
    """(B, L) token ids -> (B, 1, 1, L) bool: True where the key is a real token."""
    return (tokens != pad_id).expand_dims(1).expand_dims(1)


def causal_mask(query_len: int, key_len: int = None):
    """(1, 1, Lq, Lk) bool: query i may see keys up to its own position.

    With a key/value cache the queries are the last `query_len` of `key_len`
    positions, so query i sits at position key_len - query_len + i.
    """
    key_len = query_len if key_len is None else key_len
    query_pos = ops.arange(query_len).reshape(query_len, 1) + (key_len - query_len)
    key_pos = ops.arange(key_len).reshape(1, key_len)
    return (key_pos <= query_pos).reshape(1, 1, query_len, key_len)


def segment_mask(query_segments, key_segments):
    """(B, Lq), (B, Lk) segment ids -> (B, 1, Lq, Lk) bool: the key is in the query's segment.

    For rows that pack several sentences (`mindtrans.batching.PackedBatcher`): segment k > 0
    is the row's k-th sentence and 0 is padding, which no query may see.
    """
    same = query_segments.expand_dims(2) == key_segments.expand_dims(1)
    return ops.logical_and(same, (key_segments != 0).expand_dims(1)).expand_dims(1)


def masked_fill_value(dtype):
    """A score that softmax turns into an exact zero, representable in `dtype`."""
    return -6.0e4 if dtype == ms.float16 else -1.0e9


class RowSoftmax(nn.Cell):
    """softmax over the last axis of a 2-D input (N, L), with a backward pass made of same-shape ops.

    The gradient is dx = y * (dy - rowsum(dy * y)). MindSpore's own backward subtracts the
    (N, 1) row sums from (N, L) by broadcasting, which its dynamic-shape CPU kernels do
    slowly (5 ms of a 9 ms softmax for one attention layer of a training step); here a
    matrix product with an (L, L) matrix of ones sums each row and repeats the sum
    across it in one go, and everything else is element-wise.
    """

    def construct(self, x):
        return ops.softmax(x, axis=-1)

    def bprop(self, x, out, dout):
        row_sums = ops.matmul(dout * out, ops.ones((x.shape[-1], x.shape[-1]), x.dtype))
        return (out * (dout - row_sums),)


_SOFTMAX = RowSoftmax()
_QUERY_KEY = ops.BatchMatMul(transpose_b=True)  # Q K^T without materialising K^T
_WEIGHTS_VALUE = ops.BatchMatMul()


def scaled_dot_product_attention(query, key, value, mask=None, dropout=None):
    """softmax(Q K^T / sqrt(d_k)) V.

    query (B, H, Lq, d_k), key (B, H, Lk, d_k), value (B, H, Lk, d_v), mask bool
    broadcastable to (B, H, Lq, Lk). Returns output (B, H, Lq, d_v) and weights (B, H, Lq, Lk).
    The queries are scaled before the product, the same maths as scaling the scores.
    """
    scores = _QUERY_KEY(query * query.shape[-1] ** -0.5, key)  # not math.sqrt: MindSpore 2.0 graphs make it an int
    if mask is not None:
        scores = ops.masked_fill(scores, ops.logical_not(mask), masked_fill_value(scores.dtype))
    # Softmax over a 2-D view: MindSpore's CPU kernels reduce the last axis of 2-D input ~2x faster.
    weights = _SOFTMAX(scores.reshape(-1, scores.shape[-1])).reshape(scores.shape)
    if dropout is not None:
        weights = dropout(weights)
    return _WEIGHTS_VALUE(weights, value), weights


class MultiHeadAttention(nn.Cell):
    """h parallel attention heads over learned projections of query, keys and values.

    Self-attention takes keys and values from the query sequence itself; cross-attention
    (`cross=True`) takes them from `memory`, the encoder output. With `fused=True` the
    projections that read the same input share one matrix multiply (Q/K/V for
    self-attention, K/V for cross-attention); the maths is the same.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, cross: bool = False,
                 fused: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.cross, self.fused = cross, fused
        if fused and not cross:
            self.qkv_proj = Linear(d_model, 3 * d_model)
        else:
            self.q_proj = Linear(d_model, d_model)
            if fused:
                self.kv_proj = Linear(d_model, 2 * d_model)
            else:
                self.k_proj = Linear(d_model, d_model)
                self.v_proj = Linear(d_model, d_model)
        self.out_proj = Linear(d_model, d_model)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else None

    def split_heads(self, x):
        """(B, L, D) -> (B, H, L, D/H)."""
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.n_heads, self.d_head).transpose(0, 2, 1, 3)

    def merge_heads(self, x):
        """(B, H, L, D/H) -> (B, L, D)."""
        batch, _, length, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(batch, length, self.d_model)

    def project(self, x):
        """Self-attention: x (B, L, D) -> queries, keys and values, each (B, H, L, D/H)."""
        if self.fused:
            query, key, value = ops.split(self.qkv_proj(x), self.d_model, axis=-1)
        else:
            query, key, value = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.split_heads(query), self.split_heads(key), self.split_heads(value)

    def memory_cache(self, memory):
        """Cross-attention: memory (B, Ls, D) -> keys and values, each (B, H, Ls, D/H)."""
        if self.fused:
            key, value = ops.split(self.kv_proj(memory), self.d_model, axis=-1)
        else:
            key, value = self.k_proj(memory), self.v_proj(memory)
        return self.split_heads(key), self.split_heads(value)

    def construct(self, query, memory=None, mask=None, cache=None, position=None):
        """query (B, Lq, D); memory (B, Lk, D) for cross-attention; mask bool, see module doc.

        `cache` holds (keys, values), each (B, H, Lc, D/H): for self-attention the earlier
        positions, extended here; for cross-attention the projected memory, reused as is
        (`memory` may then be None). With `position` (an int32 scalar tensor) the
        self-attention cache has a fixed number of slots instead, and the one new query's
        key and value are written into slot `position`: the shapes stay the same at every
        step, which lets a compiled graph decode a whole sentence. Returns output
        (B, Lq, D), weights (B, H, Lq, Lk) and the cache to pass to the next step.
        """
        if self.cross:
            query = self.split_heads(self.q_proj(query))
            key, value = cache if cache is not None else self.memory_cache(memory)
        else:
            query, key, value = self.project(query)
            if cache is not None and position is not None:
                slot = (ops.arange(cache[0].shape[2]) == position).reshape(1, 1, -1, 1)
                key = ops.where(slot, key, cache[0])
                value = ops.where(slot, value, cache[1])
            elif cache is not None:
                key = ops.concat((cache[0], key), axis=2)
                value = ops.concat((cache[1], value), axis=2)
        out, weights = scaled_dot_product_attention(query, key, value, mask, self.dropout)
        return self.out_proj(self.merge_heads(out)), weights, (key, value)
