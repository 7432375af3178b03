"""Decoding: batched greedy and beam search with the decoder's key/value cache.

Both encode the source once, then run the decoder on one new token per step: the
cache holds every layer's keys and values of the earlier positions (and the
projected encoder memory), so no step recomputes the prefix. The step is one
compiled graph (`decode_step`) over a cache with a fixed number of slots, so that
a step costs its arithmetic rather than a hundred eager op dispatches. The searches
see a model only through `Steps` (encode, step): a `Transformer`'s, or the MindIR
graphs of an exported one (`mindtrans.exported`), which run without the model code.
"""
import warnings
import weakref

import mindspore as ms
import numpy as np
from mindspore import ops

from mindtrans import compat
from mindtrans.data import BOS, EOS, PAD


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


class Steps:
    """A translation model as the searches see it; a trained `Transformer` is one through `ModelSteps`,
    an exported one (`mindtrans.exported`) through its graphs.

    `config`: its `TransformerConfig`. `encode(src)`: src (B, Ls) int32 Tensor -> src_mask
    (B, 1, 1, Ls) and the flat tuple of every decoder layer's cross-attention keys and values,
    each (B, H, Ls, D/H). `step(...)`: as `decode_step`'s compiled function.
    """

    config = None


class ModelSteps(Steps):
    """A `Transformer`'s encoder (eager) and compiled decoding step (`decode_step`)."""

    def __init__(self, model):
        self.model, self.config = model, model.config

    def encode(self, src):
        return self.model.encode_for_steps(src)

    def step(self, tokens, src_mask, cache, position, rows):
        return decode_step(self.model, cache[0].dtype)(tokens, src_mask, ms.mutable(cache), position, rows)


def as_steps(model) -> Steps:
    """`model` itself if it is `Steps`, else the `ModelSteps` of a `Transformer`."""
    return model if isinstance(model, Steps) else ModelSteps(model)


def _start(steps: Steps, src: np.ndarray, slots: int, repeat: int = 1):
    """Encode src (B, Ls) once: src_mask and a flat cache with `slots` empty self-attention slots,
    both for B * repeat rows (beam b of sentence i is row i * repeat + b)."""
    src_mask, crosses = steps.encode(ms.Tensor(src.astype(np.int32)))
    if repeat > 1:
        rows = ms.Tensor(np.repeat(np.arange(src.shape[0]), repeat).astype(np.int32))
        src_mask, crosses = ops.gather(src_mask, rows, 0), tuple(ops.gather(t, rows, 0) for t in crosses)
    cache = ()
    for keys, values in zip(crosses[0::2], crosses[1::2]):
        batch, heads, _, d_head = keys.shape
        empty = ops.zeros((batch, heads, slots, d_head), keys.dtype)
        cache += (empty, empty, keys, values)
    return src_mask, cache


DEFAULT_BEAM, DEFAULT_ALPHA = 4, 0.6  # the beam size and length-penalty exponent everything defaults to
SLOT_CHUNK = 16  # the self-attention cache starts with room for the source length + 16 tokens, and grows by 16


def _initial_slots(src: np.ndarray, steps: int) -> int:
    """Slots to allocate first: most translations are about as long as their source."""
    return min(steps, src.shape[1] + SLOT_CHUNK)


def _grow(cache: tuple, extra: int) -> tuple:
    """The flat cache with `extra` more (empty) self-attention slots; the graph's shapes are symbolic."""
    grown = list(cache)
    for i in range(0, len(cache), 4):  # per layer: self keys, self values, cross keys, cross values
        for j in (i, i + 1):
            batch, heads, _, d_head = cache[j].shape
            grown[j] = ops.concat((cache[j], ops.zeros((batch, heads, extra, d_head), cache[j].dtype)), axis=2)
    return tuple(grown)


