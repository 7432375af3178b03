"""How the validation batch size sets the time of one validation pass (`validation_loss`).

Validation runs forward only, in PyNative mode, over the length-bucketed validation split.
This times one pass over Multi30k's validation split at 1x, 2x, 4x and 8x the training
batch, rounds interleaved so that a noisy machine slows every size alike, and reports the
median of each size, its ratio to 1x, and the loss (the same at every size up to float
rounding). Training uses `mindtrans.training.VALIDATION_BATCH_SCALE` x the training batch.

    python benchmarks/bench_validation.py [--preset small] [--batch-tokens 2048] [--rounds 3]
"""
import argparse
import statistics
import time

from common import emit, multi30k_dir
from mindtrans.fetch import add_data_dir_argument

SCALES = (1, 2, 4, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="the training batch (the quick recipe's)")
    parser.add_argument("--rounds", type=int, default=3)
    add_data_dir_argument(parser)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from mindtrans.device import select_device

    device = select_device(verbose=False)
    import mindspore as ms

    from mindtrans.batching import BucketBatcher
    from mindtrans.config import TransformerConfig
    from mindtrans.data import build_vocabs, encode_pairs, load_split
    from mindtrans.model import Transformer
    from mindtrans.steps import validation_loss
    from mindtrans.training import VALIDATION_BATCH_SCALE

    data_dir = multi30k_dir(args.data_dir)
    src_vocab, tgt_vocab = build_vocabs(load_split(data_dir, "train"), min_freq=2)
    config = TransformerConfig.preset(args.preset).with_vocab(len(src_vocab), len(tgt_vocab))
    encoded = encode_pairs(load_split(data_dir, "val"), src_vocab, tgt_vocab, max_len=config.max_len)
    ms.set_seed(0)
    model = Transformer(config)  # untrained: a pass costs the same whatever the weights
    batchers = {scale: BucketBatcher(encoded, batch_tokens=args.batch_tokens * scale, max_len=config.max_len,
                                     shuffle=False) for scale in SCALES}
    seconds, losses = {scale: [] for scale in SCALES}, {}
    for scale in SCALES:  # warm-up: the first pass allocates
        validation_loss(model, batchers[scale])
    for _ in range(args.rounds):
        for scale in SCALES:
            started = time.perf_counter()
            losses[scale] = validation_loss(model, batchers[scale])["loss"]
            seconds[scale].append(time.perf_counter() - started)
    median = {scale: statistics.median(times) for scale, times in seconds.items()}
    emit({
        "device": device, "preset": args.preset, "val_pairs": len(encoded), "training_batch_tokens": args.batch_tokens,
        "used_by_training": f"{VALIDATION_BATCH_SCALE}x",
        "sizes": [{"scale": scale, "batch_tokens": args.batch_tokens * scale, "batches": len(batchers[scale]),
                   "seconds_median": round(median[scale], 2), "seconds": [round(t, 2) for t in seconds[scale]],
                   "time_vs_1x": round(median[scale] / median[1], 3), "loss": losses[scale]} for scale in SCALES],
    }, args.out)


if __name__ == "__main__":
    main()
