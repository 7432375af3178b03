"""The NumPy engine: the same weights, log-probabilities and translations as the MindSpore model, without MindSpore."""
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mindtrans import checkpoint
from mindtrans.bundle import BundleError, load_bundle
from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs
from mindtrans.data import BOS, PAD, Vocab, tokenize
from mindtrans.decode import beam_search, greedy_decode
from mindtrans.model import Transformer
from mindtrans.numpy_steps import NumpySteps, parameter_shapes
from mindtrans.rundir import RunDir
from mindtrans.step_graph import ModelSteps

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # every switch NumpySteps has a branch for
    "post-ln": {},
    "pre-ln rmsnorm gelu": dict(norm_first=True, norm="rmsnorm", activation="gelu"),
    "unfused tied": dict(fused_qkv=False, tie_embeddings=True),
    "shared": dict(share_embeddings=True, tie_embeddings=True, src_vocab_size=50),
}


def random_model(variant: str, seed: int = 3):
    """An untrained tiny Transformer with random (not zero) biases and norm weights, in inference mode."""
    config = TransformerConfig.preset("tiny", **{"src_vocab_size": 40, "tgt_vocab_size": 50, "max_len": 40,
                                                 **VARIANTS[variant]})
    ms.set_seed(seed)
    model = Transformer(config)
    rng = np.random.default_rng(seed)
    for param in model.get_parameters():
        if param.ndim == 1 and param.name != "generator.bias":  # zeros and ones at init would hide a bias or a
            # gain read from the wrong place (a random output bias would make one token win every step)
            param.set_data(ms.Tensor(param.asnumpy() + rng.normal(0, 0.3, param.shape).astype(np.float32)))
    model.set_train(False)
    return model


def numpy_twin(model) -> NumpySteps:
    return NumpySteps(model.config, {param.name: param.asnumpy() for param in model.get_parameters()})


