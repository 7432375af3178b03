"""Helpers shared by the benchmarks: data location, matmul roofline, peak memory, the JSON report."""
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_MULTI30K = ROOT.parent / "shared" / "data" / "multi30k"


def multi30k_dir(data_dir) -> Path:
    """`data_dir` with Multi30k in it, fetched from the shared local mirror when missing."""
    from mindtrans.fetch import fetch_multi30k

    mirrors = [str(SHARED_MULTI30K)] if SHARED_MULTI30K.is_dir() else []
    fetch_multi30k(data_dir, mirrors, log=lambda *a, **k: None)
    return Path(data_dir)


def multi30k_train_batcher(data_dir, batch_tokens: int, packed: bool = True):
    """(shuffled training batcher, source vocab, target vocab) for Multi30k, as training builds them:
    packed rows by default, length buckets with `packed=False`."""
    from mindtrans.data import load_split
    from mindtrans.data import build_vocabs
    from mindtrans.train_config import TrainConfig
    from mindtrans.training import make_batcher

    pairs = load_split(multi30k_dir(data_dir), "train")
    src_vocab, tgt_vocab = build_vocabs(pairs, min_freq=2)
    batcher = make_batcher(pairs, src_vocab, tgt_vocab, TrainConfig(batch_tokens=batch_tokens), shuffle=True,
                           packed=packed)
    return batcher, src_vocab, tgt_vocab


def add_batching_options(parser) -> None:
    """--batch-tokens, --bucketed and --static-shapes: how the train-step benchmarks batch and compile."""
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--bucketed", action="store_true", help="length-bucketed batches instead of packed rows")
    parser.add_argument("--static-shapes", action="store_true",
                        help="with --bucketed: a static graph per batch shape, not one dynamic-shape graph")


def parse_batching_options(parser):
    """parser.parse_args(), refusing --static-shapes without --bucketed (packed rows are always one static graph)."""
    args = parser.parse_args()
    if args.static_shapes and not args.bucketed:
        parser.error("--static-shapes goes with --bucketed (packed batches always use one static graph)")
    return args


def preset_train_step(preset: str, src_vocab, tgt_vocab, dynamic_shapes: bool = True, packed: bool = False):
    """(model config, compiled train step) for a fresh `preset` model with training's Adam settings;
    see `make_train_step` for `dynamic_shapes` and `packed`."""
    import mindspore as ms

    from mindtrans import compat
    from mindtrans.config import TransformerConfig
    from mindtrans.model import Transformer
    from mindtrans.steps import make_train_step
    from mindtrans.train_config import TrainConfig

    config = TransformerConfig.preset(preset).with_vocab(len(src_vocab), len(tgt_vocab))
    ms.set_seed(0)
    model = Transformer(config)
    model.set_train(True)
    optimizer = compat.adam(model.trainable_params(), learning_rate=1e-4, beta1=0.9, beta2=0.98, eps=1e-9)
    return config, make_train_step(model, optimizer, TrainConfig(preset=preset), dynamic_shapes=dynamic_shapes,
                                   packed=packed)


def batch_pairs(batch) -> np.ndarray:
    """The pair indices of a planned batch: a bucket batch's index array, or a packed batch's rows."""
    return np.asarray(batch) if np.ndim(batch[0]) == 0 else np.fromiter((i for row in batch for i in row), int)


def numpy_sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 matrix-multiply rate of NumPy's BLAS (GFLOP/s)."""
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def mindspore_sgemm_gflops(m: int = 4096, k: int = 256, n: int = 768, chain: int = 20, repeats: int = 5) -> float:
    """MindSpore's float32 MatMul rate on Transformer-shaped products, inside one compiled graph (GFLOP/s).

    The graph multiplies (m, k) by (k, n) and back by (n, k), `chain` products in a row, as
    a model's projections do. Timing one eager MatMul instead would mostly time its
    dispatch and the page faults of its fresh output buffer: about half this rate here.
    """
    import mindspore as ms
    from mindspore import ops

    up, down = ops.MatMul(transpose_b=True), ops.MatMul(transpose_b=True)

    @ms.jit
    def products(x, w_up, w_down):
        for _ in range(chain // 2):
            x = down(up(x, w_up), w_down)
        return x.sum()

    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((m, k), dtype=np.float32))
    w_up = ms.Tensor(rng.standard_normal((n, k), dtype=np.float32) / np.sqrt(k))
    w_down = ms.Tensor(rng.standard_normal((k, n), dtype=np.float32) / np.sqrt(n))
    products(x, w_up, w_down).asnumpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        products(x, w_up, w_down).asnumpy()
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n * (chain // 2 * 2) / best / 1e9


def git_commit() -> str:
    """HEAD of the checkout, with '-dirty' when tracked files are modified."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def emit(report: dict, out=None) -> None:
    """Print `report` as JSON, after the command line that wrote it and the commit it ran on, and
    with `out` also write it there (atomically)."""
    import json

    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    report = {"written_by": shlex.join(["python", script, *sys.argv[1:]]), "commit": git_commit(), **report}
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if out:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, out)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (GB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
