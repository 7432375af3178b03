"""Attention against a NumPy reference, and the masks' shapes, dtypes and meaning."""
import math

import mindspore as ms
import numpy as np
import pytest

from mindtrans.attention import (MultiHeadAttention, RowSoftmax, causal_mask, padding_mask,
                                 scaled_dot_product_attention)

TOL = 1e-5


def tensor(array, dtype=ms.float32):
    return ms.Tensor(np.asarray(array), dtype)


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d_k)) v in float64; mask True = may attend."""
    scores = q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(-1, keepdims=True)
    return weights @ v.astype(np.float64), weights


def test_scaled_dot_product_attention_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, v = rng.normal(size=(2, 3, 5, 8)), rng.normal(size=(2, 3, 7, 8)), rng.normal(size=(2, 3, 7, 6))
    out, weights = scaled_dot_product_attention(tensor(q), tensor(k), tensor(v))
    ref_out, ref_weights = reference_attention(q, k, v)
    assert out.shape == (2, 3, 5, 6) and weights.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(out.asnumpy(), ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(weights.asnumpy(), ref_weights, rtol=0, atol=TOL)


def test_scaled_dot_product_attention_with_mask_gives_hidden_keys_zero_weight():
    rng = np.random.default_rng(1)
    q, k, v = rng.normal(size=(2, 2, 4, 8)), rng.normal(size=(2, 2, 6, 8)), rng.normal(size=(2, 2, 6, 8))
    mask = np.ones((2, 1, 1, 6), dtype=bool)
    mask[0, ..., 4:] = False
    mask[1, ..., 1] = False
    out, weights = scaled_dot_product_attention(tensor(q), tensor(k), tensor(v), tensor(mask, ms.bool_))
    ref_out, ref_weights = reference_attention(q, k, v, mask)
    np.testing.assert_allclose(out.asnumpy(), ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(weights.asnumpy(), ref_weights, rtol=0, atol=TOL)
    assert np.all(weights.asnumpy()[0, ..., 4:] == 0.0) and np.all(weights.asnumpy()[1, ..., 1] == 0.0)
    np.testing.assert_allclose(weights.asnumpy().sum(-1), 1.0, rtol=0, atol=TOL)


def test_padding_mask_shape_dtype_and_values():
    tokens = np.array([[5, 6, 7, 1, 1], [8, 1, 9, 4, 3]])
    mask = padding_mask(tensor(tokens, ms.int32), pad_id=1)
    assert mask.shape == (2, 1, 1, 5)
    assert mask.dtype == ms.bool_
    np.testing.assert_array_equal(mask.asnumpy()[:, 0, 0], tokens != 1)


def test_causal_mask_shape_dtype_and_values():
    mask = causal_mask(4)
    assert mask.shape == (1, 1, 4, 4)
    assert mask.dtype == ms.bool_
    np.testing.assert_array_equal(mask.asnumpy()[0, 0], np.tril(np.ones((4, 4), dtype=bool)))


def test_causal_mask_for_cached_queries_sits_at_the_end():
    # 2 new queries after 3 cached positions: they are positions 3 and 4 of 5
    mask = causal_mask(2, 5)
    assert mask.shape == (1, 1, 2, 5) and mask.dtype == ms.bool_
    np.testing.assert_array_equal(mask.asnumpy()[0, 0], np.tril(np.ones((5, 5), dtype=bool))[3:])
    np.testing.assert_array_equal(causal_mask(1, 6).asnumpy(), np.ones((1, 1, 1, 6), dtype=bool))


def linear(x, dense):
    """x @ W^T + b with the weights copied out of a MindSpore Dense layer."""
    return x @ dense.weight.asnumpy().astype(np.float64).T + dense.bias.asnumpy().astype(np.float64)


def projection_weights(mha):
    """(W, b) for q, k, v as NumPy arrays, whichever way the Cell stores them."""
    d = mha.d_model
    if mha.fused and not mha.cross:
        w, b = mha.qkv_proj.weight.asnumpy(), mha.qkv_proj.bias.asnumpy()
        assert w.shape == (3 * d, d)
        return [(w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)]
    q = (mha.q_proj.weight.asnumpy(), mha.q_proj.bias.asnumpy())
    if mha.fused:
        w, b = mha.kv_proj.weight.asnumpy(), mha.kv_proj.bias.asnumpy()
        assert w.shape == (2 * d, d)
        return [q, (w[:d], b[:d]), (w[d:], b[d:])]
    return [q, (mha.k_proj.weight.asnumpy(), mha.k_proj.bias.asnumpy()),
            (mha.v_proj.weight.asnumpy(), mha.v_proj.bias.asnumpy())]


def reference_mha(mha, x, memory=None, mask=None):
    """Multi-head attention, one head at a time, with the Cell's own weights."""
    (wq, bq), (wk, bk), (wv, bv) = [(w.astype(np.float64), b.astype(np.float64)) for w, b in projection_weights(mha)]
    source = x if memory is None else memory
    q, k, v = x @ wq.T + bq, source @ wk.T + bk, source @ wv.T + bv
    h, dh = mha.n_heads, mha.d_head
    heads, all_weights = [], []
    for i in range(h):
        cols = slice(i * dh, (i + 1) * dh)
        out, weights = reference_attention(q[..., cols], k[..., cols], v[..., cols],
                                           None if mask is None else mask[:, 0])
        heads.append(out)
        all_weights.append(weights)
    return linear(np.concatenate(heads, axis=-1), mha.out_proj), np.stack(all_weights, axis=1)


