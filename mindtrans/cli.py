"""The `mindtrans` command: fetch, train, evaluate, translate, export, info, demo."""
import argparse
import json
import os
import sys
import warnings

from mindtrans import __version__, train_config
from mindtrans.config import PRESETS
from mindtrans.fetch import add_data_dir_argument, add_fetch_arguments
from mindtrans.rundir import RunDir


def add_device(parser):
    parser.add_argument("--device", choices=["Ascend", "GPU", "CPU"], type=lambda name: name.capitalize()
                        if name.lower() != "gpu" else "GPU",
                        help="force a device (default: the best available, or $MINDTRANS_DEVICE)")


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def finite_non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_search_arguments(parser):
    from mindtrans.decode import DEFAULT_ALPHA, DEFAULT_BEAM

    parser.add_argument("--beam-size", "--beam", dest="beam_size", type=positive_int, default=DEFAULT_BEAM,
                        help="beam size; 1 is greedy (default: %(default)s)")
    parser.add_argument("--alpha", type=finite_non_negative, default=DEFAULT_ALPHA,
                        help="length penalty exponent (default: %(default)s)")


def cmd_fetch(args):
    from mindtrans.fetch import env_mirrors, fetch_multi30k

    path = fetch_multi30k(args.data_dir, args.mirrors + env_mirrors(), insecure=args.insecure, timeout=args.timeout,
                          deadline=args.deadline)
    print(f"Multi30k is in {path}")


def cmd_train(args):
    from mindtrans import distributed
    from mindtrans.device import select_device
    from mindtrans.training import train
    from mindtrans.train_config import TrainConfig, from_args

    if args.device:
        select_device(args.device, verbose=False)
    saved = None
    if args.resume and os.path.isfile(os.path.join(args.out, RunDir.TRAIN_CONFIG)):  # else train() explains
        saved = TrainConfig.from_run(RunDir(args.out))
    summary = train(args.data_dir, args.out, from_args(args, saved), resume=args.resume, overwrite=args.overwrite)
    if distributed.is_main():  # under msrun: once, from rank 0
        print(json.dumps(summary, indent=1))
    if summary["stopped"] == "interrupted":
        # Under msrun a stop that was asked for and saved is no failure: every worker exits 0, so that
        # msrun ends the job cleanly instead of killing the others as if a worker had died.
        return 130 if distributed.world_size() == 1 else 0


def cmd_evaluate(args):
    from mindtrans.bundle import load_bundle
    from mindtrans.device import select_device
    from mindtrans.evaluate import evaluate_bundle, evaluate_files
    from mindtrans.files import atomic_write_text, check_writable

    if (args.src is None) != (args.ref is None):
        raise ValueError("--src and --ref go together: the German sentences and their English references")
    if args.src and (args.split or args.corpus):
        raise ValueError("--split and --corpus choose a split of a fetched corpus, --src and --ref any parallel "
                         "text: give one or the other")
    if args.out and os.path.exists(args.out):
        raise FileExistsError(f"--out {args.out} exists: remove it or choose another name (it is never overwritten)")
    if args.out:
        check_writable(args.out)  # now, not after minutes of translating
    select_device(args.device, verbose=not args.json)
    bundle = load_bundle(args.run_dir)
    if args.src:
        result = evaluate_files(bundle, args.src, args.ref, args.beam_size, args.alpha, args.limit)
    else:
        run = RunDir(args.run_dir)
        trained_on = run.train_info().get("corpus") if (run / RunDir.TRAIN_CONFIG).is_file() else None
        corpus = args.corpus or trained_on or "multi30k"
        result = evaluate_bundle(bundle, args.data_dir, args.split or "test2016", corpus, args.beam_size, args.alpha,
                                 args.limit)
    hypotheses = result.pop("hypotheses")
    if args.out:
        atomic_write_text(args.out, "".join(line + "\n" for line in hypotheses))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['split']} ({result['sentences']} sentences, beam {result['beam_size']}): "
              f"sacreBLEU {result['sacrebleu']:.2f} (cased; {result['sacrebleu_signature']}), "
              f"BLEU {result['bleu_tokenized']:.2f} (tokenized, lowercased), perplexity {result['ppl']:.2f}")


def _numpy_bundle(run_dir):
    """load_bundle(run_dir, engine="numpy"), saying so when run_dir is an export (MindIR) instead."""
    from mindtrans.bundle import BundleError, load_bundle

    try:
        return load_bundle(run_dir, engine="numpy")
    except BundleError:
        if RunDir(run_dir).is_export():
            raise ValueError(f"{run_dir} is an exported model (MindIR), which only MindSpore runs: use "
                             "--engine mindspore, or pass the run directory it was exported from") from None
        raise


