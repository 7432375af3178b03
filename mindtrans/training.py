"""The training loop, in named phases: prepare the run, build the step, run an epoch, end an
epoch, finish.

`train(data_dir, out, cfg)` reads the corpus, builds vocabularies, a `Transformer` and a
compiled step (`mindtrans.steps`), then runs epochs: each ends with validation, the best
weights as model.ckpt, the resumable state as latest.ckpt and the log (`mindtrans.rundir`
owns every file name). The run directory is also the model bundle (`mindtrans.bundle`).

One optimizer step may see more than one batch: `accum_steps` batches in a row
(gradient accumulation), on each of the workers of an msrun job (data parallelism, see
`mindtrans.distributed`); the loss is always divided by the number of target tokens in
the whole global batch, so that W workers take the same steps as one process with
`accum_steps=W`.
"""
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import mindspore as ms
from mindspore import amp
from tqdm.auto import tqdm

from mindtrans import checkpoint, compat, distributed
from mindtrans.averaging import keep_epoch_weights, publish_best_weights
from mindtrans.batching import BucketBatcher, PackedBatcher
from mindtrans.config import TransformerConfig
from mindtrans.corpus import ensure_corpus, explain_corpus, resolve_corpus
from mindtrans.data import Vocab, encode_pairs, load_split
from mindtrans.subword import build_vocabs, load_vocab
from mindtrans.device import select_device
from mindtrans.model import Transformer
from mindtrans.rundir import RunDir
from mindtrans.schedule import WarmupSchedule, learning_rate
from mindtrans.steps import epoch_batches, host_step, make_global_batch_step, make_train_step, use_amp, \
    validation_loss
from mindtrans.train_config import RESUME_OVERRIDES, TrainConfig, flag


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


