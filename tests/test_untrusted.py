"""Files a user did not make, disks that fill and input they did not mean: every one is refused
in one line that names what is wrong, nothing crashes natively and nothing is overwritten."""
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

from mindtrans import checkpoint, cli, decode, fetch
from mindtrans.bundle import BundleError, load_bundle, save_bundle
from mindtrans.checkpoint_reader import read_checkpoint
from mindtrans.config import TransformerConfig
from mindtrans.corpus import resolve_corpus, synthetic_pairs, write_synthetic
from mindtrans.data import Vocab, read_lines, read_parallel, tokenize
from mindtrans.model import Transformer
from mindtrans.rundir import RunDir
from mindtrans.train_config import TrainConfig
from mindtrans.training import train

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- a bundle to break
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    pairs = synthetic_pairs(120, seed=5)
    src_vocab = Vocab.build((tokenize(s) for s, _ in pairs), min_freq=1)
    tgt_vocab = Vocab.build((tokenize(t) for _, t in pairs), min_freq=1)
    config = TransformerConfig.preset("tiny", max_len=24).with_vocab(len(src_vocab), len(tgt_vocab))
    ms.set_seed(3)
    model = Transformer(config)
    return save_bundle(tmp_path_factory.mktemp("good") / "bundle", model, src_vocab, tgt_vocab).path


