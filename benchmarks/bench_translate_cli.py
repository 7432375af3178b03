"""`mindtrans translate` over a whole split, as a user types it, with each engine: time, agreement, BLEU.

For each engine (`--engine mindspore`, `--engine numpy`) and search (greedy, beam 4) one
process translates the split from stdin (`mindtrans translate BUNDLE --beam N --engine E
< test2016.de`): its wall time includes starting Python, the imports, loading the bundle and
(MindSpore) compiling the step graph. Also each engine's fixed cost (one sentence), how many
lines the two engines translate differently (they compute the same arithmetic in float32),
both BLEUs of every output, and the MindSpore/NumPy time ratios, all from this one run.

    python benchmarks/bench_translate_cli.py --bundle runs/best [--data-dir data] [--out F]
"""
import argparse
import os
import subprocess
import sys
import time

from common import ROOT, emit, multi30k_dir
from mindtrans.fetch import add_data_dir_argument

TARGETS_S = {"greedy": 6.0, "beam4": 25.0}  # issue #16: through the CLI, process start included
SEARCHES = {"greedy": 1, "beam4": 4}
ENGINES = ("mindspore", "numpy")


def translate(bundle: str, engine: str, beam: int, stdin_path=None, sentence: str = None):
    """(wall seconds, output lines) of one `mindtrans translate` process."""
    command = [sys.executable, "-m", "mindtrans", "translate", bundle, "--beam", str(beam), "--engine", engine]
    env = {**os.environ, "MINDTRANS_DEVICE": "CPU", "PYTHONPATH": str(ROOT)}
    with open(stdin_path or os.devnull, "rb") as stdin:
        start = time.perf_counter()
        done = subprocess.run(command + ([sentence] if sentence else []), stdin=stdin, capture_output=True, env=env)
        seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr.decode()[-2000:]}")
    return seconds, done.stdout.decode("utf-8").splitlines()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="a trained run directory")
    add_data_dir_argument(parser)
    parser.add_argument("--split", default="test2016", choices=["val", "test2016"])
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()

    from mindtrans.data import load_split, tokenize
    from mindtrans.metrics import sacrebleu_score, tokenized_bleu

    data_dir = multi30k_dir(args.data_dir)
    source = data_dir / "multi30k" / f"{args.split}.de"
    references = [reference for _, reference in load_split(data_dir, args.split)]
    report = {"bundle": args.bundle, "split": args.split, "sentences": len(references), "cpu_threads":
              len(os.sched_getaffinity(0)), "load_average_before": os.getloadavg()[0], "fixed_cost_s": {}}
    outputs = {}
    for engine in ENGINES:
        report["fixed_cost_s"][engine] = round(translate(args.bundle, engine, 1, sentence="Ein Hund rennt.")[0], 2)
        for search, beam in SEARCHES.items():
            seconds, lines = translate(args.bundle, engine, beam, stdin_path=source)
            if len(lines) != len(references):
                raise SystemExit(f"--engine {engine} --beam {beam} printed {len(lines)} lines for "
                                 f"{len(references)} sentences of {source}")
            outputs[engine, search] = lines
            report[f"{engine}_{search}"] = {
                "seconds": round(seconds, 2), "sentences_per_s": round(len(lines) / seconds, 1),
                "sacrebleu": round(sacrebleu_score(lines, references), 2),
                "bleu_tokenized": round(tokenized_bleu([tokenize(h) for h in lines],
                                                       [tokenize(r) for r in references]), 2)}
    for search in SEARCHES:
        mindspore, numpy = (report[f"{engine}_{search}"]["seconds"] for engine in ENGINES)
        report[f"{search}_mindspore_over_numpy"] = round(mindspore / numpy, 2)
        report[f"{search}_lines_that_differ"] = sum(a != b for a, b in zip(*(outputs[e, search] for e in ENGINES)))
        report[f"{search}_target_s"] = TARGETS_S[search]
        report[f"{search}_numpy_meets_target"] = numpy <= TARGETS_S[search]
    report["load_average_after"] = os.getloadavg()[0]
    emit(report, args.out)


if __name__ == "__main__":
    main()
