"""Where `mindtrans translate`'s time goes on test2016, and the floor under it.

Prints one JSON object in three parts, all measured in this run:
- `cli`: the command a user types (`mindtrans translate BUNDLE --beam N < test2016.de`),
  process start included, for greedy and beam 4; `python -c "import mindspore"` alone;
  and one sentence, which is every fixed cost (start, imports, bundle, graph compilation).
- `greedy_in_process`: one greedy pass over the split taken apart: the encoder, the
  compiled decoding steps (with their copy back to NumPy) and the search around them;
  the floating-point work the steps do (all rows, and only the rows still translating)
  and the rate that implies beside MindSpore's own MatMul rate on this machine.
- `step_kernels`: MindSpore's profiler over one batch of decoding steps, per kernel type.

    python benchmarks/profile_decode.py --bundle runs/quick [--data-dir data] [--out F]
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit, mindspore_sgemm_gflops, multi30k_dir
from mindtrans.fetch import add_data_dir_argument
from profile_train import kernel_table


def timed_command(args, stdin_path=None) -> float:
    """Wall seconds of one command run to completion (its output discarded)."""
    with open(stdin_path or "/dev/null", "rb") as stdin:
        start = time.perf_counter()
        subprocess.run(args, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start


def cli_timings(bundle: str, source: Path) -> dict:
    cli = [sys.executable, "-m", "mindtrans", "translate", bundle]
    return {"import_mindspore_s": timed_command([sys.executable, "-c", "import mindspore"]),
            "one_sentence_s": timed_command(cli + ["--beam", "1", "Ein Hund läuft über eine Wiese."]),
            "greedy_s": timed_command(cli + ["--beam", "1"], source),
            "beam4_s": timed_command(cli + ["--beam", "4"], source)}


def step_flops(config, rows: int, slots: int, src_len: int) -> int:
    """Multiply-adds x 2 of one decoding step for `rows` rows: per layer the self-attention
    projections (4 d^2) over `slots` cached positions, the cross-attention's query and output
    projections (2 d^2; its keys and values are cached) over `src_len`, the FFN (2 d d_ff);
    then the output projection (d V)."""
    d, d_ff = config.d_model, config.d_ff
    per_layer = 4 * d * d + 2 * d * slots + 2 * d * d + 2 * d * src_len + 2 * d * d_ff
    return 2 * rows * (config.n_decoder_layers * per_layer + d * config.tgt_vocab_size)


def encoder_flops(config, batch: int, src_len: int) -> int:
    """Encoder layers (4 d^2 + 2 d Ls + 2 d d_ff per token) and every decoder layer's cross-attention
    keys and values (2 d^2 per token), x 2."""
    d, d_ff = config.d_model, config.d_ff
    per_token = config.n_encoder_layers * (4 * d * d + 2 * d * src_len + 2 * d * d_ff) + \
        config.n_decoder_layers * 2 * d * d
    return 2 * batch * src_len * per_token


class StepMeter:
    """Wraps a `MindSporeSteps`' `run` and `encode` (`mindtrans.step_graph`): their time, calls and arithmetic."""

    def __init__(self, steps):
        self.steps, self.config = steps, steps.config
        self.step_s = self.encode_s = 0.0
        self.calls = self.flops_all_rows = self.flops_live_rows = self.encoder_flops = 0

    def __enter__(self):
        self.steps.run, self.steps.encode = self.timed_step, self.timed_encode  # shadow the methods
        return self

    def __exit__(self, *exc):
        del self.steps.run, self.steps.encode

    def timed_step(self, tokens, state, position, rows):
        from mindtrans.data import PAD

        start = time.perf_counter()
        out = type(self.steps).run(self.steps, tokens, state, position, rows)
        self.step_s += time.perf_counter() - start
        src_mask, cache = out[1]
        slots, src_len = cache[0].shape[2], src_mask.shape[-1]
        live = int((tokens[:, 0] != PAD).sum())
        self.calls += 1
        self.flops_all_rows += step_flops(self.config, tokens.shape[0], slots, src_len)
        self.flops_live_rows += step_flops(self.config, live, position + 1, src_len)
        return out

    def timed_encode(self, src):
        start = time.perf_counter()
        src_mask, crosses = type(self.steps).encode(self.steps, src)
        crosses[-1].asnumpy()  # wait for the encoder
        self.encode_s += time.perf_counter() - start
        self.encoder_flops += encoder_flops(self.config, *src.shape)
        return src_mask, crosses


