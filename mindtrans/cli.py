"""The `mindtrans` command: fetch, train, evaluate, translate, info, demo."""
import argparse
import json
import os
import sys
from pathlib import Path

from mindtrans import __version__
from mindtrans.fetch import DEFAULT_DATA_DIR, add_fetch_arguments


def add_data_dir(parser):
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"where datasets live (default: {DEFAULT_DATA_DIR!r}, or $MINDTRANS_DATA_DIR)")


def add_train_arguments(parser):
    from mindtrans.config import PRESETS
    from mindtrans.schedule import SCHEDULES
    from mindtrans.train import TrainConfig

    d = TrainConfig()
    parser.add_argument("--preset", default=d.preset, choices=sorted(PRESETS), help="model size (default: %(default)s)")
    parser.add_argument("--corpus", default=d.corpus, choices=["auto", "multi30k", "synthetic"],
                        help="'auto': Multi30k if fetched into --data-dir, else the embedded synthetic corpus")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    parser.add_argument("--max-steps", type=int, default=d.max_steps, help="stop after N optimizer steps (0: no limit)")
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes,
                        help="stop after M minutes of training (0: no limit)")
    parser.add_argument("--batch-tokens", type=int, default=d.batch_tokens,
                        help="padded tokens per side in a batch (default: %(default)s)")
    parser.add_argument("--accum-steps", type=int, default=d.accum_steps,
                        help="batches per optimizer step (gradient accumulation), on each worker: the global batch "
                             "is batch-tokens x accum-steps x workers (default: %(default)s)")
    parser.add_argument("--no-pack", dest="pack", action="store_false",
                        help="pad each batch to a bucket length instead of packing several sentences per row (packing "
                             "gives every batch one shape, so one static graph; it needs one process and "
                             "--accum-steps 1)")
    parser.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default: %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="default: %(default)s")
    parser.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="decay after warm-up")
    parser.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="default: %(default)s")
    parser.add_argument("--clip-norm", type=float, default=d.clip_norm, help="global gradient-norm clip")
    parser.add_argument("--dropout", type=float, default=d.dropout, help="override the preset's dropout")
    parser.add_argument("--seed", type=int, default=d.seed, help="the same seed gives the same run")
    parser.add_argument("--amp", default=d.amp, choices=["auto", "on", "off"],
                        help="mixed precision with loss scaling ('auto': on for Ascend/GPU, off for CPU)")
    parser.add_argument("--mode", default=d.mode, choices=["graph", "pynative"],
                        help="'graph' compiles the train step; 'pynative' runs eagerly, for debugging")
    parser.add_argument("--max-len", type=int, default=d.max_len, help="longer sentences are truncated")
    parser.add_argument("--min-freq", type=int, default=d.min_freq, help="rarer words become <unk>")
    parser.add_argument("--average-last", type=int, default=d.average_last,
                        help="at the end, average the weights of the last N epochs and keep the mean if its "
                             "validation loss is lower (0: off; default: %(default)s)")


def train_config_from(args):
    from mindtrans.train import TrainConfig

    return TrainConfig(preset=args.preset, corpus=args.corpus, epochs=args.epochs, max_steps=args.max_steps,
                       max_minutes=args.max_minutes, batch_tokens=args.batch_tokens, pack=args.pack,
                       accum_steps=args.accum_steps, lr=args.lr,
                       warmup_steps=args.warmup_steps, schedule=args.schedule, label_smoothing=args.label_smoothing,
                       clip_norm=args.clip_norm, dropout=args.dropout, seed=args.seed, amp=args.amp, mode=args.mode,
                       max_len=args.max_len, min_freq=args.min_freq,
                       average_last=args.average_last)


def cmd_fetch(args):
    from mindtrans.fetch import env_mirrors, fetch_multi30k

    path = fetch_multi30k(args.data_dir, args.mirrors + env_mirrors(), insecure=args.insecure, timeout=args.timeout)
    print(f"Multi30k is in {path}")


def cmd_train(args):
    from mindtrans import distributed
    from mindtrans.train import train

    summary = train(args.data_dir, args.out, train_config_from(args), resume=args.resume)
    if distributed.is_main():  # under msrun: once, from rank 0
        print(json.dumps(summary, indent=1))
    if summary["stopped"] == "interrupted":
        # Under msrun a stop that was asked for and saved is no failure: every worker exits 0, so that
        # msrun ends the job cleanly instead of killing the others as if a worker had died.
        return 130 if distributed.world_size() == 1 else 0


