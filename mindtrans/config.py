"""`TransformerConfig`: every size and switch of the model in one validated dataclass."""
import math
from dataclasses import asdict, dataclass, fields, replace

ACTIVATIONS = ("relu", "gelu")
SIZES = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "d_ff",
         "max_len")
MAX_POSITIONS = 8192  # the longest max_len accepted: its positional table is max_len x d_model floats
NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of an encoder-decoder Transformer.

    Vocabulary sizes are usually filled in from the data (`with_vocab`); the rest
    comes from a preset (`TransformerConfig.preset("small")`) or by hand.
    """

    src_vocab_size: int = 1000
    tgt_vocab_size: int = 1000
    d_model: int = 256
    n_heads: int = 8
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 512
    dropout: float = 0.1            # on embeddings and every sublayer output, as in the paper
    attention_dropout: float = 0.0  # on attention weights (not in the paper; some implementations add it)
    max_len: int = 256
    activation: str = "relu"
    norm: str = "layernorm"
    norm_first: bool = False
    tie_embeddings: bool = False
    share_embeddings: bool = False  # the source embedding is the target's (one joint vocabulary)
    fused_qkv: bool = True
    norm_eps: float = 1e-5
    pad_id: int = 1

    def __post_init__(self):
        problems = self._type_problems()
        if not problems:
            problems = self._value_problems()
        if problems:
            raise ValueError("invalid TransformerConfig: " + "; ".join(problems))

    def _type_problems(self) -> list:
        """Each field of the wrong kind (a config.json may say "false" or 1e9 anywhere)."""
        problems = []
        for f in fields(self):
            if f.name in SIZES:
                continue  # positive integers: see _value_problems
            value, kind = getattr(self, f.name), f.type
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            else:
                ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
            if not ok:
                problems.append(f"{f.name} must be {_KIND_NAMES[kind]}, got {value!r}")
        return problems

    def _value_problems(self) -> list:
        problems = []
        for name in SIZES:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        sizes_valid = not problems
        if sizes_valid and self.d_model % self.n_heads:
            fits = [h for h in range(1, min(self.d_model, 64) + 1) if self.d_model % h == 0]
            problems.append(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                            f"choose n_heads from {fits} or change d_model")
        if sizes_valid and self.max_len > MAX_POSITIONS:
            problems.append(f"max_len must be at most {MAX_POSITIONS}, got {self.max_len}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.norm not in NORMS:
            problems.append(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not self.norm_eps > 0:
            problems.append(f"norm_eps must be positive, got {self.norm_eps!r}")
        if sizes_valid and self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            problems.append(f"share_embeddings needs one joint vocabulary, got {self.src_vocab_size} source and "
                            f"{self.tgt_vocab_size} target tokens")
        if sizes_valid and not 0 <= self.pad_id < min(self.src_vocab_size, self.tgt_vocab_size):
            problems.append(f"pad_id={self.pad_id} must be a valid id in both vocabularies")
        return problems

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "TransformerConfig":
        """A named size (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def with_vocab(self, src_vocab_size: int, tgt_vocab_size: int) -> "TransformerConfig":
        return replace(self, src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TransformerConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


_KIND_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}

PRESETS = {
    # For tests: runs in milliseconds.
    "tiny": dict(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64, dropout=0.0),
    # The Multi30k default: small enough to train on a laptop CPU.
    "small": dict(d_model=256, n_heads=8, n_encoder_layers=3, n_decoder_layers=3, d_ff=512, dropout=0.1),
    # The original MindSpore lesson's model.
    "course": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, dropout=0.1),
    # "Attention Is All You Need", base model.
    "base": dict(d_model=512, n_heads=8, n_encoder_layers=6, n_decoder_layers=6, d_ff=2048, dropout=0.1,
                 tie_embeddings=True),
}
