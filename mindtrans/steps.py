"""Train steps: forward, label-smoothed loss, gradients, clipping and the Adam update, compiled.

`make_train_step` is the single-device step of the lessons: NumPy-free, tensors in and
out. `make_global_batch_step` makes one optimizer step over a global batch (several
batches per worker, several workers). The training loop calls either through one
host-side signature, `step(batches, read_flags) -> StepResult` (`host_step` wraps the first).
`validation_loss` is the teacher-forced loss of a whole batcher, for validation and scoring.
"""
from typing import NamedTuple

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from mindtrans import compat
from mindtrans.data import PAD
from mindtrans.loss import label_smoothed_nll
from mindtrans.metrics import perplexity


class StepResult(NamedTuple):
    """One optimizer step, seen from the host (the same on every worker)."""

    loss: float  # mean label-smoothed loss per target token of the global batch
    tokens: float  # target tokens in the global batch
    finite: bool  # the gradients were finite, so the update was made
    flags: tuple  # what read_flags() gave (stop requests), summed over the workers


def use_amp(amp: str, device: str) -> bool:
    """Mixed precision: "on", "off", or "auto" (on for Ascend and GPU, off for CPU)."""
    return amp == "on" or (amp == "auto" and device in ("Ascend", "GPU"))


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


def _apply(optimizer, grads, clip_norm: float, loss_scaler):
    """Unscale, clip and apply `grads` unless one is not finite; -> whether they were (a tensor)."""
    if loss_scaler is not None:
        grads = loss_scaler.unscale(grads)
    grads, finite = clip_by_global_norm(grads, clip_norm)
    if loss_scaler is not None:
        loss_scaler.adjust(finite)
    if finite:
        optimizer(grads)
    return finite


