"""The training loss against a NumPy reference, and the learning-rate schedules (Python and in-graph)."""
import math

import mindspore as ms
import numpy as np
import pytest

from mindtrans.loss import label_smoothed_nll
from mindtrans.schedule import SCHEDULES, WarmupSchedule, learning_rate

PAD = 1


def reference_loss(logits, labels, smoothing, pad_id=PAD):
    """(smoothed loss sum, NLL sum, real tokens) in float64 NumPy, pads skipped by indexing."""
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    loss = nll = 0.0
    tokens = 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1]):
            y = labels[b, t]
            if y == pad_id:
                continue
            tokens += 1
            gold = -logp[b, t, y]
            nll += gold
            # target distribution: 1 - eps on the gold token, eps spread uniformly over all V tokens
            target = np.full(logp.shape[-1], smoothing / logp.shape[-1])
            target[y] += 1.0 - smoothing
            loss += -(target * logp[b, t]).sum()
    return loss, nll, tokens


def make_case(seed=0, batch=3, length=5, vocab=11):
    rng = np.random.default_rng(seed)
    logits = (3.0 * rng.standard_normal((batch, length, vocab))).astype(np.float32)
    labels = rng.integers(2, vocab, size=(batch, length)).astype(np.int32)
    labels[0, 3:] = PAD
    labels[2, 1:] = PAD
    return logits, labels


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothed_nll_matches_numpy(smoothing):
    logits, labels = make_case()
    loss_sum, nll_sum, tokens = label_smoothed_nll(ms.Tensor(logits), ms.Tensor(labels), smoothing, PAD)
    ref_loss, ref_nll, ref_tokens = reference_loss(logits, labels, smoothing)
    assert ref_tokens == 3 + 5 + 1
    assert float(tokens.asnumpy()) == ref_tokens
    np.testing.assert_allclose(float(nll_sum.asnumpy()), ref_nll, rtol=1e-5)
    np.testing.assert_allclose(float(loss_sum.asnumpy()), ref_loss, rtol=1e-5)
    for value in (loss_sum, nll_sum, tokens):
        assert value.dtype == ms.float32 and value.shape == ()
    if smoothing == 0:
        assert float(loss_sum.asnumpy()) == float(nll_sum.asnumpy())
    else:  # smoothing adds the mean -log p over the vocabulary: never equal to the plain NLL here
        assert abs(float(loss_sum.asnumpy()) - ref_nll) > 1e-3


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothed_nll_ignores_pad_positions(smoothing):
    logits, labels = make_case(seed=1)
    changed = logits.copy()
    changed[labels == PAD] = np.random.default_rng(5).standard_normal(changed[labels == PAD].shape) * 50
    a = [float(x.asnumpy()) for x in label_smoothed_nll(ms.Tensor(logits), ms.Tensor(labels), smoothing, PAD)]
    b = [float(x.asnumpy()) for x in label_smoothed_nll(ms.Tensor(changed), ms.Tensor(labels), smoothing, PAD)]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # ... while a real position does count
    changed = logits.copy()
    changed[0, 0] *= -1.0
    c = [float(x.asnumpy()) for x in label_smoothed_nll(ms.Tensor(changed), ms.Tensor(labels), smoothing, PAD)]
    assert abs(c[1] - a[1]) > 1e-3


def test_label_smoothed_nll_float16_logits_computed_in_float32():
    logits, labels = make_case(seed=2)
    loss16 = label_smoothed_nll(ms.Tensor(logits.astype(np.float16)), ms.Tensor(labels), 0.1, PAD)[0]
    ref = reference_loss(logits.astype(np.float16).astype(np.float32), labels, 0.1)[0]
    assert loss16.dtype == ms.float32
    np.testing.assert_allclose(float(loss16.asnumpy()), ref, rtol=1e-4)


def test_perfect_prediction_has_near_zero_loss():
    labels = np.array([[4, 5, 6, PAD]], dtype=np.int32)
    logits = np.full((1, 4, 8), -30.0, dtype=np.float32)
    logits[0, np.arange(4), labels[0]] = 30.0
    _, nll_sum, tokens = label_smoothed_nll(ms.Tensor(logits), ms.Tensor(labels), 0.0, PAD)
    assert float(tokens.asnumpy()) == 3
    assert 0 <= float(nll_sum.asnumpy()) < 1e-6


