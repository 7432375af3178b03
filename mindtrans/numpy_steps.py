"""`NumpySteps`: a trained Transformer's encoder and decoding step in NumPy, for translating on a CPU.

The same arithmetic as `Transformer.encode_for_steps` and the compiled step of
`mindtrans.step_graph`, in float32, on the weights of a model.ckpt that `mindtrans.checkpoint`
reads in pure Python: nothing imports MindSpore and nothing is compiled, so a process that
translates a file starts in a fraction of a second, and each step costs its matrix products
(NumPy's BLAS) rather than a graph's per-call overhead. The greedy and beam searches
(`mindtrans.decode`) run on it unchanged. It is also the NumPy reference the tests hold the
MindSpore model to.
"""
import math

import numpy as np

from mindtrans.search_steps import SLOT_CHUNK, Steps


def sinusoidal_table(max_len: int, d_model: int) -> np.ndarray:
    """(max_len, d_model) float32: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""
    position = np.arange(max_len, dtype=np.float64)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2, dtype=np.float64) / d_model)
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(position * inv_freq)
    table[:, 1::2] = np.cos(position * inv_freq)[:, : d_model // 2]
    return table.astype(np.float32)


def parameter_shapes(config) -> dict:
    """{name: shape} of every weight a `Transformer(config)` has, under the names its checkpoint uses."""
    d, shapes = config.d_model, {"decoder.embed.embedding.embedding_table": (config.tgt_vocab_size, config.d_model)}
    if not config.share_embeddings:
        shapes["encoder.embed.embedding.embedding_table"] = (config.src_vocab_size, d)
    if not config.tie_embeddings:
        shapes.update({"generator.weight": (config.tgt_vocab_size, d), "generator.bias": (config.tgt_vocab_size,)})

    def linear(prefix, n_out, n_in):
        shapes.update({f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)})

    def norm(prefix):
        shapes.update({f"{prefix}.{name}": (d,) for name in _norm_names(config)})

    def attention(prefix, cross):
        if config.fused_qkv and not cross:
            linear(f"{prefix}.qkv_proj", 3 * d, d)
        else:
            linear(f"{prefix}.q_proj", d, d)
            for name, width in (("kv_proj", 2 * d),) if config.fused_qkv else (("k_proj", d), ("v_proj", d)):
                linear(f"{prefix}.{name}", width, d)
        linear(f"{prefix}.out_proj", d, d)

    for side, count, sublayers in (("encoder", config.n_encoder_layers, ("attn", "ffn")),
                                   ("decoder", config.n_decoder_layers, ("self", "cross", "ffn"))):
        for i in range(count):
            prefix = f"{side}.layers.{i}"
            attention(f"{prefix}.self_attn", cross=False)
            if side == "decoder":
                attention(f"{prefix}.cross_attn", cross=True)
            linear(f"{prefix}.ffn.up", config.d_ff, d)
            linear(f"{prefix}.ffn.down", d, config.d_ff)
            for sublayer in sublayers:
                norm(f"{prefix}.{sublayer}_residual.norm")
        if config.norm_first:
            norm(f"{side}.final_norm")
    return shapes


def _norm_names(config) -> tuple:
    return ("gamma", "beta") if config.norm == "layernorm" else ("weight",)


def _erf(x):
    """erf to ~1e-7 (Abramowitz & Stegun 7.1.26), float32 in and out: NumPy has no erf."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (np.sign(x) * (1.0 - poly * np.exp(-x * x))).astype(np.float32)


def _attend(query, key, value, mask=None):
    """softmax(Q K^T / sqrt(d_k)) V: query (B, H, Lq, dk), key/value (B, H, Lk, dk), mask bool broadcastable
    to (B, H, Lq, Lk), True where a key may be seen -> output (B, H, Lq, dk), weights (B, H, Lq, Lk)."""
    scores = (query * np.float32(query.shape[-1] ** -0.5)) @ key.swapaxes(-1, -2)
    if mask is not None:
        scores = np.where(mask, scores, np.float32(-1e9))
    weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ value, weights