@pytest.fixture
def copy(bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    (target / "model.ckpt").chmod(0o644)  # MindSpore's files may be read-only for the owner
    return target


def one_line_error(argv, capsys):
    """Run the CLI in-process; assert it fails with exactly one line on stderr, and return it."""
    assert cli.main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- crafted checkpoints
def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative numbers as protobuf writes int64
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def entry(tag: str, dims, dtype: str, content: bytes) -> bytes:
    """One serialized Checkpoint.Value, as MindSpore writes it (dims unpacked)."""
    tensor = b"".join(varint(1 << 3) + varint(d) for d in dims) + field(2, dtype.encode()) + field(3, content)
    return field(1, field(1, tag.encode()) + field(2, tensor))


def entries_of(path: Path) -> dict:
    return read_checkpoint(path)


def rewrite(path: Path, arrays: dict, crafted: dict = None) -> None:
    """Write `arrays` as a checkpoint, with `crafted` {name: raw entry bytes} instead of some."""
    crafted = crafted or {}
    body = b""
    for name, value in arrays.items():
        if name in crafted:
            body += crafted[name]
        elif isinstance(value, str):
            body += entry(name, [0], "str", value.encode("utf-32-le"))
        else:
            kind = {np.float32: "Float32", np.float64: "Float64", np.int32: "Int32"}[value.dtype.type]
            body += entry(name, value.shape, kind, value.tobytes())
    path.write_bytes(body)


def test_the_reader_reads_what_mindspore_writes(bundle):
    arrays = read_checkpoint(bundle / "model.ckpt")
    native = ms.load_checkpoint(str(bundle / "model.ckpt"))  # a file mindtrans made: safe for the native loader
    assert set(arrays) == set(native)
    for name, value in arrays.items():
        np.testing.assert_array_equal(value, native[name].asnumpy())


def test_the_reader_joins_the_slices_of_a_large_tensor(tmp_path):
    big = ms.Parameter(ms.Tensor(np.arange(600_000, dtype=np.float32).reshape(1000, 600)), name="big")
    checkpoint.atomic_save([big], tmp_path / "big.ckpt")
    arrays = read_checkpoint(tmp_path / "big.ckpt")
    np.testing.assert_array_equal(arrays["big"], np.arange(600_000, dtype=np.float32).reshape(1000, 600))


@pytest.mark.parametrize("damage, expected", [
    ("dims claim more than the bytes", r"claims shape \(64, 1000000\) of Float32 .* but holds"),
    ("negative dims", r"has invalid dims \[-5, 64\]"),
    ("huge dims", r"claims shape"),
    ("unknown type", r"unknown type 'Complex128'"),
])
def test_crafted_tensor_headers_are_refused_before_any_native_code(copy, damage, expected):
    path = copy / "model.ckpt"
    arrays = entries_of(path)
    name = next(n for n in arrays if "ffn.up.weight" in n)
    content = arrays[name].tobytes()
    crafted = {
        "dims claim more than the bytes": entry(name, [64, 1_000_000], "Float32", content),
        "negative dims": entry(name, [-5, 64], "Float32", content),
        "huge dims": entry(name, [1 << 40, 1 << 40], "Float32", content),
        "unknown type": entry(name, [64, 32], "Complex128", content),
    }[damage]
    rewrite(path, arrays, {name: crafted})
    with pytest.raises(BundleError, match=expected):
        load_bundle(copy)


def test_a_crafted_checkpoint_fails_in_one_line_in_a_subprocess(copy):
    """In a real process: MindSpore's native loader segfaulted on exactly this file (rc 139)."""
    arrays = entries_of(copy / "model.ckpt")
    name = next(iter(arrays))
    rewrite(copy / "model.ckpt", arrays, {name: entry(name, [1 << 20, 1 << 10], "Float32", b"\0" * 16)})
    env = {**os.environ, "MINDTRANS_DEVICE": "CPU", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "mindtrans", "translate", str(copy), "Ein Hund."],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "model.ckpt is corrupt or not a MindSpore checkpoint" in result.stderr


@pytest.mark.parametrize("change, expected", [
    ("float64", r"has shape \(\d+, 32\) of float64, config.json implies \(\d+, 32\) of float32"),
    ("string", r"holds text where weights belong"),
    ("nan", r"is corrupt: .* holds NaN or infinite values"),
    ("unused", r"weights it does not use: \['extra.weight'\]"),
])
def test_weights_of_the_wrong_kind_are_refused(copy, change, expected):
    path = copy / "model.ckpt"
    arrays = entries_of(path)
    name = next(n for n in arrays if n.endswith("embedding_table"))
    if change == "float64":
        arrays[name] = arrays[name].astype(np.float64)
    elif change == "string":
        arrays[name] = "not a weight"
    elif change == "nan":
        arrays[name] = np.full_like(arrays[name], np.nan)
    else:
        arrays["extra.weight"] = np.ones((2, 2), np.float32)
    rewrite(path, arrays)
    with pytest.raises(BundleError, match=expected):
        load_bundle(copy)


def test_a_bit_flip_is_reported_as_corruption_not_as_permission(copy, capsys):
    path = copy / "model.ckpt"
    data = bytearray(path.read_bytes())
    data[1] ^= 0x40  # the length of the first entry
    path.write_bytes(bytes(data))
    line = one_line_error(["translate", copy, "Ein Hund."], capsys)
    assert "corrupt" in line and "permission" not in line


# --------------------------------------------------------------------------- bundle files checked together
@pytest.mark.parametrize("edit, expected", [
    (lambda c: c.update(tie_embeddings="false"), "tie_embeddings must be true or false, got 'false'"),
    (lambda c: c.update(max_len=10 ** 9), "max_len must be at most 8192"),
    (lambda c: c.update(dropout="0.1"), "dropout must be a finite number"),
])
def test_config_values_of_the_wrong_kind_are_refused_at_once(copy, edit, expected):
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    started = time.time()
    with pytest.raises(BundleError, match=expected):
        load_bundle(copy)
    assert time.time() - started < 5


def test_a_reordered_vocabulary_is_caught_by_its_recorded_sha256(copy):
    payload = json.loads((copy / "tgt_vocab.json").read_text())
    payload["itos"][4], payload["itos"][5] = payload["itos"][5], payload["itos"][4]
    (copy / "tgt_vocab.json").write_text(json.dumps(payload))
    with pytest.raises(BundleError, match=r"tgt_vocab.json changed after the bundle was saved"):
        load_bundle(copy)


def test_changed_weights_of_the_right_shape_are_caught_by_the_sha256(copy):
    arrays = entries_of(copy / "model.ckpt")
    name = next(iter(arrays))
    arrays[name] = arrays[name] + 1
    rewrite(copy / "model.ckpt", arrays)
    with pytest.raises(BundleError, match="model.ckpt changed after the bundle was saved"):
        load_bundle(copy)


def test_metadata_records_the_sha256_of_every_bundle_file(bundle):
    recorded = json.loads((bundle / "metadata.json").read_text())["files_sha256"]
    assert sorted(recorded) == sorted(RunDir.BUNDLE)


def test_fuzzed_bundles_never_load_and_always_fail_in_one_line(bundle, tmp_path, capsys):
    """A few hundred seeded mutations of the weights, the config and the vocabularies."""
    rng = random.Random(19)
    originals = {name: (bundle / name).read_bytes() for name in RunDir.BUNDLE}
    target = tmp_path / "fuzzed"
    shutil.copytree(bundle, target)
    (target / "model.ckpt").chmod(0o644)
    for trial in range(300):
        name = RunDir.MODEL if trial < 180 else rng.choice(RunDir.BUNDLE[:3])
        data = bytearray(originals[name])
        kind = rng.choice(["flip", "truncate", "insert", "zero"])
        at = rng.randrange(len(data))
        if kind == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data[at:at + 16] = bytes(len(data[at:at + 16]))
        if bytes(data) == originals[name]:
            continue
        (target / name).write_bytes(bytes(data))
        with pytest.raises(BundleError):
            load_bundle(target)
        if trial % 10 == 0:  # the same through the command line: rc 1, one line
            one_line_error(["translate", target, "--beam", "1", "Ein Hund."], capsys)
        (target / name).write_bytes(originals[name])
    load_bundle(target)  # restored: loads again


# --------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic(root, n_train=200, n_val=20, n_test=20)
    return root


TINY = TrainConfig(preset="tiny", corpus="synthetic", epochs=1, max_steps=3, batch_tokens=256, warmup_steps=2,
                   max_len=24, mode="pynative")  # three steps: compiling would cost more than running


def test_train_refuses_an_out_that_holds_a_run(data_dir, copy, capsys):
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(FileExistsError, match=r"already holds a run .*--resume.*--overwrite"):
        train(data_dir, copy, TINY, verbose=False)
    line = one_line_error(["train", "--data-dir", data_dir, "--out", copy, "--preset", "tiny", "--max-steps", 3,
                           "--corpus", "synthetic"], capsys)
    assert "already holds a run" in line
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing touched


def test_overwrite_removes_the_old_weights_before_writing_a_new_config(data_dir, copy, monkeypatch):
    def killed(self, config, *args, **kwargs):  # the new config.json written, then the process killed
        self.write_json(RunDir.CONFIG, config.to_dict())
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "write_static", killed)
    with pytest.raises(KeyboardInterrupt):
        train(data_dir, copy, TINY, verbose=False, overwrite=True)
    assert [path.name for path in copy.iterdir()] == ["config.json"]  # never a new config beside the old weights
    monkeypatch.undo()
    summary = train(data_dir, copy, TINY, verbose=False, overwrite=True)
    assert summary["steps"] == 3
    load_bundle(copy)