def make_train_step(model, optimizer, cfg, loss_scaler=None, dynamic_shapes: bool = True, packed: bool = False):
    """One optimizer step: forward, label-smoothed loss, gradients, clipping, Adam update.

    src (B, Ls), tgt (B, Lt) ids -> (mean loss, NLL sum, real target tokens, grads finite).
    The update is skipped when a gradient is not finite (expected now and then under
    mixed precision, where the loss scaler then lowers its scale). `cfg` gives
    `label_smoothing`, `clip_norm` and `mode` ("graph" or "pynative").
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
        finite = _apply(optimizer, grads, clip_norm, loss_scaler)
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


def host_step(step):
    """`make_train_step`'s step as the loop calls it: `(batches, read_flags) -> StepResult`, with
    `batches` a list of one batch (a tuple of NumPy arrays); `read_flags()` is read after the
    step, so a stop requested during it stops right after it."""

    def run(batches, read_flags):
        (batch,) = batches
        loss, _, tokens, finite = step(*(ms.Tensor(array) for array in batch))
        return StepResult(float(loss.asnumpy()), float(tokens.asnumpy()), bool(finite.asnumpy()),
                          tuple(read_flags()))

    return run


def target_tokens(tgt: np.ndarray) -> int:
    """Real (non-pad) tokens the loss sees in a batch: the targets after <bos>."""
    return int(np.count_nonzero(tgt[:, 1:] != PAD))


def make_global_batch_step(model, optimizer, cfg, loss_scaler=None, world_size: int = 1):
    """One optimizer step over a global batch: `cfg.accum_steps` batches on each of `world_size` workers.

    Returns `step(batches, read_flags) -> StepResult`: `batches` is this worker's list of
    (src, tgt) NumPy arrays; `read_flags()` gives a few numbers (stop requests), read before
    the step so that they travel with it. The results are summed over the whole global
    batch, so every worker gets the same ones and stops after the same step.

    Each batch's summed loss is divided by the target tokens of the whole global batch
    (the workers' counts are all-reduced first), the gradients are accumulated over the
    batches and summed over the workers (`nn.DistributedGradReducer`, mean=False), then
    clipped and applied once. That is exactly the step one process makes on all those
    batches at once, whichever way they are split between workers and accumulation.
    With `accum_steps=1` one compiled graph does it all; with more, one graph per batch
    adds the gradients into accumulators (extra memory: one copy of the weights) and a
    second graph makes the update.
    """
    graphs = _global_batch_graphs(model, optimizer, cfg, loss_scaler, world_size)

    def step(batches, read_flags):
        local_tokens = ms.Tensor(float(sum(target_tokens(tgt) for _, tgt in batches)), ms.float32)
        flags = ms.Tensor(np.asarray(read_flags(), np.float32).reshape(-1))
        if "whole_step" in graphs:
            (src, tgt), = batches
            stats, finite = graphs["whole_step"](ms.Tensor(src), ms.Tensor(tgt), local_tokens, flags)
        else:
            for src, tgt in batches:
                graphs["accumulate"](ms.Tensor(src), ms.Tensor(tgt), local_tokens)
            stats, finite = graphs["accumulated_update"](flags)
        stats = stats.asnumpy().astype(np.float64)
        return StepResult(float(stats[0] / max(stats[2], 1.0)), float(stats[2]), bool(finite.asnumpy()),
                          tuple(stats[3:]))

    return step


def _global_batch_graphs(model, optimizer, cfg, loss_scaler, world_size: int) -> dict:
    """The compiled pieces of `make_global_batch_step`: {"whole_step"} for one batch per step,
    else {"accumulate" (per batch), "accumulated_update" (per step)}. Their stats are
    [loss sum, NLL sum, target tokens, flags...], summed over the workers."""
    smoothing = float(cfg.label_smoothing)  # graphs get plain numbers
    global_count, update = _reduction_and_update(optimizer, float(cfg.clip_norm), loss_scaler, world_size)

    def forward(src, tgt, denominator):
        logits = model(src, tgt[:, :-1])
        loss_sum, nll_sum, tokens = label_smoothed_nll(logits, tgt[:, 1:], smoothing, PAD)
        loss = loss_sum / denominator
        if loss_scaler is not None:
            loss = loss_scaler.scale(loss)
        return loss, loss_sum, nll_sum, tokens

    grad_fn = ms.value_and_grad(forward, None, optimizer.parameters, has_aux=True)
    any_shape, scalar = ms.Tensor(shape=[None, None], dtype=ms.int32), ms.Tensor(0.0, ms.float32)
    compiled = cfg.mode == "graph"
    if cfg.accum_steps == 1:
        def whole_step(src, tgt, local_tokens, flags):
            (_, loss_sum, nll_sum, tokens), grads = grad_fn(src, tgt, global_count(local_tokens))
            return update(grads, ops.concat((ops.stack([loss_sum, nll_sum, tokens]), flags)))

        signature = dict(src=any_shape, tgt=any_shape, local_tokens=scalar,
                         flags=ms.Tensor(shape=[None], dtype=ms.float32))
        return {"whole_step": compat.jit_dynamic(whole_step, signature) if compiled else whole_step}

    # gradient sums over the batches of a step, and [loss sum, NLL sum, tokens]
    accumulated = ms.ParameterTuple(
        ms.Parameter(ops.zeros(p.shape, p.dtype), name=f"accumulated.{p.name}", requires_grad=False)
        for p in optimizer.parameters)
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

    if compiled:
        accumulate = compat.jit_dynamic(accumulate, dict(src=any_shape, tgt=any_shape, local_tokens=scalar))
        accumulated_update = ms.jit(accumulated_update)
    return {"accumulate": accumulate, "accumulated_update": accumulated_update}


def _reduction_and_update(optimizer, clip_norm: float, loss_scaler, world_size: int):
    """(global_count(local tokens) -> tokens of all workers, update(grads, stats) -> (stats summed
    over the workers, finite)): the cross-worker parts of a global-batch step."""
    distributed_run = world_size > 1
    if distributed_run:
        reducer = nn.DistributedGradReducer(optimizer.parameters, mean=False, degree=world_size)
        all_reduce = ops.AllReduce()  # sum over the workers

    def global_count(local_tokens):
        return all_reduce(local_tokens) if distributed_run else local_tokens

    def update(grads, stats):
        if distributed_run:
            grads = reducer(grads)
            stats = all_reduce(stats)
        return stats, _apply(optimizer, grads, clip_norm, loss_scaler)

    return global_count, update


def epoch_batches(batcher, epoch: int, start: int, world_size: int):
    """This worker's batches of `epoch` (tuples of NumPy arrays), from batch `start` of its shard on.

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


def validation_loss(model, batcher) -> dict:
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
    return {"loss": loss, "ppl": perplexity(loss)}