@pytest.mark.parametrize("fused", [True, False])
def test_self_attention_matches_numpy(fused):
    rng = np.random.default_rng(2)
    mha = MultiHeadAttention(32, 4, fused=fused)
    assert hasattr(mha, "qkv_proj") == fused and hasattr(mha, "k_proj") != fused
    x = rng.normal(size=(2, 6, 32))
    mask = np.ones((2, 1, 1, 6), dtype=bool)
    mask[1, ..., 3:] = False
    out, weights, (key, value) = mha(tensor(x), mask=tensor(mask, ms.bool_))
    ref_out, ref_weights = reference_mha(mha, x, mask=mask)
    assert out.shape == (2, 6, 32) and weights.shape == (2, 4, 6, 6)
    assert key.shape == value.shape == (2, 4, 6, 8)
    np.testing.assert_allclose(out.asnumpy(), ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(weights.asnumpy(), ref_weights, rtol=0, atol=TOL)


@pytest.mark.parametrize("fused", [True, False])
def test_cross_attention_matches_numpy(fused):
    rng = np.random.default_rng(3)
    mha = MultiHeadAttention(32, 4, cross=True, fused=fused)
    assert hasattr(mha, "kv_proj") == fused and not hasattr(mha, "qkv_proj")
    x, memory = rng.normal(size=(2, 3, 32)), rng.normal(size=(2, 5, 32))
    mask = np.ones((2, 1, 1, 5), dtype=bool)
    mask[0, ..., 2:] = False
    out, weights, _ = mha(tensor(x), tensor(memory), mask=tensor(mask, ms.bool_))
    ref_out, ref_weights = reference_mha(mha, x, memory, mask)
    assert out.shape == (2, 3, 32) and weights.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(out.asnumpy(), ref_out, rtol=0, atol=TOL)
    np.testing.assert_allclose(weights.asnumpy(), ref_weights, rtol=0, atol=TOL)


def test_fused_and_unfused_projections_compute_the_same_function():
    """Copy the fused Q/K/V matrix into three separate ones: same output."""
    fused, unfused = MultiHeadAttention(16, 2, fused=True), MultiHeadAttention(16, 2, fused=False)
    (wq, bq), (wk, bk), (wv, bv) = projection_weights(fused)
    for dense, w, b in ((unfused.q_proj, wq, bq), (unfused.k_proj, wk, bk), (unfused.v_proj, wv, bv),
                        (unfused.out_proj, fused.out_proj.weight.asnumpy(), fused.out_proj.bias.asnumpy())):
        dense.weight.set_data(tensor(w))
        dense.bias.set_data(tensor(b))
    x = tensor(np.random.default_rng(4).normal(size=(1, 4, 16)))
    np.testing.assert_allclose(fused(x)[0].asnumpy(), unfused(x)[0].asnumpy(), rtol=0, atol=TOL)


def test_self_attention_cache_extends_keys_and_values():
    """Attending with a cache of earlier positions = attending over the whole sequence, last rows."""
    rng = np.random.default_rng(5)
    mha = MultiHeadAttention(16, 2)
    x = tensor(rng.normal(size=(1, 5, 16)))
    full, _, (key, value) = mha(x, mask=causal_mask(5))
    _, _, cache = mha(x[:, :3], mask=causal_mask(3))
    step, _, (key2, value2) = mha(x[:, 3:], mask=causal_mask(2, 5), cache=cache)
    np.testing.assert_allclose(step.asnumpy(), full.asnumpy()[:, 3:], rtol=0, atol=TOL)
    np.testing.assert_allclose(key2.asnumpy(), key.asnumpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(value2.asnumpy(), value.asnumpy(), rtol=0, atol=TOL)


def test_heads_must_divide_d_model():
    with pytest.raises(ValueError, match="d_model=30 must be divisible by n_heads=4"):
        MultiHeadAttention(30, 4)


@pytest.mark.parametrize("compiled", [False, True])
def test_row_softmax_value_and_gradient_match_numpy(compiled):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 7)).astype(np.float32) * 3
    upstream = rng.standard_normal((6, 7)).astype(np.float32)
    y = np.exp(x - x.max(-1, keepdims=True))
    y /= y.sum(-1, keepdims=True)
    # d/dx of sum(upstream * softmax(x)) = y * (upstream - sum(upstream * y))
    expected_grad = y * (upstream - (upstream * y).sum(-1, keepdims=True))

    softmax = RowSoftmax()

    def weighted_sum(x, upstream):  # upstream an argument: MindSpore 2.0 graphs cannot read a closure's array
        return (softmax(x) * upstream).sum()

    grad_fn = ms.value_and_grad(weighted_sum, grad_position=0)
    grad_fn = ms.jit(grad_fn) if compiled else grad_fn
    value, grad = grad_fn(ms.Tensor(x), ms.Tensor(upstream))
    np.testing.assert_allclose(softmax(ms.Tensor(x)).asnumpy(), y, rtol=1e-5, atol=1e-7)
    assert float(value.asnumpy()) == pytest.approx(float((upstream * y).sum()), rel=1e-5)
    np.testing.assert_allclose(grad.asnumpy(), expected_grad, rtol=1e-4, atol=1e-6)
