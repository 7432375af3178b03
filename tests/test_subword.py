"""The joint subword vocabulary: cased text in and out, no <unk> for unseen words, saved inside
the bundle; shared embeddings; `mindtrans evaluate --src/--ref`."""
import json

import mindspore as ms
import numpy as np
import pytest

from mindtrans import cli
from mindtrans.bundle import BundleError, load_bundle, save_bundle
from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs
from mindtrans.data import BOS, EOS, PAD, SPECIALS, UNK
from mindtrans.decode import Translator
from mindtrans.model import Transformer
from mindtrans.params import count_parameters, estimate_parameters
from mindtrans.subword import SubwordVocab, build_vocabs, load_vocab
from mindtrans.train_config import TrainConfig, from_args

PAIRS = synthetic_pairs(400, seed=11) + [("Paris und McDonald.", "Paris and McDonald.")] * 3


@pytest.fixture(scope="module")
def vocab():
    source, target = build_vocabs(PAIRS, "subword", size=500)
    assert source is target  # one joint model
    return source


def test_the_specials_keep_their_ids(vocab):
    assert [vocab.processor.id_to_piece(i) for i in (UNK, PAD, BOS, EOS)] == list(SPECIALS)
    assert len(vocab) == 500


@pytest.mark.parametrize("text", ["Ein Mann fährt Fahrrad.", "Paris und McDonald.",
                                  "Der Fahrradhelmverkäufer kauft 3 Äpfel!"])
def test_text_round_trips_with_its_case(vocab, text):
    ids = vocab.encode_text(text)
    assert vocab.decode_text(ids) == text
    assert vocab.decode_text([BOS, *ids, EOS, 7, 8]) == text  # stops at <eos>, skips <bos>


def test_an_unseen_compound_has_no_unk(vocab):
    ids = vocab.encode_text("Wasserrutschenbaumeisterin")
    assert UNK not in ids and len(ids) > 1
    assert vocab.words(ids) == ["wasserrutschenbaumeisterin"]  # what tokenized BLEU compares


def test_training_is_deterministic(vocab):
    again, _ = build_vocabs(PAIRS, "subword", size=500)
    assert again.model_proto == vocab.model_proto


def test_saved_inside_the_vocabulary_file(vocab, tmp_path):
    vocab.save(tmp_path / "v.json")
    loaded = load_vocab(tmp_path / "v.json")
    assert isinstance(loaded, SubwordVocab) and loaded.model_proto == vocab.model_proto
    payload = json.loads((tmp_path / "v.json").read_text())
    payload["sentencepiece_model"] = payload["sentencepiece_model"][:100]
    (tmp_path / "bad.json").write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="bad.json does not hold a valid SentencePiece model"):
        load_vocab(tmp_path / "bad.json")


def test_a_model_without_the_specials_is_refused():
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter([s for s, _ in PAIRS]), model_writer=model,
                                             vocab_size=100, minloglevel=2)
    with pytest.raises(ValueError, match="must start with"):
        SubwordVocab(model.getvalue())


@pytest.fixture(scope="module")
def shared_bundle(vocab, tmp_path_factory):
    config = TransformerConfig.preset("tiny", max_len=32, share_embeddings=True, tie_embeddings=True).with_vocab(
        len(vocab), len(vocab))
    ms.set_seed(2)
    model = Transformer(config)
    return save_bundle(tmp_path_factory.mktemp("shared") / "bundle", model, vocab, vocab).path, model


def test_shared_embeddings_are_one_table(shared_bundle):
    _, model = shared_bundle
    tables = [p for n, p in model.parameters_and_names() if "embedding_table" in n]
    assert len(tables) == 1
    assert model.encoder.embed is model.decoder.embed
    assert count_parameters(model) == estimate_parameters(model.config)
    assert estimate_parameters(model.config)["embeddings"] == len(model.decoder.embed.weight) * 32


def test_share_embeddings_needs_one_vocabulary():
    with pytest.raises(ValueError, match="share_embeddings needs one joint vocabulary"):
        TransformerConfig.preset("tiny", share_embeddings=True).with_vocab(10, 12)
    with pytest.raises(ValueError, match="--share-embeddings needs one vocabulary .* --vocab subword"):
        TrainConfig(share_embeddings=True)