class StopSignals:
    """Ctrl-C (SIGINT) and `kill` (SIGTERM) become a request that the loop honours between
    steps, so a step is never half-done or half-counted when the resumable state is saved."""

    def __init__(self):
        self.requested = False
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._request)

    def _request(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# Validation runs forward only, keeping no activations for a backward pass, so its batches can
# be larger: fewer PyNative calls, each launching the same number of kernels. With 4x the
# training batch, a pass of the `small` model over Multi30k's validation split takes 9.7 s
# instead of 14.7 s on the 2-core CPU; 8x gains nothing more (benchmarks/bench_validation.py).
VALIDATION_BATCH_SCALE = 4


def make_batcher(pairs, src_vocab, tgt_vocab, cfg: TrainConfig, shuffle: bool, num_shards=1, shard_id=0,
                 packed: bool = False):
    """Encoded batches: length-bucketed (training drops ragged remainders so every batch shape
    repeats), or with `packed` several pairs to a row in batches of one shape (`PackedBatcher`).
    Unshuffled batches are validation's: all pairs, `VALIDATION_BATCH_SCALE` x the tokens."""
    encoded = encode_pairs(pairs, src_vocab, tgt_vocab, max_len=cfg.max_len)
    if packed:
        if num_shards != 1:
            raise ValueError("packed batches are for a single process; shard bucketed batches instead")
        return PackedBatcher(encoded, batch_tokens=cfg.batch_tokens, shuffle=shuffle, seed=cfg.seed)
    batch_tokens = cfg.batch_tokens if shuffle else cfg.batch_tokens * VALIDATION_BATCH_SCALE
    return BucketBatcher(encoded, batch_tokens=batch_tokens, max_len=cfg.max_len, shuffle=shuffle,
                         seed=cfg.seed, drop_remainder=shuffle, num_shards=num_shards, shard_id=shard_id)


@dataclass
class Run:
    """What one training run works on, prepared once by `prepare_run`."""

    cfg: TrainConfig
    out: RunDir
    data_dir: Path
    device: str
    rank: int
    world: int
    corpus: str
    config: TransformerConfig
    src_vocab: Vocab
    tgt_vocab: Vocab
    train_pairs: list
    val_pairs: list
    packed: bool
    train_batches: object
    val_batches: object
    resume: bool
    overwrite: bool
    verbose: bool

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def one_batch_per_step(self) -> bool:
        return self.cfg.accum_steps == 1 and self.world == 1


@dataclass
class Trainer:
    """The model, its optimizer and step, and the progress saved in latest.ckpt."""

    model: object
    step: object  # (batches, read_flags) -> StepResult
    state: list  # every Parameter a resumed run needs
    loss_scaler: object
    steps_per_epoch: int
    total_steps: int
    progress: dict = field(default_factory=dict)


def prepare_run(data_dir, out, cfg: TrainConfig, resume: bool, verbose: bool, overwrite: bool = False) -> Run:
    """Device, workers, configuration (the saved one on resume), corpus, vocabularies, batchers."""
    out = RunDir(out)
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if out.is_export():
        raise FileExistsError(f"{out.path} holds an export ({RunDir.MANIFEST}), not a run: choose another --out "
                              f"(`mindtrans export --overwrite` replaces an export)")
    if not resume and out.existing_files():
        found = ", ".join(out.existing_files()[:4])
        if not out.holds_a_run():
            raise FileExistsError(f"{out.path} holds {found} but no run (no {RunDir.TRAIN_CONFIG} or checkpoint), so "
                                  f"they are not mindtrans's to replace: choose another --out")
        if not overwrite:
            raise FileExistsError(f"{out.path} already holds a run ({found}): continue it with --resume, replace it "
                                  f"with --overwrite, or choose another --out")
    if distributed.is_scheduler():  # msrun's scheduler runs this command line too: it only serves the cluster
        distributed.run_scheduler(out.path)
    device = select_device(verbose=verbose)
    rank, world = distributed.init_distributed()
    if verbose and world > 1:  # every worker: msrun names a failed worker by its process id
        print(f"mindtrans: worker rank {rank} of {world}, process id {os.getpid()}", flush=True)
    verbose = verbose and rank == 0
    cfg = _resumed_config(out, cfg, world, verbose) if resume else (cfg or TrainConfig())
    corpus = out.train_info().get("corpus") if resume else None  # the one it trained on, not "auto" again
    if corpus is None:
        corpus = resolve_corpus(data_dir, cfg.corpus)
        if verbose and cfg.corpus == "auto":
            print(explain_corpus(data_dir, cfg.corpus))
    ensure_corpus(data_dir, corpus)
    if resume:
        out.check_resumable(data_files(data_dir, corpus))
    train_pairs, val_pairs = load_split(data_dir, "train", corpus=corpus), load_split(data_dir, "val", corpus=corpus)
    if resume:
        src_vocab, tgt_vocab = load_vocab(out / RunDir.SRC_VOCAB), load_vocab(out / RunDir.TGT_VOCAB)
        config = TransformerConfig.from_dict(out.read_json(RunDir.CONFIG))
    else:
        src_vocab, tgt_vocab = build_vocabs(train_pairs, cfg.vocab, cfg.min_freq, cfg.subword_size)
        overrides = {name: value for name, value in (("dropout", cfg.dropout), ("n_heads", cfg.heads))
                     if value is not None}
        if cfg.share_embeddings:  # one table for source, target and output projection
            overrides.update(share_embeddings=True, tie_embeddings=True)
        config = TransformerConfig.preset(cfg.preset, **overrides).with_vocab(len(src_vocab), len(tgt_vocab))
        config = replace(config, max_len=max(config.max_len, cfg.max_len))
    packed = cfg.pack and cfg.accum_steps == 1 and world == 1
    # Worker r of W takes batches r, r+W, r+2W, ... of each epoch's plan (the same plan everywhere).
    train_batches = make_batcher(train_pairs, src_vocab, tgt_vocab, cfg, shuffle=True, num_shards=world,
                                 shard_id=rank, packed=packed)
    if len(train_batches) == 0:
        raise ValueError(f"{len(train_pairs)} training pairs make fewer batches than there are workers ({world}); "
                         f"use fewer workers or a smaller --batch-tokens")
    if rank == 0:
        out.check_writable()
    return Run(cfg, out, Path(data_dir), device, rank, world, corpus, config, src_vocab, tgt_vocab, train_pairs,
               val_pairs, packed, train_batches, make_batcher(val_pairs, src_vocab, tgt_vocab, cfg, shuffle=False),
               resume, overwrite, verbose)


def data_files(data_dir, corpus: str) -> list:
    """The training and validation files a run reads (their sha256 go into metadata.json)."""
    return [Path(data_dir) / corpus / f"{split}.{lang}" for split in ("train", "val") for lang in ("de", "en")]


def _resumed_config(out: RunDir, cfg: TrainConfig, world: int, verbose: bool) -> TrainConfig:
    """The configuration saved in `out`, with the stopping limits (`RESUME_OVERRIDES`) of `cfg`."""
    if not out.latest.is_file():
        where = "" if world == 1 else (f" (on {distributed.describe()}: with several machines, every one needs "
                                       f"the run directory at the same path, on shared storage or copied)")
        raise FileNotFoundError(f"nothing to resume: {out.latest} does not exist{where}")
    saved = TrainConfig.from_run(out)
    if cfg is None:
        return saved
    ignored = [name for name in cfg.differences(saved) if name not in RESUME_OVERRIDES]
    if ignored and verbose:
        print(f"mindtrans: --resume keeps the run's saved configuration; ignored: "
              f"{', '.join(f'{flag(name)} {getattr(cfg, name)} (saved: {getattr(saved, name)})' for name in ignored)}"
              f" (only {', '.join(flag(name) for name in RESUME_OVERRIDES)} change)")
    return replace(saved, **{name: getattr(cfg, name) for name in RESUME_OVERRIDES})


def build_trainer(run: Run) -> Trainer:
    """The model (the same initial weights on every worker), Adam with warm-up, the compiled step."""
    cfg = run.cfg
    ms.set_seed(cfg.seed)
    model = Transformer(run.config)
    model.set_train(True)
    steps_per_epoch = math.ceil(len(run.train_batches) / cfg.accum_steps)  # optimizer steps, on every worker
    total_steps = min(cfg.max_steps or math.inf, steps_per_epoch * cfg.epochs)
    schedule = WarmupSchedule(cfg.lr, cfg.warmup_steps, cfg.schedule, total_steps)
    optimizer = compat.adam(model.trainable_params(), learning_rate=schedule, beta1=0.9, beta2=0.98, eps=1e-9)
    loss_scaler = None
    if use_amp(cfg.amp, run.device):
        model = amp.auto_mixed_precision(model, "O2")
        loss_scaler = amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=1000)
    if run.one_batch_per_step:  # the plain single-device step: nothing extra in the compiled graph
        step = host_step(make_train_step(model, optimizer, cfg, loss_scaler, packed=run.packed))
    else:
        step = make_global_batch_step(model, optimizer, cfg, loss_scaler, run.world)
    return Trainer(model, step, checkpoint.training_state(model, optimizer, loss_scaler), loss_scaler,
                   steps_per_epoch, total_steps)