def test_an_out_under_a_file_fails_at_once_in_one_line(data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "run"
    line = one_line_error(["train", "--data-dir", data_dir, "--out", out, "--preset", "tiny", "--max-steps", 3,
                           "--corpus", "synthetic"], capsys)
    assert line.endswith(f"cannot create the run directory {out}: not a directory")


def test_a_read_only_out_fails_at_once_in_one_line(data_dir, tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):  # what a read-only filesystem answers (as root, chmod cannot say it)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "run"
    line = one_line_error(["train", "--data-dir", data_dir, "--out", out, "--preset", "tiny", "--max-steps", 3,
                           "--corpus", "synthetic"], capsys)
    assert line.endswith(f"cannot write {out / '.write-test'}: read-only file system")


def test_a_failed_save_removes_mindspore_temporaries_too(tmp_path):
    run = RunDir(tmp_path)
    for name in (".latest.ab12cd34.tmp.tmp", ".latest.ab12cd34.tmp.ckpt", "epochs/.epoch_003.x1.tmp.tmp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "latest.ckpt").write_bytes(b"good")
    assert len(run.remove_stale_temporaries()) == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["latest.ckpt"]


def test_a_full_disk_ends_in_one_line_that_keeps_the_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "latest.ckpt"
    params = [ms.Parameter(ms.Tensor(np.ones(3, np.float32)), name="w")]
    checkpoint.atomic_save(params, path)

    def full(params, file_name, *args, **kwargs):
        Path(os.path.splitext(file_name)[0] + ".tmp").write_bytes(b"part")  # where MindSpore writes
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ms, "save_checkpoint", full)
    with pytest.raises(OSError) as info:
        checkpoint.atomic_save(params, path)
    assert str(info.value) == f"cannot save {path}: no space left on device; the previous latest.ckpt is kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.ckpt"]


