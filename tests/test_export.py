"""MindIR export (#18): a tiny trained model exported, then translated from the export alone, in another
process that never imports the model code, exactly as its bundle translates."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mindtrans.bundle import load_bundle
from mindtrans.cli import main
from mindtrans.corpus import write_synthetic
from mindtrans.step_graph import ModelSteps
from mindtrans.exported import ENCODER, FILES, STEP, ExportError, load_export
from mindtrans.files import sha256_file
from mindtrans.rundir import RunDir
from mindtrans.train_config import TrainConfig
from mindtrans.training import train

ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = ("mindtrans.model", "mindtrans.encoder", "mindtrans.decoder")
# Of several lengths, decoded in batches of 3: the batches are padded to different widths.
SENTENCES = ["ein hund .", "zwei kleine katzen laufen über die straße .", "ein mann", "eine frau sieht einen "
             "großen roten ball und zwei blaue hunde im park .", "", "die kinder spielen .", "ein alter mann liest"]
BATCH = 3
# Translates with the CLI from the export, greedy then beam 3, and lists the model modules it imported.
CHILD = """
import json, sys
from mindtrans.cli import main
for beam in ("1", "3"):
    assert main(["translate", sys.argv[1], "--beam", beam, "--batch-size", "%d", *sys.argv[2:]]) == 0
print(json.dumps(sorted(name for name in sys.modules if name in %r)))
""" % (BATCH, MODEL_CODE)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A bundle of the `tiny` model trained for 60 steps on the synthetic corpus, with a subword vocabulary."""
    root = tmp_path_factory.mktemp("export")
    write_synthetic(root / "data", n_train=200, n_val=8, n_test=8)
    cfg = TrainConfig(preset="tiny", corpus="synthetic", max_steps=60, batch_tokens=256, max_len=24, lr=5e-3,
                      warmup_steps=5, vocab="subword", subword_size=400)
    train(root / "data", root / "run", cfg, verbose=False)
    return root / "run"


@pytest.fixture(scope="module")
def exported(bundle):
    """The bundle exported by `mindtrans export`."""
    out = bundle.parent / "export"
    assert main(["export", str(bundle), "--out", str(out)]) == 0
    return out


def test_an_export_holds_the_graphs_vocabularies_config_and_a_manifest(exported):
    assert sorted(path.name for path in exported.iterdir()) == sorted(FILES + (RunDir.MANIFEST,))
    manifest = json.loads((exported / RunDir.MANIFEST).read_text())
    assert manifest["files_sha256"] == {name: sha256_file(exported / name) for name in FILES}
    assert {"format_version", "mindtrans_version", "mindspore_version", "python"} <= set(manifest)
    assert manifest["cache_dtype"] == "float32"


def test_another_process_translates_the_export_without_the_model_code_as_the_bundle_does(bundle, exported):
    env = {**os.environ, "MINDTRANS_DEVICE": "CPU",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    child = subprocess.run([sys.executable, "-c", CHILD, str(exported), *SENTENCES], env=env, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    *lines, imported = child.stdout.splitlines()
    assert json.loads(imported) == []
    translator = load_bundle(bundle).translator(batch_size=BATCH)
    expected = [line for beam in (1, 3) for line in translator.translate(SENTENCES, beam_size=beam)]
    assert lines == expected
    assert len(set(expected)) > 3  # the sentences translate differently


def test_one_step_gives_the_bundles_log_probabilities(bundle, exported):
    """Encoder outputs and one decoding step (position 2, beams reordered) agree within float32 rounding."""
    import mindspore as ms

    src = np.array([[2, 9, 17, 23, 5, 3], [2, 30, 11, 3, 0, 0]], dtype=np.int32)
    runs = []
    for steps in (ModelSteps(load_bundle(bundle).model), load_export(exported).steps):
        src_mask, cache = steps.start(src, slots=4, repeat=2)
        cache = tuple(t + 0.1 for t in cache)  # as if two positions were decoded already
        tokens, rows = ms.Tensor(np.array([[7], [8], [9], [10]], np.int32)), ms.Tensor(np.array([1, 0, 3, 3], np.int32))
        log_probs, new_cache, attention = steps.step(tokens, src_mask, cache, ms.Tensor(2, ms.int32), rows)
        runs.append([log_probs.asnumpy(), attention.asnumpy(), *(t.asnumpy() for t in new_cache)])
    for model_output, export_output in zip(*runs):
        np.testing.assert_allclose(export_output, model_output, rtol=1e-5, atol=1e-6)


def test_a_changed_export_file_is_refused_in_one_line(exported, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / STEP, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ExportError, match=f"{STEP} changed after it was exported"):
        load_export(copy)
    (copy / ENCODER).unlink()
    assert main(["translate", str(copy), "ein hund ."]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"missing {ENCODER}" in err


def test_export_never_replaces_a_directory_without_overwrite(bundle, exported, capsys):
    assert main(["export", str(bundle), "--out", str(exported)]) == 1
    assert "exists: pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(bundle), "--out", str(bundle), "--overwrite"]) == 1  # a bundle is no export
    assert "is not an export" in capsys.readouterr().err
    assert (bundle / "model.ckpt").is_file()


@pytest.mark.parametrize("inside", [".", "sub"])
def test_overwrite_refuses_the_export_the_shell_is_in(bundle, exported, tmp_path, monkeypatch, capsys, inside):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    (copy / "sub").mkdir()
    monkeypatch.chdir(copy / inside)
    before = sorted(path.name for path in copy.iterdir())
    assert main(["export", str(bundle), "--out", str(copy) if inside == "sub" else ".", "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the current directory, which cannot be replaced while in use: " \
        "run the export from outside it (cd ..)" in err
    assert sorted(path.name for path in copy.iterdir()) == before
    assert [path.name for path in tmp_path.iterdir()] == ["copy"]  # no temporary left beside it


def test_overwrite_swaps_the_new_export_in_whole(tmp_path):
    from mindtrans.export import replace_directory

    old, new = tmp_path / "export", tmp_path / ".export.1234.tmp"
    for directory, text in ((old, "old"), (new, "new")):
        directory.mkdir()
        (directory / RunDir.MANIFEST).write_text(text)
    (old / "stale.bin").write_text("")
    replace_directory(new, old)
    assert [path.name for path in tmp_path.iterdir()] == ["export"]
    assert [path.name for path in old.iterdir()] == [RunDir.MANIFEST] and (old / RunDir.MANIFEST).read_text() == "new"


def test_overwrite_through_a_link_replaces_the_link_and_keeps_what_it_pointed_to(tmp_path):
    from mindtrans.export import replace_directory

    target, link, new = tmp_path / "exports" / "v1", tmp_path / "export", tmp_path / ".export.1234.tmp"
    for directory in (target, new):
        directory.mkdir(parents=True)
        (directory / RunDir.MANIFEST).write_text(directory.name)
    link.symlink_to(target)
    replace_directory(new, link)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export", "exports"] and not link.is_symlink()
    assert (link / RunDir.MANIFEST).read_text() == new.name and (target / RunDir.MANIFEST).read_text() == "v1"


def test_a_graph_mindspore_cannot_export_fails_in_one_line_and_leaves_nothing(bundle, tmp_path, monkeypatch, capsys):
    import mindspore as ms

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to find context for: construct.Linear\n\n-----\nC++ Call Stack: ...")

    monkeypatch.setattr(ms, "export", refuse)
    assert main(["export", str(bundle), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot export {ENCODER} (Failed to find context for: construct.Linear)" in err
    assert list(tmp_path.iterdir()) == []
