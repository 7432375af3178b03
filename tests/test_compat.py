"""mindtrans.compat: the older-API branches, run on the installed MindSpore.

`MINDTRANS_MS_API=2.3` (or 2.6) makes mindtrans use only what that MindSpore has: the
code that learners' OpenI/ModelArts images (MindSpore 2.3 - 2.6) take, run here for real.
The results must equal those of the newest branches.
"""
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from mindtrans import compat
from mindtrans.decode import beam_search, greedy_decode
from mindtrans.model import Transformer
from mindtrans.steps import make_train_step
from mindtrans.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
NEWEST = compat.installed_version() >= (2, 7)


@pytest.mark.parametrize("text, version", [("2.6.0rc1", (2, 6, 0)), ("2.10.0", (2, 10, 0)), ("2.3", (2, 3)),
                                           (" 2.4.1.post1 ", (2, 4, 1))])
def test_parse_version(text, version):
    assert compat.parse_version(text) == version


def test_parse_version_rejects_nonsense():
    with pytest.raises(ValueError, match="cannot read a version from 'latest'"):
        compat.parse_version("latest")


def test_the_api_can_be_limited_but_never_raised(monkeypatch):
    monkeypatch.setenv("MINDTRANS_MS_API", "2.3")
    assert compat.api_version() == min((2, 3), compat.installed_version())
    monkeypatch.setenv("MINDTRANS_MS_API", "9.0")
    assert compat.api_version() == compat.installed_version()


@pytest.mark.skipif(not NEWEST, reason="checks the 2.7+ branches, which need MindSpore 2.7 or newer")
@pytest.mark.parametrize("api, expected", [
    (None, {"enable_dynamic": True, "set_device": True, "hal": True}),
    ("2.6", {"enable_dynamic": False, "set_device": True, "hal": True, "jit_input_signature": False}),
    ("2.3", {"enable_dynamic": False, "set_device": False, "hal": True}),
    ("2.2", {"enable_dynamic": False, "set_device": False, "hal": False, "jit_input_signature": False}),
])
def test_features_follow_the_api_version(monkeypatch, api, expected):
    if api:
        monkeypatch.setenv("MINDTRANS_MS_API", api)
    else:
        monkeypatch.delenv("MINDTRANS_MS_API", raising=False)
    assert {name: compat.has(name) for name in expected} == expected


def test_jit_dynamic_wants_every_parameter_named():
    with pytest.raises(ValueError, match="must be exactly the parameters"):
        compat.jit_dynamic(lambda x, y: x + y, {"x": ms.Tensor(shape=[None], dtype=ms.float32)})


def twin_models(config, count):
    """`count` models with the same weights."""
    ms.set_seed(11)
    models = [Transformer(config) for _ in range(count)]
    for model in models[1:]:
        ms.load_param_into_net(model, {p.name: ms.Parameter(p.data.copy(), p.name)
                                       for p in models[0].get_parameters()})
    return models


def train_twice(model, batches):
    """Two compiled train steps (two batch shapes) -> (losses, parameters as NumPy)."""
    cfg = TrainConfig(preset="tiny", lr=1e-3, warmup_steps=1, schedule="constant", label_smoothing=0.1)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=cfg.lr)
    step = make_train_step(model, optimizer, cfg)
    losses = [float(step(ms.Tensor(src), ms.Tensor(tgt))[0].asnumpy()) for src, tgt in batches]
    return losses, {p.name: p.asnumpy() for p in model.trainable_params()}


def batch(rng, rows, src_len, tgt_len, config):
    src = rng.integers(4, config.src_vocab_size, (rows, src_len)).astype(np.int32)
    tgt = rng.integers(4, config.tgt_vocab_size, (rows, tgt_len)).astype(np.int32)
    tgt[:, 0] = 2
    return src, tgt


def test_older_branches_train_and_decode_like_the_newest(monkeypatch, tiny_config):
    """One graph per shape (what 2.6 does, and 2.3 - 2.5 on a MindSpore whose jit has no
    input_signature) gives the same losses, updates and translations as one graph for all shapes."""
    rng = np.random.default_rng(4)
    batches = [batch(rng, 3, 5, 6, tiny_config), batch(rng, 2, 7, 4, tiny_config)]
    sources = np.array([[5, 6, 7, 8, 3], [9, 10, 3, 1, 1]], np.int32)
    newest, older = twin_models(tiny_config, 2)

    monkeypatch.delenv("MINDTRANS_MS_API", raising=False)
    expected = train_twice(newest, batches)
    newest.set_train(False)
    expected_greedy = greedy_decode(newest, sources, max_new_tokens=6)
    expected_beam = beam_search(newest, sources, beam_size=3, max_new_tokens=6)

    monkeypatch.setenv("MINDTRANS_MS_API", "2.6")
    losses, params = train_twice(older, batches)
    older.set_train(False)
    np.testing.assert_allclose(losses, expected[0], rtol=1e-5)
    for name, value in expected[1].items():
        np.testing.assert_allclose(params[name], value, atol=1e-6, err_msg=name)
    assert greedy_decode(older, sources, max_new_tokens=6) == expected_greedy
    assert beam_search(older, sources, beam_size=3, max_new_tokens=6) == expected_beam


