"""Choose the beam width and length penalty of a trained bundle on the validation split only.

Translates the validation split once per (beam, alpha) pair and prints both BLEUs, the output
length relative to the references and the time, as JSON; the test split is never read. The
best pair by tokenized BLEU is named last ("chosen").

    python benchmarks/choose_decoding.py runs/best --beams 1 4 6 --alphas 0.6 1.0 \
        --out benchmarks/results/choose_decoding_best.json
"""
import argparse

from common import ROOT, emit, multi30k_dir
from mindtrans.fetch import add_data_dir_argument


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="a trained run directory (model bundle)")
    add_data_dir_argument(parser)
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 4, 6])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.6, 1.0])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    from mindtrans.bundle import load_bundle
    from mindtrans.data import load_split, tokenize
    from mindtrans.device import select_device
    from mindtrans.evaluate import evaluate_bundle

    select_device(verbose=False)
    bundle, data_dir = load_bundle(args.bundle), multi30k_dir(args.data_dir)
    references = [tokenize(target) for _, target in load_split(data_dir, "val")]
    rows = []
    for beam in args.beams:
        for alpha in (args.alphas if beam > 1 else [0.0]):  # greedy search has no length penalty
            result = evaluate_bundle(bundle, data_dir, "val", beam_size=beam, alpha=alpha)
            length = sum(len(tokenize(h)) for h in result["hypotheses"]) / sum(map(len, references))
            rows.append({"beam": beam, "alpha": alpha, "bleu_tokenized": round(result["bleu_tokenized"], 2),
                         "sacrebleu": round(result["sacrebleu"], 2), "length_ratio": round(length, 3),
                         "seconds": round(result["translate_seconds"], 1)})
            print(rows[-1], flush=True)
    chosen = max(rows, key=lambda row: row["bleu_tokenized"])
    emit({"bundle": args.bundle, "split": "val", "rows": rows, "chosen": chosen},
         args.out or ROOT / "benchmarks" / "results" / "choose_decoding.json")


if __name__ == "__main__":
    main()