def cmd_translate(args):
    from mindtrans.bundle import load_bundle

    if not args.sentences and sys.stdin is None:
        raise ValueError("no input: stdin is closed; give the sentences as arguments or pipe them in "
                         f"(mindtrans translate {args.run_dir} < sentences.de)")
    if args.engine == "numpy":  # never imports MindSpore
        if args.device not in (None, "CPU"):
            raise ValueError(f"--engine numpy runs on the CPU: drop --device {args.device}, or use --engine mindspore")
        opened = _numpy_bundle(args.run_dir)
    else:
        from mindtrans.device import select_device
        from mindtrans.exported import load_export

        select_device(args.device, verbose=False)
        opened = load_export(args.run_dir) if RunDir(args.run_dir).is_export() else load_bundle(args.run_dir)
    translator = opened.translator(batch_size=args.batch_size)
    translator.check_search(args.beam_size, args.alpha, len(args.sentences) or args.batch_size)
    if args.sentences:
        chunks = [args.sentences]
    else:  # typed lines one at a time; piped ones a few batches at a time, printed as they are done
        chunks = stdin_chunks(sys.stdin.buffer, 1 if sys.stdin.isatty() else 4 * args.batch_size)
    for chunk in chunks:
        for line in translator.translate(chunk, beam_size=args.beam_size, alpha=args.alpha):
            print(line)
        sys.stdout.flush()


def cmd_export(args):
    from mindtrans.device import select_device
    from mindtrans.export import export_bundle
    from mindtrans.exported import FILES

    select_device(args.device, verbose=False)
    out = export_bundle(args.run_dir, args.out, overwrite=args.overwrite)
    print(f"exported {args.run_dir} to {out}: {', '.join(FILES + (RunDir.MANIFEST,))}")


def stdin_chunks(stream, size: int):
    """Yield lists of up to `size` lines of the binary `stream`, each as `decode_line` reads it
    (lines end at \\n, as for `wc -l`; a byte-order mark before the first is dropped)."""
    from mindtrans.data import UTF8_BOM, decode_line

    chunk = []
    for number, raw in enumerate(stream, 1):
        chunk.append(decode_line(raw.removeprefix(UTF8_BOM) if number == 1 else raw, f"stdin line {number}"))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cmd_info(args):
    from mindtrans.config import TransformerConfig
    from mindtrans.device import select_device
    from mindtrans.model import Transformer
    from mindtrans.params import count_parameters, format_breakdown

    select_device(args.device)
    config = TransformerConfig.preset(args.preset).with_vocab(args.src_vocab, args.tgt_vocab)
    counts = count_parameters(Transformer(config))
    print(f"preset {args.preset}: {json.dumps(config.to_dict())}")
    print(format_breakdown(counts))


def cmd_demo(args):
    from mindtrans.demo import run_demo
    from mindtrans.device import select_device

    if args.device:
        select_device(args.device, verbose=False)
    run_demo(args.data_dir, args.out, mirrors=args.mirrors, minutes=args.minutes)


