"""Parameter counts: counted on the model = the formula, exactly; GPT-3 from the formula."""
import dataclasses

import mindspore as ms
import pytest
from mindspore import Parameter, nn

from mindtrans.config import TransformerConfig
from mindtrans.model import Transformer
from mindtrans.params import (GROUPS, classify, count_parameters, estimate_decoder_only, estimate_parameters,
                              format_breakdown)

VARIANTS = {
    "default": {},
    "rmsnorm": dict(norm="rmsnorm"),
    "pre_ln": dict(norm_first=True),  # adds a final norm after each stack
    "tied": dict(tie_embeddings=True),
    "unfused": dict(fused_qkv=False),
    "gelu": dict(activation="gelu"),
    "everything": dict(norm="rmsnorm", norm_first=True, tie_embeddings=True, fused_qkv=False, activation="gelu"),
}


def check_breakdown(breakdown):
    assert set(breakdown) == {*GROUPS, "total"}
    assert breakdown["total"] == sum(breakdown[g] for g in GROUPS)


@pytest.mark.parametrize("preset", ["tiny", "small", "course", "base"])
def test_count_equals_estimate_for_every_preset(preset):
    config = TransformerConfig.preset(preset, src_vocab_size=321, tgt_vocab_size=123)
    counted = count_parameters(Transformer(config))
    check_breakdown(counted)
    assert counted == estimate_parameters(config)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_count_equals_estimate_for_variants(preset, variant):
    config = TransformerConfig.preset(preset, src_vocab_size=97, tgt_vocab_size=89, **VARIANTS[variant])
    assert count_parameters(Transformer(config)) == estimate_parameters(config)


def test_tiny_preset_by_hand():
    """d=32, f=64, 2+2 layers, vocabularies of 1000 (the defaults), LayerNorm, untied."""
    counted = count_parameters(Transformer(TransformerConfig.preset("tiny")))
    assert counted == {
        "embeddings": 2 * 1000 * 32,
        "attention": (2 + 2 * 2) * 4 * (32 * 32 + 32),  # 2 encoder + 2x2 decoder attention blocks
        "ffn": 4 * (2 * 32 * 64 + 64 + 32),
        "norms": (2 * 2 + 3 * 2) * 2 * 32,  # 2 per encoder layer, 3 per decoder layer, gain + bias
        "output": 32 * 1000 + 1000,
        "total": 139_752,
    }


def test_design_choices_move_parameters_as_expected():
    base = TransformerConfig.preset("small", src_vocab_size=500, tgt_vocab_size=400)
    d, v = base.d_model, base.tgt_vocab_size
    est = estimate_parameters
    tied = est(dataclasses.replace(base, tie_embeddings=True))
    assert tied["output"] == 0 and est(base)["total"] - tied["total"] == d * v + v  # tied table counted once
    assert est(dataclasses.replace(base, fused_qkv=False)) == est(base)  # fusing adds nothing
    assert est(dataclasses.replace(base, n_heads=2)) == est(base)  # heads split d, add nothing
    rms = est(dataclasses.replace(base, norm="rmsnorm"))
    assert rms["norms"] * 2 == est(base)["norms"]  # no bias
    pre = est(dataclasses.replace(base, norm_first=True))
    assert pre["norms"] - est(base)["norms"] == 2 * 2 * d  # two final LayerNorms


def test_shared_parameter_counted_once():
    class Tied(nn.Cell):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.generator = nn.Dense(4, 10, has_bias=False)
            self.generator.weight = self.embed.embedding_table

    counted = count_parameters(Tied())
    assert counted["embeddings"] == 40 and counted["output"] == 0 and counted["total"] == 40


def test_unclassified_parameter_is_named_in_the_error():
    class Odd(nn.Cell):
        def __init__(self):
            super().__init__()
            self.ffn = nn.Dense(4, 4)
            self.mystery = Parameter(ms.Tensor([1.0, 2.0]), name="mystery")

    with pytest.raises(ValueError, match="parameter 'mystery' matches no group"):
        count_parameters(Odd())
    with pytest.raises(ValueError, match=r"several groups \['attention', 'ffn'\]"):
        classify("encoder.ffn.self_attn.weight")
    assert classify("decoder.layers.0.ffn_residual.norm.gamma") == "norms"  # "ffn_residual" is not "ffn"
    assert classify("decoder.layers.1.cross_attn.kv_proj.bias") == "attention"


def test_frozen_parameters_are_not_counted():
    model = Transformer(TransformerConfig.preset("tiny", src_vocab_size=20, tgt_vocab_size=20))
    full = count_parameters(model)
    model.encoder.embed.embedding.embedding_table.requires_grad = False
    assert count_parameters(model)["embeddings"] == full["embeddings"] - 20 * 32


def test_gpt3_is_175_billion_with_ffn_twice_attention():
    gpt3 = estimate_decoder_only(n_layers=96, d_model=12288, vocab_size=50257, context=2048, d_ff=4 * 12288)
    check_breakdown(gpt3)
    assert abs(gpt3["total"] - 175e9) / 175e9 < 0.01
    assert gpt3["ffn"] / gpt3["attention"] == pytest.approx(2.0, rel=1e-3)
    assert gpt3["embeddings"] / gpt3["total"] < 0.01
    assert gpt3["embeddings"] == 50257 * 12288 + 2048 * 12288
    assert gpt3["output"] == 0  # tied
    assert gpt3 == estimate_decoder_only(96, 12288, 50257, 2048)  # d_ff defaults to 4 d_model


def test_gpt2_small_matches_its_published_count():
    """GPT-2 small (12 layers, d=768, 1024 positions, tied): 124,439,808 parameters."""
    assert estimate_decoder_only(12, 768, 50257, 1024)["total"] == 124_439_808


def test_decoder_only_switches():
    tied = estimate_decoder_only(2, 16, 100, 8)
    untied = estimate_decoder_only(2, 16, 100, 8, tie_embeddings=False)
    assert untied["output"] == 100 * 16 and untied["total"] - tied["total"] == 100 * 16
    no_pos = estimate_decoder_only(2, 16, 100, 8, learned_positions=False)
    assert tied["embeddings"] - no_pos["embeddings"] == 8 * 16
    assert estimate_decoder_only(2, 16, 100, 8, d_ff=32)["ffn"] == 2 * (2 * 16 * 32 + 32 + 16)
    assert tied["norms"] == (2 * 2 + 1) * 2 * 16
    with pytest.raises(ValueError, match="n_layers must be a positive integer, got 0"):
        estimate_decoder_only(0, 16, 100, 8)


def test_format_breakdown_table():
    breakdown = estimate_decoder_only(96, 12288, 50257, 2048)
    table = format_breakdown(breakdown)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "count", "share"]
    assert [line.split()[0] for line in lines[1:]] == [*GROUPS, "total"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["total"][1] == f"{breakdown['total']:,}" and rows["total"][2] == "100.0%"
    assert rows["ffn"][2] == "66.4%" and rows["attention"][2] == "33.2%" and rows["embeddings"][2] == "0.4%"
    assert sum(float(rows[g][2].rstrip("%")) for g in GROUPS) == pytest.approx(100.0, abs=0.3)
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_params_module_does_not_need_mindspore_for_estimates():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; from mindtrans.config import TransformerConfig; from mindtrans.params import "
            "estimate_parameters, format_breakdown; "
            "print(format_breakdown(estimate_parameters(TransformerConfig.preset('course')))); "
            "assert 'mindspore' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "total" in result.stdout
