"""`Steps`: a translation model as the searches of `mindtrans.decode` see it, NumPy in and out.

Its own module so that both implementations build on it without importing each other: the
MindSpore one (`mindtrans.step_graph`) and the NumPy one (`mindtrans.numpy_steps`, which must
not import MindSpore).
"""
import numpy as np

SLOT_CHUNK = 16  # the self-attention cache starts with room for the source length + 16 tokens, and grows by 16


class Steps:
    """A translation model as the searches see it, NumPy in and out.

    `config`: its `TransformerConfig`. `start(src, slots, repeat)` encodes src (B, Ls) int32 once
    and returns the decoding state of B * repeat rows (beam b of sentence i is row i * repeat + b)
    with room for `slots` target tokens. `run(tokens, state, position, rows)`: tokens (B, 1) int32
    at step `position`, after `rows` (B,) int32 picked and reordered the state's rows (beam search
    follows the surviving beams; greedy passes 0 .. B-1) -> (log-probabilities (B, V) float32, the
    new state, the last layer's cross-attention (B, Ls), mean over heads); the state passed in
    is consumed (an implementation may update it in place). Implemented with
    MindSpore by `mindtrans.step_graph` (a `Transformer`, or an export's graphs) and with NumPy by
    `mindtrans.numpy_steps` (CPU translation without MindSpore).
    """

    config = None

    def start(self, src: np.ndarray, slots: int, repeat: int = 1):
        raise NotImplementedError

    def run(self, tokens: np.ndarray, state, position: int, rows: np.ndarray):
        raise NotImplementedError
