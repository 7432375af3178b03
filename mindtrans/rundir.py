"""The run directory: the one owner of every file name a training run and a model bundle use.

    config.json        TransformerConfig (the architecture)
    src_vocab.json     source vocabulary     tgt_vocab.json   target vocabulary
    model.ckpt         the published weights (best validation loss, or an average)
    train_config.json  the training arguments, the data directory and corpus
    metadata.json      versions, data checksums, final metrics
    latest.ckpt        the resumable training state (weights, optimizer, progress)
    log.csv, log.json  one row per epoch
    epochs/            the weights after each of the last epochs (checkpoint averaging)
    manifest.json      only in an export (`mindtrans export`), which holds MindIR graphs instead

The first four are a bundle: what translation needs (`mindtrans.bundle`). Every file is
written to a hidden temporary name beside it and renamed into place.
"""
import csv
import io
import json
import platform
from pathlib import Path

from mindtrans.files import SaveError, atomic_write_text, describe_os_error, sha256_file


class RunDir:
    """Paths and small JSON files of one run directory; nothing is read or written until asked."""

    CONFIG = "config.json"
    SRC_VOCAB = "src_vocab.json"
    TGT_VOCAB = "tgt_vocab.json"
    MODEL = "model.ckpt"
    TRAIN_CONFIG = "train_config.json"
    METADATA = "metadata.json"
    LATEST = "latest.ckpt"
    LOG_JSON = "log.json"
    LOG_CSV = "log.csv"
    EPOCHS = "epochs"
    MANIFEST = "manifest.json"  # marks an export directory (`mindtrans.exported`)
    BUNDLE = (CONFIG, SRC_VOCAB, TGT_VOCAB, MODEL)  # what translation needs
    FILES = BUNDLE + (TRAIN_CONFIG, METADATA, LATEST, LOG_JSON, LOG_CSV)

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def latest(self) -> Path:
        return self.path / self.LATEST

    @property
    def model(self) -> Path:
        return self.path / self.MODEL

    def is_export(self) -> bool:
        """Whether this directory holds an export (its manifest.json) rather than a run or a bundle."""
        return (self.path / self.MANIFEST).is_file()

    def epoch_checkpoint(self, epoch: int) -> Path:
        """epochs/epoch_NNN.ckpt: the weights after `epoch` (1-based)."""
        return self.path / self.EPOCHS / f"epoch_{epoch:03d}.ckpt"

    def epoch_checkpoints(self) -> list:
        """The kept epoch checkpoints, oldest first."""
        return sorted((self.path / self.EPOCHS).glob("epoch_*.ckpt"))

    def read_json(self, name: str):
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def write_json(self, name: str, data) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=1, ensure_ascii=False) + "\n")

    def train_info(self) -> dict:
        """train_config.json: {"train": TrainConfig fields, "data_dir": ..., "corpus": ...}."""
        return self.read_json(self.TRAIN_CONFIG)

    def write_static(self, config, src_vocab, tgt_vocab, train_info: dict, data_files=()) -> None:
        """The files that do not change while training: config, vocabularies, train_config, metadata."""
        import mindspore as ms

        import mindtrans

        self.path.mkdir(parents=True, exist_ok=True)
        self.write_json(self.CONFIG, config.to_dict())
        src_vocab.save(self.path / self.SRC_VOCAB)
        tgt_vocab.save(self.path / self.TGT_VOCAB)
        self.write_json(self.TRAIN_CONFIG, train_info)
        self.write_json(self.METADATA, {
            "mindtrans_version": mindtrans.__version__, "mindspore_version": ms.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "data_sha256": {Path(p).name: sha256_file(p) for p in data_files if Path(p).is_file()},
        })
        self.record_digests()

    def metadata(self) -> dict:
        """metadata.json ({} before there is one); ValueError naming the file if it is not one mindtrans wrote."""
        path = self.path / self.METADATA
        if not path.is_file():
            return {}
        try:
            data = self.read_json(self.METADATA)
            problem = _metadata_problem(data)
        except ValueError as err:
            problem = f"it is not JSON ({err})"
        if problem:
            raise ValueError(f"{path} is not a metadata file mindtrans wrote: {problem}; restore it, "
                             f"or delete it (the checksums it records are then not checked)")
        return data

    def update_metadata(self, updates: dict) -> dict:
        """Merge `updates` into metadata.json (e.g. final metrics) and return the result."""
        data = self.metadata()
        data.update(updates)
        self.write_json(self.METADATA, data)
        return data

    def record_digests(self) -> None:
        """metadata.json's "files_sha256": the sha256 of each bundle file there now."""
        self.update_metadata({"files_sha256": {name: sha256_file(self.path / name) for name in self.BUNDLE
                                               if (self.path / name).is_file()}})

    def changed_files(self, names=BUNDLE) -> list:
        """Those of `names` whose sha256 is not the one metadata.json records (none recorded: [])."""
        recorded = self.metadata().get("files_sha256", {})
        return [name for name in names if name in recorded and sha256_file(self.path / name) != recorded[name]]

    def check_resumable(self, data_files) -> None:
        """Refuse (ValueError) to resume a run whose config or vocabularies changed after it saved them,
        or whose training data (`data_files`) are not the files it trained on (metadata.json's sha256)."""
        changed = self.changed_files([self.CONFIG, self.SRC_VOCAB, self.TGT_VOCAB])
        if changed:
            raise ValueError(f"{', '.join(changed)} in {self.path} changed after the run saved it: resuming would "
                             f"train these weights with another model or vocabulary; restore it or start a new run")
        recorded = self.metadata().get("data_sha256", {})
        for data in map(Path, data_files):
            if data.name in recorded and (not data.is_file() or sha256_file(data) != recorded[data.name]):
                used = self.train_info().get("data_dir", "the one it trained with")
                raise ValueError(f"{data} is not the file this run trained on (metadata.json records another "
                                 f"sha256): resume with the data it used, --data-dir {used}")

    def write_log(self, history: list) -> None:
        """log.json and log.csv: one row per epoch."""
        self.write_json(self.LOG_JSON, history)
        if history:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(history[-1]))
            writer.writeheader()
            writer.writerows(history)
            atomic_write_text(self.path / self.LOG_CSV, buf.getvalue())

    def holds_a_run(self) -> bool:
        """Whether training wrote here: a train_config.json, a checkpoint, or a config.json that is a model's
        (what a run killed while writing its first files leaves); a config.json of something else is not."""
        from mindtrans.config import TransformerConfig

        if any((self.path / name).is_file() for name in (self.TRAIN_CONFIG, self.LATEST, self.MODEL)):
            return True
        try:
            TransformerConfig.from_dict(self.read_json(self.CONFIG))
            return True
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return bool(self.epoch_checkpoints())

    def existing_files(self) -> list:
        """The run files (of FILES, and epochs/) already in this directory."""
        names = [name for name in self.FILES if (self.path / name).exists()]
        return names + ([self.EPOCHS + "/"] if self.epoch_checkpoints() else [])

    def remove_run(self) -> None:
        """Delete this directory's run files, the weights first (a config is never left beside
        another model's weights); files that are not a run's are kept."""
        for path in [self.model, self.latest, *self.epoch_checkpoints(), *(self.path / n for n in self.FILES)]:
            path.unlink(missing_ok=True)

    def check_writable(self) -> None:
        """Create the directory and a file in it now (raises SaveError), not after minutes of training."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SaveError(f"cannot create the run directory {self.path}: {describe_os_error(err)}") from None
        atomic_write_text(self.path / ".write-test", "")
        (self.path / ".write-test").unlink()

    def remove_stale_temporaries(self) -> list:
        """Delete the temporary files an interrupted save left behind (a process killed while
        writing, e.g. by msrun when another worker died); the real files are never touched."""
        stems = [f".{Path(name).stem}" for name in self.FILES if name.endswith(".ckpt")] + [f"{self.EPOCHS}/.epoch_"]
        patterns = {f"{stem}*.tmp.{suffix}" for stem in stems for suffix in ("ckpt", "tmp")}  # ours, MindSpore's
        patterns |= {f".{name}.*.tmp" for name in self.FILES}
        removed = sorted({path for pattern in patterns for path in self.path.glob(pattern) if path.is_file()})
        for path in removed:
            path.unlink()
        return removed


def _metadata_problem(data) -> str:
    """What makes `data` not a metadata.json mindtrans wrote ('' if nothing): a JSON object whose
    checksum tables map file names to sha256 strings."""
    if not isinstance(data, dict):
        return f"it holds a JSON {type(data).__name__}, not an object"
    for key in ("files_sha256", "data_sha256"):
        table = data.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            return f'its "{key}" is not a table of file names and sha256 sums'
    return ""