def greedy_breakdown(translator, sources, matmul_gflops: float) -> dict:
    start = time.perf_counter()
    with StepMeter(translator.steps) as meter:
        translator.translate_ids(sources, beam_size=1)
    total = time.perf_counter() - start
    return {"total_s": total, "encoder_s": meter.encode_s, "decoding_steps_s": meter.step_s,
            "search_and_text_s": total - meter.encode_s - meter.step_s, "step_calls": meter.calls,
            "ms_per_step_call": meter.step_s / meter.calls * 1e3,
            "step_gflop_all_rows": meter.flops_all_rows / 1e9, "step_gflop_live_rows": meter.flops_live_rows / 1e9,
            "step_gflops_achieved": meter.flops_all_rows / meter.step_s / 1e9,
            "encoder_gflop": meter.encoder_flops / 1e9,
            "mindspore_matmul_gflops": matmul_gflops,
            "floor_s_all_rows_at_matmul_rate": (meter.flops_all_rows + meter.encoder_flops) / matmul_gflops / 1e9,
            "floor_s_live_rows_at_matmul_rate": (meter.flops_live_rows + meter.encoder_flops) / matmul_gflops / 1e9}


def step_kernels(translator, sources, top: int) -> dict:
    """The profiler over one greedy batch; its kernel types by time."""
    from mindspore.profiler import Profiler

    with tempfile.TemporaryDirectory() as tmp:
        profiler = Profiler(output_path=tmp)
        start = time.perf_counter()
        translator.translate_ids(sources, beam_size=1)
        wall = time.perf_counter() - start
        profiler.analyse()
        table = kernel_table(Path(tmp))
    kernel_s = sum(total for _, total in table.values()) / 1e3
    ranked = sorted(table.items(), key=lambda item: -item[1][1])[:top]
    return {"sentences": len(sources), "wall_s": wall, "kernel_s": kernel_s,
            "kernels": [{"op": op, "calls": calls, "ms": total, "share_of_kernel_time": total / 1e3 / kernel_s}
                        for op, (calls, total) in ranked]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True, help="a trained run directory")
    add_data_dir_argument(parser)
    parser.add_argument("--split", default="test2016")
    parser.add_argument("--top", type=int, default=12, help="kernel types listed")
    parser.add_argument("--out", help="also write the JSON report to this file")
    args = parser.parse_args()

    source = multi30k_dir(args.data_dir) / "multi30k" / f"{args.split}.de"  # load_split's layout
    report = {"bundle": args.bundle, "split": args.split, "cli": cli_timings(args.bundle, source)}

    from mindtrans.bundle import load_bundle
    from mindtrans.data import load_split
    from mindtrans.decode import Translator
    from mindtrans.device import select_device

    report["device"] = select_device(verbose=False)
    start = time.perf_counter()
    bundle = load_bundle(args.bundle)
    report["load_bundle_s"] = time.perf_counter() - start
    translator = Translator(bundle.model, bundle.src_vocab, bundle.tgt_vocab)
    sources = [src for src, _ in load_split(args.data_dir, args.split)]
    start = time.perf_counter()
    translator.translate_ids(sources[:8], beam_size=1)
    report["first_call_s"] = time.perf_counter() - start  # graph compilation, mostly
    report["greedy_in_process"] = greedy_breakdown(translator, sources, mindspore_sgemm_gflops())
    report["step_kernels"] = step_kernels(translator, sources[:translator.batch_size], args.top)
    emit(report, args.out)


if __name__ == "__main__":
    main()
