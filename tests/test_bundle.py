"""Model bundles: a written bundle loads back into the same translator; every broken bundle says what is wrong."""
import json
import shutil

import mindspore as ms
import numpy as np
import pytest

from mindtrans import checkpoint
from mindtrans.bundle import BundleError, load_bundle, save_bundle
from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs
from mindtrans.data import Vocab, tokenize
from mindtrans.decode import Translator
from mindtrans.files import sha256_file
from mindtrans.model import Transformer
from mindtrans.rundir import RunDir

SENTENCES = ["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee.", ""]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(bundle dir, in-memory model, vocabs): written with the same functions `train` uses."""
    pairs = synthetic_pairs(120, seed=4)
    src_vocab = Vocab.build((tokenize(s) for s, _ in pairs), min_freq=1)
    tgt_vocab = Vocab.build((tokenize(t) for _, t in pairs), min_freq=1)
    config = TransformerConfig.preset("tiny", max_len=24).with_vocab(len(src_vocab), len(tgt_vocab))
    ms.set_seed(7)
    model = Transformer(config)
    model.set_train(False)
    out = tmp_path_factory.mktemp("bundle")
    data_file = out.parent / "train.de"
    data_file.write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    RunDir(out).write_static(config, src_vocab, tgt_vocab, {"train": {}, "corpus": "synthetic"}, [data_file])
    checkpoint.atomic_save(model, out / "model.ckpt", extra={"epoch": 1, "step": 10, "val_loss": 3.0})
    return out, model, src_vocab, tgt_vocab


@pytest.fixture
def copy(saved, tmp_path):
    """A fresh copy of the good bundle, to break."""
    target = tmp_path / "bundle"
    shutil.copytree(saved[0], target)
    return target


def edit_json(path, change):
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")


# --------------------------------------------------------------------------- round trip
def test_load_bundle_round_trip_translates_exactly_as_the_in_memory_model(saved):
    out, model, src_vocab, tgt_vocab = saved
    loaded = load_bundle(out)
    assert loaded.config == model.config
    assert loaded.src_vocab.itos == src_vocab.itos and loaded.tgt_vocab.itos == tgt_vocab.itos
    assert not loaded.model.training
    original = dict((p.name, p.asnumpy()) for p in model.get_parameters())
    restored = dict((p.name, p.asnumpy()) for p in loaded.model.get_parameters())
    assert set(original) == set(restored)
    for name in original:
        np.testing.assert_array_equal(restored[name], original[name], err_msg=name)

    in_memory = Translator(model, src_vocab, tgt_vocab, max_new_tokens=8)
    from_disk = loaded.translator(max_new_tokens=8)
    for beam_size in (1, 2):
        expected = in_memory.translate_ids(SENTENCES, beam_size=beam_size)
        assert from_disk.translate_ids(SENTENCES, beam_size=beam_size) == expected
        assert any(expected), "an all-empty output would make the comparison vacuous"


def test_metadata_records_versions_and_data_checksums(saved):
    out = saved[0]
    loaded = load_bundle(out)
    assert loaded.metadata["mindspore_version"] == ms.__version__
    assert loaded.metadata["data_sha256"] == {"train.de": sha256_file(out.parent / "train.de")}
    merged = RunDir(out).update_metadata({"test": {"bleu": 1.5}})
    assert merged["test"] == {"bleu": 1.5} and merged["mindspore_version"] == ms.__version__
    assert json.loads((out / "metadata.json").read_text())["test"] == {"bleu": 1.5}


def test_load_the_training_state_as_weights(copy, saved):
    """latest.ckpt holds optimizer state too: the extra entries are ignored."""
    model = saved[1]
    extra = ms.Parameter(ms.Tensor(np.zeros(3, np.float32)), name="moment1.something")
    checkpoint.atomic_save(list(model.get_parameters()) + [extra], copy / "latest.ckpt", extra={"step": 3})
    loaded = load_bundle(copy, weights="latest.ckpt")
    assert Translator(saved[1], saved[2], saved[3], max_new_tokens=4).translate_ids(SENTENCES[:2]) == \
        loaded.translator(max_new_tokens=4).translate_ids(SENTENCES[:2])


def test_metadata_is_optional(copy):
    (copy / "metadata.json").unlink()
    assert load_bundle(copy).metadata == {}


# --------------------------------------------------------------------------- errors
def test_not_a_directory(copy, tmp_path):
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(copy / "config.json")
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["config.json", "src_vocab.json", "tgt_vocab.json", "model.ckpt"])
def test_missing_file_is_named(copy, name):
    (copy / name).unlink()
    with pytest.raises(BundleError, match=rf"bundle .* is missing {name}$"):
        load_bundle(copy)


def test_missing_weights_say_how_to_get_them(copy):
    (copy / "model.ckpt").rename(copy / "latest.ckpt")  # stopped before its first validation
    with pytest.raises(BundleError, match=rf"is missing model.ckpt \(.*mindtrans train --out {copy} --resume`\)$"):
        load_bundle(copy)
    (copy / "manifest.json").write_text("{}")
    with pytest.raises(BundleError, match=r"is missing model.ckpt \(it is an export: give its run directory"):
        load_bundle(copy)


def test_missing_weights_file_chosen_by_name(copy):
    with pytest.raises(BundleError, match="is missing latest.ckpt"):
        load_bundle(copy, weights="latest.ckpt")


def test_config_not_matching_the_weights_names_the_parameter_and_shapes(copy):
    edit_json(copy / "config.json", lambda c: c.update(d_ff=48))
    with pytest.raises(BundleError) as info:
        load_bundle(copy)
    message = str(info.value)
    assert "model.ckpt does not match config.json" in message
    assert "ffn." in message  # the feed-forward layer is the one whose shape changed
    shapes = message.split(" has shape ")[1]
    saved_shape, implied_shape = shapes.split(", config.json implies ")
    assert "64" in saved_shape and "48" not in saved_shape
    assert "48" in implied_shape and "64" not in implied_shape


def test_config_with_more_layers_than_the_weights(copy):
    edit_json(copy / "config.json", lambda c: c.update(n_encoder_layers=3))
    with pytest.raises(BundleError, match=r"does not match config.json: no weights for \['encoder\.layers\.2\."):
        load_bundle(copy)


def test_vocab_size_mismatch(copy, saved):
    size = len(saved[3])
    edit_json(copy / "tgt_vocab.json", lambda v: v["itos"].pop())
    with pytest.raises(BundleError, match=rf"tgt_vocab.json has {size - 1} tokens but config.json expects {size}"):
        load_bundle(copy)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_weights_file(copy, damage):
    path = copy / "model.ckpt"
    data = path.read_bytes()
    path.chmod(0o600)  # MindSpore writes checkpoints read-only
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": bytes(range(256)) * 40, "empty": b""}[damage])
    with pytest.raises(BundleError, match=r"model.ckpt is corrupt or not a MindSpore checkpoint"):
        load_bundle(copy)


@pytest.mark.parametrize("text, expected", [
    ("{not json", "config.json is not a valid model config"),
    ('{"d_model": 32, "colour": "blue"}', "unknown TransformerConfig fields \\['colour'\\]"),
    ('{"d_model": 30, "n_heads": 4}', "d_model=30 is not divisible by n_heads=4"),
])
def test_invalid_config(copy, text, expected):
    (copy / "config.json").write_text(text)
    with pytest.raises(BundleError, match=expected):
        load_bundle(copy)


def test_invalid_vocabulary_file(copy):
    (copy / "src_vocab.json").write_text('{"itos": ["a", "b"]}')
    with pytest.raises(BundleError, match="src_vocab.json is not a mindtrans vocabulary file"):
        load_bundle(copy)


@pytest.mark.parametrize("text, problem", [
    ("{truncated", "it is not JSON"),
    ('["config.json"]', "it holds a JSON list, not an object"),
    ('{"files_sha256": ["config.json"]}', 'its "files_sha256" is not a table of file names and sha256 sums'),
    ('{"files_sha256": {"config.json": 1}}', 'its "files_sha256" is not a table'),
])
def test_corrupt_metadata_names_the_file_and_the_fix(copy, text, problem):
    (copy / "metadata.json").write_text(text)
    with pytest.raises(BundleError, match=rf"metadata.json is not a metadata file mindtrans wrote: {problem}.*; "
                                          r"restore it, or delete it"):
        load_bundle(copy)
    (copy / "metadata.json").unlink()
    assert load_bundle(copy).metadata == {}  # the fix the message offers works


def test_save_bundle_writes_what_load_bundle_reads(saved, tmp_path):
    _, model, src_vocab, tgt_vocab = saved
    out = save_bundle(tmp_path / "copy", model, src_vocab, tgt_vocab, metadata={"note": "saved by hand"})
    assert sorted(p.name for p in out.path.iterdir()) == sorted(RunDir.BUNDLE + (RunDir.METADATA,))
    loaded = load_bundle(out.path)
    assert loaded.metadata["note"] == "saved by hand" and loaded.config == model.config
    assert sorted(loaded.metadata["files_sha256"]) == sorted(RunDir.BUNDLE)
    for name, param in model.parameters_and_names():
        np.testing.assert_array_equal(dict(loaded.model.parameters_and_names())[name].asnumpy(), param.asnumpy())
    assert loaded.translator().translate_ids(SENTENCES[:2]) == Translator(model, src_vocab, tgt_vocab).translate_ids(
        SENTENCES[:2])