def start(run: Run, trainer: Trainer) -> None:
    """Restore latest.ckpt (resume) or write the bundle's static files; say what will be trained."""
    progress = {"epoch": 0, "batch": 0, "step": 0, "best_val_loss": None, "history": [], "workers": run.world}
    if run.resume:
        saved, progress = checkpoint.load(run.out.latest)
        if not isinstance(progress, dict) or not {"epoch", "batch", "step"} <= progress.keys():
            raise ValueError(f"{run.out.latest} holds weights but no training progress (epoch, batch, step), so it "
                             f"cannot be resumed: is it a copy of {RunDir.MODEL}? Start a new run")
        saved_world = progress.get("workers", 1)
        if progress["batch"] and saved_world != run.world:
            raise ValueError(f"{run.out.latest} was saved mid-epoch by a run with {saved_world} worker(s); "
                             f"resume it with {saved_world} (msrun --worker_num={saved_world}"
                             f"{'' if saved_world > 1 else ', or without msrun'}): batch positions are per worker")
        progress["workers"] = run.world
        checkpoint.restore(trainer.state, saved, run.out.latest, source="the run being resumed")
    trainer.progress = progress
    if run.main:
        run.out.path.mkdir(parents=True, exist_ok=True)
        removed = run.out.remove_stale_temporaries()
        if removed and run.verbose:
            print(f"removed {len(removed)} temporary file(s) an interrupted save left in {run.out.path}")
        if not run.resume:
            if run.overwrite:
                run.out.remove_run()
            run.out.write_static(run.config, run.src_vocab, run.tgt_vocab, {
                "train": run.cfg.to_dict(), "data_dir": str(run.data_dir), "corpus": run.corpus},
                data_files(run.data_dir, run.corpus))
    if run.verbose:
        print(_describe(run, trainer))


