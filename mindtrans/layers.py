"""The small pieces every Transformer layer is made of."""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, XavierUniform, initializer

from mindtrans.numpy_steps import sinusoidal_table  # NumPy, shared with the NumPy decoder


class Linear(nn.Cell):
    """y = x W^T + b on the last axis: (..., in_features) -> (..., out_features).

    Xavier-uniform weights and zero bias, as in the paper's reference code. Like
    `nn.Dense`, but the bias is spread over the rows by an outer product, ones (N, 1)
    times bias (1, out), and then added to a tensor of the same shape. In a dynamic-shape
    CPU graph (the train step) MindSpore adds (N, out) + (out,) by broadcasting ~20x
    slower than a same-shape add, and BroadcastTo is ~15x slower than the outer product;
    the outer product's gradient is a matmul too, instead of a column sum. The 2-D
    MatMul primitive avoids the slow generic path of `ops.matmul` in PyNative mode.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(initializer(XavierUniform(), (out_features, in_features), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (out_features,), ms.float32), name="bias") if bias else None
        self.matmul = ops.MatMul(transpose_b=True)
        self.outer = ops.MatMul()

    def construct(self, x):
        rows = x.reshape(-1, self.in_features)
        y = self.matmul(rows, self.weight)
        if self.bias is not None:
            y = y + self.outer(ops.ones((rows.shape[0], 1), y.dtype), self.bias.reshape(1, -1).astype(y.dtype))
        return y.reshape(x.shape[:-1] + (self.out_features,))


class PositionalEncoding(nn.Cell):
    """Adds the sinusoidal table, precomputed up to `max_len`, then dropout."""

    def __init__(self, d_model: int, max_len: int, dropout: float = 0.0):
        super().__init__()
        self.max_len = max_len
        self.table = ms.Tensor(sinusoidal_table(max_len, d_model))
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()

    def construct(self, x, offset: int = 0):
        """x (B, L, D) at positions offset .. offset+L-1 -> (B, L, D)."""
        length = x.shape[1]
        if offset + length > self.max_len:
            raise ValueError(f"sequence of {offset + length} positions is longer than max_len="
                             f"{self.max_len}; build the model with a larger max_len or shorten the input")
        return self.dropout(x + self.table[offset:offset + length].astype(x.dtype))

    def at(self, x, positions):
        """x (B, L, D) at the given positions, int32 (B, L) (rows that pack several sentences), or a
        scalar tensor for one position (L = 1) -> (B, L, D). Positions must be below max_len."""
        positions = positions if positions.ndim else positions.reshape(1)
        return self.dropout(x + ops.gather(self.table, positions, 0).astype(x.dtype))


class TokenEmbedding(nn.Cell):
    """Token ids (B, L) -> vectors (B, L, D), scaled by sqrt(D) as in the paper."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, embedding_table=Normal(d_model ** -0.5))

    @property
    def weight(self):
        """(V, D) table, shared with the output projection when embeddings are tied."""
        return self.embedding.embedding_table

    def construct(self, tokens):
        return self.embedding(tokens) * self.scale


class FeedForward(nn.Cell):
    """Position-wise FFN: Linear(D, d_ff) -> ReLU or GELU -> Linear(d_ff, D).

    As in the paper, dropout is applied to the sublayer's output (by `Residual`), not inside.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.up = Linear(d_model, d_ff)
        self.activation = nn.ReLU() if activation == "relu" else nn.GELU(approximate=False)
        self.down = Linear(d_ff, d_model)

    def construct(self, x):
        """(B, L, D) -> (B, L, D)."""
        return self.down(self.activation(self.up(x)))


class RMSNorm(nn.Cell):
    """x / sqrt(mean(x^2) + eps) * gain: LayerNorm without centring or bias (Zhang & Sennrich, 2019)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(ops.ones(d_model, ms.float32), name="weight")

    def construct(self, x):
        """(..., D) -> (..., D)."""
        variance = ops.mean(ops.square(x.astype(ms.float32)), axis=-1, keep_dims=True)
        return (x * ops.rsqrt(variance + self.eps)).astype(x.dtype) * self.weight.astype(x.dtype)


def make_norm(kind: str, d_model: int, eps: float = 1e-5) -> nn.Cell:
    """"layernorm" or "rmsnorm" over the last axis."""
    if kind == "layernorm":
        return nn.LayerNorm((d_model,), epsilon=eps)
    if kind == "rmsnorm":
        return RMSNorm(d_model, eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class Residual(nn.Cell):
    """Residual connection around a sublayer, with its norm before (Pre-LN) or after (Post-LN).

    Post-LN (the paper): norm(x + dropout(f(x))). Pre-LN: x + dropout(f(norm(x))), which
    keeps an identity path from input to output and trains stably without warm-up tricks.
    Use: `out = sublayer(residual.sublayer_input(x)); x = residual.add(x, out)`.
    """

    def __init__(self, d_model: int, dropout: float, norm: str, norm_first: bool, eps: float = 1e-5):
        super().__init__()
        self.norm = make_norm(norm, d_model, eps)
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()
        self.norm_first = norm_first

    def sublayer_input(self, x):
        """What the sublayer reads: norm(x) for Pre-LN, x itself for Post-LN."""
        return self.norm(x) if self.norm_first else x

    def add(self, x, sublayer_output):
        """Residual sum, normalised afterwards for Post-LN."""
        y = x + self.dropout(sublayer_output)
        return y if self.norm_first else self.norm(y)
