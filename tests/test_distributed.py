"""Data-parallel training with MindSpore's msrun, on this machine's CPU: two workers on 127.0.0.1.

The central check: two workers that each take every other batch of the epoch plan end
with the same weights, Adam state and logs as one process that accumulates the same two
batches into each optimizer step (`accum_steps=2`). Then: a worker killed mid-training
makes the whole job fail, with messages that say which worker and what to do, and the
run directory keeps a complete, loadable checkpoint; SIGTERM to one worker stops them all
after the same step, with the state saved.

Every msrun job gets a free port, a time limit, and is cleaned up even when a test fails:
msrun's own process group (msrun, its scheduler, its `tail -f`) and the workers, which
msrun starts in sessions of their own, found by the port in their environment.
"""
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mindtrans import checkpoint, distributed
from mindtrans.bundle import load_bundle
from mindtrans.cli import build_parser
from mindtrans.corpus import write_synthetic
from mindtrans.data import build_vocabs, load_split
from mindtrans.rundir import RunDir
from mindtrans.steps import epoch_batches, make_global_batch_step, make_train_step
from mindtrans.train_config import TrainConfig
from mindtrans.training import make_batcher, train

psutil = pytest.importorskip("psutil")  # a dependency of MindSpore (msrun uses it)

ROOT = Path(__file__).resolve().parents[1]
MSRUN = Path(sys.executable).with_name("msrun")
if not MSRUN.is_file() and shutil.which("msrun"):
    MSRUN = Path(shutil.which("msrun"))
N_TRAIN = 64
BATCHES_PER_EPOCH = N_TRAIN // 8   # batch_tokens 64 / length 8 = 8 rows: 8 batches, 4 per worker
EPOCHS = 2
STEPS = BATCHES_PER_EPOCH // 2 * EPOCHS  # two batches per optimizer step: 8 steps
CFG = TrainConfig(preset="tiny", corpus="synthetic", epochs=EPOCHS, batch_tokens=64, max_len=8, min_freq=1,
                  lr=3e-3, warmup_steps=4, schedule="inverse_sqrt", label_smoothing=0.1, dropout=0.0, seed=0)
BUNDLE_FILES = {"config.json", "src_vocab.json", "tgt_vocab.json", "model.ckpt", "latest.ckpt",
                "train_config.json", "metadata.json", "log.csv", "log.json"}

needs_msrun = pytest.mark.skipif(not MSRUN.is_file() or not sys.platform.startswith("linux"),
                                 reason="msrun (installed with MindSpore) was not found, or this is not Linux")


def train_args(data_dir, out, epochs=EPOCHS):
    """The `mindtrans train` arguments for CFG."""
    return ["train", "--data-dir", data_dir, "--out", out, "--preset", CFG.preset, "--corpus", CFG.corpus,
            "--epochs", epochs, "--batch-tokens", CFG.batch_tokens, "--max-len", CFG.max_len,
            "--min-freq", CFG.min_freq, "--lr", CFG.lr, "--warmup-steps", CFG.warmup_steps,
            "--schedule", CFG.schedule, "--label-smoothing", CFG.label_smoothing, "--dropout", CFG.dropout,
            "--seed", CFG.seed]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_processes(port):
    """The processes of the msrun job on `port` (scheduler, workers, msrun's `tail -f`)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("MS_SCHED_PORT") == str(port):
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def worker_process(port, rank):
    for proc in job_processes(port):
        try:
            env, cmdline = proc.environ(), " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == str(rank) and "mindtrans" in cmdline:
            return proc
    return None


class MsrunJob:
    """`msrun --worker_num=2 ... python -m mindtrans ARGS`, its console output going to a file."""

    def __init__(self, tmp_path, args, workers=2, env=None):
        self.port = free_port()
        self.log_dir = tmp_path / "msrun_log"
        self.console = tmp_path / "console.txt"
        cmd = [str(MSRUN), f"--worker_num={workers}", f"--local_worker_num={workers}", "--master_addr=127.0.0.1",
               f"--master_port={self.port}", f"--log_dir={self.log_dir}", "--join=True", "--cluster_time_out=90",
               "python", "-m", "mindtrans", *map(str, args)]
        # msrun starts `python` from PATH: this interpreter first. GLOG_v=3: MindSpore's errors only.
        full_env = {**os.environ, "MINDTRANS_DEVICE": "CPU", "GLOG_v": "3",
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
                    **(env or {})}
        with open(self.console, "w") as console:
            self.process = subprocess.Popen(cmd, stdout=console, stderr=subprocess.STDOUT, env=full_env,
                                            cwd=tmp_path, start_new_session=True)
        self.started = time.time()

    def wait(self, timeout):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"msrun did not finish within {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        """What a user sees in the terminal (progress bars' carriage returns as new lines)."""
        return self.console.read_text(errors="replace").replace("\r", "\n")

    def cleanup(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)  # msrun, its scheduler and tail processes
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
        leftovers = job_processes(self.port)  # workers run in sessions of their own
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=30)