def _describe(run: Run, trainer: Trainer) -> str:
    """One line on the corpus, batches, model and precision (and, on resume, what was done)."""
    from mindtrans.params import count_parameters

    cfg, progress = run.cfg, trainer.progress
    if run.packed:
        batching = (f"{trainer.steps_per_epoch} batches of {run.train_batches.rows} packed rows x "
                    f"{run.train_batches.length} per epoch")
    elif run.one_batch_per_step:
        batching = f"{trainer.steps_per_epoch} batches per epoch"
    else:
        batching = (f"{len(run.train_batches)} batches per epoch and worker, {run.world} worker(s) x "
                    f"{cfg.accum_steps} batch(es) per step: {trainer.steps_per_epoch} steps per epoch")
    line = (f"corpus {run.corpus}: {len(run.train_pairs)} train / {len(run.val_pairs)} val pairs, vocab "
            f"{len(run.src_vocab)} src / {len(run.tgt_vocab)} tgt, {batching} "
            f"({run.train_batches.padding_ratio(0):.1%} padding), model "
            f"{count_parameters(trainer.model)['total']:,} parameters, "
            f"{'mixed' if trainer.loss_scaler else 'float32'} precision, {cfg.mode} mode")
    if run.resume:
        left = "nothing left to train" if progress["epoch"] >= cfg.epochs else f"{cfg.epochs} epochs in all"
        line += (f"\nresumed from {run.out.latest}: {progress['epoch']} epoch(s) and {progress['step']} steps "
                 f"done, {left}")
    return line


class Clock:
    """Training time: this process's, plus what the checkpoint says earlier processes spent."""

    def __init__(self, progress: dict):
        self.started = time.time()
        # older runs' checkpoints lack train_seconds: the sum of their epoch times
        self.earlier = progress.get("train_seconds", sum(row["epoch_time_s"] for row in progress["history"]))

    def minutes_here(self) -> float:
        return (time.time() - self.started) / 60

    def total_seconds(self) -> float:
        return self.earlier + time.time() - self.started


def save_latest(run: Run, trainer: Trainer, clock: Clock) -> None:
    trainer.progress["train_seconds"] = clock.total_seconds()
    if run.main:
        checkpoint.atomic_save(trainer.state, run.out.latest, extra=trainer.progress)