# --------------------------------------------------------------------------- options and input
@pytest.mark.parametrize("argv, expected", [
    (["--max-steps", "-3"], "--max-steps must be 0 or more, got -3"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--max-minutes", "inf"], "--max-minutes must be a finite number"),
    (["--warmup-steps", "-1"], "--warmup-steps must be 0 or more"),
    (["--max-len", "2"], "--max-len must be at least 3 (<bos>, one token, <eos>), got 2"),
])
def test_training_options_are_checked_before_anything_runs(argv, expected, tmp_path, capsys):
    line = one_line_error(["train", "--out", tmp_path / "run", *argv], capsys)
    assert expected in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, expected", [
    (["evaluate", "RUN", "--limit", "0"], "--limit: must be at least 1, got 0"),
    (["evaluate", "RUN", "--limit", "-5"], "--limit: must be at least 1, got -5"),
    (["translate", "RUN", "--alpha", "nan"], "--alpha: must be a finite number >= 0, got nan"),
    (["translate", "RUN", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["translate", "RUN", "--batch-size", "-5"], "--batch-size: must be at least 1, got -5"),
    (["translate", "RUN", "--beam", "0"], "--beam-size/--beam: must be at least 1, got 0"),
    (["demo", "--minutes", "-1"], "--minutes: must be a finite number above 0, got -1"),
    (["demo", "--minutes", "nan"], "--minutes: must be a finite number above 0, got nan"),
])
def test_search_options_are_checked_by_the_parser(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err


def test_running_out_of_memory_is_one_line(capsys):
    line = one_line_error(["info", "--preset", "tiny", "--src-vocab", str(10 ** 12)], capsys)
    assert line.startswith("mindtrans info: error: out of memory (") and line.endswith("): choose smaller sizes")


def test_a_beam_times_batch_beyond_memory_is_refused_saying_so(bundle, monkeypatch, capsys):
    monkeypatch.setattr(decode, "_available_memory", lambda: 8 << 20)
    line = one_line_error(["translate", bundle, "--beam", "1000", "Ein Hund."], capsys)
    assert "beam 1000 x batch 1 = 1000 rows could need" in line and "--batch-size" in line


def test_evaluate_says_when_a_blank_source_faces_a_reference(bundle, tmp_path, capsys):
    (tmp_path / "a.de").write_text("Ein Hund.\n\nZwei Hunde.\n\n")
    (tmp_path / "a.en").write_text("A dog.\nA cat.\nTwo dogs.\n\n")  # line 4: blank on both sides, no warning
    assert cli.main(["evaluate", str(bundle), "--src", str(tmp_path / "a.de"), "--ref", str(tmp_path / "a.en"),
                     "--beam", "1"]) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"mindtrans evaluate: warning: 1 blank line(s) of {tmp_path / 'a.de'} face a reference in "
        f"{tmp_path / 'a.en'} (the first: line 2): are the two files aligned?"]


def test_empty_lines_translate_to_empty_lines(bundle):
    translator = load_bundle(bundle).translator()
    out = translator.translate(["", "Ein Hund.", "   ", "\t"], beam_size=1)
    assert out[0] == out[2] == out[3] == "" and out[1] != ""
    assert translator.translate([""], beam_size=4) == [""]