# --------------------------------------------------------------------------- schedules
def test_inverse_sqrt_warms_up_linearly_then_decays_as_one_over_sqrt():
    peak, warmup = 1e-3, 100
    lrs = [learning_rate(s, peak, warmup) for s in range(1000)]
    assert lrs[0] == pytest.approx(peak / warmup)
    assert lrs[49] == pytest.approx(peak / 2)
    assert max(lrs) == pytest.approx(peak) and int(np.argmax(lrs)) == warmup - 1
    assert all(a < b for a, b in zip(lrs[:warmup - 1], lrs[1:warmup]))       # strictly up
    assert all(a > b for a, b in zip(lrs[warmup:-1], lrs[warmup + 1:]))        # strictly down
    assert lrs[4 * warmup - 1] == pytest.approx(peak / 2)                      # sqrt(100/400)
    assert lrs[999] == pytest.approx(peak * math.sqrt(100 / 1000))


def test_linear_schedule_reaches_zero_at_total():
    peak, warmup, total = 2e-3, 10, 110
    lrs = [learning_rate(s, peak, warmup, "linear", total) for s in range(total + 5)]
    assert lrs[warmup - 1] == pytest.approx(peak)
    assert lrs[warmup + 49] == pytest.approx(peak * 50 / 100)
    assert lrs[total - 1] == 0.0 and lrs[-1] == 0.0
    assert all(a >= b for a, b in zip(lrs[warmup - 1:-1], lrs[warmup:]))
    with pytest.raises(ValueError, match="total"):
        learning_rate(0, peak, warmup, "linear")


def test_constant_schedule_and_no_warmup():
    assert [learning_rate(s, 1.0, 4, "constant") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learning_rate(0, 1.0, 0, "constant") == 1.0
    assert learning_rate(3, 1.0, 0, "inverse_sqrt") == pytest.approx(0.5)  # 1/sqrt(step + 1)
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate(0, 1.0, 4, "cosine")
    with pytest.raises(ValueError):
        WarmupSchedule(1.0, 4, "cosine")


STEPS = [0, 1, 5, 9, 10, 11, 50, 99, 100, 150, 199, 250]


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("warmup", [10, 0])
def test_warmup_schedule_equals_learning_rate_eagerly_and_in_graph(kind, warmup):
    peak, total = 3e-3, 200
    schedule = WarmupSchedule(peak, warmup, kind, total)

    @ms.jit
    def in_graph(step):
        return schedule(step)

    expected = [learning_rate(s, peak, warmup, kind, total) for s in STEPS]
    eager = [float(schedule(ms.Tensor(s, ms.int32)).asnumpy()) for s in STEPS]
    compiled = [float(in_graph(ms.Tensor(s, ms.int32)).asnumpy()) for s in STEPS]
    np.testing.assert_allclose(eager, expected, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(compiled, expected, rtol=1e-5, atol=1e-12)


def test_warmup_schedule_drives_the_optimizer_step_by_step():
    """Inside nn.Adam the schedule reads the optimizer's global_step: update k moves by learning_rate(k).

    With a constant gradient of 1, bias-corrected Adam moves every weight by exactly its
    learning rate (up to eps), so the per-step change of the weight reads off the schedule.
    """
    from mindspore import nn

    peak, warmup = 1e-2, 5
    weight = ms.Parameter(ms.Tensor(np.zeros(3, np.float32)), name="w")
    optimizer = nn.Adam([weight], learning_rate=WarmupSchedule(peak, warmup, "inverse_sqrt"), eps=1e-12)
    grads = (ms.Tensor(np.ones(3, np.float32)),)
    before, moves = weight.asnumpy().copy(), []
    for _ in range(8):
        optimizer(grads)
        after = weight.asnumpy().copy()
        moves.append(float((before - after).mean()))
        before = after
    np.testing.assert_allclose(moves, [learning_rate(s, peak, warmup) for s in range(8)], rtol=1e-4)