@pytest.fixture
def msrun_job(tmp_path):
    jobs = []

    def start(args, **kwargs):
        jobs.append(MsrunJob(tmp_path, args, **kwargs))
        return jobs[-1]

    yield start
    for job in jobs:
        job.cleanup()


def load(path):
    saved, extra = checkpoint.load(path)
    return saved, extra


def assert_same_state(a, b, atol=1e-5):
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=N_TRAIN, n_val=16, n_test=16)
    return root


@pytest.fixture(scope="module")
def accumulated_run(data_dir, tmp_path_factory):
    """The reference: one process, two consecutive batches of the plan per optimizer step."""
    out = tmp_path_factory.mktemp("accumulated")
    summary = train(data_dir, out, dataclasses.replace(CFG, accum_steps=2), verbose=False)
    return out, summary


@pytest.fixture(scope="module")
def two_worker_run(data_dir, tmp_path_factory):
    """msrun with two workers, one batch each per step: (run dir, msrun log dir, console output, exit code, wall s)."""
    if not MSRUN.is_file() or not sys.platform.startswith("linux"):
        pytest.skip("msrun (installed with MindSpore) was not found, or this is not Linux")
    tmp = tmp_path_factory.mktemp("two_workers")
    job = MsrunJob(tmp, train_args(data_dir, tmp / "run"))
    try:
        code = job.wait(timeout=240)
        wall = time.time() - job.started
        output = job.output()
        if code != 0 and "MCCL" in output.upper() and "not support" in output.lower():
            pytest.skip(f"MindSpore's CPU collective communication is not available here: {output[-500:]}")
        return tmp / "run", job.log_dir, output, code, wall
    finally:
        job.cleanup()


# --------------------------------------------------------------------------- no launcher
def test_without_msrun_nothing_is_initialised(monkeypatch):
    for name in distributed.MSRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched_by_msrun()
    assert distributed.init_distributed() == (0, 1)
    assert distributed.is_main() and distributed.world_size() == 1 and distributed.describe() == ""


def test_msrun_is_recognised_by_its_environment():
    worker = {"MS_ROLE": "MS_WORKER", "MS_WORKER_NUM": "8", "MS_SCHED_HOST": "10.0.0.1", "MS_SCHED_PORT": "8118"}
    assert distributed.launched_by_msrun(worker) and not distributed.is_scheduler(worker)
    assert distributed.is_scheduler({**worker, "MS_ROLE": "MS_SCHED"})
    assert not distributed.launched_by_msrun({**worker, "MS_ROLE": ""})
    assert not distributed.launched_by_msrun({k: v for k, v in worker.items() if k != "MS_SCHED_PORT"})


def test_accum_steps_option_and_validation():
    args = build_parser().parse_args(["train", "--out", "o", "--accum-steps", "4"])
    assert args.accum_steps == 4 and TrainConfig().accum_steps == 1
    with pytest.raises(ValueError, match="--accum-steps"):
        TrainConfig(accum_steps=0)


def test_stale_temporary_files_are_removed_and_real_files_kept(tmp_path):
    stale = [".latest.abc123.tmp.ckpt", ".model.x1.tmp.ckpt", ".log.json.q9.tmp", ".metadata.json.z.tmp"]
    kept = ["latest.ckpt", "model.ckpt", "log.json", "notes.tmp", ".other.abc.tmp.ckpt"]
    for name in stale + kept:
        (tmp_path / name).write_text("x")
    removed = RunDir(tmp_path).remove_stale_temporaries()
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# --------------------------------------------------------------------------- shards and accumulation
@pytest.fixture(scope="module")
def batchers(data_dir):
    pairs = load_split(data_dir, "train", corpus="synthetic")
    src_vocab, tgt_vocab = build_vocabs(pairs, CFG.min_freq)
    whole = make_batcher(pairs, src_vocab, tgt_vocab, CFG, shuffle=True)
    shards = [make_batcher(pairs, src_vocab, tgt_vocab, CFG, shuffle=True, num_shards=2, shard_id=r)
              for r in range(2)]
    return whole, shards, (src_vocab, tgt_vocab)