def _run_step(steps: Steps, tokens: np.ndarray, src_mask, cache, position: int, rows: np.ndarray):
    """One compiled step with NumPy in and out: (log_probs (B, V), cache, attention (B, Ls));
    the cache gets more slots first when `position` is past its end."""
    slots = cache[0].shape[2]
    if position >= slots:
        cache = _grow(cache, SLOT_CHUNK)
    log_probs, cache, attention = steps.step(ms.Tensor(tokens), src_mask, cache, ms.Tensor(position, ms.int32),
                                             ms.Tensor(rows.astype(np.int32)))
    return log_probs.asnumpy(), cache, attention.asnumpy()


def default_max_new_tokens(src_len: int, limit: int) -> int:
    """Room for the output: the source length plus 50 tokens, within the model's max_len."""
    return max(1, min(src_len + 50, limit - 1))


def _budgets(src: np.ndarray, max_new_tokens, limit: int) -> np.ndarray:
    """Output tokens allowed per sentence, from its own unpadded length: not from the batch it is in."""
    if max_new_tokens:
        return np.full(src.shape[0], max_new_tokens)
    return np.array([default_max_new_tokens(int(n), limit) for n in (src != PAD).sum(axis=1)])


def greedy_decode(model, src: np.ndarray, max_new_tokens: int = None, return_attention: bool = False):
    """Most probable next token at each step, for a batch of padded sources src (B, Ls);
    `model` is a `Transformer` or `Steps` (e.g. an exported model).

    Returns a list of B token-id lists (without <bos>/<eos>) and, with
    `return_attention`, a list of (T_i, Ls) cross-attention arrays (last layer, mean over
    heads; one row per output token and one for <eos>).
    """
    model = as_steps(model)
    limits = _budgets(src, max_new_tokens, model.config.max_len)
    steps = int(limits.max())
    batch = src.shape[0]
    src_mask, cache = _start(model, src, _initial_slots(src, steps))
    rows = np.arange(batch)
    tokens = np.full((batch, 1), BOS, dtype=np.int32)
    outputs = np.full((batch, steps), PAD, dtype=np.int32)
    attention = np.zeros((batch, steps, src.shape[1]), dtype=np.float32)
    lengths = limits.copy()
    finished = np.zeros(batch, dtype=bool)
    for t in range(steps):
        log_probs, cache, weights = _run_step(model, tokens, src_mask, cache, t, rows)
        next_tokens = log_probs.argmax(axis=-1).astype(np.int32)
        next_tokens[finished] = PAD
        outputs[:, t] = next_tokens
        attention[:, t] = weights
        ended = ~finished & (next_tokens == EOS)
        lengths[ended] = t
        finished |= ended | (t + 1 >= limits)
        if finished.all():
            break
        tokens = next_tokens[:, None]
    hyps = [outputs[i, :lengths[i]].tolist() for i in range(batch)]
    if return_attention:
        return hyps, [attention[i, :min(lengths[i] + 1, limits[i])] for i in range(batch)]  # <eos> step included
    return hyps