def cmd_evaluate(args):
    from mindtrans.bundle import load_bundle
    from mindtrans.device import select_device
    from mindtrans.evaluate import evaluate_bundle

    select_device(verbose=not args.json)
    bundle = load_bundle(args.run_dir)
    corpus = args.corpus or json.loads((Path(args.run_dir) / "train_config.json").read_text()).get("corpus", "multi30k")
    result = evaluate_bundle(bundle, args.data_dir, args.split, corpus, args.beam, args.alpha, args.limit)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['split']} ({result['sentences']} sentences, beam {result['beam_size']}): "
              f"BLEU {result['bleu_tokenized']:.2f} (tokenized, lowercased), sacreBLEU {result['sacrebleu']:.2f}, "
              f"perplexity {result['ppl']:.2f}")


def cmd_translate(args):
    from mindtrans.bundle import load_bundle
    from mindtrans.device import select_device

    select_device(verbose=False)
    translator = load_bundle(args.run_dir).translator(batch_size=args.batch_size)
    sentences = args.sentences or [line.rstrip("\n") for line in sys.stdin]
    for line in translator.translate(sentences, beam_size=args.beam, alpha=args.alpha):
        print(line)


def cmd_info(args):
    from mindtrans.config import TransformerConfig
    from mindtrans.device import select_device
    from mindtrans.model import Transformer
    from mindtrans.params import count_parameters, format_breakdown

    select_device()
    config = TransformerConfig.preset(args.preset).with_vocab(args.src_vocab, args.tgt_vocab)
    counts = count_parameters(Transformer(config))
    print(f"preset {args.preset}: {json.dumps(config.to_dict())}")
    print(format_breakdown(counts))


def cmd_demo(args):
    from mindtrans.demo import run_demo

    run_demo(args.data_dir, args.out, mirrors=args.mirrors, minutes=args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindtrans", description="Train and use German-English Transformer "
                                     "translators with MindSpore (Ascend, GPU or CPU; MINDTRANS_DEVICE forces one).")
    parser.add_argument("--version", action="version", version=f"mindtrans {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download Multi30k (German-English) with SSL fallbacks and checksums")
    add_fetch_arguments(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("train", help="train a translator and write a model bundle",
                       description="Train a translator and write a model bundle. Started by msrun, MindSpore's "
                                   "launcher, it trains data-parallel on several devices or machines, e.g. `msrun "
                                   "--worker_num=8 --local_worker_num=8 --join=True python -m mindtrans train ...` "
                                   "(see the README).")
    add_data_dir(p)
    p.add_argument("--out", required=True, help="run directory: checkpoints, logs and the model bundle")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest.ckpt")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="BLEU and perplexity of a bundle on a whole split")
    p.add_argument("run_dir", help="a run directory written by `mindtrans train`")
    add_data_dir(p)
    p.add_argument("--split", default="test2016", choices=["train", "val", "test2016"], help="default: %(default)s")
    p.add_argument("--corpus", choices=["multi30k", "synthetic"], help="default: the one the model was trained on")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 is greedy (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty exponent (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N sentences")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("translate", help="translate sentences given as arguments, or stdin line by line")
    p.add_argument("run_dir", help="a run directory written by `mindtrans train`")
    p.add_argument("sentences", nargs="*", help="German sentences; none: read one per line from stdin")
    p.add_argument("--beam", type=int, default=4, help="beam size; 1 is greedy (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty exponent (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=128, help="sentences decoded together (default: %(default)s)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("info", help="build a model on the chosen device and show its parameter count")
    p.add_argument("--preset", default="small", help="default: %(default)s")
    p.add_argument("--src-vocab", type=int, default=8000, help="default: %(default)s")
    p.add_argument("--tgt-vocab", type=int, default=6000, help="default: %(default)s")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="the main job: fetch, train briefly, evaluate, translate, save a bundle")
    add_data_dir(p)
    p.add_argument("--out", default="runs/demo", help="run directory (default: %(default)s)")
    p.add_argument("--mirror", dest="mirrors", action="append", default=[],
                   help="Multi30k mirror (URL or directory); also $MINDTRANS_MIRROR")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default: %(default)s)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mindtrans.bundle import BundleError
    from mindtrans.fetch import FetchError

    try:
        return args.func(args) or 0
    except (FetchError, BundleError, FileNotFoundError, ValueError, RuntimeError) as err:
        from mindtrans import distributed

        message = str(err).strip()
        where = f" ({distributed.describe()})" if distributed.describe() else ""  # which msrun worker
        print(f"mindtrans {args.command}{where}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
