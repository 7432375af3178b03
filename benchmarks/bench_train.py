"""Train-step speed on Multi30k's real length distribution, against the machine's matmul rate.

Prints one JSON object: per preset the mean step time, real (non-padding) tokens per
second, achieved matmul FLOP/s and its fraction of the machine's matmul rate (the faster
of NumPy's and MindSpore's sgemm, both measured in the same run); for `small` also one
full training epoch; and peak RSS. FLOP/s are given two ways: computed (every position of
the batch, padding included: the work the machine does) and useful (each sentence pair's
own FLOPs, as if it were alone in a batch without padding).

    python benchmarks/bench_train.py [--presets small,course] [--steps 8] [--no-epoch]
                                     [--bucketed [--static-shapes]]

By default the batches are packed rows of one shape, as training uses them, and the step
is one static graph. `--bucketed` measures length-bucketed padded batches through one
dynamic-shape graph instead (`mindtrans train --no-pack`), and with `--static-shapes`
through one static graph per bucket shape (~1 GB more memory per shape).
"""
import argparse
import time

import numpy as np
from common import (add_batching_options, batch_pairs, emit, mindspore_sgemm_gflops, multi30k_train_batcher,
                    numpy_sgemm_gflops, parse_batching_options, peak_rss_gb, preset_train_step)
from mindtrans.data import PAD
from mindtrans.fetch import add_data_dir_argument


def train_flops(config, batch, src_len, tgt_len):
    """Matrix-multiply FLOPs of one training step on `batch` rows of src_len source and
    tgt_len decoder positions (NumPy arrays of lengths work too, element-wise).

    Forward multiply-adds of every projection and attention product, times 2 FLOPs per
    multiply-add, times 3 for forward + backward (the backward pass costs twice the forward).
    """
    d, f, v = config.d_model, config.d_ff, config.tgt_vocab_size
    ps, pt = batch * src_len, batch * tgt_len
    encoder = ps * (4 * d * d + 2 * d * f) + 2 * batch * src_len * src_len * d
    decoder = (pt * (6 * d * d + 2 * d * f) + ps * 2 * d * d
               + 2 * batch * tgt_len * tgt_len * d + 2 * batch * tgt_len * src_len * d)
    macs = config.n_encoder_layers * encoder + config.n_decoder_layers * decoder + pt * d * v
    return 3 * 2 * macs


def batch_cost(config, batcher, batch, arrays) -> tuple:
    """(computed FLOPs, useful FLOPs, real tokens: source plus target tokens with a loss) of one batch."""
    pairs = batch_pairs(batch)
    src_lens = batcher.src_lens[pairs].astype(np.int64)
    if len(arrays) == 2:  # bucketed (src, tgt): the decoder reads tgt[:, :-1]
        (src, tgt), tgt_len = arrays, arrays[1].shape[1] - 1
        labels, dec_lens = tgt[:, 1:], batcher.tgt_lens[pairs].astype(np.int64) - 1
    else:  # packed: the seven arrays of PackedBatcher.collate, whose tgt_lens are decoder lengths already
        src, tgt_len, labels = arrays[0], arrays[3].shape[1], arrays[6]
        dec_lens = batcher.tgt_lens[pairs].astype(np.int64)
    computed = train_flops(config, src.shape[0], src.shape[1], tgt_len)
    useful = int(train_flops(config, 1, src_lens, dec_lens).sum())
    real = int(np.count_nonzero(src != PAD) + np.count_nonzero(labels != PAD))
    return computed, useful, real


def bench_preset(preset, batcher, src_vocab, tgt_vocab, steps: int, full_epoch: bool, packed: bool,
                 dynamic_shapes: bool) -> dict:
    import mindspore as ms

    config, step = preset_train_step(preset, src_vocab, tgt_vocab, dynamic_shapes, packed)

    plan = batcher.plan(0)
    started = time.perf_counter()
    seen = set()
    for batch in plan:  # compile every batch shape once
        arrays = batcher.collate(batch)
        if arrays[0].shape not in seen:
            seen.add(arrays[0].shape)
            step(*(ms.Tensor(a) for a in arrays))[0].asnumpy()
    compile_s = time.perf_counter() - started

    def run(batches):
        computed = useful = real = 0
        start = time.perf_counter()
        for batch in batches:
            arrays = batcher.collate(batch)
            step(*(ms.Tensor(a) for a in arrays))[0].asnumpy()
            cost = batch_cost(config, batcher, batch, arrays)
            computed, useful, real = computed + cost[0], useful + cost[1], real + cost[2]
        return time.perf_counter() - start, computed, useful, real

    seconds, computed, useful, real = run(plan[:steps])
    result = {"preset": preset, "steps": steps, "step_s": seconds / steps, "real_tokens_per_s": real / seconds,
              "achieved_gflops": computed / seconds / 1e9, "useful_gflops": useful / seconds / 1e9,
              "compile_s": compile_s, "shapes": len(seen)}
    if full_epoch:
        epoch_s, computed, useful, real = run(batcher.plan(1))
        result.update(epoch_s=epoch_s, epoch_steps=len(plan), epoch_real_tokens_per_s=real / epoch_s,
                      epoch_gflops=computed / epoch_s / 1e9, epoch_useful_gflops=useful / epoch_s / 1e9)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_dir_argument(parser)
    parser.add_argument("--presets", default="small,course")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per preset")
    parser.add_argument("--no-epoch", action="store_true", help="skip the full-epoch timing of 'small'")
    add_batching_options(parser)
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parse_batching_options(parser)

    from mindtrans.device import cpu_threads, select_device

    device = select_device(verbose=False)
    batcher, src_vocab, tgt_vocab = multi30k_train_batcher(args.data_dir, args.batch_tokens, packed=not args.bucketed)
    graph = "one static graph" if not args.bucketed else (
        "static graph per shape" if args.static_shapes else "one dynamic-shape graph")
    report = {"device": device, "threads": cpu_threads(), "batch_tokens": args.batch_tokens,
              "batches": "bucketed" if args.bucketed else "packed", "graph": graph,
              "padding_ratio": batcher.padding_ratio(0), "numpy_sgemm_gflops": numpy_sgemm_gflops(),
              "mindspore_sgemm_gflops": mindspore_sgemm_gflops(), "presets": []}
    roofline = report["matmul_roofline_gflops"] = max(report["numpy_sgemm_gflops"], report["mindspore_sgemm_gflops"])
    for preset in args.presets.split(","):
        result = bench_preset(preset, batcher, src_vocab, tgt_vocab, args.steps,
                              full_epoch=preset == "small" and not args.no_epoch, packed=not args.bucketed,
                              dynamic_shapes=not args.static_shapes)
        for key in ("achieved_gflops", "useful_gflops", "epoch_gflops", "epoch_useful_gflops"):
            if key in result:
                result[key.replace("gflops", "fraction_of_matmul_roofline")] = result[key] / roofline
        report["presets"].append(result)
    report["peak_rss_gb"] = peak_rss_gb()
    emit(report, args.out)


if __name__ == "__main__":
    main()