def test_a_subword_bundle_loads_and_translates_as_saved(shared_bundle, vocab):
    path, model = shared_bundle
    bundle = load_bundle(path)
    assert isinstance(bundle.src_vocab, SubwordVocab) and bundle.config.share_embeddings
    sentences = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee."]
    expected = Translator(model, vocab, vocab, max_new_tokens=6).translate(sentences, beam_size=2)
    assert bundle.translator(max_new_tokens=6).translate(sentences, beam_size=2) == expected
    assert expected[1] == ""


def test_a_changed_subword_model_is_refused(shared_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shared_bundle[0], copy)
    other, _ = build_vocabs(PAIRS[:200], "subword", size=500)
    other.save(copy / "tgt_vocab.json")
    with pytest.raises(BundleError, match="tgt_vocab.json changed after the bundle was saved"):
        load_bundle(copy)


def test_a_changed_subword_model_never_reaches_sentencepiece(shared_bundle, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shared_bundle[0], copy)
    payload = json.loads((copy / "src_vocab.json").read_text())
    payload["sentencepiece_model"] = "AAAA" + payload["sentencepiece_model"][4:]  # crafted model bytes
    (copy / "src_vocab.json").write_text(json.dumps(payload))

    def native_parse(self, model_proto):
        raise AssertionError("sentencepiece saw a file that changed")

    monkeypatch.setattr(SubwordVocab, "__init__", native_parse)
    with pytest.raises(BundleError, match="src_vocab.json changed after the bundle was saved"):
        load_bundle(copy)


def test_evaluate_any_parallel_text(shared_bundle, tmp_path, capsys):
    path, _ = shared_bundle
    (tmp_path / "in.de").write_text("Ein Hund.\nZwei Frauen.\n\n")
    (tmp_path / "in.en").write_text("A dog.\nTwo women.\nNothing.\n")
    out = tmp_path / "hyp.en"
    assert cli.main(["evaluate", str(path), "--src", str(tmp_path / "in.de"), "--ref", str(tmp_path / "in.en"),
                     "--beam", "1", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["sentences"] == 3 and "sacrebleu_signature" in result and "hypotheses" not in result
    assert "tok:13a" in result["sacrebleu_signature"] and "case:mixed" in result["sacrebleu_signature"]
    lines = out.read_text().split("\n")
    assert len(lines) == 4 and lines[2] == "" and lines[3] == ""
    assert cli.main(["evaluate", str(path), "--src", str(tmp_path / "in.de"), "--ref", str(tmp_path / "in.en"),
                     "--out", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["evaluate", str(path), "--src", str(tmp_path / "in.de")]) == 1
    assert "--src and --ref go together" in capsys.readouterr().err


def test_vocab_and_sharing_are_train_flags():
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--out", "x", "--vocab", "subword", "--subword-size", "4000",
                              "--share-embeddings"])
    assert (args.vocab, args.subword_size, args.share_embeddings) == ("subword", 4000, True)
    cfg = from_args(parser.parse_args(["train", "--out", "x"]))
    assert (cfg.vocab, cfg.share_embeddings, cfg.pack) == ("word", False, True)
    assert np.isclose(TrainConfig.from_dict(TrainConfig().to_dict()).lr, TrainConfig().lr)


def test_too_small_a_subword_vocabulary_says_how_small():
    with pytest.raises(ValueError, match=r"of 270 pieces is too small for this corpus: .* need \d+"):
        build_vocabs(PAIRS, "subword", size=270)


def test_too_large_a_subword_vocabulary_says_how_large_it_can_be():
    with pytest.raises(ValueError, match=r"of 100000 pieces is more than this corpus can make \(at most \d+\): "
                                         r"lower --subword-size$"):
        build_vocabs(PAIRS, "subword", size=100_000)


def test_a_subword_run_trains_resumes_and_translates_cased(tmp_path):
    from mindtrans.corpus import write_synthetic
    from mindtrans.training import train

    write_synthetic(tmp_path, n_train=300, n_val=20, n_test=20)
    cfg = TrainConfig(preset="tiny", corpus="synthetic", vocab="subword", subword_size=400, share_embeddings=True,
                      epochs=1, max_steps=3, batch_tokens=512, warmup_steps=2, max_len=32, mode="pynative")
    train(tmp_path, tmp_path / "run", cfg, verbose=False)
    more = train(tmp_path, tmp_path / "run", TrainConfig(max_steps=5), resume=True, verbose=False)
    assert more["steps"] == 5
    bundle = load_bundle(tmp_path / "run")
    assert isinstance(bundle.tgt_vocab, SubwordVocab) and bundle.config.share_embeddings
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]["vocab"] == "subword"