def add_use_commands(sub) -> None:
    """`evaluate`, `translate` and `export`: the subcommands that use a trained bundle."""
    from mindtrans.bundle import ENGINES

    about = "BLEU and perplexity of a bundle on a whole split, or on any parallel text"
    p = sub.add_parser("evaluate", help=about, description=f"{about}: sacreBLEU (cased, 13a, the headline; its "
                       "signature is printed) and BLEU on tokenized, lowercased words (the tutorials' figure). "
                       "Every line is a sentence pair, blank ones included, as sacreBLEU counts them.")
    p.add_argument("run_dir", help="a run directory written by `mindtrans train`")
    add_data_dir_argument(p)
    p.add_argument("--split", choices=["train", "val", "test2016"], help="default: test2016")
    p.add_argument("--corpus", choices=["multi30k", "synthetic"], help="default: the one the model was trained on")
    p.add_argument("--src", help="instead of --split: a file of German sentences, one per line (UTF-8)")
    p.add_argument("--ref", help="with --src: their English references, line by line")
    p.add_argument("--out", help="write the translations to this new file, one per line")
    add_search_arguments(p)
    p.add_argument("--limit", type=positive_int, help="only the first N sentences")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("translate", help="translate sentences given as arguments, or stdin line by line")
    p.add_argument("run_dir", help="a run directory written by `mindtrans train`, or an export (`mindtrans export`)")
    p.add_argument("sentences", nargs="*", help="German sentences; none: read one per line from stdin")
    add_search_arguments(p)
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="sentences decoded together (default: %(default)s)")
    add_device(p)
    p.add_argument("--engine", choices=ENGINES, default="mindspore",
                   help="'mindspore': the model on --device; 'numpy': a bundle's model in NumPy on the CPU, without "
                        "MindSpore (the same translations, no graph to compile: the fastest on a CPU) "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("export", help="write a bundle's model as MindIR graphs that translate without mindtrans's "
                       "model code (MindSpore Lite, serving)")
    p.add_argument("run_dir", help="a run directory written by `mindtrans train`")
    p.add_argument("--out", required=True, help="the export directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    add_device(p)
    p.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindtrans", description="Train and use German-English Transformer "
                                     "translators with MindSpore (Ascend, GPU or CPU; MINDTRANS_DEVICE forces one).")
    parser.add_argument("--version", action="version", version=f"mindtrans {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the whole traceback of an error instead of one line (also $MINDTRANS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fetch", help="download Multi30k (German-English) with SSL fallbacks and checksums")
    add_fetch_arguments(p)
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("train", help="train a translator and write a model bundle",
                       description="Train a translator and write a model bundle. Started by msrun, MindSpore's "
                                   "launcher, it trains data-parallel on several devices or machines, e.g. `msrun "
                                   "--worker_num=8 --local_worker_num=8 --join=True python -m mindtrans train ...` "
                                   "(see the README).")
    add_data_dir_argument(p)
    p.add_argument("--out", required=True, help="run directory: checkpoints, logs and the model bundle")
    p.add_argument("--resume", action="store_true", help="continue from OUT/latest.ckpt with the run's saved "
                   "configuration (only --epochs, --max-steps and --max-minutes change; other flags are ignored, "
                   "with a warning)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in OUT (without it, "
                   "an OUT that holds one is refused)")
    add_device(p)
    train_config.add_arguments(p)
    p.set_defaults(func=cmd_train)

    add_use_commands(sub)

    p = sub.add_parser("info", help="build a model on the chosen device and show its parameter count")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model size (default: %(default)s)")
    p.add_argument("--src-vocab", type=positive_int, default=8000,
                   help="source vocabulary size, for the embedding table (default: %(default)s)")
    p.add_argument("--tgt-vocab", type=positive_int, default=6000,
                   help="target vocabulary size, for the embedding and output tables (default: %(default)s)")
    add_device(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="the main job: fetch, train briefly, evaluate, translate, save a bundle",
                       description="The main job: fetch Multi30k (the embedded synthetic corpus when no mirror "
                       "answers), train the 'small' preset for --minutes, score test2016 with beam 4, translate a "
                       "few sentences, and leave the bundle in --out.")
    add_data_dir_argument(p)
    p.add_argument("--out", default="runs/demo", help="run directory (default: %(default)s)")
    p.add_argument("--mirror", dest="mirrors", action="append", default=[],
                   help="Multi30k mirror (URL or directory); also $MINDTRANS_MIRROR")
    p.add_argument("--minutes", type=positive_float, default=3.0, help="training time budget (default: %(default)s)")
    add_device(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _looks_like_an_option(arg: str) -> bool:
    return arg.startswith("-") and arg != "-" and " " not in arg  # as argparse tells "- Ein Mann" from "-x"


def parse_args(parser, argv=None):
    """Arguments, with `translate`'s sentences taken wherever they stand (`translate RUN --beam 1 Satz`);
    after `--`, even one that starts with a dash is a sentence."""
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "translate":
        cut = extra.index("--") if "--" in extra else len(extra)
        unknown = [arg for arg in extra[:cut] if _looks_like_an_option(arg)]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)} (a sentence that starts with a dash goes "
                         f"after --: translate RUN -- '-Satz')")
        args.sentences += extra[:cut] + extra[cut + 1:]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def error_line(err: BaseException) -> str:
    """The one line an error is reported in: an OSError names its file."""
    from mindtrans.files import SaveError, describe_os_error

    if isinstance(err, OSError) and not isinstance(err, SaveError) and err.filename and err.strerror:
        return f"{err.filename}: {describe_os_error(err)}"
    if isinstance(err, MemoryError):
        return f"out of memory ({str(err).strip() or 'MemoryError'}): choose smaller sizes"
    return str(err).strip()  # a FetchError lists its attempts on lines of their own


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)

    def warning_line(message, category, filename, lineno, file=None, line=None):  # one line, no source quoted
        print(f"mindtrans {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():  # Python's own display is back when main returns
        warnings.showwarning = warning_line
        return run_command(args)


def run_command(args) -> int:
    """`args.func(args)`, an error reported in one line: the exit status (1 on an error, 130 on Ctrl-C)."""
    from mindtrans.bundle import BundleError
    from mindtrans.fetch import FetchError

    try:
        return args.func(args) or 0
    except (FetchError, BundleError, OSError, ValueError, RuntimeError, MemoryError) as err:
        if args.debug or os.environ.get("MINDTRANS_DEBUG") == "1":
            raise
        from mindtrans import distributed

        message = error_line(err)
        where = f" ({distributed.describe()})" if distributed.describe() else ""  # which msrun worker
        print(f"mindtrans {args.command}{where}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
