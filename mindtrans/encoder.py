"""The encoder: self-attention and a feed-forward network, N times."""
from mindspore import nn

from mindtrans.attention import MultiHeadAttention
from mindtrans.config import TransformerConfig
from mindtrans.layers import FeedForward, PositionalEncoding, Residual, TokenEmbedding, make_norm


class EncoderLayer(nn.Cell):
    """x -> x + SelfAttention(x) -> x + FFN(x), each with dropout and normalisation."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = config
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.attention_dropout, fused=c.fused_qkv)
        self.ffn = FeedForward(c.d_model, c.d_ff, c.activation)
        self.attn_residual = Residual(c.d_model, c.dropout, c.norm, c.norm_first, c.norm_eps)
        self.ffn_residual = Residual(c.d_model, c.dropout, c.norm, c.norm_first, c.norm_eps)

    def construct(self, x, mask=None):
        """x (B, L, D), mask broadcastable to (B, 1, L, L) -> (B, L, D), self-attention weights (B, H, L, L)."""
        out, weights, _ = self.self_attn(self.attn_residual.sublayer_input(x), mask=mask)
        x = self.attn_residual.add(x, out)
        x = self.ffn_residual.add(x, self.ffn(self.ffn_residual.sublayer_input(x)))
        return x, weights


class Encoder(nn.Cell):
    """Token ids -> embeddings + positions -> N encoder layers (-> final norm for Pre-LN)."""

    def __init__(self, config: TransformerConfig, embed=None):
        """`embed`: a TokenEmbedding to share (the decoder's, with one joint vocabulary)."""
        super().__init__()
        self.embed = embed if embed is not None else TokenEmbedding(config.src_vocab_size, config.d_model)
        self.positions = PositionalEncoding(config.d_model, config.max_len, config.dropout)
        self.layers = nn.CellList([EncoderLayer(config) for _ in range(config.n_encoder_layers)])
        self.final_norm = make_norm(config.norm, config.d_model, config.norm_eps) if config.norm_first else None

    def construct(self, src, src_mask=None, positions=None):
        """src (B, L) ids, src_mask broadcastable to (B, 1, L, L) -> memory (B, L, D), per-layer weights.

        `positions` (B, L) int32: each token's position in its sentence, for rows that pack
        several sentences (the default is 0 .. L-1).
        """
        x = self.positions(self.embed(src)) if positions is None else self.positions.at(self.embed(src), positions)
        weights = ()
        for layer in self.layers:
            x, w = layer(x, src_mask)
            weights += (w,)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, weights
