"""The `mindtrans` command: help texts, error reporting, and train -> evaluate -> translate in subprocesses."""
import json
import os
import subprocess
import sys
from pathlib import Path

import mindspore as ms
import pytest

from mindtrans import checkpoint, compat
from mindtrans.bundle import load_bundle
from mindtrans.cli import build_parser, main
from mindtrans.config import TransformerConfig
from mindtrans.corpus import write_synthetic
from mindtrans.data import Vocab, load_split, tokenize
from mindtrans.model import Transformer
from mindtrans.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
STEPS = 40  # enough to learn to end sentences early: short outputs decode fast
OPTIONS = {
    "fetch": ["--data-dir", "--mirror", "--insecure", "--timeout"],
    "train": ["--data-dir", "--out", "--resume", "--preset", "--corpus", "--epochs", "--max-steps", "--max-minutes",
              "--batch-tokens", "--lr", "--warmup-steps", "--schedule", "--label-smoothing", "--clip-norm",
              "--dropout", "--heads", "--seed", "--amp", "--mode", "--max-len", "--min-freq"],
    "evaluate": ["run_dir", "--data-dir", "--split", "--corpus", "--beam", "--alpha", "--limit", "--json"],
    "translate": ["run_dir", "sentences", "--beam", "--alpha", "--batch-size", "--engine"],
    "export": ["run_dir", "--out", "--overwrite"],
    "info": ["--preset", "--src-vocab", "--tgt-vocab"],
    "demo": ["--data-dir", "--out", "--mirror", "--minutes"],
}


