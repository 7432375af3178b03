"""Where a training step's time goes: MindSpore's profiler over a few steps, per kernel type.

Prints one JSON object: wall time per step, the kernels' summed time per step (and so
the time spent outside kernels: launching, shape inference, memory management), and
the kernel types that take the most time, each with its calls and share per step.

    python benchmarks/profile_train.py [--preset small] [--steps 4] [--bucketed [--static-shapes]]

The steps are packed batches of a Multi30k epoch, as training makes them (85 rows x 48
at 4096 tokens), after two warm-up steps; with `--bucketed`, padded batches of the
epoch's most common bucket shape (256 x 16) through one dynamic-shape graph, or with
`--static-shapes` a static one. The profiler itself adds some time outside kernels.
This is how the slow kernels in the README were found (broadcasting adds in `Linear`,
the attention softmax's backward, per-tensor gradient checks) and how the dynamic-shape
graph's time outside kernels showed that packing pays.
"""
import argparse
import csv
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import add_batching_options, emit, multi30k_train_batcher, parse_batching_options, preset_train_step
from mindtrans.fetch import add_data_dir_argument


def kernel_table(profile_dir: Path) -> dict:
    """op type -> (calls, total ms) from the profiler's CPU op summary."""
    paths = list(profile_dir.glob("*/FRAMEWORK/cpu_op_type_info_*.csv"))
    if not paths:
        raise RuntimeError(f"the profiler wrote no CPU op summary under {profile_dir}")
    table = {}
    for row in csv.DictReader(paths[0].open()):
        table[row["op_type"]] = (int(row["type_occurrences"]), float(row["total_compute_time"]))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_dir_argument(parser)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=4, help="profiled steps")
    add_batching_options(parser)
    parser.add_argument("--top", type=int, default=15, help="kernel types listed")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parse_batching_options(parser)

    import mindspore as ms
    from mindspore.profiler import Profiler

    from mindtrans.device import select_device

    device = select_device(verbose=False)
    batcher, src_vocab, tgt_vocab = multi30k_train_batcher(args.data_dir, args.batch_tokens, packed=not args.bucketed)
    epoch = [batcher.collate(batch) for batch in batcher.plan(0)]
    shape = Counter(arrays[0].shape for arrays in epoch).most_common(1)[0][0]
    batches = [arrays for arrays in epoch if arrays[0].shape == shape]
    batches = (batches * (args.steps + 2))[:args.steps + 2]

    _, step = preset_train_step(args.preset, src_vocab, tgt_vocab, dynamic_shapes=not args.static_shapes,
                                packed=not args.bucketed)
    for arrays in batches[:2]:  # compile and warm up
        step(*(ms.Tensor(a) for a in arrays))[0].asnumpy()

    with tempfile.TemporaryDirectory() as tmp:
        profiler = Profiler(output_path=tmp)
        start = time.perf_counter()
        for arrays in batches[2:]:
            step(*(ms.Tensor(a) for a in arrays))[0].asnumpy()
        wall = (time.perf_counter() - start) / args.steps
        profiler.analyse()
        table = kernel_table(Path(tmp))

    kernel_ms = sum(total for _, total in table.values()) / args.steps
    ranked = sorted(table.items(), key=lambda item: -item[1][1])[:args.top]
    graph = "dynamic shapes" if args.bucketed and not args.static_shapes else "static"
    emit({"device": device, "preset": args.preset, "batches": "bucketed" if args.bucketed else "packed",
          "batch_shape": list(shape), "graph": graph, "steps": args.steps,
          "wall_ms_per_step": wall * 1e3, "kernel_ms_per_step": kernel_ms,
          "outside_kernels_ms_per_step": wall * 1e3 - kernel_ms,
          "kernels": [{"op": op, "calls_per_step": calls / args.steps, "ms_per_step": total / args.steps,
                       "share_of_kernel_time": total / args.steps / kernel_ms} for op, (calls, total) in ranked]},
         args.out)


if __name__ == "__main__":
    main()
