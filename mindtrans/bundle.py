"""Model bundles: a run directory that holds everything needed to use the trained model.

Layout of a bundle (also the training run directory):
    config.json        TransformerConfig (the architecture)
    src_vocab.json     source vocabulary     tgt_vocab.json   target vocabulary
    model.ckpt         the published weights (best validation loss, or an average)
    train_config.json  the training arguments
    metadata.json      versions, data checksums, final metrics
    latest.ckpt        the resumable training state (weights, optimizer, progress)
    log.csv, log.json  one row per epoch
"""
import hashlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path

import mindtrans
from mindtrans.config import TransformerConfig
from mindtrans.data import Vocab, atomic_write_text

REQUIRED = ("config.json", "src_vocab.json", "tgt_vocab.json", "model.ckpt")


class BundleError(ValueError):
    """A bundle is incomplete, inconsistent or corrupt; the message says which file."""


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def write_static(out, config: TransformerConfig, src_vocab: Vocab, tgt_vocab: Vocab, train_info: dict,
                 data_files=()) -> None:
    """Write the parts of a bundle that do not change while training."""
    import mindspore as ms

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config.to_dict())
    src_vocab.save(out / "src_vocab.json")
    tgt_vocab.save(out / "tgt_vocab.json")
    _write_json(out / "train_config.json", train_info)
    _write_json(out / "metadata.json", {
        "mindtrans_version": mindtrans.__version__, "mindspore_version": ms.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "data_sha256": {Path(p).name: sha256_file(p) for p in data_files if Path(p).is_file()},
    })


def update_metadata(out, updates: dict) -> dict:
    """Merge `updates` into metadata.json (e.g. final metrics) and return the result."""
    path = Path(out) / "metadata.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(updates)
    _write_json(path, data)
    return data


@dataclass
class Bundle:
    """A loaded model with its vocabularies; `translator()` makes it translate."""

    path: Path
    config: TransformerConfig
    model: object
    src_vocab: Vocab
    tgt_vocab: Vocab
    metadata: dict = field(default_factory=dict)

    def translator(self, **kwargs):
        from mindtrans.decode import Translator

        return Translator(self.model, self.src_vocab, self.tgt_vocab, **kwargs)


def load_bundle(path, weights: str = "model.ckpt") -> Bundle:
    """Rebuild the model saved in bundle directory `path`, in inference mode.

    Raises BundleError naming the problem: a missing file, a config that does not
    describe the saved weights, vocabularies that do not fit the config, corrupt weights.
    """
    from mindtrans import checkpoint
    from mindtrans.model import Transformer

    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"{path} is not a directory; pass the run directory written by `mindtrans train`")
    missing = [name for name in REQUIRED[:3] + (weights,) if not (path / name).is_file()]
    if missing:
        raise BundleError(f"bundle {path} is missing {', '.join(missing)}")
    try:
        config = TransformerConfig.from_dict(json.loads((path / "config.json").read_text()))
    except (ValueError, TypeError) as err:
        raise BundleError(f"{path / 'config.json'} is not a valid model config: {err}") from err
    try:
        src_vocab, tgt_vocab = Vocab.load(path / "src_vocab.json"), Vocab.load(path / "tgt_vocab.json")
    except ValueError as err:
        raise BundleError(str(err)) from err
    for name, vocab, size in (("src_vocab.json", src_vocab, config.src_vocab_size),
                              ("tgt_vocab.json", tgt_vocab, config.tgt_vocab_size)):
        if len(vocab) != size:
            raise BundleError(f"{path / name} has {len(vocab)} tokens but config.json expects {size}")
    try:
        saved, _ = checkpoint.load(path / weights)
    except ValueError as err:
        raise BundleError(str(err)) from err
    model = Transformer(config)
    expected = dict(model.parameters_and_names())
    absent = sorted(set(p.name for p in expected.values()) - set(saved))
    if absent:
        raise BundleError(f"{path / weights} does not match config.json: no weights for {absent[:3]}"
                          f"{' ...' if len(absent) > 3 else ''}")
    for param in expected.values():
        value = saved[param.name]
        if tuple(value.shape) != tuple(param.shape):
            raise BundleError(f"{path / weights} does not match config.json: {param.name} has shape "
                              f"{tuple(value.shape)}, config.json implies {tuple(param.shape)}")
        param.set_data(value.astype(param.dtype))
    model.set_train(False)
    try:
        metadata = json.loads((path / "metadata.json").read_text()) if (path / "metadata.json").is_file() else {}
    except ValueError as err:
        raise BundleError(f"{path / 'metadata.json'} is not valid JSON: {err}") from err
    return Bundle(path, config, model, src_vocab, tgt_vocab, metadata)
