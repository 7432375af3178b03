"""`mindtrans export`: a bundle's model as MindIR graphs, the format MindSpore Lite and MindSpore's
serving and inference tools run, with everything else translation needs (`mindtrans.exported`).

Two graphs are written with `mindspore.export`: the encoder, and one incremental decoder
step whose key/value cache is an explicit input and output. Their batch, source length
and cache slots are symbolic dimensions, so one file serves every batch. The search
(greedy, beam) stays in Python, as serving stacks do.
"""
import os
import platform
import shutil
import uuid
from pathlib import Path

import mindspore as ms
from mindspore import nn

import mindtrans
from mindtrans.bundle import load_bundle
from mindtrans.data import BOS, EOS
from mindtrans.step_graph import step_function
from mindtrans.exported import CACHE_DTYPES, ENCODER, FILES, FORMAT, FORMAT_VERSION, STEP, graph_inputs
from mindtrans.files import default_file_mode, first_line, sha256_file
from mindtrans.rundir import RunDir


class EncoderGraph(nn.Cell):
    """src (B, Ls) int32 -> (src_mask (B, 1, 1, Ls), layer 0's cross keys, its values, layer 1's ...):
    `Transformer.encode_for_steps` with flat outputs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def construct(self, src):
        src_mask, crosses = self.model.encode_for_steps(src)
        return (src_mask,) + crosses


class StepGraph(nn.Cell):
    """(tokens (B, 1), src_mask (B, 1, 1, Ls), position, rows (B,), *cache) -> (log-probabilities (B, V),
    attention (B, Ls), *new cache): `mindtrans.step_graph.decode_step` with the cache as flat arguments."""

    def __init__(self, model):
        super().__init__()
        self.model, self.step = model, step_function(model)

    def construct(self, tokens, src_mask, position, rows, *cache):
        log_probs, new_cache, attention = self.step(tokens, src_mask, cache, position, rows)
        return (log_probs, attention) + new_cache


def cache_dtype(model) -> str:
    """The key/value cache's float type for `model` (its weights'), as manifest.json names it."""
    dtype = model.encode_for_steps(ms.Tensor([[BOS, EOS]], ms.int32))[1][0].dtype
    return next(name for name, known in CACHE_DTYPES.items() if known == dtype)


def write_graphs(model, directory: Path, dtype: str) -> None:
    """encoder.mindir and decoder_step.mindir of `model` (inference mode), cache `dtype`, in `directory`."""
    inputs = graph_inputs(model.config, CACHE_DTYPES[dtype])
    for name, cell in ((ENCODER, EncoderGraph(model)), (STEP, StepGraph(model))):
        try:
            ms.export(cell, *inputs[name], file_name=str(directory / Path(name).stem), file_format="MINDIR")
        except (RuntimeError, TypeError, ValueError) as err:
            raise ValueError(f"MindSpore {ms.__version__} cannot export {name} ({first_line(err, 120)}); exporting is "
                             f"tested on MindSpore 2.7 and 2.10 (2.0 cannot compile these graphs)") from None
        os.chmod(directory / name, default_file_mode())  # MindSpore writes it readable by its owner only


def manifest(directory: Path, bundle, dtype: str) -> dict:
    """manifest.json's content for the files now in `directory`, exported from `bundle` with cache `dtype`."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "mindtrans_version": mindtrans.__version__,
            "mindspore_version": ms.__version__, "python": platform.python_version(), "cache_dtype": dtype,
            "source_model_sha256": sha256_file(bundle.path / RunDir.MODEL),
            "files_sha256": {name: sha256_file(directory / name) for name in FILES}}


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse an `out` that exists, unless `overwrite` and it is an earlier export (or empty)."""
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"--out {out} exists: pass --overwrite to replace it, or choose another directory")
    if not out.is_dir() or (any(out.iterdir()) and not RunDir(out).is_export()):
        raise FileExistsError(f"--out {out} is not an export (no {RunDir.MANIFEST}), so --overwrite does not replace "
                              f"it: choose another directory")
    here = Path.cwd()
    if Path(os.path.abspath(out)) in (here, *here.parents):
        raise FileExistsError(f"--out {out} holds the current directory, which cannot be replaced while in use: "
                              f"run the export from outside it (cd ..)")


def export_bundle(bundle_dir, out, overwrite: bool = False) -> Path:
    """Export the bundle in `bundle_dir` to the new directory `out` (replacing an earlier export only
    with `overwrite`). It is written beside `out` under a temporary name and renamed when complete."""
    out = Path(out)
    check_target(out, overwrite)
    bundle = load_bundle(bundle_dir)
    where = Path(os.path.abspath(out))  # "." and "sub/.." have no name to put a temporary beside
    where.parent.mkdir(parents=True, exist_ok=True)
    work = where.parent / f".{where.name}.{uuid.uuid4().hex[:8]}.tmp"
    work.mkdir()  # not mkdtemp: an export is meant to be shared, so the umask decides
    try:
        dtype = cache_dtype(bundle.model)
        write_graphs(bundle.model, work, dtype)
        for name in (RunDir.CONFIG, RunDir.SRC_VOCAB, RunDir.TGT_VOCAB):
            shutil.copyfile(bundle.path / name, work / name)
        RunDir(work).write_json(RunDir.MANIFEST, manifest(work, bundle, dtype))
        replace_directory(work, where)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out


def replace_directory(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an `out` already there is moved aside first and deleted after."""
    if not out.exists():
        os.rename(new, out)
        return
    old = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(out, old)
    os.rename(new, out)
    if old.is_symlink():  # a link to an export: the link goes, not what it points to
        old.unlink()
    else:
        shutil.rmtree(old)
