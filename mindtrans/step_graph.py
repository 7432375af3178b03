"""The decoding step as one compiled MindSpore graph, and the `Steps` that drive it from NumPy.

The step runs the decoder on one new token over a key/value cache with a fixed number of
slots, so that a step costs its arithmetic rather than a hundred eager op dispatches.
`ModelSteps` is a `Transformer`'s (its encoder eager, its step compiled by `decode_step`);
`mindtrans.exported.GraphSteps` runs the same two functions exported as MindIR graphs.
"""
import weakref

import mindspore as ms
import numpy as np
from mindspore import ops

from mindtrans import compat
from mindtrans.search_steps import SLOT_CHUNK, Steps

_COMPILED_STEPS = weakref.WeakKeyDictionary()  # model -> its compiled decoding step


def step_function(model):
    """`model`'s decoding step as a plain function, for `decode_step` to compile and for the export
    (`mindtrans.export`) to trace; see `decode_step` for its arguments and results."""
    n_layers = model.config.n_decoder_layers

    def step(tokens, src_mask, cache, position, rows):
        nested = ()
        for i in range(n_layers):
            self_keys, self_values, cross_keys, cross_values = cache[4 * i:4 * i + 4]
            nested += ((ops.gather(self_keys, rows, 0), ops.gather(self_values, rows, 0), cross_keys,
                        cross_values),)
        logits, new_cache, weights = model.decode(tokens, None, src_mask, nested, position)
        flat = ()
        for layer in new_cache:
            flat += layer
        # squeeze, not [:, -1]: the CPU StridedSlice kernel takes ~30 ms on (512, 1, V)
        log_probs = ops.log_softmax(logits.squeeze(1).astype(ms.float32), axis=-1)
        return log_probs, flat, weights[-1].squeeze(2).mean(axis=1)

    return step


def step_signature(config, dtype=ms.float32) -> dict:
    """The decoding step's inputs with their symbolic dimensions (None): batch B, source length Ls and
    the number of cache slots; `position` is an int32 scalar."""
    heads, d_head = config.n_heads, config.d_model // config.n_heads
    any_cache = ms.Tensor(shape=[None, heads, None, d_head], dtype=dtype)
    return dict(tokens=ms.Tensor(shape=[None, 1], dtype=ms.int32),
                src_mask=ms.Tensor(shape=[None, 1, 1, None], dtype=ms.bool_),
                cache=(any_cache,) * (4 * config.n_decoder_layers),
                position=ms.Tensor(0, ms.int32),  # a scalar
                rows=ms.Tensor(shape=[None], dtype=ms.int32))


def decode_step(model, dtype=ms.float32):
    """`model`'s decoding step as one compiled graph, built on first use for all shapes.

    step(tokens (B, 1), src_mask (B, 1, 1, Ls), cache, position, rows) -> (log-probabilities
    (B, V) float32, new cache, last layer's cross-attention weights (B, Ls), mean over heads).
    `cache` is the flat tuple of `Decoder.init_cache`'s tensors (4 per layer), `position`
    the int32 step number, and `rows` (B,) int32 picks and reorders the self-attention cache
    rows first (beam search follows the surviving beams; greedy passes 0 .. B-1).
    The batch, source length and number of slots are symbolic, so it compiles once (per
    cache `dtype`: float16 for a model converted by mixed precision).
    """
    compiled = _COMPILED_STEPS.setdefault(model, {})
    if dtype not in compiled:
        compiled[dtype] = compat.compiled_or_eager(step_function(model), "the decoding step",
                                                   step_signature(model.config, dtype))
    return compiled[dtype]


class MindSporeSteps(Steps):
    """`Steps` made of two MindSpore functions: `encode(src)`, src (B, Ls) int32 Tensor -> src_mask
    (B, 1, 1, Ls) and the flat tuple of every decoder layer's cross-attention keys and values, each
    (B, H, Ls, D/H); and `step(...)`, as `decode_step`'s compiled function. The state is (src_mask,
    flat cache) as Tensors; the cache gets `SLOT_CHUNK` more slots whenever a step needs them."""

    def encode(self, src):
        raise NotImplementedError

    def step(self, tokens, src_mask, cache, position, rows):
        raise NotImplementedError

    def start(self, src: np.ndarray, slots: int, repeat: int = 1):
        src_mask, crosses = self.encode(ms.Tensor(src.astype(np.int32)))
        if repeat > 1:
            rows = ms.Tensor(np.repeat(np.arange(src.shape[0]), repeat).astype(np.int32))
            src_mask, crosses = ops.gather(src_mask, rows, 0), tuple(ops.gather(t, rows, 0) for t in crosses)
        cache = ()
        for keys, values in zip(crosses[0::2], crosses[1::2]):
            batch, heads, _, d_head = keys.shape
            empty = ops.zeros((batch, heads, slots, d_head), keys.dtype)
            cache += (empty, empty, keys, values)
        return src_mask, cache

    def run(self, tokens: np.ndarray, state, position: int, rows: np.ndarray):
        src_mask, cache = state
        if position >= cache[0].shape[2]:
            cache = _grow(cache, SLOT_CHUNK)
        log_probs, cache, attention = self.step(ms.Tensor(tokens), src_mask, cache, ms.Tensor(position, ms.int32),
                                                ms.Tensor(rows.astype(np.int32)))
        return log_probs.asnumpy(), (src_mask, cache), attention.asnumpy()


def _grow(cache: tuple, extra: int) -> tuple:
    """The flat cache with `extra` more (empty) self-attention slots; the graph's shapes are symbolic."""
    grown = list(cache)
    for i in range(0, len(cache), 4):  # per layer: self keys, self values, cross keys, cross values
        for j in (i, i + 1):
            batch, heads, _, d_head = cache[j].shape
            grown[j] = ops.concat((cache[j], ops.zeros((batch, heads, extra, d_head), cache[j].dtype)), axis=2)
    return tuple(grown)


class ModelSteps(MindSporeSteps):
    """A `Transformer`'s encoder (eager) and compiled decoding step (`decode_step`)."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def encode(self, src):
        return self.model.encode_for_steps(src)

    def step(self, tokens, src_mask, cache, position, rows):
        return decode_step(self.model, cache[0].dtype)(tokens, src_mask, ms.mutable(cache), position, rows)
