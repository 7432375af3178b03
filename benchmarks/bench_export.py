"""Exporting a bundle to MindIR, and translating test2016 from the export vs from the bundle.

    python benchmarks/bench_export.py --bundle runs/small [--data-dir data] [--limit N] [--out FILE]

Times `mindtrans export`, opening each (load_bundle vs load_export: sha256 checks, weights or
graphs), and greedy and beam-4 translation of the test2016 sources (data/multi30k/test2016.de,
fetched if missing) from each, in the same process one after the other, after a warm-up of
each. Prints one JSON object with the times, export / bundle ratios and whether every
translation is identical.
"""
import argparse
import tempfile
import time
from pathlib import Path

from common import emit, multi30k_dir, peak_rss_gb
from mindtrans.fetch import add_data_dir_argument


def timed(fn):
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def translate_all(opened, sources, beam_sizes, report: dict, name: str) -> dict:
    """{beam: translations} of `sources` from a Bundle or Export, timed into report[f"{name}_beam{k}_s"]."""
    translator = opened.translator()
    translator.translate(sources[:8], beam_size=max(beam_sizes))  # warm-up: graphs compiled or loaded
    outputs = {}
    for beam in beam_sizes:
        outputs[beam], report[f"{name}_beam{beam}_s"] = timed(lambda: translator.translate(sources, beam_size=beam))
    return outputs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="a trained run directory")
    add_data_dir_argument(parser)
    parser.add_argument("--limit", type=int, help="only the first N test2016 sentences")
    parser.add_argument("--beam-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()

    from mindtrans.bundle import load_bundle
    from mindtrans.data import load_split
    from mindtrans.device import select_device
    from mindtrans.export import export_bundle
    from mindtrans.exported import load_export

    device = select_device(verbose=False)
    sources = [source for source, _ in load_split(multi30k_dir(args.data_dir), "test2016")][:args.limit]
    report = {"device": device, "bundle": args.bundle, "sentences": len(sources)}
    with tempfile.TemporaryDirectory() as work:
        out, report["export_s"] = timed(lambda: export_bundle(args.bundle, Path(work) / "export"))
        report["export_mb"] = sum(path.stat().st_size for path in out.iterdir()) / 2**20
        bundle, report["load_bundle_s"] = timed(lambda: load_bundle(args.bundle))
        exported, report["load_export_s"] = timed(lambda: load_export(out))
        expected = translate_all(bundle, sources, args.beam_sizes, report, "bundle")
        got = translate_all(exported, sources, args.beam_sizes, report, "export")
    for beam in args.beam_sizes:
        report[f"beam{beam}_export_over_bundle"] = report[f"export_beam{beam}_s"] / report[f"bundle_beam{beam}_s"]
        report[f"beam{beam}_identical"] = sum(a == b for a, b in zip(expected[beam], got[beam])) / len(sources)
    report["peak_rss_gb"] = peak_rss_gb()
    emit(report, args.out)


if __name__ == "__main__":
    main()
