"""`Transformer`: encoder, decoder and the output projection to target-vocabulary logits."""
from mindspore import nn, ops

from mindtrans.attention import padding_mask
from mindtrans.config import TransformerConfig
from mindtrans.decoder import Decoder
from mindtrans.encoder import Encoder
from mindtrans.layers import Linear


class Transformer(nn.Cell):
    """Encoder-decoder Transformer (Vaswani et al., 2017) for sequence-to-sequence tasks.

    >>> model = Transformer(TransformerConfig.preset("tiny"))
    >>> logits = model(src, tgt_in)        # (B, Ls) and (B, Lt) ids -> (B, Lt, V_tgt)
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        # Tied: the output projection reuses the target embedding table (Press & Wolf, 2017).
        self.generator = None if config.tie_embeddings else Linear(config.d_model, config.tgt_vocab_size)

    def encode(self, src):
        """src (B, Ls) ids -> memory (B, Ls, D), src_mask (B, 1, 1, Ls), per-layer self-attention weights."""
        src_mask = padding_mask(src, self.config.pad_id)
        memory, weights = self.encoder(src, src_mask)
        return memory, src_mask, weights

    def project(self, hidden):
        """Decoder states (B, L, D) -> logits (B, L, V_tgt)."""
        if self.generator is None:
            return ops.matmul(hidden, self.decoder.embed.weight.T)
        return self.generator(hidden)

    def decode(self, tgt, memory, src_mask, cache=None, position=None):
        """Logits (B, Lt, V) for target ids tgt (B, Lt), the new cache, cross-attention weights.

        See `Decoder.construct` for the cache: pass the one returned by the previous call
        and only the new tokens to decode one step at a time (or a fixed-slot cache from
        `Decoder.init_cache` and the step's `position`).
        """
        hidden, cache, weights = self.decoder(tgt, memory, src_mask, cache, position)
        return self.project(hidden), cache, weights

    def construct(self, src, tgt_in):
        """Teacher forcing: src (B, Ls), tgt_in (B, Lt) = <bos> y_1 .. y_{Lt-1} -> logits (B, Lt, V)."""
        memory, src_mask, _ = self.encode(src)
        logits, _, _ = self.decode(tgt_in, memory, src_mask)
        return logits