def test_worker_r_reads_batches_r_r_plus_2_through_mindspore_dataset(batchers):
    """What each worker reads (through mindspore.dataset) is the whole plan's batches r, r+2, ...; this is
    also how mindspore.dataset itself shards a source (its DistributedSampler without shuffling)."""
    import mindspore.dataset as ds

    whole, shards, _ = batchers
    for epoch in (0, 1):
        plan = whole.plan(epoch)
        for r, shard in enumerate(shards):
            read = list(epoch_batches(shard, epoch, 0, world_size=2))
            assert len(read) == len(shard) == BATCHES_PER_EPOCH // 2
            for k, (src, tgt) in enumerate(read):
                expected = whole.collate(plan[r + 2 * k])
                np.testing.assert_array_equal(src, expected[0])
                np.testing.assert_array_equal(tgt, expected[1])
            resumed = list(epoch_batches(shard, epoch, 3, world_size=2))
            np.testing.assert_array_equal(resumed[0][1], read[3][1])
            assert list(epoch_batches(shard, epoch, len(shard), world_size=2)) == []  # stopped at its end
            sharded = ds.NumpySlicesDataset({"k": np.arange(len(plan))}, shuffle=False, num_shards=2, shard_id=r)
            assert [int(x["k"]) for x in sharded.create_dict_iterator(output_numpy=True, num_epochs=1)] == \
                list(range(r, len(plan), 2))


def test_accumulating_two_batches_is_one_step_on_both(batchers):
    """Gradient accumulation is exact: one step over batches (b0, b1) equals the plain step on b0 and b1
    stacked into one batch (the loss of both divided by the tokens of both). Plain SGD with rate 1, so
    that the change of each weight is its (clipped) gradient; Adam's first step is about the sign of
    each gradient, which would amplify rounding in gradients near zero."""
    from mindspore import nn

    from mindtrans.config import TransformerConfig
    from mindtrans.model import Transformer

    whole, _, (src_vocab, tgt_vocab) = batchers
    b0, b1 = (whole.collate(indices) for indices in whole.plan(0)[:2])
    assert b0[0].shape == b1[0].shape
    cfg = dataclasses.replace(CFG, mode="pynative", accum_steps=2)
    results = []
    for accumulate in (True, False):
        ms.set_seed(0)
        config = TransformerConfig.preset("tiny", dropout=0.0, max_len=8).with_vocab(len(src_vocab), len(tgt_vocab))
        model = Transformer(config)
        model.set_train(True)
        before = [p.asnumpy().copy() for p in model.trainable_params()]
        optimizer = nn.SGD(model.trainable_params(), learning_rate=1.0)
        if accumulate:
            loss, tokens, finite, flags = make_global_batch_step(model, optimizer, cfg)([b0, b1], lambda: [0.0, 1.0])
            assert finite and list(flags) == [0.0, 1.0]
        else:
            step = make_train_step(model, optimizer, cfg)
            loss, _, tokens, _ = step(*(ms.Tensor(np.concatenate([x, y])) for x, y in zip(b0, b1)))
            loss, tokens = float(loss.asnumpy()), float(tokens.asnumpy())
        changes = [p.asnumpy() - b for p, b in zip(model.trainable_params(), before)]
        results.append((loss, tokens, changes))
    (loss_a, tokens_a, changes_a), (loss_b, tokens_b, changes_b) = results
    assert tokens_a == tokens_b == (b0[1][:, 1:] != 1).sum() + (b1[1][:, 1:] != 1).sum()
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert max(float(np.abs(c).max()) for c in changes_a) > 1e-3  # a real step
    for a, b in zip(changes_a, changes_b):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-7)


