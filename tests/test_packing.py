"""Packed rows: several sentence pairs per row, one batch shape, the same maths as one pair alone."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindtrans import checkpoint
from mindtrans.attention import segment_mask
from mindtrans.corpus import write_synthetic
from mindtrans.batching import BucketBatcher, PackedBatcher
from mindtrans.data import BOS, EOS, PAD
from mindtrans.model import Transformer
from mindtrans.steps import make_train_step
from mindtrans.train_config import TrainConfig
from mindtrans.training import train


def random_pairs(n, low=1, high=12, vocab=40, seed=0):
    """n (src, tgt) id arrays framed by <bos>/<eos>, with low..high words per side."""
    rng = np.random.default_rng(seed)

    def sentence(words):
        return np.array([BOS, *rng.integers(4, vocab, words), EOS], dtype=np.int32)

    return [(sentence(rng.integers(low, high + 1)), sentence(rng.integers(low, high + 1))) for _ in range(n)]


# --------------------------------------------------------------------------- the batcher
def test_every_pair_once_per_epoch_in_batches_of_one_shape():
    pairs = random_pairs(300)
    batcher = PackedBatcher(pairs, batch_tokens=256)
    assert batcher.length == 16 and batcher.rows == 16  # longest side 14 -> 16; 256 // 16
    for epoch in range(3):
        plan = batcher.plan(epoch)
        assert len(plan) == len(batcher) and batcher.left_out == 0
        assert sorted(i for batch in plan for row in batch for i in row) == list(range(len(pairs)))
        for batch in plan:
            assert len(batch) == batcher.rows
            for row in batch:
                assert sum(len(pairs[i][0]) for i in row) <= batcher.length
                assert sum(len(pairs[i][1]) - 1 for i in row) <= batcher.length
            assert {a.shape for a in batcher.collate(batch)} == {(batcher.rows, batcher.length)}


def test_collate_lays_out_ids_segments_positions_and_labels():
    pairs = random_pairs(40, seed=1)
    batcher = PackedBatcher(pairs, batch_tokens=64, seed=3)
    batch = batcher.plan(0)[0]
    src, src_seg, src_pos, tgt_in, tgt_seg, tgt_pos, labels = batcher.collate(batch)
    for r, row in enumerate(batch):
        s_at = t_at = 0
        for segment, i in enumerate(row, start=1):
            s, t = pairs[i]
            np.testing.assert_array_equal(src[r, s_at:s_at + len(s)], s)
            assert (src_seg[r, s_at:s_at + len(s)] == segment).all()
            np.testing.assert_array_equal(src_pos[r, s_at:s_at + len(s)], np.arange(len(s)))
            m = len(t) - 1
            np.testing.assert_array_equal(tgt_in[r, t_at:t_at + m], t[:-1])
            np.testing.assert_array_equal(labels[r, t_at:t_at + m], t[1:])
            assert (tgt_seg[r, t_at:t_at + m] == segment).all()
            np.testing.assert_array_equal(tgt_pos[r, t_at:t_at + m], np.arange(m))
            s_at, t_at = s_at + len(s), t_at + m
        assert (src[r, s_at:] == PAD).all() and (src_seg[r, s_at:] == 0).all()
        assert (labels[r, t_at:] == PAD).all() and (tgt_seg[r, t_at:] == 0).all()


def test_plan_depends_only_on_seed_and_epoch():
    pairs = random_pairs(200)
    a, b = PackedBatcher(pairs, 128, seed=5), PackedBatcher(pairs, 128, seed=5)
    assert a.plan(2) == b.plan(2)
    assert a.plan(2) != a.plan(3)
    assert a.plan(2) != PackedBatcher(pairs, 128, seed=6).plan(2)
    assert PackedBatcher(pairs, 128, shuffle=False).plan(0) == PackedBatcher(pairs, 128, shuffle=False).plan(9)


def test_uneven_lengths_get_enough_batches_for_every_pair():
    # Three pairs of 10 positions fit one to a row of 16; the 5% estimate alone would allow two rows.
    pairs = [(np.array([BOS, *[7] * 8, EOS], np.int32), np.array([BOS, 7, EOS], np.int32))] * 3
    batcher = PackedBatcher(pairs, batch_tokens=16)
    assert batcher.rows == 1 and len(batcher) == 3
    assert sorted(i for batch in batcher.plan(0) for row in batch for i in row) == [0, 1, 2]


def test_fewer_real_positions_are_padding_than_with_length_buckets():
    pairs = random_pairs(2000, low=1, high=30)
    packed = PackedBatcher(pairs, batch_tokens=1024)
    bucketed = BucketBatcher(pairs, batch_tokens=1024, max_len=64)
    assert packed.padding_ratio() < bucketed.padding_ratio()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_tokens": 8}, "cannot hold one row of 16 positions"),
    ({"batch_tokens": 64, "length": 8}, "shorter than the longest sentence"),
])
def test_bad_sizes_say_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PackedBatcher(random_pairs(10), **kwargs)


# --------------------------------------------------------------------------- the model
def test_segment_mask_sees_only_the_same_real_segment():
    query = ms.Tensor(np.array([[1, 1, 2, 0]], np.int32))
    key = ms.Tensor(np.array([[1, 2, 2, 0, 0]], np.int32))
    expected = np.array([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(segment_mask(query, key).asnumpy(), expected[None, None])


def packed_and_alone(config, pairs, batcher, batch):
    """The packed logits of `batch`, and per pair (row, offset, logits alone)."""
    model = Transformer(config)
    model.set_train(False)
    arrays = batcher.collate(batch)
    packed = model.packed(*(ms.Tensor(a) for a in arrays[:6])).asnumpy()
    alone = []
    for r, row in enumerate(batch):
        offset = 0
        for i in row:
            s, t = pairs[i]
            alone.append((r, offset, model(ms.Tensor(s[None]), ms.Tensor(t[None, :-1])).asnumpy()[0]))
            offset += len(t) - 1
    return packed, alone


def test_packed_logits_equal_each_pair_translated_alone(tiny_config):
    pairs = random_pairs(24, vocab=40, seed=2)
    batcher = PackedBatcher(pairs, batch_tokens=96)
    ms.set_seed(0)
    packed, alone = packed_and_alone(tiny_config, pairs, batcher, batcher.plan(0)[0])
    assert len(alone) > batcher.rows  # several pairs share a row
    for r, offset, logits in alone:
        np.testing.assert_allclose(packed[r, offset:offset + len(logits)], logits, rtol=0, atol=2e-5)


def test_packed_train_step_equals_the_bucketed_step_on_the_same_pairs(tiny_config):
    """The compiled packed step (what train() runs) against the eager bucketed one: one graph to
    compile, and the packing and the compiler are checked against the plainest step at once."""
    pairs = random_pairs(20, vocab=40, seed=4)
    packed_batcher = PackedBatcher(pairs, batch_tokens=16 * 16, seed=1)
    assert len(packed_batcher) == 1
    bucketed = BucketBatcher(pairs, batch_tokens=10_000, max_len=16, boundaries=(16,), shuffle=False)
    results = {}
    for kind, mode in (("packed", "graph"), ("bucketed", "pynative")):
        ms.set_seed(0)
        model = Transformer(tiny_config)
        model.set_train(True)
        optimizer = nn.Adam(model.trainable_params(), learning_rate=1e-3)
        step = make_train_step(model, optimizer, TrainConfig(preset="tiny", label_smoothing=0.1, mode=mode),
                               packed=kind == "packed")
        batcher = packed_batcher if kind == "packed" else bucketed
        arrays = batcher.collate(batcher.plan(0)[0])
        loss, nll_sum, tokens, finite = step(*(ms.Tensor(a) for a in arrays))
        results[kind] = (float(loss.asnumpy()), float(nll_sum.asnumpy()), float(tokens.asnumpy()),
                         {p.name: p.asnumpy() for p in model.trainable_params()})
    (loss_p, nll_p, tokens_p, params_p), (loss_b, nll_b, tokens_b, params_b) = results["packed"], results["bucketed"]
    assert tokens_p == tokens_b == sum(len(t) - 1 for _, t in pairs)
    assert loss_p == pytest.approx(loss_b, rel=1e-5) and nll_p == pytest.approx(nll_b, rel=1e-5)
    for name in params_p:
        np.testing.assert_allclose(params_p[name], params_b[name], rtol=0, atol=1e-5, err_msg=name)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=96, n_val=16, n_test=16)
    return root


def test_packed_training_resumes_exactly(data_dir, tmp_path):
    cfg = TrainConfig(preset="tiny", corpus="synthetic", epochs=2, batch_tokens=64, max_len=8, min_freq=1,
                      warmup_steps=4, dropout=0.0, seed=0)
    full = train(data_dir, tmp_path / "full", cfg, verbose=False)
    assert full["steps"] >= 6
    steps_per_epoch = full["steps"] // 2
    train(data_dir, tmp_path / "resumed", dataclasses.replace(cfg, max_steps=steps_per_epoch // 2), verbose=False)
    resumed = train(data_dir, tmp_path / "resumed", dataclasses.replace(cfg, max_steps=0), resume=True,
                    verbose=False)
    assert resumed["steps"] == full["steps"]
    a, _ = checkpoint.load(tmp_path / "full" / "latest.ckpt")
    b, _ = checkpoint.load(tmp_path / "resumed" / "latest.ckpt")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)


def test_runs_saved_before_packing_resume_with_bucketed_batches(data_dir, tmp_path, monkeypatch):
    import json

    from mindtrans import training as train_module

    cfg = TrainConfig(preset="tiny", corpus="synthetic", epochs=1, batch_tokens=64, max_len=8, min_freq=1,
                      pack=False, max_steps=2, mode="pynative")  # which batcher resumes: no graph needed
    out = tmp_path / "run"
    train(data_dir, out, cfg, verbose=False)
    saved = json.loads((out / "train_config.json").read_text())
    del saved["train"]["pack"]  # as written before packing existed
    (out / "train_config.json").write_text(json.dumps(saved))
    packed_args = []
    original = train_module.make_batcher

    def recording_make_batcher(*args, packed=False, **kwargs):
        packed_args.append(packed)
        return original(*args, packed=packed, **kwargs)

    monkeypatch.setattr(train_module, "make_batcher", recording_make_batcher)
    summary = train(data_dir, out, dataclasses.replace(cfg, pack=True, max_steps=3), resume=True,
                    verbose=False)
    assert summary["steps"] == 3
    assert packed_args and not any(packed_args)
