"""Record a finished training run: its test2016 scores, how it was trained, on what, for how long.

Scores the validation split (beam search: what a recipe is chosen on), then translates all of
test2016 once with greedy decoding and once with beam search (not with `--validation-only`,
for a run the validation split rejects: its test scores are never read), and writes one
JSON file to benchmarks/results/ with the scores (tokenized lowercased BLEU, sacreBLEU,
perplexity), the training configuration and the `mindtrans train` command that repeats
it, the epoch log, the commit and the hardware. Prints the same JSON.

    python benchmarks/record_run.py runs/04_translation --name multi30k_small \
        --how "notebooks/04_translation.ipynb executed in full mode"
"""
import argparse
import os
import platform
from pathlib import Path

from common import ROOT, emit, multi30k_dir, peak_rss_gb
from mindtrans.fetch import add_data_dir_argument


def hardware() -> dict:
    """CPU model, usable cores and memory of this machine."""
    info = {"cores": len(os.sched_getaffinity(0)), "machine": platform.machine()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                  if line.startswith("model name")]
        info["cpu"] = models[0] if models else "unknown"
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kb = int(meminfo.read_text().split("MemTotal:", 1)[1].split()[0])
        info["memory_gb"] = round(total_kb / 1024 ** 2, 1)
    return info


def train_command(train_args: dict, out: str) -> str:
    """The `mindtrans train` command line for these saved TrainConfig values (defaults left out)."""
    from mindtrans.train_config import TrainConfig, flag

    cfg, defaults = TrainConfig.from_dict(train_args), TrainConfig()  # from_dict: runs saved before packing
    parts = ["mindtrans train"]
    for name, (value, _) in cfg.differences(defaults).items():
        parts.append(flag(name) if isinstance(value, bool) else f"{flag(name)} {value}")
    parts.append(f"--out {out}")
    return " ".join(parts)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run directory (a model bundle)")
    add_data_dir_argument(parser)
    parser.add_argument("--name", help="results file name without .json (default: the run directory's name)")
    parser.add_argument("--how", default="", help="how the run was launched, if not with `mindtrans train`")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--validation-only", action="store_true",
                        help="score the validation split only, and leave test2016 unread")
    args = parser.parse_args()

    from mindtrans import checkpoint
    from mindtrans.bundle import load_bundle
    from mindtrans.device import select_device
    from mindtrans.evaluate import evaluate_bundle
    from mindtrans.params import count_parameters
    from mindtrans.rundir import RunDir
    from mindtrans.train_config import TrainConfig

    device = select_device(verbose=False)
    run = RunDir(args.run_dir)
    data_dir = multi30k_dir(args.data_dir)
    bundle = load_bundle(run.path)
    train_info, metadata, log = run.train_info(), run.read_json(RunDir.METADATA), run.read_json(RunDir.LOG_JSON)
    _, weights_info = checkpoint.load(run.model)

    # the split the recipe was chosen on, then the test split, scored once
    val = evaluate_bundle(bundle, data_dir, "val", train_info["corpus"], beam_size=args.beam, alpha=args.alpha)
    val_scores = {f"beam{args.beam}": {key: val[key] for key in ("sacrebleu", "bleu_tokenized", "translate_seconds")},
                  "loss": val["loss"]}
    scores = {}
    test_searches = () if args.validation_only else (("greedy", 1), (f"beam{args.beam}", args.beam))
    for name, beam in test_searches:
        result = evaluate_bundle(bundle, data_dir, "test2016", train_info["corpus"], beam_size=beam, alpha=args.alpha)
        scores[name] = {key: result[key] for key in ("sacrebleu", "bleu_tokenized", "translate_seconds")}
        scores["sacrebleu_signature"] = result["sacrebleu_signature"]
        scores["test_loss"], scores["test_ppl"] = result["loss"], result["ppl"]

    training = metadata.get("training", {})
    record = {
        "run_dir": str(run.path),
        "command": train_command(train_info["train"], str(run.path)),
        "launched_by": args.how or "the command above",
        "hardware": {**hardware(), "device": device},
        "versions": {key: metadata.get(key) for key in ("mindtrans_version", "mindspore_version", "python")},
        "data_sha256": metadata.get("data_sha256"),
        "model": {"preset": train_info["train"]["preset"], "parameters": count_parameters(bundle.model)["total"],
                  **{key: bundle.config.to_dict()[key] for key in ("d_model", "n_heads", "n_encoder_layers",
                                                                    "n_decoder_layers", "d_ff", "dropout")}},
        "vocab": {"kind": TrainConfig.from_dict(train_info["train"]).vocab, "src": len(bundle.src_vocab),
                  "tgt": len(bundle.tgt_vocab), "shared_embeddings": bundle.config.share_embeddings},
        "training": {"steps": training.get("steps"), "epochs": training.get("epochs_completed"),
                     "train_time_s": training.get("train_time_s"), "stopped": training.get("stopped"),
                     "mean_epoch_s": sum(row["epoch_time_s"] for row in log) / max(len(log), 1),
                     "averaging": training.get("averaging")},
        "published_weights": weights_info,
        "val": val_scores,
        "test2016": scores or "not scored (--validation-only)",
        "epochs": log,
        "peak_rss_gb_evaluation": peak_rss_gb(),
    }
    emit(record, ROOT / "benchmarks" / "results" / f"{args.name or run.path.name}.json")


if __name__ == "__main__":
    main()
