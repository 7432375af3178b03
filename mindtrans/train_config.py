"""`TrainConfig`: every training option, defined once. The `mindtrans train` flags are made
from its fields (`add_arguments`), and a saved configuration is read back strictly."""
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from mindtrans import data
from mindtrans.config import PRESETS

CORPORA = ("auto",) + data.CORPORA  # "auto": Multi30k when fetched, else the synthetic corpus
RESUME_OVERRIDES = ("epochs", "max_steps", "max_minutes")  # what a resumed run takes from the command line
PRESET_OVERRIDES = {"dropout": float, "heads": int}  # None: the preset's value
SCHEDULES = ("inverse_sqrt", "linear", "constant")  # --schedule's choices, each made by mindtrans.schedule


def option(default, help: str, **argparse_kwargs):
    """A field with its command-line help (and choices, or a flag of its own)."""
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class TrainConfig:
    """Training hyper-parameters (the architecture lives in `TransformerConfig`)."""

    preset: str = option("small", "model size", choices=sorted(PRESETS))
    corpus: str = option("auto", "'auto': Multi30k if fetched into --data-dir, else the embedded synthetic corpus",
                         choices=CORPORA)
    epochs: int = option(10, "passes over the training data")
    max_steps: int = option(0, "stop after N optimizer steps in total (0: no limit)")
    max_minutes: float = option(0.0, "stop after M minutes of training in this process (0: no limit)")
    batch_tokens: int = option(4096, "padded tokens per side in a batch")
    pack: bool = option(True, "pad each batch to a bucket length instead of packing several sentences per row "
                              "(packing gives every batch one shape, so one static graph; it needs one process and "
                              "--accum-steps 1)", flag="--no-pack")
    accum_steps: int = option(1, "batches per optimizer step (gradient accumulation), on each worker: the global "
                                 "batch is batch-tokens x accum-steps x workers")
    lr: float = option(1e-3, "peak learning rate, reached at the end of warm-up")
    warmup_steps: int = option(400, "linear warm-up steps")
    schedule: str = option("inverse_sqrt", "decay after warm-up", choices=SCHEDULES)
    label_smoothing: float = option(0.1, "label smoothing of the loss")
    clip_norm: float = option(1.0, "global gradient-norm clip")
    dropout: Optional[float] = option(None, "dropout of the model's sub-layers")
    heads: Optional[int] = option(None, "attention heads; the preset's d_model must be divisible by it")
    seed: int = option(0, "the same seed gives the same run")
    amp: str = option("auto", "mixed precision with loss scaling ('auto': on for Ascend/GPU, off for CPU)",
                      choices=("auto", "on", "off"))
    mode: str = option("graph", "'graph' compiles the train step; 'pynative' runs eagerly, for debugging",
                       choices=("graph", "pynative"))
    vocab: str = option("word", "'word': lowercased words, rarer ones <unk> (the lessons'); 'subword': one "
                                "SentencePiece model for both languages, on cased text (no <unk>, cased output)",
                        choices=("word", "subword"))
    subword_size: int = option(8000, "pieces in the joint subword vocabulary (with --vocab subword)")
    share_embeddings: bool = option(False, "one embedding table for source, target and output projection "
                                           "(needs --vocab subword)")
    max_len: int = option(128, "longest sentence in tokens, <bos>/<eos> included; longer ones are cut")
    min_freq: int = option(2, "rarer words become <unk>")
    average_last: int = option(0, "at the end, publish whichever translates the validation split best (greedy "
                                  "BLEU): the lowest-loss checkpoint, the last weights or the mean of the last N "
                                  "epochs (0: off, the lowest-loss checkpoint)")

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if "choices" in f.metadata and value not in f.metadata["choices"]:
                raise ValueError(f"{f.name} must be one of {tuple(f.metadata['choices'])}, got {value!r}")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{flag(f.name)} must be a finite number, got {value}")
        if self.max_len < 3:
            raise ValueError(f"--max-len must be at least 3 (<bos>, one token, <eos>), got {self.max_len}")
        for name in ("epochs", "batch_tokens", "accum_steps", "min_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_minutes", "warmup_steps", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{flag(name)} must be 0 or more, got {getattr(self, name)}")
        if self.average_last < 0 or self.average_last == 1:
            raise ValueError(f"--average-last must be 0 (off) or at least 2 epochs, got {self.average_last}")
        if not (self.lr > 0 and self.clip_norm > 0 and 0 <= self.label_smoothing < 1):
            raise ValueError("--lr and --clip-norm must be positive and --label-smoothing in [0, 1), got "
                             f"{self.lr}, {self.clip_norm} and {self.label_smoothing}")
        if self.subword_size < 300:  # 256 byte pieces, the specials and a corpus's characters
            raise ValueError(f"--subword-size must be at least 300, got {self.subword_size}")
        if self.share_embeddings and self.vocab != "subword":
            raise ValueError("--share-embeddings needs one vocabulary for both languages: add --vocab subword")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.heads is not None and self.heads < 1:
            raise ValueError(f"--heads must be at least 1, got {self.heads}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """A saved configuration, strictly: unknown keys raise. Runs saved by older versions
        lack `pack` (they used length buckets) and spell "the preset's dropout" as -1."""
        data = dict(data)
        data.setdefault("pack", False)
        if data.get("dropout") is not None and data["dropout"] < 0:
            data["dropout"] = None
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {[f.name for f in fields(cls)]}")
        for f in fields(cls):
            kind = _value_type(f)
            value = data.get(f.name, f.default)
            if not (value is None and f.name in PRESET_OVERRIDES or _is_a(value, kind)):
                raise ValueError(f"{f.name} must be {kind.__name__}, got {value!r}")
        return cls(**data)

    @classmethod
    def from_run(cls, run) -> "TrainConfig":
        """The configuration a run directory (`RunDir`) saved in train_config.json, strictly: a file
        mindtrans did not write raises ValueError naming it."""
        try:
            return cls.from_dict(run.train_info()["train"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:  # a JSONDecodeError is a ValueError
            raise ValueError(f"{run.path / run.TRAIN_CONFIG} is not a training configuration that mindtrans wrote "
                             f"({type(err).__name__}: {err}); restore it from a copy or start a new run") from None

    def differences(self, other: "TrainConfig") -> dict:
        """{field: (this value, other's)} where the two differ."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)}


def _value_type(f) -> type:
    """The type of a TrainConfig field's values (a preset override's default is None)."""
    return PRESET_OVERRIDES.get(f.name, type(f.default))


def _is_a(value, kind) -> bool:
    """isinstance, except that a bool is no number and a whole number is a float too."""
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def flag(name: str) -> str:
    """The command-line flag of a TrainConfig field: --max-steps for max_steps."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.metadata.get("flag", "--" + name.replace("_", "-"))


def add_arguments(parser) -> None:
    """One flag per TrainConfig field, with its type, default, choices and help. A flag not given
    is None in the parsed arguments, so that `from_args` can tell it from one given its default."""
    for f in fields(TrainConfig):
        if f.type in (bool, "bool"):  # a switch: --no-pack turns a default True off, --share-embeddings on
            action = "store_false" if f.default else "store_true"
            parser.add_argument(flag(f.name), dest=f.name, action=action, default=None, help=f.metadata["help"])
            continue
        kind = _value_type(f)
        extra = {"choices": f.metadata["choices"]} if "choices" in f.metadata else {}
        default = "the preset's" if f.default is None else f.default
        if f.name in RESUME_OVERRIDES:
            default = f"{default}; with --resume, the run's own"
        parser.add_argument(flag(f.name), dest=f.name, type=kind, default=None,
                            help=f"{f.metadata['help']} (default: {default})".replace("%", "%%"), **extra)


def from_args(args, saved: Optional[TrainConfig] = None) -> TrainConfig:
    """The TrainConfig that `add_arguments`' flags spell; a flag not given takes `saved`'s value (the
    configuration of a run being resumed), else the default. So on resume the differences from
    `saved` are exactly the flags given with another value."""
    base = saved if saved is not None else TrainConfig()
    return TrainConfig(**{f.name: getattr(base, f.name) if getattr(args, f.name) is None else getattr(args, f.name)
                          for f in fields(TrainConfig)})
