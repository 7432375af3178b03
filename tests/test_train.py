"""Training end to end on the tiny preset: overfitting, resume, seeds, atomic saves, NaN, Ctrl-C, AMP, PyNative.

The `train()` runs share one small synthetic corpus and one configuration: sentences cut
to 8 tokens, so that every training batch has the shape (8, 8) and each run compiles its
train step once. Runs are module-scoped fixtures reused by several tests.
"""
import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

import mindtrans
from mindtrans import averaging, checkpoint
from mindtrans import training as train_module
from mindtrans.averaging import average_weights, keep_epoch_weights, validation_bleu
from mindtrans.batching import BucketBatcher
from mindtrans.bundle import load_bundle
from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs, write_synthetic
from mindtrans.data import BOS, EOS, Vocab, build_vocabs, detokenize, encode_pairs, load_split, tokenize
from mindtrans.decode import Translator
from mindtrans.model import Transformer
from mindtrans.rundir import RunDir
from mindtrans.schedule import WarmupSchedule
from mindtrans.steps import clip_by_global_norm, make_train_step
from mindtrans.train_config import TrainConfig
from mindtrans.training import NonFiniteLossError, train

N_TRAIN = 64
BATCHES_PER_EPOCH = N_TRAIN // 8      # batch_tokens 64 / length 8 = 8 rows
EPOCHS = 2
TOTAL = BATCHES_PER_EPOCH * EPOCHS   # 16 steps
STOP_AT = 5                          # the stopped run: mid-way through epoch 1
INTERRUPT_AT = 4                     # Ctrl-C arrives while fetching the 4th batch: 3 steps done

# Length-bucketed batches, whose counts the constants above spell out; the loop is the same for
# packed rows (the default), which tests/test_packing.py trains and resumes.
CFG = TrainConfig(preset="tiny", corpus="synthetic", epochs=EPOCHS, batch_tokens=64, pack=False, max_len=8,
                  min_freq=1, lr=3e-3, warmup_steps=4, schedule="inverse_sqrt", label_smoothing=0.1, dropout=0.0,
                  seed=0)


def run_train(data_dir, out, resume=False, **overrides):
    return train(data_dir, out, dataclasses.replace(CFG, **overrides), resume=resume, verbose=False)


def load(path):
    """(name -> NumPy array, extra) of a checkpoint."""
    return checkpoint.load(path)


def assert_same_state(a, b, atol=1e-6):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


def max_difference(a, b, names=None):
    names = names or [n for n in a if n.startswith(("encoder.", "decoder.", "generator."))]
    return max(float(np.abs(a[n].astype(np.float64) - b[n]).max()) for n in names)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- shared runs
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=N_TRAIN, n_val=16, n_test=16)
    return root


@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    """An uninterrupted run of TOTAL steps (2 complete epochs)."""
    out = tmp_path_factory.mktemp("full")
    summary = run_train(data_dir, out)
    return out, summary


@pytest.fixture(scope="module")
def stopped_run(data_dir, tmp_path_factory):
    """A run stopped by max_steps=STOP_AT, mid-epoch; tests copy it before touching it."""
    out = tmp_path_factory.mktemp("stopped")
    summary = run_train(data_dir, out, max_steps=STOP_AT)
    return out, summary