def test_a_graph_that_cannot_compile_runs_eagerly_and_says_so_once(monkeypatch, capsys):
    """Only below MindSpore 2.3, whose 2.0 compiler rejects the packed and decoding steps."""
    monkeypatch.setenv("MINDTRANS_MS_API", "2.2")

    def refusing_compiler(fn, signature):
        def compiled(*args):
            raise RuntimeError("BUG: Failed to find context for: construct.Default.10\nmore detail")
        return compiled

    monkeypatch.setattr(compat, "jit_dynamic", refusing_compiler)
    run = compat.compiled_or_eager(lambda x: x * 2, "the doubling step",
                                   {"x": ms.Tensor(shape=[None], dtype=ms.float32)})
    for n in (3, 4):
        np.testing.assert_array_equal(run(ms.Tensor(np.ones(n, np.float32))).asnumpy(), np.full(n, 2.0))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == ""
    assert lines == [f"mindtrans: MindSpore {ms.__version__} cannot compile the doubling step (BUG: Failed to "
                     f"find context for: construct.Default.10); running it eagerly (slower, same results; "
                     f"MindSpore 2.3+ compiles it)"]


def test_symbolic_shapes_that_do_not_compile_fall_back_to_one_graph_per_shape(monkeypatch, capsys):
    """MindSpore 2.3 - 2.5's jit(input_signature=...) cannot be installed here: its fallback can be run."""
    def refused(*args):
        raise TypeError("For 'jit', input_signature does not match\nthe details")

    def triple(x):
        return x * 3

    run = compat.first_that_runs(refused, lambda: ms.jit(triple), "the tripling step with symbolic shapes",
                                 "compiling one graph per shape")
    for n in (2, 5):
        assert run(ms.Tensor(np.ones(n, np.float32))).asnumpy().tolist() == [3.0] * n
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mindtrans: MindSpore {ms.__version__} cannot compile the tripling step with symbolic shapes (For 'jit', "
        f"input_signature does not match); compiling one graph per shape"]


def test_an_error_of_the_fallback_itself_is_raised():
    def refused(*args):
        raise RuntimeError("no graph")

    def broken(*args):
        raise ValueError("the real bug")

    with pytest.raises(ValueError, match="the real bug"):
        compat.first_that_runs(refused, lambda: broken, "the step", "instead")(1)


@pytest.mark.skipif(compat.installed_version() < (2, 3), reason="needs MindSpore 2.3 or newer: older ones fall back")
def test_from_mindspore_2_3_a_compile_error_is_an_error(monkeypatch):
    monkeypatch.setenv("MINDTRANS_MS_API", "2.3")
    monkeypatch.setattr(compat, "jit_dynamic", lambda fn, signature: "the compiled function itself")
    assert compat.compiled_or_eager(lambda x: x, "the step", {"x": None}) == "the compiled function itself"


LEGACY_DEVICE = """
import mindspore as ms
from mindtrans import compat, device
assert not compat.has("set_device")
assert device.select_device(verbose=False) == "CPU"
assert ms.get_context("device_target") == "CPU"
assert ms.get_context("runtime_num_threads") == device.cpu_threads()
print("ok")
"""


def test_select_device_through_set_context_in_a_fresh_process():
    """MindSpore 2.3 - 2.4 spell it set_context(device_target=...) and runtime_num_threads."""
    env = {**os.environ, "MINDTRANS_MS_API": "2.3"}
    env.pop("MINDTRANS_DEVICE", None)
    result = subprocess.run([sys.executable, "-c", LEGACY_DEVICE], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_cann_version_is_read_from_the_toolkit_install_info(tmp_path, monkeypatch):
    info = tmp_path / "aarch64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir()
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.1.RC1\ninnerversion=V100R001C21\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path))
    assert compat.cann_version() == "8.1.RC1"
    assert "CANN       8.1.RC1" in compat.environment_report("Ascend")


def test_environment_report_says_when_mindspore_is_outside_the_range(monkeypatch):
    monkeypatch.setattr(ms, "__version__", "2.1.0")
    report = compat.environment_report("CPU")
    assert report[1] == "MindSpore  2.1.0"
    assert any(line.startswith("warning: MindSpore 2.1.0 is outside the range") for line in report)
    monkeypatch.setattr(ms, "__version__", "2.6.0rc1")
    assert not any(line.startswith("warning") for line in compat.environment_report("CPU"))
