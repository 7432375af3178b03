"""Decoding: batched greedy and beam search with the decoder's key/value cache.

Both encode the source once, then run the decoder on one new token per step: the
cache holds every layer's keys and values of the earlier positions (and the
projected encoder memory), so no step recomputes the prefix. The searches are
NumPy and see a model only through `Steps` (start, run): a `Transformer`'s compiled
step (`mindtrans.step_graph`), the MindIR graphs of an exported one
(`mindtrans.exported`), or the same arithmetic in NumPy (`mindtrans.numpy_steps`).
"""
import warnings

import numpy as np

from mindtrans.data import BOS, EOS, PAD
from mindtrans.search_steps import SLOT_CHUNK, Steps


def as_steps(model) -> Steps:
    """`model` itself if it is `Steps`, else the `ModelSteps` of a `Transformer`."""
    if isinstance(model, Steps):
        return model
    from mindtrans.step_graph import ModelSteps

    return ModelSteps(model)


DEFAULT_BEAM, DEFAULT_ALPHA = 4, 0.6  # the beam size and length-penalty exponent everything defaults to


def _initial_slots(src: np.ndarray, steps: int) -> int:
    """Slots to allocate first: most translations are about as long as their source."""
    return min(steps, src.shape[1] + SLOT_CHUNK)


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
    state = model.start(src, _initial_slots(src, steps))
    rows = np.arange(batch)
    tokens = np.full((batch, 1), BOS, dtype=np.int32)
    outputs = np.full((batch, steps), PAD, dtype=np.int32)
    attention = np.zeros((batch, steps, src.shape[1]), dtype=np.float32)
    lengths = limits.copy()
    finished = np.zeros(batch, dtype=bool)
    for t in range(steps):
        log_probs, state, weights = model.run(tokens, state, t, rows)
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
    state = model.start(src, _initial_slots(src, steps), repeat=k)
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
        log_probs, state, weights = model.run(tokens, state, t, rows_kept)
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

    `model` is a `Transformer` or `Steps` (an exported model, `mindtrans.exported`, or a bundle loaded
    with `engine="numpy"`, `mindtrans.numpy_steps`).
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
        return self._encode_all([sentence])[0]

    def _encode_all(self, sentences) -> list:
        """`encode` of each sentence, with one warning for all those that were cut."""
        encoded, cut = [], []
        for sentence in sentences:
            ids = [BOS, *self.src_vocab.encode_text(sentence), EOS]
            if len(ids) > self.max_src_len:
                cut.append(sentence)
                ids = ids[:self.max_src_len - 1] + [EOS]
            encoded.append(ids)
        if cut:
            warnings.warn(f"{len(cut)} input(s) truncated to the model's max_len={self.max_src_len} tokens, the "
                          f"first {cut[0][:40]!r}...: split long sentences", stacklevel=3)
        return encoded

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
        encoded = dict(zip(kept, self._encode_all([sentences[i] for i in kept])))
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
