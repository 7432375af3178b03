"""Translating from an export (`mindtrans export`): MindIR graphs run by MindSpore, without the model code.

An export directory holds two graphs, the files translation needs beside them, and
manifest.json (format version, the versions that wrote it, each file's sha256):

- encoder.mindir: src (B, Ls) int32 -> src_mask (B, 1, 1, Ls) bool, then for each decoder
  layer its cross-attention keys and values (B, H, Ls, D/H) (`Transformer.encode_for_steps`);
- decoder_step.mindir: (tokens (B, 1) int32, src_mask, position int32 scalar, rows (B,) int32,
  cache: 4 tensors per layer, (B, H, slots, D/H) self keys and values, then the cross ones)
  -> (log-probabilities (B, V), attention (B, Ls), the new cache): `mindtrans.step_graph.decode_step`;
- config.json, src_vocab.json, tgt_vocab.json: as in the bundle (a subword model inside).

B, Ls and the number of slots are symbolic. Greedy and beam search stay in Python
(`mindtrans.decode`); this module imports neither the model nor its layers, and checks
every file's sha256 before MindSpore or sentencepiece parses it.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
from mindspore import nn

from mindtrans.bundle import _read_config_and_vocabs
from mindtrans.decode import Translator
from mindtrans.step_graph import MindSporeSteps, step_signature
from mindtrans.files import first_line, sha256_file
from mindtrans.rundir import RunDir

FORMAT, FORMAT_VERSION = "mindtrans-export", 1
ENCODER, STEP = "encoder.mindir", "decoder_step.mindir"
FILES = (RunDir.CONFIG, RunDir.SRC_VOCAB, RunDir.TGT_VOCAB, ENCODER, STEP)  # all that the manifest vouches for
CACHE_DTYPES = {"float32": ms.float32, "float16": ms.float16}  # manifest.json's "cache_dtype"


class ExportError(ValueError):
    """An export directory is incomplete, changed or unreadable; the message says which file."""


class GraphSteps(MindSporeSteps):
    """The two exported graphs (`nn.GraphCell`s) as the searches' `Steps`."""

    def __init__(self, config, encoder, step):
        self.config, self.encoder, self.graph = config, encoder, step

    def encode(self, src):
        """src (B, Ls) int32 -> src_mask (B, 1, 1, Ls), the cross keys and values of every layer (flat)."""
        outputs = self.encoder(src)
        return outputs[0], tuple(outputs[1:])

    def step(self, tokens, src_mask, cache, position, rows):
        """As `decode_step`: (log-probabilities (B, V), new flat cache, attention (B, Ls))."""
        outputs = self.graph(tokens, src_mask, position, rows, *cache)
        return outputs[0], tuple(outputs[2:]), outputs[1]


@dataclass
class Export:
    """An opened export directory; `translator()` makes it translate, like `Bundle.translator`."""

    path: Path
    config: object
    steps: GraphSteps
    src_vocab: object
    tgt_vocab: object
    manifest: dict = field(default_factory=dict)

    def translator(self, **kwargs) -> Translator:
        return Translator(self.steps, self.src_vocab, self.tgt_vocab, **kwargs)


def read_manifest(path) -> dict:
    """manifest.json of export directory `path`, checked to be one this mindtrans reads."""
    file = Path(path) / RunDir.MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path} has no {RunDir.MANIFEST}: pass a directory written by `mindtrans export`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ExportError(f"{file} is not a valid manifest: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{file} is not a mindtrans export manifest (no \"format\": \"{FORMAT}\")")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{file} has format version {manifest.get('format_version')!r}; this mindtrans reads "
                          f"version {FORMAT_VERSION}: export the bundle again with this mindtrans")
    return manifest


def check_files(path, manifest: dict) -> None:
    """ExportError naming the first of `FILES` that is missing or whose sha256 is not the manifest's."""
    recorded = manifest.get("files_sha256")
    if not isinstance(recorded, dict):
        raise ExportError(f"{Path(path) / RunDir.MANIFEST} has no \"files_sha256\": export the bundle again")
    for name in FILES:
        file = Path(path) / name
        if not file.is_file():
            raise ExportError(f"export {path} is missing {name}: export the bundle again")
        if sha256_file(file) != recorded.get(name):
            raise ExportError(f"{file} changed after it was exported (its sha256 is not the one {RunDir.MANIFEST} "
                              f"records): restore it, or export the bundle again with --overwrite")


def graph_inputs(config, dtype) -> dict:
    """Each graph's inputs in argument order, None for a symbolic dimension: {file name: tuple of Tensors}.
    `dtype`: the cache's (the model's float type)."""
    step = step_signature(config, dtype)
    return {ENCODER: (ms.Tensor(shape=[None, None], dtype=ms.int32),),
            STEP: (step["tokens"], step["src_mask"], step["position"], step["rows"], *step["cache"])}


def load_graph(file, inputs: tuple):
    """An `nn.GraphCell` running the MindIR graph in `file` on `inputs` (`graph_inputs`): told which
    dimensions are symbolic, it compiles once, not once per shape. ExportError if MindSpore cannot load it."""
    try:
        graph = nn.GraphCell(ms.load(str(file)))
        graph.set_inputs(*inputs)
        return graph
    except (RuntimeError, ValueError, TypeError) as err:
        raise ExportError(f"MindSpore {ms.__version__} cannot load {file} ({first_line(err, 120)}): export the bundle "
                          f"again with this MindSpore") from None


def load_export(path) -> Export:
    """Open export directory `path`: manifest, sha256 of every file, config and vocabularies, graphs."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(f"{path} is not a directory; pass the directory written by `mindtrans export`")
    manifest = read_manifest(path)
    check_files(path, manifest)
    config, src_vocab, tgt_vocab = _read_config_and_vocabs(RunDir(path))
    if manifest.get("cache_dtype") not in CACHE_DTYPES:
        raise ExportError(f"{path / RunDir.MANIFEST} has cache_dtype {manifest.get('cache_dtype')!r}, not one of "
                          f"{sorted(CACHE_DTYPES)}: export the bundle again")
    inputs = graph_inputs(config, CACHE_DTYPES[manifest["cache_dtype"]])
    steps = GraphSteps(config, load_graph(path / ENCODER, inputs[ENCODER]), load_graph(path / STEP, inputs[STEP]))
    return Export(path, config, steps, src_vocab, tgt_vocab, manifest)
