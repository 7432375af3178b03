"""The decoder: masked self-attention, cross-attention to the encoder, a feed-forward network."""
from mindspore import nn, ops

from mindtrans.attention import MultiHeadAttention, causal_mask
from mindtrans.config import TransformerConfig
from mindtrans.layers import FeedForward, PositionalEncoding, Residual, TokenEmbedding, make_norm


class DecoderLayer(nn.Cell):
    """x -> x + MaskedSelfAttention(x) -> x + CrossAttention(x, memory) -> x + FFN(x)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout, fused=c.fused_qkv)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout, cross=True, fused=c.fused_qkv)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.activation)
        self.self_residual = Residual(c.d_model, c.dropout, c.norm, c.norm_first, c.norm_eps)
        self.cross_residual = Residual(c.d_model, c.dropout, c.norm, c.norm_first, c.norm_eps)
        self.ffn_residual = Residual(c.d_model, c.dropout, c.norm, c.norm_first, c.norm_eps)

    def construct(self, x, memory, src_mask, tgt_mask, cache=None, position=None):
        """x (B, Lt, D), memory (B, Ls, D), src_mask (B, 1, 1, Ls), tgt_mask (1, 1, Lt, Lc+Lt).

        `cache` is None or (self_keys, self_values, cross_keys, cross_values) from earlier
        steps; with `position`, a fixed-slot cache (see `MultiHeadAttention`). Returns
        x (B, Lt, D), the updated cache, cross-attention weights (B, H, Lt, Ls).
        """
        self_cache = None if cache is None else cache[:2]
        cross_cache = None if cache is None else cache[2:]
        out, _, self_kv = self.self_attn(self.self_residual.sublayer_input(x), mask=tgt_mask, cache=self_cache,
                                        position=position)
        x = self.self_residual.add(x, out)
        out, cross_weights, cross_kv = self.cross_attn(self.cross_residual.sublayer_input(x), memory,
                                                       mask=src_mask, cache=cross_cache)
        x = self.cross_residual.add(x, out)
        x = self.ffn_residual.add(x, self.ffn(self.ffn_residual.sublayer_input(x)))
        return x, self_kv + cross_kv, cross_weights


class Decoder(nn.Cell):
    """Target ids -> embeddings + positions -> N decoder layers (-> final norm for Pre-LN)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embed = TokenEmbedding(config.tgt_vocab_size, config.d_model)
        self.positions = PositionalEncoding(config.d_model, config.max_len, config.dropout)
        self.layers = nn.CellList([DecoderLayer(config) for _ in range(config.n_decoder_layers)])
        self.final_norm = make_norm(config.norm, config.d_model, config.norm_eps) if config.norm_first else None

    def memory_caches(self, memory):
        """memory (B, Ls, D) -> every layer's cross-attention keys and values, each (B, H, Ls, D/H), as
        one flat tuple (layer 0's keys, its values, layer 1's keys, ...), projected once per source."""
        caches = ()
        for layer in self.layers:
            caches += layer.cross_attn.memory_cache(memory)
        return caches

    def init_cache(self, memory, slots: int):
        """A fixed-slot cache for `construct(..., position=...)`: per layer (self keys, self values),
        zeros (B, H, slots, D/H), and (cross keys, cross values) projected from memory (B, Ls, D) once."""
        crosses, cache = self.memory_caches(memory), ()
        for i, layer in enumerate(self.layers):
            attention = layer.self_attn
            empty = ops.zeros((memory.shape[0], attention.n_heads, slots, attention.d_head), memory.dtype)
            cache += ((empty, empty) + crosses[2 * i:2 * i + 2],)
        return cache

    def construct(self, tgt, memory, src_mask=None, cache=None, position=None, tgt_mask=None, positions=None,
                  hidden_only=False):
        """tgt (B, Lt) ids, memory (B, Ls, D), src_mask broadcastable to (B, 1, Lt, Ls).

        Without a cache, tgt is the whole (shifted) target and a causal mask hides the
        future. With the cache returned by a previous call, tgt holds only the new
        positions. With a cache from `init_cache` and `position` (int32 scalar tensor),
        tgt (B, 1) is the token at that position and every shape stays fixed from step to
        step (memory may be None: the cache holds it). For rows that pack several
        sentences, pass their self-attention mask `tgt_mask` (B, 1, Lt, Lt) and `positions`
        (B, Lt), each token's position in its sentence. Returns hidden states (B, Lt, D),
        the new per-layer cache and the per-layer cross-attention weights; with `hidden_only`
        (training) the hidden states alone: outputs a gradient graph does not use make
        MindSpore warn "Some side effect nodes were eliminated by mistake" (it only drops them).
        """
        if positions is not None:
            x = self.positions.at(self.embed(tgt), positions)
        elif position is not None:
            slots = cache[0][0].shape[2]
            tgt_mask = (ops.arange(slots) <= position).reshape(1, 1, 1, slots)  # the filled slots
            x = self.positions.at(self.embed(tgt), position)
        else:
            past = 0 if cache is None else cache[0][0].shape[2]
            length = tgt.shape[1]
            tgt_mask = causal_mask(length, past + length)
            x = self.positions(self.embed(tgt), past)
        new_cache, weights = (), ()
        for i, layer in enumerate(self.layers):
            x, layer_cache, w = layer(x, memory, src_mask, tgt_mask, None if cache is None else cache[i], position)
            new_cache += (layer_cache,)
            weights += (w,)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if hidden_only:
            return x
        return x, new_cache, weights