def test_options_after_the_sentences_and_the_bundle(bundle, capsys):
    assert cli.main(["translate", str(bundle), "--beam", "1", "Ein Hund.", "", "--alpha", "0.5"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert len(out) == 3 and out[1] == "" and out[2] == ""


def test_translate_streams_its_output(bundle):
    """With stdin still open, the first lines come back: nothing waits for the end of the input."""
    env = {**os.environ, "MINDTRANS_DEVICE": "CPU", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "mindtrans", "translate", str(bundle), "--beam", "1",
                                "--batch-size", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, env=env, text=True)
    try:
        process.stdin.write("Ein Hund.\n" * 4)  # one chunk: 4 x batch size
        process.stdin.flush()
        first = [process.stdout.readline() for _ in range(4)]
        assert all(line.endswith("\n") for line in first)
        process.stdin.write("\n")
        process.stdin.close()
        assert process.stdout.read() == "\n"  # the empty line, still empty
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()


def test_stdin_lines_end_at_newlines_and_read_like_file_lines():
    chunks = list(cli.stdin_chunks(iter([b"\xef\xbb\xbfEin Hund\n", b"c\r\n", b"Ma\xcc\x88dchen"]), 2))
    assert chunks == [["Ein Hund", "c"], ["Mädchen"]]  # no byte-order mark; CRLF ends a line; NFC
    with pytest.raises(ValueError, match="stdin line 2 is not UTF-8"):
        list(cli.stdin_chunks(iter([b"ok\n", b"\xff\xfe\n"]), 5))
    with pytest.raises(ValueError, match=r"stdin line 1 holds a carriage return .*tr '\\r' '\\n'"):
        list(cli.stdin_chunks(iter([b"eins\rzwei\rdrei\r"]), 5))  # old Mac line endings: one line


def test_translate_with_stdin_closed_says_so_before_loading_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # as `mindtrans translate RUN <&-` starts
    line = one_line_error(["translate", tmp_path / "no_such_run"], capsys)
    assert "no input: stdin is closed" in line


def test_a_sentence_starting_with_a_dash_goes_after_a_double_dash(bundle, capsys):
    assert cli.main(["translate", str(bundle), "--beam", "1", "--", "-Ein Hund.", "--beam"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # both are sentences
    assert cli.main(["translate", str(bundle), "--beam", "1", "Ein Hund.", "- Ein Mann."]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # with a space it cannot be an option
    with pytest.raises(SystemExit):
        cli.main(["translate", str(bundle), "Ein Hund.", "--bogus"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --bogus (" in err and "Ein Hund." not in err.split("arguments:")[1]


def test_an_over_long_input_is_one_warning_line(bundle, capsys):
    assert cli.main(["translate", str(bundle), "--beam", "1", "Ein Hund. " * 30, "Ein Hund. " * 40]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"mindtrans translate: warning: 2 input(s) truncated to the model's max_len=24 tokens, the first "
                   f"{('Ein Hund. ' * 4)[:40]!r}...: split long sentences"]


def test_evaluate_checks_its_out_and_its_options_before_loading_anything(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    args = ["evaluate", tmp_path / "no_such_run", "--src", tmp_path / "a.de", "--ref", tmp_path / "a.en"]
    assert one_line_error(args + ["--out", tmp_path / "file" / "hyp.txt"], capsys).startswith(
        f"mindtrans evaluate: error: cannot write {tmp_path / 'file' / 'hyp.txt'}: ")
    assert "give one or the other" in one_line_error(args + ["--split", "val"], capsys)


def test_corpus_auto_with_a_missing_multi30k_file_says_so(tmp_path, capsys):
    directory = tmp_path / "multi30k"
    directory.mkdir()
    for name in fetch.TEXT_SHA256:
        if name != "val.en":
            (directory / name).write_text("x\n")
    with pytest.raises(FileNotFoundError, match=r"incomplete \(missing val.en\).*--corpus synthetic"):
        resolve_corpus(tmp_path, "auto")
    assert resolve_corpus(tmp_path / "empty", "auto") == "synthetic"


# --------------------------------------------------------------------------- data files
def test_a_lone_carriage_return_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "test.de"
    path.write_bytes(b"eins\r\nzwei\rdrei\rvier\r")  # CRLF, then old Mac line endings
    with pytest.raises(ValueError, match=r"test.de line 2 holds a carriage return .*tr '\\r' '\\n'"):
        read_lines(path)


def test_file_lines_lose_a_byte_order_mark_and_are_read_in_nfc(tmp_path):
    path = tmp_path / "test.de"
    path.write_bytes(b"\xef\xbb\xbfEin Ma\xcc\x88dchen.\r\nZwei Hunde.\n")
    lines = read_lines(path)
    assert lines == ["Ein Mädchen.", "Zwei Hunde."] and len(lines) == path.read_bytes().count(b"\n")


def test_a_binary_file_is_named_with_its_line(tmp_path):
    (tmp_path / "a.de").write_bytes(b"gut\nauch gut\n\x89PNG\r\n")
    (tmp_path / "a.en").write_text("good\nalso good\nbad\n")
    with pytest.raises(ValueError, match=r"a.de line 3 is not UTF-8 text"):
        read_parallel(tmp_path / "a.de", tmp_path / "a.en")


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_named(tmp_path, split):
    write_synthetic(tmp_path, n_train=50, n_val=10, n_test=10)
    (tmp_path / "synthetic" / f"{split}.en").write_text("")
    with pytest.raises(ValueError, match=rf"{split}.en holds no sentences"):
        train(tmp_path, tmp_path / "run", TINY, verbose=False)


# --------------------------------------------------------------------------- downloads
class _Dripping:
    """A loopback server that sends its body `chunk` bytes every `every` seconds."""

    def __init__(self, every: float, size: int, chunk: int = 1):
        import http.server
        import threading

        drip = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                try:
                    for _ in range(0, size, chunk):
                        if drip.stopped:
                            return
                        self.wfile.write(b"x" * chunk)
                        self.wfile.flush()
                        time.sleep(every)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.stopped = False
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.stopped = True
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hermetic_fetch(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch, "BUILTIN_MIRRORS", ())
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "wgetrc").write_text("")
    monkeypatch.setenv("WGETRC", str(tmp_path / "wgetrc"))
    monkeypatch.setenv("CURL_HOME", str(tmp_path))


def test_a_dripping_server_is_stopped_by_the_deadline(tmp_path, hermetic_fetch):
    server = _Dripping(every=0.2, size=10_000)
    try:
        started, lines = time.time(), []
        with pytest.raises(fetch.FetchError) as info:
            fetch.fetch_multi30k(tmp_path, [server.url + "/Multi30K.zip"], timeout=5, deadline=1.5, log=lines.append)
        took = time.time() - started
    finally:
        server.close()
    assert "not finished after 1.5 s (--deadline)" in str(info.value)
    assert took < 3 * 1.5 + 6  # three tools, each stopped at the deadline
    assert list(fetch.multi30k_dir(tmp_path).iterdir()) == []


def test_a_mirror_too_slow_for_one_file_is_given_up_for_all(tmp_path, hermetic_fetch):
    server = _Dripping(every=0.2, size=10_000)
    try:
        started, lines = time.time(), []
        with pytest.raises(fetch.FetchError):
            fetch.fetch_multi30k(tmp_path, [server.url], timeout=5, deadline=1.0, log=lines.append)
        took = time.time() - started
    finally:
        server.close()
    assert sum("(--deadline)" in line for line in lines) == 1, lines  # not 3 tools x 9 files
    assert any(f"skipping the rest of {server.url}: unreachable or too slow" in line for line in lines)
    assert took < 1.0 + 6


def test_a_download_larger_than_the_corpus_is_cut_off(tmp_path, hermetic_fetch, monkeypatch):
    monkeypatch.setattr(fetch, "download_cap", lambda filename=None: 200_000)
    import http.server
    import threading

    sent = []

    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()  # no length: the client cannot know in advance
            try:
                for _ in range(2000):  # 2000 x 64 KiB = 131 MB
                    self.wfile.write(b"\0" * 65536)
                    sent.append(65536)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with pytest.raises(fetch.FetchError) as info:
            fetch.fetch_multi30k(tmp_path, [f"http://127.0.0.1:{server.server_address[1]}/Multi30K.zip"],
                                 timeout=5, log=lambda line: None)
    finally:
        server.shutdown()
        server.server_close()
    assert "larger than the 200000 bytes this file can have; refused" in str(info.value)
    assert sum(sent) < 3 * 60_000_000  # each tool stopped long before the 131 MB were sent
    assert list(fetch.multi30k_dir(tmp_path).iterdir()) == []


def test_the_download_caps_follow_the_texts():
    total = sum(fetch.digests.BYTES.values())
    assert 2 * total < fetch.download_cap() < 2 * total + (2 << 20)
    assert fetch.download_cap("val.de.gz") < fetch.download_cap("validation.tar.gz") < fetch.download_cap()


def test_sigterm_mid_download_leaves_no_partial_file(tmp_path):
    server = _Dripping(every=0.1, size=100 << 20, chunk=64 << 10)  # bytes at once, never done in time
    script = ("import sys; from mindtrans import fetch; fetch.BUILTIN_MIRRORS = (); "
              "fetch.fetch_multi30k(sys.argv[1], [sys.argv[2]], timeout=5)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WGETRC": os.devnull}
    try:
        process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), server.url + "/Multi30K.zip"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        directory = fetch.multi30k_dir(tmp_path)
        for _ in range(200):  # until a partial file has some bytes (at most 20 s)
            parts = list(directory.glob(".*.part-*")) if directory.is_dir() else []
            if any(p.is_file() and p.stat().st_size for p in parts):
                break
            time.sleep(0.1)
        assert parts
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        process.kill()
        server.close()
    assert list(directory.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_download_dies_with_a_fetch_killed_by_sigkill(tmp_path):
    server = _Dripping(every=0.1, size=100 << 20, chunk=64 << 10)
    script = ("import sys; from mindtrans import fetch; fetch.BUILTIN_MIRRORS = (); "
              "fetch.fetch_multi30k(sys.argv[1], [sys.argv[2]], timeout=5)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WGETRC": os.devnull}

    def children(pid):
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.parent.name))
        return found

    try:
        process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), server.url + "/Multi30K.zip"],
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):  # until the download runs in its child process (at most 20 s)
            downloads = children(process.pid)
            if downloads:
                break
            time.sleep(0.1)
        assert downloads
        process.kill()
        process.wait(timeout=30)
        for _ in range(50):
            if not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in downloads):
                break
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in downloads)
    finally:
        process.kill()
        server.close()


def _state(pid) -> str:
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return ""


def test_a_killed_fetch_leaves_parts_the_next_one_removes(tmp_path, hermetic_fetch):
    directory = fetch.multi30k_dir(tmp_path)
    directory.mkdir(parents=True)
    stale, fresh = directory / ".Multi30K.zip.part-0badf00d", directory / ".train.de.part-12345678"
    notes = directory / ".chapter.part-2.txt"  # a hidden file of the user's: not a name fetch writes
    for path in (stale, fresh, notes):
        path.write_bytes(b"x")
    for path in (stale, notes):
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    lines = []
    with pytest.raises(fetch.FetchError):
        fetch.fetch_multi30k(tmp_path, [str(tmp_path / "nowhere")], timeout=5, log=lines.append)
    assert not stale.exists() and fresh.exists() and notes.exists()  # a fresh one may be a running fetch's
    assert any("removed 1 partial file" in line for line in lines)


def test_a_gzip_bomb_is_cut_off_at_the_size_of_its_text(tmp_path, hermetic_fetch):
    import gzip

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bomb = gzip.compress(b"\0" * (30 << 20), compresslevel=9)  # 30 MiB from ~30 KB
    for name in fetch.TEXT_SHA256:
        (mirror / fetch.gzip_name(name)).write_bytes(bomb)
    with pytest.raises(fetch.FetchError) as info:
        fetch.fetch_multi30k(tmp_path / "data", [str(mirror)], timeout=5, log=lambda line: None)
    assert f"unpacks to more than {fetch._cap('train.de')} bytes; refused" in str(info.value)
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []
