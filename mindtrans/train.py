"""Training: data, model, compiled train step, schedule, checkpoints, resume.

Read top to bottom: `TrainConfig` holds the knobs, `make_batcher` turns text into
batches, `make_train_step` compiles forward + loss + gradients + update into one
graph, and `train` runs epochs, validates, and keeps the best and the latest
checkpoints in the run directory (which is also the model bundle, see `bundle`).

One optimizer step may see more than one batch: `accum_steps` batches in a row
(gradient accumulation), on each of the workers of an msrun job (data parallelism, see
`mindtrans.distributed`). `make_global_batch_step` handles both; the loss is always
divided by the number of target tokens in the whole global batch, so that W workers
take the same steps as one process with `accum_steps=W`.
"""
import csv
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import amp, nn, ops
from tqdm.auto import tqdm

from mindtrans import bundle, checkpoint, compat, distributed
from mindtrans.config import TransformerConfig
from mindtrans.data import PAD, BucketBatcher, PackedBatcher, Vocab, encode_pairs, load_split, tokenize
from mindtrans.device import select_device
from mindtrans.loss import label_smoothed_nll
from mindtrans.model import Transformer
from mindtrans.schedule import SCHEDULES, WarmupSchedule, learning_rate


@dataclass
class TrainConfig:
    """Training hyper-parameters (the architecture lives in `TransformerConfig`)."""

    preset: str = "small"
    epochs: int = 10
    max_steps: int = 0          # stop after this many optimizer steps in total (0: no limit)
    max_minutes: float = 0.0    # stop after this much training time in this process (0: no limit)
    batch_tokens: int = 4096    # padded positions per side in one batch
    pack: bool = True           # several sentences per row, one batch shape (single process, no accumulation)
    accum_steps: int = 1        # batches per optimizer step and worker (gradient accumulation)
    lr: float = 1e-3            # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 400
    schedule: str = "inverse_sqrt"
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    dropout: float = -1.0       # < 0: the preset's
    seed: int = 0
    amp: str = "auto"           # "auto" (on for Ascend/GPU, off for CPU), "on", "off"
    mode: str = "graph"         # "graph" (compiled with mindspore.jit) or "pynative" (eager, for debugging)
    max_len: int = 128          # longest sentence in tokens, <bos>/<eos> included; longer ones are cut
    min_freq: int = 2           # rarer words become <unk>
    average_last: int = 0       # >= 2: also try the mean of the last N epochs' weights; keep it if val loss is lower
    corpus: str = "auto"        # "multi30k", "synthetic", or "auto" (multi30k if fetched, else synthetic)

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp must be 'auto', 'on' or 'off', got {self.amp!r}")
        if self.mode not in ("graph", "pynative"):
            raise ValueError(f"mode must be 'graph' or 'pynative', got {self.mode!r}")
        if self.corpus not in ("auto", "multi30k", "synthetic"):
            raise ValueError(f"corpus must be 'auto', 'multi30k' or 'synthetic', got {self.corpus!r}")
        for name in ("epochs", "batch_tokens", "accum_steps", "max_len", "min_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.average_last < 0 or self.average_last == 1:
            raise ValueError(f"average_last must be 0 (off) or at least 2 epochs, got {self.average_last}")
        if self.lr <= 0 or self.clip_norm <= 0 or not 0 <= self.label_smoothing < 1:
            raise ValueError("lr and clip_norm must be positive and label_smoothing in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


# --------------------------------------------------------------------------- data
def resolve_corpus(data_dir, corpus: str) -> str:
    """'auto' picks Multi30k when its files are in `data_dir`, else the embedded synthetic corpus."""
    if corpus != "auto":
        return corpus
    from mindtrans.fetch import TEXT_SHA256, multi30k_dir

    complete = all((multi30k_dir(data_dir) / name).is_file() for name in TEXT_SHA256)
    return "multi30k" if complete else "synthetic"


def ensure_corpus(data_dir, corpus: str) -> None:
    """Write the synthetic corpus on first use; Multi30k must be fetched (`mindtrans fetch`).

    Every file training reads is checked, not just the first: the workers of an msrun job
    may get here at the same time, and each file is written atomically, with the same text.
    """
    root = Path(data_dir) / "synthetic"
    needed = [root / f"{split}.{lang}" for split in ("train", "val") for lang in ("de", "en")]
    if corpus == "synthetic" and not all(path.is_file() for path in needed):
        from mindtrans.corpus import write_synthetic

        write_synthetic(data_dir)


def build_vocabs(train_pairs, min_freq: int) -> tuple:
    """Source and target vocabularies from the training split only."""
    src = Vocab.build((tokenize(s) for s, _ in train_pairs), min_freq=min_freq)
    tgt = Vocab.build((tokenize(t) for _, t in train_pairs), min_freq=min_freq)
    return src, tgt


def make_batcher(pairs, src_vocab, tgt_vocab, cfg: TrainConfig, shuffle: bool, num_shards=1, shard_id=0,
                 packed: bool = False):
    """Encoded batches: length-bucketed (training drops ragged remainders so every batch shape
    repeats), or with `packed` several pairs to a row in batches of one shape (`PackedBatcher`)."""
    encoded = encode_pairs(pairs, src_vocab, tgt_vocab, max_len=cfg.max_len)
    if packed:
        if num_shards != 1:
            raise ValueError("packed batches are for a single process; shard bucketed batches instead")
        return PackedBatcher(encoded, batch_tokens=cfg.batch_tokens, shuffle=shuffle, seed=cfg.seed)
    return BucketBatcher(encoded, batch_tokens=cfg.batch_tokens, max_len=cfg.max_len, shuffle=shuffle,
                         seed=cfg.seed, drop_remainder=shuffle, num_shards=num_shards, shard_id=shard_id)


# --------------------------------------------------------------------------- steps
def use_amp(cfg: TrainConfig, device: str) -> bool:
    return cfg.amp == "on" or (cfg.amp == "auto" and device in ("Ascend", "GPU"))


def clip_by_global_norm(grads, clip_norm: float):
    """(grads scaled so that their global L2 norm is at most `clip_norm`, whether all are finite).

    The norm is taken over all gradients concatenated into one vector: two kernels
    instead of two per parameter (~100 of them), 9 ms instead of 50 on the `small` model
    on CPU, where each small kernel costs more to launch than to run. A NaN or inf in
    any gradient makes the norm non-finite, so one check of it replaces a check per
    tensor. A norm beyond float32's range also counts as not finite: such a step would
    be thrown away anyway.
    """
    flat = ops.concat([grad.reshape(-1) for grad in grads])
    norm = ops.sqrt(ops.square(flat).sum())
    scale = clip_norm / ops.maximum(norm, clip_norm)
    return tuple(grad * scale for grad in grads), ops.isfinite(norm)


def make_train_step(model, optimizer, cfg: TrainConfig, loss_scaler=None, dynamic_shapes: bool = True,
                    packed: bool = False):
    """One optimizer step: forward, label-smoothed loss, gradients, clipping, Adam update.

    src (B, Ls), tgt (B, Lt) ids -> (mean loss, NLL sum, real target tokens, grads finite).
    The update is skipped when a gradient is not finite (expected now and then under
    mixed precision, where the loss scaler then lowers its scale).
    In graph mode one graph with symbolic (batch, length) dimensions serves every batch
    shape; `dynamic_shapes=False` compiles a static graph per shape instead (see below).
    With `packed=True` the step takes the seven arrays of a `PackedBatcher` batch instead
    of (src, tgt), and compiles one static graph: all those batches have one shape.
    """
    smoothing, clip_norm = float(cfg.label_smoothing), float(cfg.clip_norm)  # graphs get plain numbers

    def scaled_loss(logits, labels):
        loss_sum, nll_sum, tokens = label_smoothed_nll(logits, labels, smoothing, PAD)
        loss = loss_sum / tokens
        if loss_scaler is not None:
            loss = loss_scaler.scale(loss)
        return loss, nll_sum, tokens

    def forward(src, tgt):
        return scaled_loss(model(src, tgt[:, :-1]), tgt[:, 1:])

    def packed_forward(src, src_segments, src_positions, tgt_in, tgt_segments, tgt_positions, labels):
        return scaled_loss(model.packed(src, src_segments, src_positions, tgt_in, tgt_segments, tgt_positions),
                           labels)

    grad_fn = ms.value_and_grad(packed_forward if packed else forward, None, optimizer.parameters, has_aux=True)

    def step(*batch):
        (loss, nll_sum, tokens), grads = grad_fn(*batch)
        if loss_scaler is not None:
            loss = loss_scaler.unscale(loss)
            grads = loss_scaler.unscale(grads)
        grads, finite = clip_by_global_norm(grads, clip_norm)
        if loss_scaler is not None:
            loss_scaler.adjust(finite)
        if finite:
            optimizer(grads)
        return loss, nll_sum, tokens, finite

    if cfg.mode == "pynative":
        return step
    if packed or not dynamic_shapes:
        # On CPU a static graph spends much less time outside its kernels than a dynamic-shape
        # one (benchmarks/profile_train.py), but compiling one takes ~20 s and each keeps its
        # own ~1 GB of activations at 4096 tokens: 7.4 GB for the six bucket shapes of an
        # epoch (benchmarks/bench_train.py --bucketed --static-shapes), 2.8 GB for packed rows.
        return compat.compiled_or_eager(step, "the train step")

    def bucketed_step(src, tgt):
        return step(src, tgt)

    any_shape = ms.Tensor(shape=[None, None], dtype=ms.int32)
    return compat.jit_dynamic(bucketed_step, dict(src=any_shape, tgt=any_shape))


def target_tokens(tgt: np.ndarray) -> int:
    """Real (non-pad) tokens the loss sees in a batch: the targets after <bos>."""
    return int(np.count_nonzero(tgt[:, 1:] != PAD))


def make_global_batch_step(model, optimizer, cfg: TrainConfig, loss_scaler=None, world_size: int = 1):
    """One optimizer step over a global batch: `cfg.accum_steps` batches on each of `world_size` workers.

    Returns `step(batches, flags) -> (loss, nll_sum, tokens, finite, flags)`: `batches` is
    this worker's list of (src, tgt) NumPy arrays, `flags` a few numbers (stop requests);
    the results are Python values summed over the whole global batch, so every worker
    gets the same ones: mean smoothed loss per token, NLL sum, target tokens, whether the
    update was made (gradients finite), and the flags summed over the workers.

    Each batch's summed loss is divided by the target tokens of the whole global batch
    (the workers' counts are all-reduced first), the gradients are accumulated over the
    batches and summed over the workers (`nn.DistributedGradReducer`, mean=False), then
    clipped and applied once. That is exactly the step one process makes on all those
    batches at once, whichever way they are split between workers and accumulation.
    With `accum_steps=1` one compiled graph does it all; with more, one graph per batch
    adds the gradients into accumulators (extra memory: one copy of the weights) and a
    second graph makes the update.
    """
    params = optimizer.parameters
    smoothing, clip_norm = float(cfg.label_smoothing), float(cfg.clip_norm)  # graphs get plain numbers
    distributed_run = world_size > 1
    if distributed_run:
        reducer = nn.DistributedGradReducer(params, mean=False, degree=world_size)
        all_reduce = ops.AllReduce()  # sum over the workers

    def forward(src, tgt, denominator):
        logits = model(src, tgt[:, :-1])
        loss_sum, nll_sum, tokens = label_smoothed_nll(logits, tgt[:, 1:], smoothing, PAD)
        loss = loss_sum / denominator
        if loss_scaler is not None:
            loss = loss_scaler.scale(loss)
        return loss, loss_sum, nll_sum, tokens

    grad_fn = ms.value_and_grad(forward, None, params, has_aux=True)

    def global_count(local_tokens):
        return all_reduce(local_tokens) if distributed_run else local_tokens

    def update(grads, stats):
        """stats: this worker's [loss sum, NLL sum, tokens, flags...] -> (summed over workers, finite)."""
        if distributed_run:
            grads = reducer(grads)
            stats = all_reduce(stats)
        if loss_scaler is not None:
            grads = loss_scaler.unscale(grads)
        grads, finite = clip_by_global_norm(grads, clip_norm)
        if loss_scaler is not None:
            loss_scaler.adjust(finite)
        if finite:
            optimizer(grads)
        return stats, finite

    def whole_step(src, tgt, local_tokens, flags):
        (_, loss_sum, nll_sum, tokens), grads = grad_fn(src, tgt, global_count(local_tokens))
        return update(grads, ops.concat((ops.stack([loss_sum, nll_sum, tokens]), flags)))

    accumulated = accumulated_stats = None
    if cfg.accum_steps > 1:  # gradient sums over the batches of a step, and [loss sum, NLL sum, tokens]
        accumulated = ms.ParameterTuple(
            ms.Parameter(ops.zeros(p.shape, p.dtype), name=f"accumulated.{p.name}", requires_grad=False)
            for p in params)
        accumulated_stats = ms.Parameter(ops.zeros(3, ms.float32), name="accumulated.stats", requires_grad=False)

    def accumulate(src, tgt, local_tokens):
        (_, loss_sum, nll_sum, tokens), grads = grad_fn(src, tgt, global_count(local_tokens))
        for total, grad in zip(accumulated, grads):
            ops.assign_add(total, grad)
        ops.assign_add(accumulated_stats, ops.stack([loss_sum, nll_sum, tokens]))
        return tokens

    def accumulated_update(flags):
        result = update(tuple(accumulated), ops.concat((accumulated_stats.value(), flags)))
        for total in accumulated:
            ops.assign(total, ops.zeros_like(total))
        ops.assign(accumulated_stats, ops.zeros_like(accumulated_stats))
        return result

    if cfg.mode == "graph":
        any_shape, scalar = ms.Tensor(shape=[None, None], dtype=ms.int32), ms.Tensor(0.0, ms.float32)
        whole_step = compat.jit_dynamic(whole_step, dict(src=any_shape, tgt=any_shape, local_tokens=scalar,
                                                         flags=ms.Tensor(shape=[None], dtype=ms.float32)))
        accumulate = compat.jit_dynamic(accumulate, dict(src=any_shape, tgt=any_shape, local_tokens=scalar))
        accumulated_update = ms.jit(accumulated_update)

    def step(batches, flags):
        local_tokens = ms.Tensor(float(sum(target_tokens(tgt) for _, tgt in batches)), ms.float32)
        flags = ms.Tensor(np.asarray(flags, np.float32).reshape(-1))
        if accumulated is None:
            (src, tgt), = batches
            stats, finite = whole_step(ms.Tensor(src), ms.Tensor(tgt), local_tokens, flags)
        else:
            for src, tgt in batches:
                accumulate(ms.Tensor(src), ms.Tensor(tgt), local_tokens)
            stats, finite = accumulated_update(flags)
        stats = stats.asnumpy().astype(np.float64)
        return (float(stats[0] / max(stats[2], 1.0)), float(stats[1]), float(stats[2]), bool(finite.asnumpy()),
                stats[3:])

    return step


def epoch_batches(batcher, epoch: int, start: int, world_size: int):
    """This worker's (src, tgt) NumPy batches of `epoch`, from batch `start` of its shard on.

    A single process collates the planned batches itself, one at a time as they are
    asked for; the workers of a distributed job read their shards through
    `mindspore.dataset` (`BucketBatcher.dataset`, which prepares the next batches ahead).
    """
    if world_size == 1:
        plan = batcher.plan(epoch)
        return (batcher.collate(plan[k]) for k in range(start, len(plan)))
    if start >= len(batcher):  # stopped after the epoch's last step, before its end was recorded
        return iter(())
    return batcher.dataset(epoch, skip_batches=start).create_tuple_iterator(output_numpy=True, num_epochs=1)


def evaluate_loss(model, batcher) -> dict:
    """Teacher-forced loss on every batch of `batcher`: {"loss": mean NLL per token, "ppl": perplexity}."""
    model.set_train(False)
    nll_total = tokens_total = 0.0
    for indices in batcher.plan(0):
        src, tgt = batcher.collate(indices)
        logits = model(ms.Tensor(src), ms.Tensor(tgt[:, :-1]))
        _, nll_sum, tokens = label_smoothed_nll(logits, ms.Tensor(tgt[:, 1:]), 0.0, PAD)
        nll_total += float(nll_sum.asnumpy())
        tokens_total += float(tokens.asnumpy())
    model.set_train(True)
    loss = nll_total / max(tokens_total, 1.0)
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0))}


