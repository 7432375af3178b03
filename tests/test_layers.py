"""Layers against NumPy references: positional encoding, LayerNorm, RMSNorm, feed-forward, embeddings."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindtrans.layers import (FeedForward, PositionalEncoding, Residual, RMSNorm, TokenEmbedding, make_norm,
                              sinusoidal_table)

TOL = 1e-5


def tensor(array):
    return ms.Tensor(np.asarray(array, dtype=np.float32))


def reference_sinusoid(max_len, d_model):
    """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(pos / 10000^(2i/d)), one entry at a time."""
    table = np.zeros((max_len, d_model))
    for pos in range(max_len):
        for j in range(d_model):
            angle = pos / 10000 ** ((j - j % 2) / d_model)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("max_len, d_model", [(50, 32), (7, 5), (1, 2)])
def test_sinusoidal_table_matches_the_formula(max_len, d_model):
    table = sinusoidal_table(max_len, d_model)
    assert table.shape == (max_len, d_model) and table.dtype == np.float32
    np.testing.assert_allclose(table, reference_sinusoid(max_len, d_model), rtol=0, atol=TOL)


def test_sinusoidal_table_first_row_and_range():
    table = sinusoidal_table(100, 16)
    np.testing.assert_array_equal(table[0, 0::2], 0.0)  # sin(0)
    np.testing.assert_array_equal(table[0, 1::2], 1.0)  # cos(0)
    assert np.abs(table).max() <= 1.0


def test_positional_encoding_adds_the_table_from_the_offset():
    d_model, max_len = 8, 20
    layer = PositionalEncoding(d_model, max_len)
    x = np.random.default_rng(0).normal(size=(2, 5, d_model)).astype(np.float32)
    reference = reference_sinusoid(max_len, d_model)
    np.testing.assert_allclose(layer(tensor(x)).asnumpy(), x + reference[:5], rtol=0, atol=TOL)
    np.testing.assert_allclose(layer(tensor(x), 7).asnumpy(), x + reference[7:12], rtol=0, atol=TOL)
    # the last positions that fit are fine
    assert layer(tensor(np.zeros((1, max_len, d_model)))).shape == (1, max_len, d_model)
    assert layer(tensor(x), max_len - 5).shape == x.shape


@pytest.mark.parametrize("length, offset", [(9, 0), (3, 6)])
def test_positional_encoding_longer_than_max_len_raises(length, offset):
    layer = PositionalEncoding(4, max_len=8)
    with pytest.raises(ValueError, match=rf"sequence of {length + offset} positions is longer than max_len=8"
                                         r".*larger max_len"):
        layer(tensor(np.zeros((1, length, 4))), offset)


def reference_layernorm(x, gain, bias, eps):
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)  # biased variance, as in the paper
    return (x - mean) / np.sqrt(var + eps) * gain + bias


def reference_rmsnorm(x, gain, eps):
    x = x.astype(np.float64)
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps) * gain


def test_layernorm_matches_numpy():
    rng = np.random.default_rng(1)
    d, eps = 16, 1e-5
    norm = make_norm("layernorm", d, eps)
    assert isinstance(norm, nn.LayerNorm)
    gain, bias = rng.normal(size=d), rng.normal(size=d)
    norm.gamma.set_data(tensor(gain))
    norm.beta.set_data(tensor(bias))
    x = (rng.normal(size=(3, 5, d)) * 2 + 0.5).astype(np.float32)
    np.testing.assert_allclose(norm(tensor(x)).asnumpy(), reference_layernorm(x, gain, bias, eps), rtol=0, atol=TOL)


def test_rmsnorm_matches_numpy():
    rng = np.random.default_rng(2)
    d, eps = 16, 1e-5
    norm = make_norm("rmsnorm", d, eps)
    assert isinstance(norm, RMSNorm)
    assert [name for name, _ in norm.parameters_and_names()] == ["weight"]  # a gain, no bias
    np.testing.assert_array_equal(norm.weight.asnumpy(), 1.0)
    gain = rng.normal(size=d)
    norm.weight.set_data(tensor(gain))
    x = (rng.normal(size=(3, 5, d)) * 2 + 0.5).astype(np.float32)
    out = norm(tensor(x)).asnumpy()
    np.testing.assert_allclose(out, reference_rmsnorm(x, gain, eps), rtol=0, atol=TOL)
    # unlike LayerNorm, RMSNorm does not centre: a constant input keeps its sign
    const = norm(tensor(np.full((1, d), 3.0))).asnumpy()
    np.testing.assert_allclose(const, reference_rmsnorm(np.full((1, d), 3.0), gain, eps), rtol=0, atol=TOL)


def test_make_norm_rejects_unknown_kind():
    with pytest.raises(ValueError, match="norm must be 'layernorm' or 'rmsnorm', got 'batchnorm'"):
        make_norm("batchnorm", 8)


def dense_weights(dense):
    return dense.weight.asnumpy().astype(np.float64), dense.bias.asnumpy().astype(np.float64)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward_matches_numpy(activation):
    ffn = FeedForward(8, 24, activation=activation)
    x = np.random.default_rng(3).normal(size=(2, 4, 8)).astype(np.float32)
    (w1, b1), (w2, b2) = dense_weights(ffn.up), dense_weights(ffn.down)
    hidden = x @ w1.T + b1
    if activation == "relu":
        hidden = np.maximum(hidden, 0.0)
    else:  # exact GELU: x * Phi(x)
        hidden = hidden * 0.5 * (1.0 + np.vectorize(math.erf)(hidden / math.sqrt(2.0)))
    np.testing.assert_allclose(ffn(tensor(x)).asnumpy(), hidden @ w2.T + b2, rtol=0, atol=TOL)


def test_feed_forward_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be 'relu' or 'gelu', got 'tanh'"):
        FeedForward(8, 16, activation="tanh")


def test_token_embedding_looks_up_and_scales_by_sqrt_d():
    embed = TokenEmbedding(10, 16)
    table = embed.weight.asnumpy()
    assert table.shape == (10, 16)
    ids = np.array([[1, 4, 9], [0, 0, 3]])
    out = embed(ms.Tensor(ids, ms.int32)).asnumpy()
    np.testing.assert_allclose(out, table[ids] * 4.0, rtol=0, atol=TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_post_ln_and_pre_ln(norm_first):
    residual = Residual(8, dropout=0.0, norm="rmsnorm", norm_first=norm_first)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    f_x = rng.normal(size=(2, 3, 8)).astype(np.float32)
    gain = np.ones(8)
    expected_input = reference_rmsnorm(x, gain, 1e-5) if norm_first else x
    np.testing.assert_allclose(residual.sublayer_input(tensor(x)).asnumpy(), expected_input, rtol=0, atol=TOL)
    expected_sum = x + f_x if norm_first else reference_rmsnorm(x + f_x, gain, 1e-5)
    np.testing.assert_allclose(residual.add(tensor(x), tensor(f_x)).asnumpy(), expected_sum, rtol=0, atol=TOL)