def mindtrans(*args, cwd, stdin=None, timeout=300):
    """Run `python -m mindtrans ARGS` on CPU, from `cwd`, with this checkout importable."""
    env = {**os.environ, "MINDTRANS_DEVICE": "CPU",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "mindtrans", *map(str, args)], cwd=cwd, env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def json_after_logs(stdout):
    """The JSON object that ends `stdout` (after the progress lines)."""
    lines = stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{"):]))


# --------------------------------------------------------------------------- help and errors
def test_top_level_help_in_a_subprocess(tmp_path):
    result = mindtrans("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mindtrans")
    for command in OPTIONS:
        assert command in result.stdout
    assert "MINDTRANS_DEVICE" in result.stdout
    version = mindtrans("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip().startswith("mindtrans ")


def test_subcommand_help_in_a_subprocess(tmp_path):
    result = mindtrans("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for option in OPTIONS["train"]:
        assert option in result.stdout


@pytest.mark.parametrize("command", list(OPTIONS))
def test_every_subcommand_help_mentions_its_options(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mindtrans {command}")
    for option in OPTIONS[command]:
        assert option in out, f"{command} --help does not mention {option}"


def test_every_subcommand_is_covered():
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(subparsers.choices) == set(OPTIONS)


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train"])
    assert info.value.code == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["translate", "run", "--beam", "many"])
    assert info.value.code == 2


def test_evaluate_on_a_missing_directory_fails_with_one_line(tmp_path):
    missing = tmp_path / "no_such_run"
    result = mindtrans("evaluate", missing, "--data-dir", tmp_path, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mindtrans evaluate: error: ")
    assert str(missing) in lines[0] and "Traceback" not in result.stderr


def test_a_broken_bundle_is_reported_not_raised(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["translate", str(tmp_path / "run"), "Hallo"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mindtrans translate: error: bundle ") and "config.json" in err


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_synthetic(root / "data", n_train=120, n_val=12, n_test=12)
    return root


@pytest.fixture(scope="module")
def trained_run(workdir):
    result = mindtrans("train", "--corpus", "synthetic", "--preset", "tiny", "--max-steps", STEPS,
                       "--data-dir", workdir / "data", "--out", workdir / "run", "--batch-tokens", 256,
                       "--max-len", 16, "--min-freq", 1, "--warmup-steps", 5, "--lr", 5e-3, cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "run", result


@pytest.mark.skipif(compat.installed_version() < (2, 10), reason="checked on the pinned MindSpore (2.10); older "
                    "releases print notes of their own")
def test_cli_train_prints_no_mindspore_warning(trained_run):
    """A learner cannot act on MindSpore's compile-time notes ("side effect nodes were eliminated",
    "'FusedSparseAdam' is deprecated"): none reach the output of `mindtrans train`."""
    _, result = trained_run
    output = result.stdout + result.stderr
    assert "[WARNING]" not in output and "deprecated" not in output, output[-3000:]


def test_cli_train_writes_a_bundle_and_prints_the_summary(trained_run):
    run, result = trained_run
    summary = json_after_logs(result.stdout)
    assert summary["steps"] == STEPS and summary["stopped"] == f"reached --max-steps {STEPS}"
    assert summary["device"] == "CPU"
    assert "corpus synthetic" in result.stdout
    for name in RunDir.BUNDLE + ("latest.ckpt", "metadata.json", "log.csv", "log.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "train_config.json").read_text())["train"]
    assert (saved["preset"], saved["max_steps"], saved["batch_tokens"], saved["max_len"]) == ("tiny", STEPS, 256, 16)


def test_cli_evaluate_json(trained_run, workdir):
    run, _ = trained_run
    result = mindtrans("evaluate", run, "--json", "--data-dir", workdir / "data", "--beam", 2, "--limit", 5,
                       cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout)  # --json: the whole of stdout is one JSON object
    assert set(scores) >= {"split", "corpus", "sentences", "beam_size", "alpha", "bleu_tokenized", "sacrebleu",
                           "loss", "ppl", "translate_seconds"}
    assert (scores["split"], scores["corpus"], scores["sentences"], scores["beam_size"]) == \
        ("test2016", "synthetic", 5, 2)
    for key in ("bleu_tokenized", "sacrebleu"):
        assert isinstance(scores[key], (int, float)) and 0.0 <= scores[key] <= 100.0
    assert scores["loss"] > 0 and scores["ppl"] > 1


def test_cli_translate_arguments_and_stdin(trained_run, workdir):
    run, _ = trained_run
    one = mindtrans("translate", run, "Ein Mann fährt Fahrrad.", "--beam", 1, cwd=workdir)
    assert one.returncode == 0, one.stderr[-3000:]
    assert len(one.stdout.splitlines()) == 1

    sentences = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "Eine Frau liest."]
    piped = mindtrans("translate", run, "--beam", 1, cwd=workdir, stdin="".join(s + "\n" for s in sentences))
    assert piped.returncode == 0, piped.stderr[-3000:]
    lines = piped.stdout.splitlines()
    assert len(lines) == 3 and lines[0] == one.stdout.splitlines()[0]


@pytest.fixture(scope="module")
def random_bundle(workdir):
    """A bundle of an untrained model: its outputs differ from sentence to sentence, so order is visible."""
    pairs = load_split(workdir / "data", "train", corpus="synthetic")
    src_vocab = Vocab.build((tokenize(s) for s, _ in pairs), min_freq=1)
    tgt_vocab = Vocab.build((tokenize(t) for _, t in pairs), min_freq=1)
    config = TransformerConfig.preset("tiny", max_len=12).with_vocab(len(src_vocab), len(tgt_vocab))
    ms.set_seed(11)
    model = Transformer(config)
    out = workdir / "random"
    RunDir(out).write_static(config, src_vocab, tgt_vocab, {"train": {}, "corpus": "synthetic"})
    checkpoint.atomic_save(model, out / "model.ckpt")
    return out


def test_cli_translate_stdin_keeps_the_input_order(random_bundle, workdir):
    sentences = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", "",
                 "Drei Frauen lesen eine Zeitung am Strand."]
    expected = load_bundle(random_bundle).translator().translate(sentences, beam_size=1)
    assert len(set(expected)) == len(expected), "identical outputs would make the order check vacuous"
    # batch size 2: the sentences are decoded in length-sorted chunks, then put back in order
    piped = mindtrans("translate", random_bundle, "--beam", 1, "--batch-size", 2, cwd=workdir,
                      stdin="".join(s + "\n" for s in sentences))
    assert piped.returncode == 0, piped.stderr[-3000:]
    assert piped.stdout.split("\n")[:-1] == expected


def test_mindspore_internal_warnings_are_off_unless_asked_for():
    code = "import os, mindtrans; print(os.environ['GLOG_v'])"
    env = {k: v for k, v in os.environ.items() if k != "GLOG_v"}
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    chosen = subprocess.run([sys.executable, "-c", code], env={**env, "GLOG_v": "2"}, capture_output=True, text=True,
                            check=True)
    assert (quiet.stdout.strip(), chosen.stdout.strip()) == ("3", "2")