def sources(rng, batch=5, length=9, vocab=40):
    """(batch, length) int32 ids with <bos> first and rows of different lengths (padding at the end)."""
    src = rng.integers(4, vocab, (batch, length)).astype(np.int32)
    src[:, 0] = BOS
    for row, end in enumerate(rng.integers(3, length + 1, batch)):
        src[row, end:] = PAD
    return src


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_shapes_are_the_models_own(variant):
    model = random_model(variant)
    assert parameter_shapes(model.config) == {p.name: tuple(p.shape) for p in model.get_parameters()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_step_matches_the_compiled_mindspore_step(variant):
    """Log-probabilities and attention step by step, with beams reordered and the cache grown past its slots."""
    model = random_model(variant)
    rng = np.random.default_rng(0)
    src, repeat, slots = sources(rng), 2, 3
    engines = [ModelSteps(model), numpy_twin(model)]
    states = [engine.start(src, slots, repeat) for engine in engines]
    rows = np.arange(src.shape[0] * repeat)
    tokens = np.full((len(rows), 1), BOS, dtype=np.int32)
    for position in range(6):  # slots 3, then grown
        outputs = [engine.run(tokens, state, position, rows) for engine, state in zip(engines, states)]
        (ms_logp, ms_state, ms_attn), (np_logp, np_state, np_attn) = outputs
        np.testing.assert_allclose(np_logp, ms_logp, rtol=1e-4, atol=1e-4, err_msg=f"step {position}")
        np.testing.assert_allclose(np_attn, ms_attn, rtol=1e-4, atol=1e-5, err_msg=f"step {position}")
        states = [ms_state, np_state]
        tokens = rng.integers(4, 50, (len(rows), 1)).astype(np.int32)
        rows = rng.permutation(len(rows))  # as beam search reorders the surviving beams


@pytest.mark.parametrize("variant", ["post-ln", "pre-ln rmsnorm gelu"])
def test_greedy_and_beam_search_translate_the_same(variant):
    model = random_model(variant, seed=5)
    src = sources(np.random.default_rng(1), batch=6)
    twin = numpy_twin(model)
    expected = greedy_decode(model, src, max_new_tokens=12)
    assert greedy_decode(twin, src, max_new_tokens=12) == expected
    assert len({tuple(h) for h in expected}) > 1, "identical outputs would make the comparison weak"
    assert beam_search(twin, src, 3, 0.6, max_new_tokens=12) == beam_search(model, src, 3, 0.6, max_new_tokens=12)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A saved bundle of a random tiny model over a word vocabulary."""
    pairs = synthetic_pairs(120, seed=4)
    src_vocab = Vocab.build((tokenize(s) for s, _ in pairs), min_freq=1)
    tgt_vocab = Vocab.build((tokenize(t) for _, t in pairs), min_freq=1)
    config = TransformerConfig.preset("tiny", max_len=24).with_vocab(len(src_vocab), len(tgt_vocab))
    ms.set_seed(9)
    out = tmp_path_factory.mktemp("bundle")
    RunDir(out).write_static(config, src_vocab, tgt_vocab, {"train": {}, "corpus": "synthetic"})
    checkpoint.atomic_save(Transformer(config), out / "model.ckpt")
    return out


SENTENCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "", "Eine Frau liest ein Buch."]


def test_a_bundle_loaded_by_either_engine_translates_alike(bundle):
    numpy_bundle = load_bundle(bundle, engine="numpy")
    assert isinstance(numpy_bundle.model, NumpySteps)
    for beam_size in (1, 3):
        expected = load_bundle(bundle).translator(max_new_tokens=10).translate(SENTENCES, beam_size=beam_size)
        assert numpy_bundle.translator(max_new_tokens=10).translate(SENTENCES, beam_size=beam_size) == expected


def test_weights_that_do_not_fit_the_config_are_named(bundle, tmp_path):
    broken = tmp_path / "bundle"
    broken.mkdir()
    for name in RunDir.BUNDLE[:3]:
        (broken / name).write_bytes((bundle / name).read_bytes())
    config = TransformerConfig.from_dict(RunDir(bundle).read_json(RunDir.CONFIG))
    bigger = Transformer(TransformerConfig.from_dict({**config.to_dict(), "d_ff": 2 * config.d_ff}))
    checkpoint.atomic_save(bigger, broken / "model.ckpt")
    with pytest.raises(BundleError, match=r"ffn.up.weight has shape \(128, 32\).*implies \(64, 32\)"):
        load_bundle(broken, engine="numpy")
    with pytest.raises(ValueError, match="unknown engine 'jax'"):
        load_bundle(bundle, engine="jax")


def run_cli(*args, stdin=""):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = ("import sys; from mindtrans.cli import main; code = main(sys.argv[1:]); "
            "print('mindspore imported' if 'mindspore' in sys.modules else 'no mindspore', file=sys.stderr); "
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], input=stdin, env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_numpy_engine_translates_without_importing_mindspore(bundle):
    expected = load_bundle(bundle).translator().translate(SENTENCES, beam_size=2)
    done = run_cli("translate", bundle, "--engine", "numpy", "--beam", 2, stdin="".join(s + "\n" for s in SENTENCES))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:-1] == expected
    assert done.stderr.strip().splitlines()[-1] == "no mindspore"


def test_cli_numpy_engine_refuses_another_device(bundle):
    done = run_cli("translate", bundle, "--engine", "numpy", "--device", "GPU", "Hallo")
    assert done.returncode == 1
    assert "error: --engine numpy runs on the CPU: drop --device GPU" in done.stderr


def test_cli_numpy_engine_says_an_export_needs_mindspore_without_importing_it(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / RunDir.MANIFEST).write_text("{}")
    done = run_cli("translate", export, "--engine", "numpy", "Hallo")
    assert done.returncode == 1
    assert f"error: {export} is an exported model (MindIR), which only MindSpore runs: use --engine mindspore" \
        in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "no mindspore"
