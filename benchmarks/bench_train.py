"""Train-step speed on Multi30k's real length distribution, against the machine's matmul rate.

Prints one JSON object: per preset the mean step time, real (non-padding) tokens per
second, achieved matmul FLOP/s and its fraction of the machine's matmul rate (the faster
of NumPy's and MindSpore's sgemm, both measured in the same run); for `small` also one
full training epoch; and peak RSS.

    python benchmarks/bench_train.py [--presets small,course] [--steps 8] [--no-epoch] [--static-shapes]

`--static-shapes` compiles one static graph per batch shape instead of the one
dynamic-shape graph that training uses: faster steps, ~1 GB more memory per shape.
"""
import argparse
import time

import numpy as np
from common import (emit, mindspore_sgemm_gflops, multi30k_train_batcher, numpy_sgemm_gflops, peak_rss_gb,
                    preset_train_step)


def train_flops(config, batch: int, length: int) -> float:
    """Matrix-multiply FLOPs of one training step on a (batch, length) src/tgt batch.

    Forward multiply-adds of every projection and attention product, times 2 FLOPs per
    multiply-add, times 3 for forward + backward (the backward pass costs twice the forward).
    """
    d, f, v = config.d_model, config.d_ff, config.tgt_vocab_size
    ls, lt = length, length - 1                     # the decoder reads tgt[:, :-1]
    ps, pt = batch * ls, batch * lt                 # positions, padding included (it is computed)
    encoder = ps * (4 * d * d + 2 * d * f) + 2 * batch * ls * ls * d
    decoder = (pt * (6 * d * d + 2 * d * f) + ps * 2 * d * d
               + 2 * batch * lt * lt * d + 2 * batch * lt * ls * d)
    macs = config.n_encoder_layers * encoder + config.n_decoder_layers * decoder + pt * d * v
    return 3 * 2 * macs


def bench_preset(preset, batcher, src_vocab, tgt_vocab, steps: int, full_epoch: bool, dynamic_shapes: bool) -> dict:
    import mindspore as ms

    config, step = preset_train_step(preset, src_vocab, tgt_vocab, dynamic_shapes)

    plan = batcher.plan(0)
    started = time.perf_counter()
    seen = set()
    for indices in plan:  # compile every batch shape once
        src, tgt = batcher.collate(indices)
        if src.shape not in seen:
            seen.add(src.shape)
            step(ms.Tensor(src), ms.Tensor(tgt))[0].asnumpy()
    compile_s = time.perf_counter() - started

    def run(batches):
        flops = real = 0
        start = time.perf_counter()
        for indices in batches:
            src, tgt = batcher.collate(indices)
            step(ms.Tensor(src), ms.Tensor(tgt))[0].asnumpy()
            flops += train_flops(config, *src.shape)
            real += int((src != 1).sum() + (tgt != 1).sum())
        return time.perf_counter() - start, flops, real

    seconds, flops, real = run(plan[:steps])
    result = {"preset": preset, "steps": steps, "step_s": seconds / steps, "real_tokens_per_s": real / seconds,
              "achieved_gflops": flops / seconds / 1e9, "compile_s": compile_s, "shapes": len(seen)}
    if full_epoch:
        epoch_s, epoch_flops, epoch_real = run(batcher.plan(1))
        result.update(epoch_s=epoch_s, epoch_steps=len(plan), epoch_real_tokens_per_s=epoch_real / epoch_s,
                      epoch_gflops=epoch_flops / epoch_s / 1e9)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--presets", default="small,course")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per preset")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--no-epoch", action="store_true", help="skip the full-epoch timing of 'small'")
    parser.add_argument("--static-shapes", action="store_true", help="a static graph per batch shape")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()

    from mindtrans.device import cpu_threads, select_device

    device = select_device(verbose=False)
    batcher, src_vocab, tgt_vocab = multi30k_train_batcher(args.data_dir, args.batch_tokens)
    report = {"device": device, "threads": cpu_threads(), "batch_tokens": args.batch_tokens,
              "graph": "static per shape" if args.static_shapes else "dynamic shapes",
              "padding_ratio": batcher.padding_ratio(0), "numpy_sgemm_gflops": numpy_sgemm_gflops(),
              "mindspore_sgemm_gflops": mindspore_sgemm_gflops(), "presets": []}
    roofline = report["matmul_roofline_gflops"] = max(report["numpy_sgemm_gflops"], report["mindspore_sgemm_gflops"])
    for preset in args.presets.split(","):
        result = bench_preset(preset, batcher, src_vocab, tgt_vocab, args.steps,
                              full_epoch=preset == "small" and not args.no_epoch,
                              dynamic_shapes=not args.static_shapes)
        for key in ("achieved_gflops", "epoch_gflops"):
            if key in result:
                result[key.replace("gflops", "fraction_of_matmul_roofline")] = result[key] / roofline
        report["presets"].append(result)
    report["peak_rss_gb"] = peak_rss_gb()
    emit(report, args.out)


if __name__ == "__main__":
    main()