def run_epoch(run: Run, trainer: Trainer, clock: Clock, signals: StopSignals) -> tuple:
    """Steps from the saved batch position to the end of the epoch, or to a stop.

    Returns (statistics of the steps taken, the reason to stop or None). Ctrl-C or SIGTERM
    raise KeyboardInterrupt after the step that was running.
    """
    cfg, progress = run.cfg, trainer.progress
    epoch, per_epoch = progress["epoch"], len(run.train_batches)
    stats = {"loss_sum": 0.0, "tokens": 0.0, "started": time.time()}
    batches = epoch_batches(run.train_batches, epoch, progress["batch"], run.world)
    bar = tqdm(range(progress["batch"], per_epoch, cfg.accum_steps), desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not run.verbose, leave=False, mininterval=1.0)

    def read_flags():  # [time is up, a stop was requested]; under msrun they travel with the step
        return [bool(cfg.max_minutes and clock.minutes_here() >= cfg.max_minutes), signals.requested]

    try:
        for k in bar:
            group = [next(batches) for _ in range(min(cfg.accum_steps, per_epoch - k))]
            result = _take_step(run, trainer, group, read_flags)
            progress["step"] += 1
            progress["batch"] = k + len(group)
            stats["loss_sum"] += result.loss * result.tokens
            stats["tokens"] += result.tokens
            rate = learning_rate(progress["step"] - 1, cfg.lr, cfg.warmup_steps, cfg.schedule, trainer.total_steps)
            bar.set_postfix(loss=f"{result.loss:.3f}", lr=f"{rate:.2e}", refresh=False,
                            tok_s=f"{stats['tokens'] / max(time.time() - stats['started'], 1e-9):.0f}")
            time_up, stop_requested = result.flags[0] > 0, result.flags[1] > 0
            if stop_requested:
                raise KeyboardInterrupt
            if cfg.max_steps and progress["step"] >= cfg.max_steps:
                return stats, f"reached --max-steps {cfg.max_steps}"
            if time_up:
                return stats, f"reached --max-minutes {cfg.max_minutes}"
        return stats, None
    finally:
        bar.close()
        if hasattr(batches, "stop"):  # a mindspore.dataset iterator: end its pipeline now
            batches.stop()


def _take_step(run: Run, trainer: Trainer, group: list, read_flags):
    """One optimizer step; a non-finite loss (or update skipped without loss scaling) raises."""
    try:
        result = trainer.step(group, read_flags)
    except RuntimeError as err:
        if run.world > 1 and distributed.is_cluster_failure(err):
            raise distributed.lost_worker_error(err, run.out.path) from err
        raise
    if not math.isfinite(result.loss) or (trainer.loss_scaler is None and not result.finite):
        progress = trainer.progress
        saved = (f"the last good checkpoint {run.out.latest} is untouched" if run.out.latest.is_file() else
                 f"no checkpoint was saved yet in {run.out.path}")
        raise NonFiniteLossError(
            f"loss became {result.loss} at step {progress['step'] + 1} (epoch {progress['epoch'] + 1}); {saved}. "
            f"Lower --lr, raise --warmup-steps or --clip-norm, or turn mixed precision off with --amp off")
    return result


def end_epoch(run: Run, trainer: Trainer, stats: dict, clock: Clock) -> None:
    """Validate; keep the best weights (model.ckpt), the epoch's for averaging, latest.ckpt and the log."""
    cfg, progress = run.cfg, trainer.progress
    epoch = progress["epoch"]
    epoch_done = progress["batch"] >= len(run.train_batches)
    val = validation_loss(trainer.model, run.val_batches)  # every worker: the same weights, the same answer
    seconds = time.time() - stats["started"]
    row = {"epoch": epoch + 1, "step": progress["step"], "train_loss": stats["loss_sum"] / max(stats["tokens"], 1.0),
           "val_loss": val["loss"], "val_ppl": val["ppl"],
           "lr": learning_rate(max(progress["step"] - 1, 0), cfg.lr, cfg.warmup_steps, cfg.schedule,
                               trainer.total_steps),
           "tokens_per_s": stats["tokens"] / max(seconds, 1e-9), "epoch_time_s": seconds, "complete": epoch_done}
    progress["history"].append(row)
    if run.verbose:
        print(f"epoch {epoch + 1}: train loss {row['train_loss']:.3f}, val loss {val['loss']:.3f}, "
              f"val ppl {val['ppl']:.2f}, {row['tokens_per_s']:.0f} tok/s, {row['epoch_time_s']:.0f} s")
    if progress["best_val_loss"] is None or val["loss"] < progress["best_val_loss"]:
        progress["best_val_loss"] = val["loss"]
        if run.main:
            checkpoint.atomic_save(trainer.model, run.out.model,
                                   extra={"epoch": epoch + 1, "step": progress["step"], "val_loss": val["loss"]})
            run.out.record_digests()
    if epoch_done:
        progress["epoch"], progress["batch"] = epoch + 1, 0
        if run.main and cfg.average_last:
            keep_epoch_weights(trainer.model, run.out, epoch + 1, cfg.average_last)
    save_latest(run, trainer, clock)
    if run.main:
        run.out.write_log(progress["history"])