def _best(scores: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n highest scores of each row, best first; ties go to the lower index."""
    if n >= scores.shape[1]:
        return np.argsort(-scores, axis=-1, kind="stable")
    top = np.argpartition(-scores, n - 1, axis=-1)[:, :n]
    order = np.lexsort((top, -np.take_along_axis(scores, top, axis=-1)), axis=-1)
    return np.take_along_axis(top, order, axis=-1)


def length_penalty(length, alpha: float):
    """GNMT length normalisation ((5 + length) / 6) ** alpha (Wu et al., 2016); alpha 0 disables it."""
    return ((5.0 + length) / 6.0) ** alpha


def beam_search(model, src: np.ndarray, beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA,
                max_new_tokens: int = None,
                return_attention: bool = False):
    """Keep the `beam_size` best partial translations per sentence; return the best finished one.

    Scores are summed log-probabilities. A sentence is done once `beam_size` hypotheses
    have ended with <eos> and the best of them (ranked by score / `length_penalty`) beats
    every live one at its current length. With beam size 1 this is exactly greedy
    decoding. Same arguments and return values as `greedy_decode`.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    batch, src_len = src.shape
    k, model = beam_size, as_steps(model)
    limits = _budgets(src, max_new_tokens, model.config.max_len)
    steps = int(limits.max())
    # Beam b of sentence i is row i*k + b.
    src_mask, cache = _start(model, src, _initial_slots(src, steps), repeat=k)
    rows_kept = np.arange(batch * k)
    scores = np.full((batch, k), -np.inf)
    scores[:, 0] = 0.0  # every beam starts as the same <bos>: keep one alive at first
    history = np.zeros((batch, k, 0), dtype=np.int32)
    attn_history = np.zeros((batch, k, 0, src_len), dtype=np.float32)
    finished = [[] for _ in range(batch)]  # (normalised score, tokens, attention) per ended hypothesis
    done = np.zeros(batch, dtype=bool)
    capped = [[] for _ in range(batch)]  # the live hypotheses of a sentence that ran out of budget
    tokens = np.full((batch * k, 1), BOS, dtype=np.int32)
    for t in range(steps):
        log_probs, cache, weights = _run_step(model, tokens, src_mask, cache, t, rows_kept)
        vocab = log_probs.shape[-1]
        candidates = (scores[:, :, None] + log_probs.reshape(batch, k, vocab)).reshape(batch, k * vocab)
        top = _best(candidates, 2 * k)  # 2k: k stay alive even if k end
        scores = np.full((batch, k), -np.inf)
        parents = np.zeros((batch, k), dtype=np.int64)
        next_tokens = np.full((batch, k), PAD, dtype=np.int32)
        for i in np.flatnonzero(~done):
            ended = _sort_candidates(candidates[i], top[i], vocab, (scores[i], parents[i], next_tokens[i]))
            for beam, score in ended:
                attention = np.concatenate([attn_history[i, beam], weights[i * k + beam][None]])
                finished[i].append((score / length_penalty(t + 1, alpha), history[i, beam].tolist(), attention))
            best_live = scores[i].max() / length_penalty(t + 1, alpha)  # the live beams, normalised alike
            if len(finished[i]) >= k and max(f[0] for f in finished[i]) >= best_live:
                done[i] = True
                scores[i] = -np.inf  # done: no live beams left
        if not np.isfinite(scores).any():
            break
        rows_kept = (np.arange(batch)[:, None] * k + parents).reshape(-1)
        history = np.concatenate([history[np.arange(batch)[:, None], parents], next_tokens[:, :, None]], axis=2)
        attn_history = np.concatenate([attn_history[np.arange(batch)[:, None], parents],
                                       weights[rows_kept].reshape(batch, k, 1, src_len)], axis=2)
        tokens = next_tokens.reshape(-1, 1)
        for i in np.flatnonzero(~done & (t + 1 >= limits)):  # out of budget: its live beams are final
            capped[i] = [(scores[i, b] / length_penalty(t + 1, alpha), history[i, b].tolist(), attn_history[i, b])
                         for b in range(k) if np.isfinite(scores[i, b])]
            done[i], scores[i] = True, -np.inf
    best = [max(finished[i] or capped[i], key=lambda hyp: hyp[0]) for i in range(batch)]
    hyps, attns = [tokens for _, tokens, _ in best], [attention for _, _, attention in best]
    return (hyps, attns) if return_attention else hyps


def _sort_candidates(candidates, top, vocab: int, live) -> list:
    """One sentence's best candidates, best first: those that continue fill `live` (scores,
    parent beams, next tokens: arrays of k, filled in place) until k are alive; those that
    end with <eos> are returned as (parent beam, score)."""
    scores, parents, next_tokens = live
    ended, alive = [], 0
    for flat in top:
        if alive == len(scores) or not np.isfinite(candidates[flat]):
            break
        beam, token = divmod(int(flat), vocab)
        if token == EOS:
            ended.append((beam, candidates[flat]))
        else:
            scores[alive], parents[alive], next_tokens[alive] = candidates[flat], beam, token
            alive += 1
    return ended


class Translator:
    """Sentences in, sentences out: encode, batch by length, decode, decode the text, restore order.

    The vocabularies are word-level (`mindtrans.data.Vocab`: lowercased words) or subword
    (`mindtrans.subword.SubwordVocab`: cased text); both turn text into ids and back.

    `model` is a `Transformer` or `Steps` (an exported model: `mindtrans.exported`).
    A blank sentence translates to an empty one (nothing is decoded for it).
    """

    def __init__(self, model, src_vocab, tgt_vocab, batch_size: int = 128, max_new_tokens: int = None):
        _check_count("batch_size", batch_size)
        if max_new_tokens is not None:
            _check_count("max_new_tokens", max_new_tokens)
        if not isinstance(model, Steps):
            model.set_train(False)
        self.model, self.steps, self.src_vocab, self.tgt_vocab = model, as_steps(model), src_vocab, tgt_vocab
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_src_len = self.steps.config.max_len

    def encode(self, sentence: str) -> list:
        """Source ids with <bos>/<eos>; input longer than the model's max_len is cut, with a warning."""
        ids = [BOS, *self.src_vocab.encode_text(sentence), EOS]
        if len(ids) > self.max_src_len:
            warnings.warn(f"input of {len(ids)} tokens truncated to the model's max_len={self.max_src_len}: "
                          f"{sentence[:40]!r}...", stacklevel=3)
            ids = ids[:self.max_src_len - 1] + [EOS]
        return ids

    def check_search(self, beam_size: int, alpha: float, sentences: int) -> None:
        """Refuse a beam size, length penalty or beam x batch that cannot work, saying why."""
        _check_count("beam_size", beam_size)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < float("inf"):
            raise ValueError(f"alpha (the length-penalty exponent) must be a finite number >= 0, got {alpha!r}")
        rows = beam_size * min(self.batch_size, max(sentences, 1))
        need, free = rows * _bytes_per_row(self.steps.config), _available_memory()
        if free and need > free:
            raise ValueError(f"beam {beam_size} x batch {rows // beam_size} = {rows} rows could need "
                             f"{need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free: "
                             f"lower the batch size (--batch-size) or the beam (--beam)")

    def translate_ids(self, sentences, beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA,
                      return_attention: bool = False):
        """Target id lists (and attention) for `sentences`, in input order."""
        self.check_search(beam_size, alpha, len(sentences))
        hyps, attns = [[] for _ in sentences], [np.zeros((0, 0), np.float32) for _ in sentences]
        kept = [i for i, sentence in enumerate(sentences) if sentence.strip()]
        encoded = {i: self.encode(sentences[i]) for i in kept}
        order = sorted(kept, key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = max(len(encoded[i]) for i in chunk)
            src = np.full((len(chunk), width), PAD, dtype=np.int32)
            for row, i in enumerate(chunk):
                src[row, :len(encoded[i])] = encoded[i]
            if beam_size == 1:
                out = greedy_decode(self.steps, src, self.max_new_tokens, return_attention=True)
            else:
                out = beam_search(self.steps, src, beam_size, alpha, self.max_new_tokens, return_attention=True)
            for row, i in enumerate(chunk):
                hyps[i] = out[0][row]
                attns[i] = out[1][row][:, :len(encoded[i])]
        return (hyps, attns) if return_attention else hyps

    def translate(self, sentences, beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA) -> list:
        """The translations of `sentences` (a list of strings) as text, in input order."""
        if isinstance(sentences, str):
            raise TypeError("translate() takes a list of sentences; wrap a single one in a list")
        return [self.tgt_vocab.decode_text(ids) for ids in self.translate_ids(sentences, beam_size, alpha)]


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be at least 1 (a whole number), got {value!r}")


def _bytes_per_row(config) -> int:
    """Host memory one decoding row may take at most: its key/value caches over max_len positions
    in every decoder layer (self and cross attention), and a few vocabulary-sized float32 rows."""
    caches = 4 * config.n_decoder_layers * config.max_len * config.d_model
    return 4 * (caches + 4 * config.tgt_vocab_size)


def _available_memory() -> int:
    """Bytes of memory free for a new allocation (Linux's MemAvailable); 0 where unknown."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0
