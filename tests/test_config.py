"""TransformerConfig: validation messages that say what to change, presets, (de)serialisation."""
import dataclasses
import json

import pytest

from mindtrans.config import PRESETS, TransformerConfig

SIZE_FIELDS = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "n_encoder_layers",
               "n_decoder_layers", "d_ff", "max_len")


def test_defaults_are_valid_and_d_head_splits_d_model():
    config = TransformerConfig()
    assert config.d_head * config.n_heads == config.d_model
    assert TransformerConfig(d_model=96, n_heads=6).d_head == 16


def test_d_model_not_divisible_by_n_heads_suggests_head_counts():
    with pytest.raises(ValueError) as info:
        TransformerConfig(d_model=30, n_heads=4)
    message = str(info.value)
    assert "d_model=30 is not divisible by n_heads=4" in message
    assert "[1, 2, 3, 5, 6, 10, 15, 30]" in message  # the head counts that would work
    assert "change d_model" in message


@pytest.mark.parametrize("field", SIZE_FIELDS)
@pytest.mark.parametrize("value", [0, -3, 2.0, True])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be a positive integer, got {value!r}"):
        TransformerConfig(**{field: value})


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_outside_unit_interval_rejected(dropout):
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got " + repr(dropout)):
        TransformerConfig(dropout=dropout)


@pytest.mark.parametrize("dropout", [0.0, 0.5, 0.999])
def test_dropout_inside_unit_interval_accepted(dropout):
    assert TransformerConfig(dropout=dropout).dropout == dropout


def test_unknown_activation_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"activation must be one of \('relu', 'gelu'\), got 'swish'"):
        TransformerConfig(activation="swish")


def test_unknown_norm_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"):
        TransformerConfig(norm="batchnorm")


def test_norm_eps_and_pad_id_checked():
    with pytest.raises(ValueError, match="norm_eps must be positive"):
        TransformerConfig(norm_eps=0.0)
    with pytest.raises(ValueError, match="pad_id=10 must be a valid id in both vocabularies"):
        TransformerConfig(src_vocab_size=100, tgt_vocab_size=10, pad_id=10)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as info:
        TransformerConfig(d_ff=0, dropout=2.0, activation="tanh")
    message = str(info.value)
    assert message.startswith("invalid TransformerConfig: ")
    for part in ("d_ff must be a positive integer", "dropout must be in [0, 1)", "activation must be one of"):
        assert part in message


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown preset 'huge': choose one of \['base', 'course', 'small', 'tiny'\]"):
        TransformerConfig.preset("huge")


def test_preset_sizes():
    small = TransformerConfig.preset("small")
    assert (small.d_model, small.n_encoder_layers, small.n_decoder_layers, small.n_heads, small.d_ff) == \
        (256, 3, 3, 8, 512)
    course = TransformerConfig.preset("course")
    assert (course.d_model, course.n_encoder_layers, course.n_decoder_layers, course.n_heads, course.d_ff) == \
        (512, 6, 6, 8, 2048)
    base = TransformerConfig.preset("base")
    assert base.tie_embeddings and not course.tie_embeddings
    assert TransformerConfig.preset("tiny").dropout == 0.0  # the tests rely on a deterministic tiny model


def test_preset_overrides_and_still_validates():
    config = TransformerConfig.preset("small", dropout=0.0, norm_first=True)
    assert (config.d_model, config.dropout, config.norm_first) == (256, 0.0, True)
    with pytest.raises(ValueError, match="not divisible"):
        TransformerConfig.preset("small", n_heads=7)


def test_with_vocab_replaces_only_the_vocabulary_sizes():
    config = TransformerConfig.preset("tiny")
    sized = config.with_vocab(123, 456)
    assert (sized.src_vocab_size, sized.tgt_vocab_size) == (123, 456)
    assert dataclasses.replace(sized, src_vocab_size=config.src_vocab_size,
                               tgt_vocab_size=config.tgt_vocab_size) == config


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        TransformerConfig().d_model = 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_to_dict_from_dict_round_trip_through_json(name):
    config = TransformerConfig.preset(name, src_vocab_size=7000, tgt_vocab_size=6000, norm="rmsnorm")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["d_model"] == config.d_model and data["norm"] == "rmsnorm"
    assert TransformerConfig.from_dict(data) == config


def test_from_dict_rejects_unknown_fields_and_names_them():
    data = {**TransformerConfig().to_dict(), "n_layers": 6, "hidden": 3}
    with pytest.raises(ValueError) as info:
        TransformerConfig.from_dict(data)
    message = str(info.value)
    assert "unknown TransformerConfig fields ['hidden', 'n_layers']" in message
    assert "n_encoder_layers" in message  # the known fields are listed


def test_from_dict_validates_values():
    with pytest.raises(ValueError, match="not divisible"):
        TransformerConfig.from_dict({"d_model": 30, "n_heads": 4})