@pytest.fixture(scope="module")
def resumed_run(data_dir, stopped_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("resumed") / "run"
    shutil.copytree(stopped_run[0], out)
    summary = run_train(data_dir, out, resume=True, max_steps=0)  # no step limit now: finish both epochs
    return out, summary


@pytest.fixture(scope="module")
def interrupted_run(data_dir, tmp_path_factory):
    """Ctrl-C inside the batch loop, then a resume: (snapshot dir right after Ctrl-C, summary, resumed dir, summary)."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    calls = {"n": 0}
    original = BucketBatcher.collate

    def collate(self, indices):
        if self.shuffle:  # the training batcher; validation batches are not shuffled
            calls["n"] += 1
            if calls["n"] == INTERRUPT_AT:
                raise KeyboardInterrupt
        return original(self, indices)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BucketBatcher, "collate", collate)
        summary = run_train(data_dir, out)
    snapshot = out.parent / "snapshot"
    shutil.copytree(out, snapshot)
    resumed = run_train(data_dir, out, resume=True)
    return snapshot, summary, out, resumed


# --------------------------------------------------------------------------- overfitting
def test_tiny_model_overfits_eight_pairs_and_then_translates_them_exactly():
    pairs = [p for p in synthetic_pairs(200, seed=3) if len(tokenize(p[0])) <= 12 and len(tokenize(p[1])) <= 12][:8]
    assert len(pairs) == 8
    src_vocab, tgt_vocab = build_vocabs(pairs, min_freq=1)
    batcher = BucketBatcher(encode_pairs(pairs, src_vocab, tgt_vocab, max_len=16), batch_tokens=8 * 16,
                            boundaries=(16,), max_len=16, shuffle=True, seed=0, drop_remainder=True)
    assert batcher.shapes() == {(8, 16)}

    ms.set_seed(0)
    config = TransformerConfig.preset("tiny", dropout=0.0, max_len=32).with_vocab(len(src_vocab), len(tgt_vocab))
    model = Transformer(config)
    model.set_train(True)
    cfg = TrainConfig(preset="tiny", lr=5e-3, warmup_steps=5, schedule="constant", label_smoothing=0.0)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=WarmupSchedule(cfg.lr, cfg.warmup_steps, "constant"),
                        beta1=0.9, beta2=0.98, eps=1e-9)
    step = make_train_step(model, optimizer, cfg)
    src, tgt = batcher.collate(batcher.plan(0)[0])
    losses = []
    for _ in range(400):
        loss, nll_sum, tokens, finite = step(ms.Tensor(src), ms.Tensor(tgt))
        losses.append(float(loss.asnumpy()))
        assert bool(finite.asnumpy())
        if losses[-1] < 0.01:
            break
    # without smoothing the loss is the plain NLL per real target token
    assert float(nll_sum.asnumpy()) / float(tokens.asnumpy()) == pytest.approx(losses[-1], rel=1e-5)
    assert float(tokens.asnumpy()) == int((tgt[:, 1:] != 1).sum())
    assert losses[0] > 3.0 and losses[-1] < 0.01, f"did not overfit: {losses[0]:.3f} -> {losses[-1]:.4f}"

    translator = Translator(model, src_vocab, tgt_vocab)
    sources = [s for s, _ in pairs]
    expected = [tgt_vocab.encode(tokenize(t)) for _, t in pairs]
    assert translator.translate_ids(sources, beam_size=1) == expected
    assert translator.translate_ids(sources, beam_size=4) == expected
    assert translator.translate(sources[:3], beam_size=3) == [detokenize(tokenize(t)) for _, t in pairs[:3]]


# --------------------------------------------------------------------------- resume
def test_stopped_run_reports_its_limit(stopped_run):
    out, summary = stopped_run
    assert summary["steps"] == STOP_AT and summary["epochs_completed"] == 0
    assert summary["stopped"] == f"reached --max-steps {STOP_AT}"
    _, progress = load(out / "latest.ckpt")
    assert (progress["epoch"], progress["batch"], progress["step"]) == (0, STOP_AT, STOP_AT)


def test_resumed_run_ends_with_the_same_parameters_as_an_uninterrupted_one(full_run, resumed_run):
    (full, full_summary), (resumed, resumed_summary) = full_run, resumed_run
    assert full_summary["steps"] == resumed_summary["steps"] == TOTAL
    assert full_summary["stopped"] == resumed_summary["stopped"] == "completed"

    full_state, full_progress = load(full / "latest.ckpt")
    resumed_state, resumed_progress = load(resumed / "latest.ckpt")
    # everything: weights, Adam moments, beta powers, the step counter
    assert {"global_step", "beta1_power", "beta2_power"} <= set(full_state)
    assert any(name.startswith("moment1.") for name in full_state)
    assert int(np.asarray(resumed_state["global_step"]).reshape(-1)[0]) == TOTAL
    assert_same_state(full_state, resumed_state)
    for key in ("epoch", "batch", "step"):
        assert full_progress[key] == resumed_progress[key]
    assert resumed_progress["best_val_loss"] == pytest.approx(full_progress["best_val_loss"], rel=1e-6)
    # the stopped run validated once more (mid-epoch 1): one extra, incomplete history row
    assert [r["step"] for r in full_progress["history"]] == [BATCHES_PER_EPOCH, TOTAL]
    assert [r["step"] for r in resumed_progress["history"]] == [STOP_AT, BATCHES_PER_EPOCH, TOTAL]
    assert [r["complete"] for r in resumed_progress["history"]] == [False, True, True]

    full_model, full_extra = load(full / "model.ckpt")
    resumed_model, resumed_extra = load(resumed / "model.ckpt")
    assert_same_state(full_model, resumed_model)
    assert resumed_extra["step"] == full_extra["step"]


def test_resumed_run_counts_the_training_time_before_the_stop(stopped_run, resumed_run):
    _, progress = checkpoint.load(stopped_run[0] / "latest.ckpt")
    assert progress["train_seconds"] >= stopped_run[1]["train_time_s"] - 1.0
    assert resumed_run[1]["train_time_s"] > progress["train_seconds"]


def test_resume_changed_the_weights_of_the_stopped_run(stopped_run, resumed_run):
    before, _ = load(stopped_run[0] / "latest.ckpt")
    after, _ = load(resumed_run[0] / "latest.ckpt")
    assert max_difference(before, after) > 1e-3


def test_resume_without_more_steps_trains_nothing(data_dir, stopped_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    before = sha256(out / "latest.ckpt")
    summary = run_train(data_dir, out, resume=True, max_steps=STOP_AT)
    assert summary["steps"] == STOP_AT
    assert summary["stopped"] == f"reached --max-steps {STOP_AT}"
    assert sha256(out / "latest.ckpt") == before


def test_resume_says_which_flags_it_ignores(data_dir, stopped_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    cfg = dataclasses.replace(CFG, max_steps=STOP_AT, lr=CFG.lr * 2, seed=5)
    summary = train(data_dir, out, cfg, resume=True, verbose=True)
    assert summary["steps"] == STOP_AT  # nothing to train: the run keeps its own lr and seed
    warning = next(line for line in capsys.readouterr().out.splitlines() if "ignored:" in line)
    assert f"--lr {CFG.lr * 2} (saved: {CFG.lr})" in warning and "--seed 5 (saved: 0)" in warning
    assert "--max-steps" not in warning.split("ignored:")[1].split("(only")[0]


def test_resume_and_overwrite_together_are_refused(data_dir, stopped_run):
    with pytest.raises(ValueError, match="--resume continues the run in --out and --overwrite replaces it"):
        train(data_dir, stopped_run[0], CFG, resume=True, overwrite=True, verbose=False)


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_out_that_holds_no_run_is_never_replaced(data_dir, tmp_path, overwrite):
    export, mine = tmp_path / "export", tmp_path / "mine"
    for directory, names in ((export, ["manifest.json", "config.json"]), (mine, ["config.json"])):
        directory.mkdir()
        for name in names:
            (directory / name).write_text('{"my": "settings"}')
    with pytest.raises(FileExistsError, match="holds an export \\(manifest.json\\), not a run"):
        train(data_dir, export, CFG, overwrite=overwrite, verbose=False)
    with pytest.raises(FileExistsError, match="holds config.json but no run .* not mindtrans's to replace"):
        train(data_dir, mine, CFG, overwrite=overwrite, verbose=False)
    assert (mine / "config.json").read_text() == (export / "config.json").read_text() == '{"my": "settings"}'


def test_resume_needs_a_latest_checkpoint(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        run_train(data_dir, tmp_path / "empty", resume=True)


def test_resume_trains_on_the_corpus_it_started_on_not_a_new_auto_choice(data_dir, stopped_run, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    saved = json.loads((out / "train_config.json").read_text())
    saved["train"]["corpus"] = "auto"  # as `mindtrans train` without --corpus saves it
    (out / "train_config.json").write_text(json.dumps(saved))
    monkeypatch.setattr(train_module, "resolve_corpus", lambda *a: pytest.fail("resume chose a corpus again"))
    assert train(data_dir, out, None, resume=True, verbose=False)["steps"] == STOP_AT  # synthetic, as saved


@pytest.mark.parametrize("damage, expected", [
    (lambda out: (out / "src_vocab.json").write_text((out / "tgt_vocab.json").read_text()),
     r"src_vocab.json in .* changed after the run saved it"),
    (lambda out: (out.parent / "data" / "synthetic" / "train.en").write_text("Another corpus.\n" * 64),
     r"train.en is not the file this run trained on .*--data-dir "),
    (lambda out: (out / "train_config.json").write_text('{"data_dir": "d"}'),
     r"train_config.json is not a training configuration that mindtrans wrote \(KeyError"),
    (lambda out: (out / "train_config.json").write_text(
        (out / "train_config.json").read_text().replace('"epochs": 2', '"epochs": "2"')),
     r"train_config.json is not a training configuration .*epochs must be int, got '2'"),
    (lambda out: shutil.copy(out / "model.ckpt", out / "latest.ckpt"),
     r"latest.ckpt holds weights but no training progress"),
    (lambda out: (out / "metadata.json").write_text("[]"),
     r"metadata.json is not a metadata file mindtrans wrote: it holds a JSON list, not an object; restore it"),
])
def test_resume_refuses_a_run_or_data_changed_since_it_saved_them(data_dir, stopped_run, tmp_path, damage,
                                                                   expected):
    shutil.copytree(data_dir, tmp_path / "data")
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    damage(out)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    with pytest.raises(ValueError, match=expected):
        run_train(tmp_path / "data", out, resume=True)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before  # nothing touched


def test_heads_and_dropout_flags_override_the_preset(data_dir, tmp_path):
    run_train(data_dir, tmp_path / "run", max_steps=1, heads=2, dropout=0.05, mode="pynative")  # no graph needed
    config = json.loads((tmp_path / "run" / RunDir.CONFIG).read_text())
    assert (config["n_heads"], config["dropout"]) == (2, 0.05)  # the tiny preset's: 4 heads, dropout 0
    with pytest.raises(ValueError, match="--heads must be at least 1, got 0"):
        dataclasses.replace(CFG, heads=0)
    with pytest.raises(ValueError, match="d_model=32 is not divisible by n_heads=3"):
        run_train(data_dir, tmp_path / "three", max_steps=1, heads=3)


# --------------------------------------------------------------------------- seeds
def test_same_seed_gives_the_same_run_and_another_seed_a_different_one(data_dir, stopped_run, tmp_path):
    reference, _ = load(stopped_run[0] / "latest.ckpt")
    run_train(data_dir, tmp_path / "again", max_steps=STOP_AT)
    again, _ = load(tmp_path / "again" / "latest.ckpt")
    assert set(again) == set(reference)
    for name in reference:
        assert np.array_equal(again[name], reference[name]), name
    assert (tmp_path / "again" / "model.ckpt").read_bytes() == (stopped_run[0] / "model.ckpt").read_bytes()

    run_train(data_dir, tmp_path / "other", max_steps=STOP_AT, seed=1)
    other, _ = load(tmp_path / "other" / "latest.ckpt")
    assert max_difference(reference, other) > 1e-2


# --------------------------------------------------------------------------- atomic saves
def small_params(value):
    return [ms.Parameter(ms.Tensor(np.full((3, 4), value, np.float32)), name="w"),
            ms.Parameter(ms.Tensor(np.arange(4, dtype=np.float32) + value), name="b")]


def test_atomic_save_round_trip(tmp_path):
    path = tmp_path / "state.ckpt"
    checkpoint.atomic_save(small_params(1.0), path, extra={"step": 3, "note": "ü"})
    saved, extra = checkpoint.load(path)
    assert extra == {"step": 3, "note": "ü"}
    assert set(saved) == {"w", "b"}
    np.testing.assert_array_equal(saved["w"], np.ones((3, 4), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.ckpt"]
    checkpoint.atomic_save(small_params(2.0), path)  # no extra; replaces the read-only file MindSpore wrote
    saved, extra = checkpoint.load(path)
    assert extra is None and saved["w"][0, 0] == 2.0
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "absent.ckpt")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_save_interrupted_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "latest.ckpt"
    checkpoint.atomic_save(small_params(1.0), path, extra={"step": 1})
    good = path.read_bytes()
    written = []

    def failing_save(params, file_name, *args, **kwargs):
        # As MindSpore does: a partial file at <name without .ckpt>.tmp, then the failure
        written.append(os.path.splitext(file_name)[0] + ".tmp")
        with open(written[-1], "wb") as f:
            f.write(good[:len(good) // 3])
        raise error

    monkeypatch.setattr(ms, "save_checkpoint", failing_save)
    with pytest.raises(type(error)):
        checkpoint.atomic_save(small_params(2.0), path, extra={"step": 2})
    monkeypatch.undo()

    assert written and written[0] != str(path)  # it wrote somewhere else, never onto the good file
    assert path.read_bytes() == good
    saved, extra = checkpoint.load(path)
    assert extra == {"step": 1} and saved["w"][0, 0] == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.ckpt"]  # no temporary file left


# --------------------------------------------------------------------------- non-finite loss
def test_non_finite_loss_stops_with_the_step_and_leaves_the_checkpoint_alone(data_dir, stopped_run, tmp_path,
                                                                            monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(stopped_run[0], out)
    latest_before, model_before = sha256(out / "latest.ckpt"), sha256(out / "model.ckpt")
    original = train_module.make_train_step

    def poisoned_make_train_step(model, optimizer, cfg, loss_scaler=None, **kwargs):
        step = original(model, optimizer, cfg, loss_scaler, **kwargs)

        def poisoned(*batch):
            # Before the first call: the compiled graph binds the parameters' data when it is
            # built, and does not see a set_data() made after that.
            weight = model.trainable_params()[0]
            if not np.isnan(weight.asnumpy()).all():
                weight.set_data(ms.Tensor(np.full(weight.shape, np.nan, np.float32)))
            return step(*batch)

        return poisoned

    monkeypatch.setattr(train_module, "make_train_step", poisoned_make_train_step)
    with pytest.raises(NonFiniteLossError) as info:
        run_train(data_dir, out, resume=True, max_steps=TOTAL)
    message = str(info.value)
    assert "loss became nan" in message
    assert f"at step {STOP_AT + 1} " in message
    assert f"{out / 'latest.ckpt'} is untouched" in message

    assert sha256(out / "latest.ckpt") == latest_before and sha256(out / "model.ckpt") == model_before
    state, progress = load(out / "latest.ckpt")
    assert progress["step"] == STOP_AT
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")
    load_bundle(out, weights="latest.ckpt")  # still a usable model


# --------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_saves_progress_and_resume_finishes_the_same_run(interrupted_run, full_run):
    snapshot, summary, resumed, resumed_summary = interrupted_run
    steps_done = INTERRUPT_AT - 1
    assert summary["stopped"] == "interrupted"
    assert summary["steps"] == steps_done
    state, progress = load(snapshot / "latest.ckpt")
    assert (progress["epoch"], progress["batch"], progress["step"]) == (0, steps_done, steps_done)
    assert int(np.asarray(state["global_step"]).reshape(-1)[0]) == steps_done
    metadata = json.loads((snapshot / "metadata.json").read_text())
    assert metadata["training"]["stopped"] == "interrupted"

    assert resumed_summary["stopped"] == "completed" and resumed_summary["steps"] == TOTAL
    full_state, _ = load(full_run[0] / "latest.ckpt")
    final_state, _ = load(resumed / "latest.ckpt")
    assert_same_state(full_state, final_state)


def test_sigterm_handler_is_restored_after_training(interrupted_run):
    import signal

    assert signal.getsignal(signal.SIGTERM) is not signal.default_int_handler


# --------------------------------------------------------------------------- AMP and PyNative
def test_mixed_precision_on_cpu(data_dir, interrupted_run, tmp_path):
    out = tmp_path / "amp"
    steps = INTERRUPT_AT - 1
    try:
        summary = run_train(data_dir, out, amp="on", max_steps=steps)
    except (RuntimeError, TypeError, ValueError) as err:
        message = str(err)
        if any(s in message.lower() for s in ("not support", "unsupported", "kernel")):
            pytest.skip(f"MindSpore's CPU backend cannot run this model in float16: {message.splitlines()[0]}")
        raise
    assert summary["steps"] == steps
    state, progress = load(out / "latest.ckpt")
    assert {"scale_value", "counter"} <= set(state)  # the loss scaler is part of the resumable state
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")
    assert all(math.isfinite(row["train_loss"]) for row in progress["history"])
    # the loss scale only drops on overflow; either way the optimizer made real updates
    updates = int(np.asarray(state["global_step"]).reshape(-1)[0])
    assert 1 <= updates <= steps
    float32_state, _ = load(interrupted_run[0] / "latest.ckpt")  # float32, same seed, same steps
    difference = max_difference(float32_state, state)
    assert 1e-6 < difference < 0.05, f"float16 should change the weights a little, not {difference}"
    assert load_bundle(out).model.config.d_model == 32  # the published weights load as a float32 model


def test_pynative_mode_trains_like_graph_mode(data_dir, interrupted_run, tmp_path):
    out = tmp_path / "pynative"
    steps = INTERRUPT_AT - 1
    summary = run_train(data_dir, out, mode="pynative", max_steps=steps)
    assert summary["steps"] == steps
    state, _ = load(out / "latest.ckpt")
    graph_state, _ = load(interrupted_run[0] / "latest.ckpt")  # graph mode, stopped after the same steps
    assert_same_state(graph_state, state, atol=1e-5)


# --------------------------------------------------------------------------- logs and bundle
def test_logs_metadata_and_bundle_files(full_run, data_dir):
    out, summary = full_run
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "src_vocab.json", "tgt_vocab.json", "model.ckpt", "latest.ckpt",
                     "train_config.json", "metadata.json", "log.csv", "log.json"}  # no temporary files

    rows = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["step"] for r in rows] == [BATCHES_PER_EPOCH, TOTAL]
    assert all(r["complete"] for r in rows)
    for r in rows:
        assert r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))
        assert 0 < r["lr"] <= CFG.lr and r["tokens_per_s"] > 0 and math.isfinite(r["train_loss"])
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    with open(out / "log.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 2 and list(csv_rows[0]) == list(rows[0])
    for c, r in zip(csv_rows, rows):
        assert int(c["step"]) == r["step"] and float(c["val_loss"]) == pytest.approx(r["val_loss"])

    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["mindtrans_version"] == mindtrans.__version__
    assert metadata["mindspore_version"] == ms.__version__
    assert metadata["python"] and metadata["platform"]
    files = data_dir / "synthetic"
    assert metadata["data_sha256"] == {f"{split}.{lang}": sha256(files / f"{split}.{lang}")
                                       for split in ("train", "val") for lang in ("de", "en")}
    assert metadata["training"] == summary
    assert summary["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in rows))
    _, model_extra = load(out / "model.ckpt")
    assert model_extra["val_loss"] == pytest.approx(summary["best_val_loss"])

    train_info = json.loads((out / "train_config.json").read_text())
    assert train_info["corpus"] == "synthetic" and TrainConfig.from_dict(train_info["train"]) == CFG
    config = TransformerConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert config.src_vocab_size == len(Vocab.load(out / "src_vocab.json"))
    assert config.tgt_vocab_size == len(Vocab.load(out / "tgt_vocab.json"))
    assert config.d_model == 32 and config.dropout == 0.0
    bundle = load_bundle(out)
    ids = bundle.translator().translate_ids(["Ein Mann fährt Fahrrad."])[0]
    assert BOS not in ids and EOS not in ids


def test_a_real_signal_mid_step_finishes_that_step_then_saves(data_dir, tmp_path):
    """SIGINT arriving while a batch is being prepared: that step still runs and is counted once."""
    import os
    import signal

    calls = {"n": 0}
    original = BucketBatcher.collate

    def collate(self, indices):
        if self.shuffle:
            calls["n"] += 1
            if calls["n"] == INTERRUPT_AT:
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, indices)

    before = signal.getsignal(signal.SIGINT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BucketBatcher, "collate", collate)
        summary = run_train(data_dir, tmp_path / "run", mode="pynative")  # the signal arrives between steps
    assert summary["stopped"] == "interrupted"
    assert summary["steps"] == INTERRUPT_AT
    state, progress = load(tmp_path / "run" / "latest.ckpt")
    assert progress["step"] == progress["batch"] == INTERRUPT_AT
    assert int(np.asarray(state["global_step"]).reshape(-1)[0]) == INTERRUPT_AT
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- checkpoint averaging
def test_average_weights_is_the_element_wise_mean(tmp_path):
    a, b = nn.Dense(3, 2), nn.Dense(3, 2)
    checkpoint.atomic_save(a, tmp_path / "a.ckpt")
    checkpoint.atomic_save(b, tmp_path / "b.ckpt")
    mean = average_weights([tmp_path / "a.ckpt", tmp_path / "b.ckpt"])
    np.testing.assert_allclose(mean["weight"], (a.weight.asnumpy() + b.weight.asnumpy()) / 2, rtol=1e-6)
    np.testing.assert_allclose(mean["bias"], (a.bias.asnumpy() + b.bias.asnumpy()) / 2, rtol=1e-6)
    checkpoint.atomic_save(nn.Dense(4, 2), tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="cannot average .*c.ckpt: weight has shape"):
        average_weights([tmp_path / "a.ckpt", tmp_path / "c.ckpt"])


def test_average_last_publishes_whichever_weights_translate_validation_best(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = run_train(data_dir, out, epochs=3, average_last=2)
    kept = sorted(path.name for path in (out / RunDir.EPOCHS).iterdir())
    assert kept == ["epoch_002.ckpt", "epoch_003.ckpt"]  # epoch 1 was pruned
    averaging = summary["averaging"]
    candidates = {"lowest validation loss", "last", "mean of epochs 2-3"}
    assert set(averaging["candidates"]) == candidates
    bleu = {name: scores["val_bleu"] for name, scores in averaging["candidates"].items()}
    assert bleu[averaging["published"]] == max(bleu.values())
    published, extra = load(out / "model.ckpt")
    assert extra["published"] == averaging["published"]
    expected = {"mean of epochs 2-3": average_weights([out / "epochs" / name for name in kept]),
                "last": load(out / "epochs" / "epoch_003.ckpt")[0]}  # three whole epochs: the last is epoch 3's
    if averaging["published"] in expected:
        assert_same_state({n: published[n] for n in expected["last"]}, expected[averaging["published"]])
    # What was measured is what the bundle now translates: the same greedy validation BLEU.
    bundle = load_bundle(out)
    val_pairs = load_split(data_dir, "val", corpus="synthetic")
    assert validation_bleu(bundle.model, val_pairs, bundle.src_vocab, bundle.tgt_vocab) == \
        pytest.approx(extra["val_bleu"], abs=1e-6)
    assert json.loads((out / "metadata.json").read_text())["training"]["averaging"] == averaging
    # Resuming the finished run chooses again, and names model.ckpt for what it now holds.
    again = run_train(data_dir, out, resume=True, epochs=3, average_last=2)["averaging"]
    assert set(again["candidates"]) == {f"published earlier: {averaging['published']}", "last", "mean of epochs 2-3"}


def test_a_run_stopped_inside_an_epoch_averages_its_last_weights_too(data_dir, tmp_path):
    out = tmp_path / "run"
    summary = run_train(data_dir, out, epochs=3, max_steps=2 * BATCHES_PER_EPOCH + 3, average_last=2)
    assert sorted(path.name for path in (out / RunDir.EPOCHS).iterdir()) == ["epoch_002.ckpt", "epoch_003.ckpt"]
    assert "mean of epochs 2-3" in summary["averaging"]["candidates"]
    last, extra = load(out / "epochs" / "epoch_003.ckpt")  # epoch 3 stopped after 3 of its steps
    latest, _ = load(out / "latest.ckpt")
    assert extra["epoch"] == 3 and summary["steps"] == 2 * BATCHES_PER_EPOCH + 3
    assert_same_state(last, {name: latest[name] for name in last}, atol=0)


def test_candidates_with_the_same_weights_are_scored_once(tmp_path, monkeypatch):
    pairs = synthetic_pairs(12, seed=3)
    src_vocab, tgt_vocab = build_vocabs(pairs, min_freq=1)
    ms.set_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", max_len=32).with_vocab(len(src_vocab), len(tgt_vocab)))
    run = RunDir(tmp_path / "run")
    keep_epoch_weights(model, run, 1, keep=2)
    for param in model.get_parameters():  # epoch 2 moved every weight
        param.set_data(param + 0.01)
    keep_epoch_weights(model, run, 2, keep=2)
    checkpoint.atomic_save(model, run.model)  # the lowest-loss checkpoint is the last weights
    scored = []
    monkeypatch.setattr(averaging, "validation_bleu", lambda *args: scored.append(args) or 10.0 * len(scored))
    val_batches = BucketBatcher(encode_pairs(pairs, src_vocab, tgt_vocab, max_len=32), batch_tokens=256,
                                max_len=32, shuffle=False)
    result = averaging.publish_best_weights(model, run, 2, pairs, val_batches, (src_vocab, tgt_vocab), step=2,
                                            verbose=False)
    candidates = result["candidates"]
    assert set(candidates) == {"lowest validation loss", "last", "mean of epochs 1-2"}
    assert len(scored) == 2  # the mean, and the one set of weights behind the other two names
    assert candidates["last"] == candidates["lowest validation loss"] != candidates["mean of epochs 1-2"]
    assert result["published"] == "mean of epochs 1-2"  # scored second: the higher BLEU of the stub


def test_average_last_must_be_zero_or_at_least_two():
    with pytest.raises(ValueError, match="--average-last must be 0"):
        TrainConfig(average_last=1)


# --------------------------------------------------------------------------- gradient clipping
@pytest.mark.parametrize("clip_norm", [0.5, 100.0])
@pytest.mark.parametrize("compiled", [False, True])
def test_clip_by_global_norm_matches_numpy(clip_norm, compiled):
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(shape).astype(np.float32) for shape in [(7, 5), (5,), (3, 2, 4)]]
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    expected = [g * (clip_norm / max(norm, clip_norm)) for g in grads]

    def clip(gs):
        return clip_by_global_norm(gs, clip_norm)

    clip = ms.jit(clip) if compiled else clip
    clipped, finite = clip(tuple(ms.Tensor(g) for g in grads))
    assert bool(finite.asnumpy())
    for got, want in zip(clipped, expected):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-5, atol=1e-7)
    if clip_norm < norm:  # clipped onto the sphere; otherwise untouched
        got_norm = math.sqrt(sum(float((c.asnumpy().astype(np.float64) ** 2).sum()) for c in clipped))
        assert got_norm == pytest.approx(clip_norm, rel=1e-5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_clip_by_global_norm_flags_any_non_finite_gradient(bad):
    grads = [np.ones((4, 3), np.float32), np.ones(6, np.float32)]
    grads[1][2] = bad
    _, finite = clip_by_global_norm(tuple(ms.Tensor(g) for g in grads), 1.0)
    assert not bool(finite.asnumpy())