def finish(run: Run, trainer: Trainer, clock: Clock, stopped: str) -> dict:
    """Checkpoint averaging (after a run that was not interrupted), the summary in metadata.json."""
    progress = trainer.progress
    averaging = None
    if run.cfg.average_last and stopped != "interrupted" and run.main:
        if progress["batch"]:  # stopped inside an epoch: its last weights count as one more epoch to average
            keep_epoch_weights(trainer.model, run.out, progress["epoch"] + 1, run.cfg.average_last)
        averaging = publish_best_weights(trainer.model, run.out, run.cfg.average_last, run.val_pairs,
                                         run.val_batches, (run.src_vocab, run.tgt_vocab), progress["step"],
                                         run.verbose)
    summary = {"steps": progress["step"], "epochs_completed": progress["epoch"],
               "best_val_loss": progress["best_val_loss"], "train_time_s": clock.total_seconds(),
               "stopped": stopped, "device": run.device, "workers": run.world}
    if averaging is not None:
        summary["averaging"] = averaging
    if run.main:
        run.out.update_metadata({"training": summary})
    distributed.barrier()  # the other workers exit only once rank 0 has written everything
    return summary


def train(data_dir, out, cfg: TrainConfig = None, resume: bool = False, verbose: bool = True,
          overwrite: bool = False) -> dict:
    """Train a translator on `data_dir` and write a model bundle to the run directory `out`.

    Returns the final summary (also in out/metadata.json). `resume=True` continues from
    out/latest.ckpt with the configuration saved in `out`; of `cfg` only the stopping
    limits (`RESUME_OVERRIDES`) are taken, so a stopped run can be given more time. An `out`
    that already holds a run is refused unless `resume` or `overwrite` (which deletes it first).

    Started by msrun, every worker runs this function: each trains on its shard of every
    epoch, all take the same optimizer steps (`make_global_batch_step`) and the same
    decisions, and only rank 0 writes to `out` and prints.
    """
    run = prepare_run(data_dir, out, cfg, resume, verbose, overwrite)
    trainer = build_trainer(run)
    start(run, trainer)
    clock, signals = Clock(trainer.progress), StopSignals()
    stop_reason = None
    if run.cfg.max_steps and trainer.progress["step"] >= run.cfg.max_steps:  # resumed with no steps left
        stop_reason = f"reached --max-steps {run.cfg.max_steps}"
    try:
        while trainer.progress["epoch"] < run.cfg.epochs and stop_reason is None:
            stats, stop_reason = run_epoch(run, trainer, clock, signals)
            end_epoch(run, trainer, stats, clock)
    except KeyboardInterrupt:
        save_latest(run, trainer, clock)
        if run.verbose:
            print(f"\ninterrupted at step {trainer.progress['step']}: saved {run.out.latest}; continue with --resume")
        stop_reason = "interrupted"
    finally:
        signals.restore()
    return finish(run, trainer, clock, stop_reason or "completed")