class NumpySteps(Steps):
    """A Transformer as the searches' `Steps`, in NumPy: build it from its config and the arrays of
    its model.ckpt (`{name: array}`, checked against `parameter_shapes` by the caller).

    State: (src_mask (B, 1, 1, Ls), per layer (cross keys, cross values), self keys, self values),
    each (B, H, L, D/H); the self-attention slots grow by `SLOT_CHUNK` when a step needs them.
    """

    def __init__(self, config, weights: dict):
        self.config = config
        weights = {name: np.asarray(weights[name], dtype=np.float32) for name in parameter_shapes(config)}
        self.output = "decoder.embed.embedding.embedding_table" if config.tie_embeddings else "generator.weight"
        # x W^T with W^T stored once, contiguous: each product is then one plain GEMM; the embedding
        # tables stay as they are for lookups (a tied one is kept both ways)
        self.transposed, self.weights = {}, {}
        for name, w in weights.items():
            is_table = name.endswith("embedding_table")
            if (w.ndim == 2 and not is_table) or name == self.output:
                self.transposed[name] = np.ascontiguousarray(w.T)
            if w.ndim != 2 or is_table:  # biases, norms, lookup tables
                self.weights[name] = w
        self.source_table = self.weights["decoder.embed.embedding.embedding_table" if config.share_embeddings
                                         else "encoder.embed.embedding.embedding_table"]
        self.positions = sinusoidal_table(config.max_len, config.d_model)
        self.scale = np.float32(math.sqrt(config.d_model))

    def _linear(self, prefix: str, x):
        """x (..., in) -> x W^T + b (..., out), as one 2-D product."""
        weight = self.transposed[f"{prefix}.weight"]
        y = x.reshape(-1, weight.shape[0]) @ weight + self.weights[f"{prefix}.bias"]
        return y.reshape(x.shape[:-1] + (weight.shape[1],))

    def _norm(self, prefix: str, x):
        eps = np.float32(self.config.norm_eps)
        if self.config.norm == "layernorm":
            centred = x - x.mean(axis=-1, keepdims=True)
            normed = centred / np.sqrt((centred * centred).mean(axis=-1, keepdims=True) + eps)
            return normed * self.weights[f"{prefix}.gamma"] + self.weights[f"{prefix}.beta"]
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * self.weights[f"{prefix}.weight"]

    def _sublayer(self, prefix: str, x, sublayer):
        """Residual around `sublayer`: x + f(norm(x)) (Pre-LN) or norm(x + f(x)) (Post-LN)."""
        if self.config.norm_first:
            return x + sublayer(self._norm(f"{prefix}.norm", x))
        return self._norm(f"{prefix}.norm", x + sublayer(x))

    def _ffn(self, prefix: str, x):
        hidden = self._linear(f"{prefix}.up", x)
        if self.config.activation == "relu":
            hidden = np.maximum(hidden, np.float32(0))
        else:
            hidden = np.float32(0.5) * hidden * (np.float32(1) + _erf(hidden * np.float32(2 ** -0.5)))
        return self._linear(f"{prefix}.down", hidden)

    def _split(self, x):
        """(B, L, D) -> (B, H, L, D/H)."""
        batch, length, _ = x.shape
        return x.reshape(batch, length, self.config.n_heads, -1).transpose(0, 2, 1, 3)

    def _merge(self, x):
        """(B, H, L, D/H) -> (B, L, D)."""
        batch, _, length, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(batch, length, self.config.d_model)

    def _queries_keys_values(self, prefix: str, x) -> tuple:
        if self.config.fused_qkv:
            return tuple(self._split(part) for part in np.split(self._linear(f"{prefix}.qkv_proj", x), 3, axis=-1))
        return tuple(self._split(self._linear(f"{prefix}.{name}", x)) for name in ("q_proj", "k_proj", "v_proj"))

    def _memory_keys_values(self, prefix: str, memory) -> tuple:
        if self.config.fused_qkv:
            return tuple(self._split(part) for part in np.split(self._linear(f"{prefix}.kv_proj", memory), 2, axis=-1))
        return tuple(self._split(self._linear(f"{prefix}.{name}", memory)) for name in ("k_proj", "v_proj"))

    def _encoder_layer(self, prefix: str, x, mask):
        def self_attention(h):
            out, _ = _attend(*self._queries_keys_values(f"{prefix}.self_attn", h), mask)
            return self._linear(f"{prefix}.self_attn.out_proj", self._merge(out))

        x = self._sublayer(f"{prefix}.attn_residual", x, self_attention)
        return self._sublayer(f"{prefix}.ffn_residual", x, lambda h: self._ffn(f"{prefix}.ffn", h))

    def _decoder_layer(self, prefix: str, x, mask, cross: tuple, cache: tuple, position: int):
        """One new token x (B, 1, D): its key and value go into slot `position` of `cache` (in place);
        -> x (B, 1, D) and the cross-attention weights (B, H, 1, Ls)."""
        keys, values = cache
        cross_weights = []

        def self_attention(h):
            query, key, value = self._queries_keys_values(f"{prefix}.self_attn", h)
            keys[:, :, position], values[:, :, position] = key[:, :, 0], value[:, :, 0]
            out, _ = _attend(query, keys[:, :, :position + 1], values[:, :, :position + 1])
            return self._linear(f"{prefix}.self_attn.out_proj", self._merge(out))

        def cross_attention(h):
            out, weights = _attend(self._split(self._linear(f"{prefix}.cross_attn.q_proj", h)), *cross, mask)
            cross_weights.append(weights)
            return self._linear(f"{prefix}.cross_attn.out_proj", self._merge(out))

        x = self._sublayer(f"{prefix}.self_residual", x, self_attention)
        x = self._sublayer(f"{prefix}.cross_residual", x, cross_attention)
        return self._sublayer(f"{prefix}.ffn_residual", x, lambda h: self._ffn(f"{prefix}.ffn", h)), cross_weights[0]

    def start(self, src: np.ndarray, slots: int, repeat: int = 1):
        """See `Steps.start`: the encoder runs once per sentence, its rows are then repeated."""
        config, src = self.config, src.astype(np.int64)
        mask = (src != config.pad_id)[:, None, None, :]
        x = self.source_table[src] * self.scale + self.positions[:src.shape[1]]
        for i in range(config.n_encoder_layers):
            x = self._encoder_layer(f"encoder.layers.{i}", x, mask)
        if config.norm_first:
            x = self._norm("encoder.final_norm", x)
        crosses = [self._memory_keys_values(f"decoder.layers.{i}.cross_attn", x) for i in range(config.n_decoder_layers)]
        if repeat > 1:
            rows = np.repeat(np.arange(src.shape[0]), repeat)
            mask, crosses = mask[rows], [(keys[rows], values[rows]) for keys, values in crosses]
        shape = (mask.shape[0], config.n_heads, slots, config.d_head)
        empty = [np.zeros(shape, np.float32) for _ in range(2 * config.n_decoder_layers)]
        return mask, crosses, empty[0::2], empty[1::2]

    def run(self, tokens: np.ndarray, state, position: int, rows: np.ndarray):
        """See `Steps.run`."""
        mask, crosses, self_keys, self_values = state
        if not np.array_equal(rows, np.arange(len(rows))):
            self_keys, self_values = [k[rows] for k in self_keys], [v[rows] for v in self_values]
        if position >= self_keys[0].shape[2]:
            grow = [(0, 0), (0, 0), (0, SLOT_CHUNK), (0, 0)]
            self_keys, self_values = [np.pad(k, grow) for k in self_keys], [np.pad(v, grow) for v in self_values]
        x = self.weights["decoder.embed.embedding.embedding_table"][tokens] * self.scale + self.positions[position]
        for i in range(self.config.n_decoder_layers):
            x, weights = self._decoder_layer(f"decoder.layers.{i}", x, mask, crosses[i],
                                             (self_keys[i], self_values[i]), position)
        if self.config.norm_first:
            x = self._norm("decoder.final_norm", x)
        logits = x[:, 0] @ self.transposed[self.output]
        if not self.config.tie_embeddings:
            logits += self.weights["generator.bias"]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return log_probs, (mask, crosses, self_keys, self_values), weights[:, :, 0].mean(axis=1)
