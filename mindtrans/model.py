"""`Transformer`: encoder, decoder and the output projection to target-vocabulary logits."""
from mindspore import nn, ops

from mindtrans.attention import causal_mask, padding_mask, segment_mask
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
        self.pad_id = int(config.pad_id)  # a plain number: graph code never reads dataclass fields
        decoder = Decoder(config)
        # Shared: the encoder looks its tokens up in the decoder's table (one joint vocabulary).
        self.encoder = Encoder(config, embed=decoder.embed if config.share_embeddings else None)
        self.decoder = decoder
        # Tied: the output projection reuses the target embedding table (Press & Wolf, 2017).
        self.generator = None if config.tie_embeddings else Linear(config.d_model, config.tgt_vocab_size)
        self.tgt_vocab_size, self.d_model = int(config.tgt_vocab_size), int(config.d_model)
        self.matmul_t = ops.MatMul(transpose_b=True)  # 2-D, as in Linear: ops.matmul's generic path is slow

    def encode(self, src):
        """src (B, Ls) ids -> memory (B, Ls, D), src_mask (B, 1, 1, Ls), per-layer self-attention weights."""
        src_mask = padding_mask(src, self.pad_id)
        memory, weights = self.encoder(src, src_mask)
        return memory, src_mask, weights

    def encode_for_steps(self, src):
        """src (B, Ls) int32 ids -> src_mask (B, 1, 1, Ls) and every decoder layer's cross-attention keys
        and values (`Decoder.memory_caches`): all that step-by-step decoding needs from the source.

        The encoder's positions are gathered, not sliced, so the graph has no branch on the
        length (MindIR keeps Ls symbolic; the caller keeps Ls <= max_len). Same values as `encode`.
        """
        src_mask = padding_mask(src, self.pad_id)
        positions = ops.zeros_like(src) + ops.arange(src.shape[1]).astype(src.dtype)
        memory, _ = self.encoder(src, src_mask, positions)
        return src_mask, self.decoder.memory_caches(memory)

    def project(self, hidden):
        """Decoder states (B, L, D) -> logits (B, L, V_tgt)."""
        if self.generator is None:
            logits = self.matmul_t(hidden.reshape(-1, self.d_model), self.decoder.embed.weight)
            return logits.reshape(hidden.shape[:-1] + (self.tgt_vocab_size,))
        return self.generator(hidden)

    def decode(self, tgt, memory, src_mask, cache=None, position=None):
        """Logits (B, Lt, V) for target ids tgt (B, Lt), the new cache, cross-attention weights.

        See `Decoder.construct` for the cache: pass the one returned by the previous call
        and only the new tokens to decode one step at a time (or a fixed-slot cache from
        `Decoder.init_cache` and the step's `position`).
        """
        hidden, cache, weights = self.decoder(tgt, memory, src_mask, cache, position)
        return self.project(hidden), cache, weights

    def packed(self, src, src_segments, src_positions, tgt_in, tgt_segments, tgt_positions):
        """Teacher forcing on rows that pack several sentence pairs (`mindtrans.batching.PackedBatcher`).

        All arguments (B, L*) int32: ids, segment ids (k > 0: the row's k-th pair, 0: padding)
        and each token's position in its sentence. Attention stays inside a pair, so each
        pair gets the logits it would get alone. Returns logits (B, Lt, V).
        """
        memory, _ = self.encoder(src, segment_mask(src_segments, src_segments), src_positions)
        tgt_mask = ops.logical_and(segment_mask(tgt_segments, tgt_segments), causal_mask(tgt_in.shape[1]))
        hidden = self.decoder(tgt_in, memory, segment_mask(tgt_segments, src_segments), None, None, tgt_mask,
                              tgt_positions, True)
        return self.project(hidden)

    def construct(self, src, tgt_in):
        """Teacher forcing: src (B, Ls), tgt_in (B, Lt) = <bos> y_1 .. y_{Lt-1} -> logits (B, Lt, V)."""
        memory, src_mask, _ = self.encode(src)
        return self.project(self.decoder(tgt_in, memory, src_mask, None, None, None, None, True))