def test_accumulated_run_counts_optimizer_steps(accumulated_run):
    out, summary = accumulated_run
    assert summary["steps"] == STEPS and summary["workers"] == 1 and summary["stopped"] == "completed"
    state, progress = load(out / "latest.ckpt")
    assert int(np.asarray(state["global_step"]).reshape(-1)[0]) == STEPS
    assert [row["step"] for row in progress["history"]] == [STEPS // 2, STEPS]
    assert not any(name.startswith("accumulated.") for name in state)  # accumulators are not training state


# --------------------------------------------------------------------------- two workers
@needs_msrun
def test_two_workers_end_with_the_same_parameters_as_one_process_accumulating(two_worker_run, accumulated_run):
    run, log_dir, output, code, wall = two_worker_run
    assert code == 0, output[-4000:]
    print(f"msrun with two workers: {wall:.1f} s wall time")
    reference, _ = accumulated_run
    for name in ("latest.ckpt", "model.ckpt"):
        state, extra = load(run / name)
        expected, expected_extra = load(reference / name)
        assert_same_state(state, expected)  # weights, Adam moments, beta powers, step counter
    _, progress = load(run / "latest.ckpt")
    _, expected = load(reference / "latest.ckpt")
    assert (progress["epoch"], progress["batch"], progress["step"]) == (EPOCHS, 0, STEPS)
    assert expected["batch"] == 0 and expected["step"] == STEPS
    assert progress["workers"] == 2 and expected["workers"] == 1
    assert len(progress["history"]) == len(expected["history"])
    for row, ref in zip(progress["history"], expected["history"]):
        assert row["step"] == ref["step"]
        # the logged training loss covers both workers' batches, not only rank 0's
        assert row["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-5)
        assert row["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-5)


@needs_msrun
def test_only_rank_0_writes_and_prints(two_worker_run):
    run, log_dir, output, code, _ = two_worker_run
    assert code == 0, output[-4000:]
    assert {p.name for p in run.iterdir()} == BUNDLE_FILES  # and no temporary files
    metadata = json.loads((run / "metadata.json").read_text())
    assert metadata["training"]["workers"] == 2 and metadata["training"]["steps"] == STEPS
    assert TrainConfig.from_dict(json.loads((run / "train_config.json").read_text())["train"]) == CFG
    rank0, rank1 = ((log_dir / f"worker_{r}.log").read_text() for r in (0, 1))
    assert "4 batches per epoch and worker, 2 worker(s) x 1 batch(es) per step: 4 steps per epoch" in rank0
    for text in ('"workers": 2', "epoch 1: train loss", "batches per epoch"):  # the summary, progress
        assert rank0.count(text) == 1 and text not in rank1, text
    assert "mindtrans: worker rank 0 of 2, process id" in rank0 and "worker rank 1 of 2" in rank1
    assert "epoch 1: train loss" in output  # msrun shows the workers' logs on the terminal
    load_bundle(run).translator().translate(["Ein Mann fährt Fahrrad."], beam_size=1)


# --------------------------------------------------------------------------- a worker dies
@needs_msrun
def test_a_killed_worker_fails_the_job_clearly_and_leaves_a_complete_checkpoint(data_dir, tmp_path, msrun_job):
    run = tmp_path / "run"
    node_timeout = 10  # the scheduler notices a silent worker after this many seconds (MindSpore's default: 30)
    job = msrun_job(train_args(data_dir, run, epochs=10_000),
                    env={"MS_NODE_TIMEOUT": str(node_timeout), "MS_HEARTBEAT_RETRY_TIMEOUT": "5"})
    deadline = time.time() + 180
    while not (run / "latest.ckpt").is_file():  # the first epoch is done and saved
        assert job.process.poll() is None, f"msrun ended early:\n{job.output()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint after 180 s:\n{job.output()[-3000:]}"
        time.sleep(0.2)
    victim = worker_process(job.port, 1)
    assert victim is not None, [p.cmdline() for p in job_processes(job.port)]
    pid = victim.pid
    victim.kill()  # SIGKILL, like the kernel's out-of-memory killer: no chance to say anything
    killed = time.time()

    code = job.wait(timeout=node_timeout + 90)
    took = time.time() - killed
    output = job.output()
    print(f"msrun exited {took:.1f} s after worker 1 was killed")
    assert code != 0
    assert took < node_timeout + 60
    # msrun, at once: the process id of the worker that failed, which its log names with its rank
    assert f"Worker process {pid} exit with exception. Error code: -9" in output
    assert f"mindtrans: worker rank 1 of 2, process id {pid}" in (job.log_dir / "worker_1.log").read_text()
    # then the scheduler (our command line, run by msrun as the scheduler), once it gave up on the
    # workers: MindSpore's list of them, and the way on
    assert f"the msrun scheduler at 127.0.0.1:{job.port} stopped the job. Error reported by MindSpore: The total " \
           f"number of timed out node is" in output and "Timed out node list is" in output
    assert f"{run}/latest.ckpt holds the last completed epoch: continue with --resume" in output
    assert "Distributed job exited with exception" in output
    _, alive = psutil.wait_procs(job_processes(job.port), timeout=15)
    assert not alive, [p.cmdline() for p in alive]  # msrun stopped the whole job

    # latest.ckpt is complete whatever moment rank 0 was stopped at (it is replaced by a rename)
    names = {p.name for p in run.iterdir()}
    assert BUNDLE_FILES <= names
    assert all(name.endswith((".tmp", ".tmp.ckpt")) for name in names - BUNDLE_FILES), names
    state, progress = load(run / "latest.ckpt")
    assert progress["epoch"] >= 1 and progress["batch"] == 0 and progress["workers"] == 2
    assert int(np.asarray(state["global_step"]).reshape(-1)[0]) == progress["step"] == 4 * progress["epoch"]
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")

    # it resumes (here in one process with no steps left, which trains nothing) and the next run
    # clears whatever temporary file the killed save left behind
    summary = train(data_dir, run, dataclasses.replace(CFG, max_steps=progress["step"]), resume=True,
                    verbose=False)
    assert summary["steps"] == progress["step"]
    assert {p.name for p in run.iterdir()} == BUNDLE_FILES
    load_bundle(run, weights="latest.ckpt")


@needs_msrun
def test_sigterm_to_one_worker_stops_all_after_the_same_step_and_saves(data_dir, tmp_path, msrun_job):
    """A stop request (SIGTERM or Ctrl-C to a worker, --max-minutes) travels with the next step's
    all-reduce, so every worker stops after that same step; rank 0 saves, and msrun ends cleanly."""
    run = tmp_path / "run"
    job = msrun_job(train_args(data_dir, run, epochs=10_000))
    deadline = time.time() + 180
    while not (run / "latest.ckpt").is_file():
        assert job.process.poll() is None, f"msrun ended early:\n{job.output()[-3000:]}"
        assert time.time() < deadline, f"no checkpoint after 180 s:\n{job.output()[-3000:]}"
        time.sleep(0.2)
    worker_process(job.port, 1).send_signal(signal.SIGTERM)
    code = job.wait(timeout=120)
    output = job.output()
    assert code == 0, output[-3000:]
    _, progress = load(run / "latest.ckpt")
    state, _ = load(run / "latest.ckpt")
    step = progress["step"]
    assert step > 4 and int(np.asarray(state["global_step"]).reshape(-1)[0]) == step
    # a stop skips the end-of-epoch bookkeeping: after an epoch's last step the batch is 4 of 4
    assert 4 * progress["epoch"] + progress["batch"] == step and 1 <= progress["batch"] <= 4
    assert "exit with exception" not in output
    logs = [(job.log_dir / f"worker_{r}.log").read_text() for r in (0, 1)]  # complete, unlike msrun's `tail -f`
    message = f"interrupted at step {step}: saved {run / 'latest.ckpt'}; continue with --resume"
    assert [log.count(message) for log in logs] == [1, 0]  # printed by rank 0 only
    assert [log.count('"stopped": "interrupted"') for log in logs] == [1, 0]
    if progress["batch"]:  # stopped mid-epoch: positions in the epoch are per worker
        with pytest.raises(ValueError, match="saved mid-epoch by a run with 2 worker"):
            train(data_dir, run, CFG, resume=True, verbose=False)


def test_a_failed_collective_is_reported_as_a_lost_worker(tmp_path):
    err = RuntimeError("The state of the cluster is error, total nodes num: 2,\nabnormal nodes num: 1\n\n"
                       "----------------------------------------------------\n- C++ Call Stack: (For framework "
                       "developers)\n----------------------------------------------------\nfile.cc:12 Run\n")
    assert distributed.is_cluster_failure(err)
    assert not distributed.is_cluster_failure(RuntimeError("Out of memory"))
    message = str(distributed.lost_worker_error(err, tmp_path))
    assert "another worker of this job has died or become unreachable" in message
    assert f"{tmp_path}/latest.ckpt, written by rank 0, holds the last completed epoch" in message
    assert "--resume" in message
    assert message.endswith("MindSpore said: The state of the cluster is error, total nodes num: 2, "
                            "abnormal nodes num: 1")