# --------------------------------------------------------------------------- state
def training_state(model, optimizer, loss_scaler=None) -> list:
    """Every Parameter a resumed run needs: weights, Adam moments, step counter, loss scale."""
    state, seen = [], set()
    cells = [model, optimizer] + ([loss_scaler] if isinstance(loss_scaler, nn.Cell) else [])
    for cell in cells:
        for _, param in cell.parameters_and_names():
            if param.name not in seen:
                seen.add(param.name)
                state.append(param)
    if loss_scaler is not None and not isinstance(loss_scaler, nn.Cell):
        state += [loss_scaler.scale_value, loss_scaler.counter]
    return state


def restore_state(params: list, saved: dict, path) -> None:
    """Copy saved values into `params` in place; a missing or misshapen entry raises ValueError."""
    for param in params:
        if param.name not in saved:
            raise ValueError(f"{path} has no value for {param.name}; it was written by a different model or run")
        value = saved[param.name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{path}: {param.name} has shape {tuple(value.shape)}, the model expects "
                             f"{tuple(param.shape)}")
        param.set_data(value.astype(param.dtype))


def write_log(run_dir: Path, history: list) -> None:
    """log.json and log.csv: one row per epoch."""
    from mindtrans.data import atomic_write_text

    atomic_write_text(run_dir / "log.json", json.dumps(history, indent=1))
    if history:
        import io

        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(history[-1]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_text(run_dir / "log.csv", buf.getvalue())


# --------------------------------------------------------------------------- checkpoint averaging
EPOCHS_DIR = "epochs"  # inside the run directory: the weights at the end of each of the last epochs


def keep_epoch_weights(model, out: Path, epoch: int, keep: int) -> None:
    """Save the weights after `epoch` (1-based) as out/epochs/epoch_NNN.ckpt; delete all but the last `keep`."""
    checkpoint.atomic_save(model, out / EPOCHS_DIR / f"epoch_{epoch:03d}.ckpt", extra={"epoch": epoch})
    for old in sorted((out / EPOCHS_DIR).glob("epoch_*.ckpt"))[:-keep]:
        old.unlink()


def average_weights(paths) -> dict:
    """name -> float32 array: the element-wise mean of the checkpoints in `paths` (all of one model)."""
    total = {}
    for path in paths:
        params, _ = checkpoint.load(path)
        for name, param in params.items():
            value = param.asnumpy().astype(np.float64)
            if name in total and total[name].shape != value.shape:
                raise ValueError(f"cannot average {path}: {name} has shape {value.shape}, not {total[name].shape}")
            total[name] = total.get(name, 0.0) + value
    return {name: (value / len(paths)).astype(np.float32) for name, value in total.items()}


def try_averaged_weights(model, out: Path, last: int, val_batches, best_val_loss: float, step: int,
                         verbose: bool) -> dict:
    """Average the last `last` epoch checkpoints into `model`; if that lowers the validation loss,
    make it the run's model.ckpt. Returns what was tried and whether it was kept."""
    paths = sorted((out / EPOCHS_DIR).glob("epoch_*.ckpt"))[-last:]
    if len(paths) < 2:
        return {"epochs": [], "kept": False, "reason": "fewer than two epoch checkpoints"}
    epochs = [int(path.stem.split("_")[1]) for path in paths]
    before = {param.name: param.asnumpy().copy() for param in model.get_parameters()}
    averaged = average_weights(paths)
    for param in model.get_parameters():
        param.set_data(ms.Tensor(averaged[param.name]).astype(param.dtype))
    val = evaluate_loss(model, val_batches)
    kept = best_val_loss is None or val["loss"] < best_val_loss
    if kept:
        checkpoint.atomic_save(model, out / "model.ckpt",
                               extra={"epoch": epochs[-1], "step": step, "val_loss": val["loss"],
                                      "averaged_epochs": epochs})
    else:  # the model in memory goes back to the last epoch's weights
        for param in model.get_parameters():
            param.set_data(ms.Tensor(before[param.name]))
    if verbose:
        verdict = "kept as model.ckpt" if kept else f"not kept (best single epoch: {best_val_loss:.3f})"
        print(f"mean of epochs {epochs[0]}-{epochs[-1]}: val loss {val['loss']:.3f}, val ppl {val['ppl']:.2f}, "
              f"{verdict}")
    return {"epochs": epochs, "val_loss": val["loss"], "kept": kept}


# --------------------------------------------------------------------------- the loop
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


RESUME_OVERRIDES = ("epochs", "max_steps", "max_minutes")


def remove_stale_temporaries(out: Path) -> list:
    """Delete the temporary files an interrupted save left behind (a process killed while
    writing, e.g. by msrun when another worker died); the real files are never touched."""
    from mindtrans.bundle import REQUIRED

    names = set(REQUIRED) | {"latest.ckpt", "metadata.json", "train_config.json", "log.json", "log.csv"}
    patterns = {f".{Path(name).stem}.*.tmp.ckpt" for name in names if name.endswith(".ckpt")}
    patterns |= {f".{name}.*.tmp" for name in names}
    patterns.add(f"{EPOCHS_DIR}/.epoch_*.tmp.ckpt")
    removed = sorted({path for pattern in patterns for path in out.glob(pattern) if path.is_file()})
    for path in removed:
        path.unlink()
    return removed


def train(data_dir, out, cfg: TrainConfig = None, resume: bool = False, verbose: bool = True) -> dict:
    """Train a translator on `data_dir` and write a model bundle to the run directory `out`.

    Returns the final summary (also in out/metadata.json). `resume=True` continues from
    out/latest.ckpt with the configuration saved in `out`; of `cfg` only the stopping
    limits (`RESUME_OVERRIDES`) are taken, so a stopped run can be given more time.

    Started by msrun, every worker runs this function: each trains on its shard of every
    epoch, all take the same optimizer steps (`make_global_batch_step`) and the same
    decisions, and only rank 0 writes to `out` and prints.
    """
    out = Path(out)
    if distributed.is_scheduler():  # msrun's scheduler runs this command line too: it only serves the cluster
        distributed.run_scheduler(out)
    device = select_device(verbose=verbose)
    rank, world = distributed.init_distributed()
    main = rank == 0
    if verbose and world > 1:  # every worker: msrun names a failed worker by its process id
        print(f"mindtrans: worker rank {rank} of {world}, process id {os.getpid()}", flush=True)
    verbose = verbose and main
    if resume:
        if not (out / "latest.ckpt").is_file():
            where = "" if world == 1 else (f" (on {distributed.describe()}: with several machines, every one needs "
                                           f"the run directory at the same path, on shared storage or copied)")
            raise FileNotFoundError(f"nothing to resume: {out / 'latest.ckpt'} does not exist{where}")
        saved_cfg = json.loads((out / "train_config.json").read_text())["train"]
        saved_cfg.setdefault("pack", False)  # runs saved before packing existed: bucketed batches
        if cfg is not None:
            saved_cfg.update({name: getattr(cfg, name) for name in RESUME_OVERRIDES})
        cfg = TrainConfig.from_dict(saved_cfg)
    cfg = cfg or TrainConfig()
    corpus = resolve_corpus(data_dir, cfg.corpus)
    ensure_corpus(data_dir, corpus)
    train_pairs = load_split(data_dir, "train", corpus=corpus)
    val_pairs = load_split(data_dir, "val", corpus=corpus)
    if resume:
        src_vocab, tgt_vocab = Vocab.load(out / "src_vocab.json"), Vocab.load(out / "tgt_vocab.json")
        config = TransformerConfig.from_dict(json.loads((out / "config.json").read_text()))
    else:
        src_vocab, tgt_vocab = build_vocabs(train_pairs, cfg.min_freq)
        overrides = {"dropout": cfg.dropout} if cfg.dropout >= 0 else {}
        config = TransformerConfig.preset(cfg.preset, **overrides).with_vocab(len(src_vocab), len(tgt_vocab))
        config = TransformerConfig.from_dict({**config.to_dict(), "max_len": max(config.max_len, cfg.max_len)})
    one_batch_per_step = cfg.accum_steps == 1 and world == 1
    packed = cfg.pack and one_batch_per_step
    # Worker r of W takes batches r, r+W, r+2W, ... of each epoch's plan (the same plan everywhere).
    train_batches = make_batcher(train_pairs, src_vocab, tgt_vocab, cfg, shuffle=True, num_shards=world,
                                 shard_id=rank, packed=packed)
    val_batches = make_batcher(val_pairs, src_vocab, tgt_vocab, cfg, shuffle=False)
    batches_per_epoch = len(train_batches)  # in this worker's shard; the same in every shard
    if batches_per_epoch == 0:
        raise ValueError(f"{len(train_pairs)} training pairs make fewer batches than there are workers ({world}); "
                         f"use fewer workers or a smaller --batch-tokens")

    ms.set_seed(cfg.seed)  # the same seed on every worker: the same initial weights
    model = Transformer(config)
    model.set_train(True)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.accum_steps)  # optimizer steps, the same on every worker
    total_steps = steps_per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, steps_per_epoch * cfg.epochs)
    schedule = WarmupSchedule(cfg.lr, cfg.warmup_steps, cfg.schedule, total_steps)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=schedule, beta1=0.9, beta2=0.98, eps=1e-9)
    loss_scaler = None
    if use_amp(cfg, device):
        model = amp.auto_mixed_precision(model, "O2")
        loss_scaler = amp.DynamicLossScaler(scale_value=2.0 ** 16, scale_factor=2, scale_window=1000)
    if one_batch_per_step:  # the plain single-device step: nothing extra in the compiled graph
        step_fn = make_train_step(model, optimizer, cfg, loss_scaler, packed=packed)
    else:
        step_fn = make_global_batch_step(model, optimizer, cfg, loss_scaler, world)
    state = training_state(model, optimizer, loss_scaler)

    progress = {"epoch": 0, "batch": 0, "step": 0, "best_val_loss": None, "history": [], "workers": world}
    if resume:
        saved, progress = checkpoint.load(out / "latest.ckpt")
        saved_world = progress.get("workers", 1)
        if progress["batch"] and saved_world != world:
            raise ValueError(f"{out / 'latest.ckpt'} was saved mid-epoch by a run with {saved_world} worker(s); "
                             f"resume it with {saved_world} (msrun --worker_num={saved_world}"
                             f"{'' if saved_world > 1 else ', or without msrun'}): batch positions are per worker")
        progress["workers"] = world
        restore_state(state, saved, out / "latest.ckpt")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temporaries(out)
        if removed and verbose:
            print(f"removed {len(removed)} temporary file(s) an interrupted save left in {out}")
        if not resume:
            data_files = [Path(data_dir) / corpus / f"{split}.{lang}" for split in ("train", "val")
                          for lang in ("de", "en")]
            bundle.write_static(out, config, src_vocab, tgt_vocab,
                                {"train": asdict(cfg), "data_dir": str(data_dir), "corpus": corpus}, data_files)
    if verbose:
        from mindtrans.params import count_parameters

        if packed:
            batching = (f"{steps_per_epoch} batches of {train_batches.rows} packed rows x {train_batches.length} "
                        f"per epoch")
        elif one_batch_per_step:
            batching = f"{steps_per_epoch} batches per epoch"
        else:
            batching = (f"{batches_per_epoch} batches per epoch and worker, {world} worker(s) x {cfg.accum_steps} "
                        f"batch(es) per step: {steps_per_epoch} steps per epoch")
        print(f"corpus {corpus}: {len(train_pairs)} train / {len(val_pairs)} val pairs, vocab "
              f"{len(src_vocab)} src / {len(tgt_vocab)} tgt, {batching} "
              f"({train_batches.padding_ratio(0):.1%} padding), model {count_parameters(model)['total']:,} "
              f"parameters, {'mixed' if loss_scaler else 'float32'} precision, {cfg.mode} mode")
        if resume:
            left = "nothing left to train" if progress["epoch"] >= cfg.epochs else f"{cfg.epochs} epochs in all"
            print(f"resumed from {out / 'latest.ckpt'}: {progress['epoch']} epoch(s) and {progress['step']} steps "
                  f"done, {left}")

    # Training time over all the processes of this run (older runs' checkpoints: the sum of their epoch times).
    earlier_seconds = progress.get("train_seconds", sum(row["epoch_time_s"] for row in progress["history"]))

    def save_latest():
        progress["train_seconds"] = earlier_seconds + time.time() - started
        if main:
            checkpoint.atomic_save(state, out / "latest.ckpt", extra=progress)

    started = time.time()
    stop_reason = None
    if cfg.max_steps and progress["step"] >= cfg.max_steps:  # a resumed run that has no steps left
        stop_reason = f"reached --max-steps {cfg.max_steps}"
    interrupted = False
    signals = StopSignals()
    try:
        while progress["epoch"] < cfg.epochs and stop_reason is None:
            epoch = progress["epoch"]
            loss_sum = tokens_sum = 0.0
            epoch_start = time.time()
            batches = epoch_batches(train_batches, epoch, progress["batch"], world)
            bar = tqdm(range(progress["batch"], batches_per_epoch, cfg.accum_steps),
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not verbose, leave=False, mininterval=1.0)
            try:
                for k in bar:
                    group = [next(batches) for _ in range(min(cfg.accum_steps, batches_per_epoch - k))]
                    if one_batch_per_step:
                        loss, nll_sum, tokens, finite = step_fn(*(ms.Tensor(array) for array in group[0]))
                        loss_value, n = float(loss.asnumpy()), float(tokens.asnumpy())
                        skipped = loss_scaler is None and not bool(finite.asnumpy())
                        stop_requested = signals.requested
                        time_up = cfg.max_minutes and time.time() - started >= 60 * cfg.max_minutes
                    else:
                        # Stop requests travel with the step, so that every worker stops after the same one.
                        flags = [bool(cfg.max_minutes and time.time() - started >= 60 * cfg.max_minutes),
                                 signals.requested]
                        try:
                            loss_value, _, n, finite, flags = step_fn(group, flags)
                        except RuntimeError as err:
                            if world > 1 and distributed.is_cluster_failure(err):
                                raise distributed.lost_worker_error(err, out) from err
                            raise
                        skipped = loss_scaler is None and not finite
                        time_up, stop_requested = flags[0] > 0, flags[1] > 0
                    if not math.isfinite(loss_value) or skipped:
                        raise NonFiniteLossError(
                            f"loss became {loss_value} at step {progress['step'] + 1} (epoch {epoch + 1}); the last "
                            f"good checkpoint {out / 'latest.ckpt'} is untouched. Lower --lr, raise --warmup-steps "
                            f"or --clip-norm, or turn mixed precision off with --amp off")
                    progress["step"] += 1
                    progress["batch"] = k + len(group)
                    loss_sum += loss_value * n
                    tokens_sum += n
                    elapsed = time.time() - epoch_start
                    rate = learning_rate(progress["step"] - 1, cfg.lr, cfg.warmup_steps, cfg.schedule, total_steps)
                    bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{rate:.2e}",
                                    tok_s=f"{tokens_sum / max(elapsed, 1e-9):.0f}", refresh=False)
                    if stop_requested:
                        raise KeyboardInterrupt
                    if cfg.max_steps and progress["step"] >= cfg.max_steps:
                        stop_reason = f"reached --max-steps {cfg.max_steps}"
                    elif time_up:
                        stop_reason = f"reached --max-minutes {cfg.max_minutes}"
                    if stop_reason:
                        break
            finally:
                bar.close()
                if hasattr(batches, "stop"):  # a mindspore.dataset iterator: end its pipeline now
                    batches.stop()
            epoch_done = progress["batch"] >= batches_per_epoch
            val = evaluate_loss(model, val_batches)  # every worker: the same weights, the same answer
            row = {"epoch": epoch + 1, "step": progress["step"], "train_loss": loss_sum / max(tokens_sum, 1.0),
                   "val_loss": val["loss"], "val_ppl": val["ppl"],
                   "lr": learning_rate(max(progress["step"] - 1, 0), cfg.lr, cfg.warmup_steps, cfg.schedule, total_steps),
                   "tokens_per_s": tokens_sum / max(time.time() - epoch_start, 1e-9),
                   "epoch_time_s": time.time() - epoch_start, "complete": epoch_done}
            progress["history"].append(row)
            if verbose:
                print(f"epoch {epoch + 1}: train loss {row['train_loss']:.3f}, val loss {val['loss']:.3f}, "
                      f"val ppl {val['ppl']:.2f}, {row['tokens_per_s']:.0f} tok/s, {row['epoch_time_s']:.0f} s")
            if progress["best_val_loss"] is None or val["loss"] < progress["best_val_loss"]:
                progress["best_val_loss"] = val["loss"]
                if main:
                    best = {"epoch": epoch + 1, "step": progress["step"], "val_loss": val["loss"]}
                    checkpoint.atomic_save(model, out / "model.ckpt", extra=best)
            if epoch_done:
                progress["epoch"], progress["batch"] = epoch + 1, 0
                if main and cfg.average_last:
                    keep_epoch_weights(model, out, epoch + 1, cfg.average_last)
            save_latest()
            if main:
                write_log(out, progress["history"])
    except KeyboardInterrupt:
        interrupted = True
        save_latest()
        if verbose:
            print(f"\ninterrupted at step {progress['step']}: saved {out / 'latest.ckpt'}; continue with --resume")
    finally:
        signals.restore()
    averaging = None
    if cfg.average_last and not interrupted and main:
        averaging = try_averaged_weights(model, out, cfg.average_last, val_batches, progress["best_val_loss"],
                                         progress["step"], verbose)
    summary = {"steps": progress["step"], "epochs_completed": progress["epoch"],
               "best_val_loss": progress["best_val_loss"], "train_time_s": earlier_seconds + time.time() - started,
               "stopped": "interrupted" if interrupted else stop_reason or "completed", "device": device,
               "workers": world}
    if averaging is not None:
        summary["averaging"] = averaging
    if main:
        bundle.update_metadata(out, {"training": summary})
    distributed.barrier()  # the other workers exit only once rank 0 has written everything
    return summary
