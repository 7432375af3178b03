"""Tests for mindtrans.data: tokens, vocabulary, corpus files and bucketed batching."""
import gzip
import json
import time
from pathlib import Path

import numpy as np
import pytest

from mindtrans.batching import BucketBatcher, bucket_batch_size, bucket_lengths, fixed_length_padding_ratio
from mindtrans.data import (BOS, EOS, PAD, SPECIALS, UNK, Vocab, detokenize, encode_pairs, load_split,
                            read_parallel, tokenize)

SHARED_MULTI30K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
# name in the shared gzip copy -> name in the layout `mindtrans fetch` produces
MULTI30K_SPLITS = {"train": "train", "val": "val", "test_2016_flickr": "test2016"}


@pytest.fixture(scope="module")
def multi30k_dir(tmp_path_factory):
    """A data dir holding <dir>/multi30k/{train,val,test2016}.{de,en}, unpacked from the shared copy."""
    if not (SHARED_MULTI30K / "train.de.gz").is_file():
        pytest.skip(f"real Multi30k files not found under {SHARED_MULTI30K}")
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "multi30k").mkdir()
    for src, dst in MULTI30K_SPLITS.items():
        for lang in ("de", "en"):
            with gzip.open(SHARED_MULTI30K / f"{src}.{lang}.gz", "rb") as f:
                (data_dir / "multi30k" / f"{dst}.{lang}").write_bytes(f.read())
    return data_dir


# --------------------------------------------------------------------------- tokens
def test_tokenize_lowercases_and_splits_punctuation():
    assert tokenize("Ein Mann, der lacht!") == ["ein", "mann", ",", "der", "lacht", "!"]
    assert tokenize("  A   dog.\n") == ["a", "dog", "."]
    assert tokenize("") == []


def test_tokenize_keeps_umlauts_and_eszett_inside_words():
    assert tokenize("Die Straße über Müllers Haus.") == ["die", "straße", "über", "müllers", "haus",
                                                         "."]
    assert tokenize("ÜBER") == ["über"]
    assert tokenize("Ein T-Shirt") == ["ein", "t", "-", "shirt"]


def test_tokenize_reads_a_decomposed_umlaut_as_the_letter():
    decomposed = "Ein Ma\u0308dchen u\u0308ber der Stra\u00dfe."  # "a" + combining diaeresis
    assert tokenize(decomposed) == tokenize("Ein Mädchen über der Straße.") == [
        "ein", "mädchen", "über", "der", "straße", "."]


@pytest.mark.parametrize("tokens, text", [
    (["a", "man", "'", "s", "t", "-", "shirt", "."], "A man's t-shirt."),
    (["a", "sign", "says", '"', "stop", "!", '"', "."], 'A sign says "stop!".'),
    (["two", "dogs", "(", "one", "black", ")", ",", "running", ";", "fast", "?"],
     "Two dogs (one black), running; fast?"),
    (["3", ".", "5", "men", "and", "1", ",", "000", "birds", ":", "wow"], "3.5 men and 1,000 birds: wow"),
    (["ein", "schild", ":", "„", "hallo", "“", "."], "Ein schild: „hallo“."),
    (['"', "hello", '"', "said", "he"], '"Hello" said he'),
    (["über", "die", "straße"], "Über die straße"),
    (["<unk>", "people", "are", "dancing", "."], "<unk> people are dancing."),
    (['"', "<unk>", '"', "he", "said"], '"<unk>" he said'),
    ([], ""),
])
def test_detokenize(tokens, text):
    assert detokenize(tokens) == text


@pytest.mark.parametrize("sentence", [
    "A man in an orange hat starring at something.",
    "A boy wearing headphones sits on a woman's shoulders.",
    "A little-league baseball player, wearing a white jersey, hits the ball.",
    "Ein kleines Mädchen klettert über die Straße.",
])
def test_detokenize_inverts_tokenize_up_to_case(sentence):
    assert detokenize(tokenize(sentence)).lower() == sentence.lower()
    assert detokenize(tokenize(sentence))[0] == sentence[0]


# --------------------------------------------------------------------------- vocabulary
TOKEN_LISTS = [["a", "dog", "runs", "."], ["a", "cat", "runs", "."], ["the", "dog", "."], ["a", "dog"]]


def test_vocab_build_order_and_min_freq():
    vocab = Vocab.build(TOKEN_LISTS, min_freq=2)
    assert vocab.itos[:4] == list(SPECIALS)
    assert (vocab.stoi["<unk>"], vocab.stoi["<pad>"], vocab.stoi["<bos>"], vocab.stoi["<eos>"]) \
        == (UNK, PAD, BOS, EOS)
    # frequency descending, ties alphabetical; "cat" and "the" appear once
    assert vocab.itos[4:] == [".", "a", "dog", "runs"]
    assert "cat" not in vocab and "dog" in vocab
    assert len(vocab) == 8
    assert Vocab.build(TOKEN_LISTS, min_freq=1).itos[4:] == [".", "a", "dog", "runs", "cat", "the"]
    assert Vocab.build(reversed(TOKEN_LISTS)).itos == vocab.itos
    assert Vocab.build(TOKEN_LISTS, min_freq=1, max_size=6).itos[4:] == [".", "a"]


def test_vocab_ignores_special_strings_in_text():
    vocab = Vocab.build([["<pad>", "<unk>", "x"], ["x", "<eos>"]])
    assert vocab.itos == [*SPECIALS, "x"]


def test_vocab_encode_decode():
    vocab = Vocab.build(TOKEN_LISTS)
    ids = vocab.encode(["a", "zebra", "runs"], add_bos_eos=True)
    assert ids == [BOS, vocab.stoi["a"], UNK, vocab.stoi["runs"], EOS]
    assert vocab.encode(["a"]) == [vocab.stoi["a"]]
    assert vocab.decode(ids) == ["a", "<unk>", "runs"]
    assert vocab.decode([*ids, vocab.stoi["dog"], PAD, PAD]) == ["a", "<unk>", "runs"]
    assert vocab.decode(np.array([BOS, vocab.stoi["dog"], PAD]), strip_special=True) == ["dog"]
    assert vocab.decode(ids, strip_special=False) == ["<bos>", "a", "<unk>", "runs", "<eos>"]


@pytest.mark.parametrize("bad_id", [8, 100, -1])
def test_vocab_decode_out_of_range_names_id_and_size(bad_id):
    vocab = Vocab.build(TOKEN_LISTS)
    with pytest.raises(ValueError, match=rf"{bad_id}\b.*size 8"):
        vocab.decode([BOS, 4, bad_id])


def test_vocab_save_load_round_trip(tmp_path):
    vocab = Vocab.build([["straße", "über", "müller"]] * 2 + TOKEN_LISTS)
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded.itos == vocab.itos and loaded.stoi == vocab.stoi
    assert "straße" in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temporary file left


@pytest.mark.parametrize("content", [
    b"not json at all",
    b"\xff\xfe garbage",
    json.dumps(["<unk>", "<pad>"]).encode(),
    json.dumps({"format": "something-else", "itos": list(SPECIALS)}).encode(),
    json.dumps({"format": "mindtrans.vocab", "version": 1, "itos": ["a", "b"]}).encode(),
    json.dumps({"format": "mindtrans.vocab", "version": 1, "itos": [*SPECIALS, "x", "x"]}).encode(),
])
def test_vocab_load_bad_file_raises_value_error(tmp_path, content):
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="vocab"):
        Vocab.load(path)


# --------------------------------------------------------------------------- corpus files
def test_read_parallel_keeps_every_line(tmp_path):
    (tmp_path / "a.de").write_text("Eins.\n\nDrei  \nVier.\n", encoding="utf-8")
    (tmp_path / "a.en").write_text("One.\n\nThree\r\nFour.", encoding="utf-8")  # no final newline
    pairs = read_parallel(tmp_path / "a.de", tmp_path / "a.en")
    assert pairs == [("Eins.", "One."), ("", ""), ("Drei", "Three"), ("Vier.", "Four.")]


def test_read_parallel_mismatch_names_files_and_counts(tmp_path):
    (tmp_path / "x.de").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "x.en").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_parallel(tmp_path / "x.de", tmp_path / "x.en")
    message = str(err.value)
    assert "x.de" in message and "x.en" in message and "3" in message and "2" in message


def test_load_split_missing_file_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"mindtrans fetch --data-dir"):
        load_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="write_synthetic"):
        load_split(tmp_path, "train", corpus="synthetic")
    with pytest.raises(ValueError, match="corpus"):
        load_split(tmp_path, "train", corpus="wmt14")


def test_load_split_reads_real_multi30k(multi30k_dir):
    expected = {"train": 29000, "val": 1014, "test2016": 1000}
    for split, n in expected.items():
        pairs = load_split(multi30k_dir, split)
        assert len(pairs) == n
    val = load_split(multi30k_dir, "val")
    assert val[0] == ("Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen",
                      "A group of men are loading cotton onto a truck")
    assert val[-1][1].endswith("port-a-potty.")
    swapped = load_split(multi30k_dir, "val", src_lang="en", tgt_lang="de")
    assert swapped[0] == val[0][::-1]


# --------------------------------------------------------------------------- encoding
def test_encode_pairs_frames_and_truncates():
    src_vocab = Vocab.build([["ein", "hund", "läuft", "."]], min_freq=1)
    tgt_vocab = Vocab.build([["a", "dog", "runs", "."]], min_freq=1)
    pairs = [("Ein Hund läuft.", "A dog runs."), ("Ein Hund.", "A dog runs runs runs runs."),
             ("Hund.", "Dog.")]
    encoded = encode_pairs(pairs, src_vocab, tgt_vocab)
    src, tgt = encoded[0]
    assert src.dtype == np.int32 and tgt.dtype == np.int32
    assert src.tolist() == [BOS, *src_vocab.encode(["ein", "hund", "läuft", "."]), EOS]
    assert encoded.n_truncated == 0

    cut = encode_pairs(pairs, src_vocab, tgt_vocab, max_len=5)
    assert cut.n_truncated == 2  # pair 0 on the source side, pair 1 on the target side
    assert cut[0][0].tolist() == [BOS, *src_vocab.encode(["ein", "hund", "läuft"]), EOS]
    assert cut[0][1].tolist() == [BOS, *tgt_vocab.encode(["a", "dog", "runs"]), EOS]
    assert len(cut[1][1]) == 5 and cut[1][1][-1] == EOS
    assert cut[1][0].tolist() == encoded[1][0].tolist()
    assert [a.tolist() for a in cut[2]] == [a.tolist() for a in encoded[2]]
    with pytest.raises(ValueError, match="max_len"):
        encode_pairs(pairs, src_vocab, tgt_vocab, max_len=1)


# --------------------------------------------------------------------------- batching
def random_pairs(n=1000, max_len=40, seed=0):
    """Encoded pairs with random ids and lengths in [2, max_len]."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        ls, lt = rng.integers(0, max_len - 1, size=2)
        pairs.append((np.array([BOS, *rng.integers(4, 50, ls), EOS], np.int32),
                      np.array([BOS, *rng.integers(4, 50, lt), EOS], np.int32)))
    return pairs


def iterate(dataset):
    return [(src, tgt) for src, tgt in dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)]


def test_bucket_lengths_and_batch_sizes():
    assert bucket_lengths(128) == (8, 12, 16, 20, 24, 32, 48, 64, 96, 128)
    assert bucket_lengths(40) == (8, 12, 16, 20, 24, 32, 40)
    assert bucket_lengths(40, boundaries=[30, 10, 50]) == (10, 30, 40)
    assert bucket_batch_size(4096, 24) == 168  # 170 rounded down to a multiple of 8
    assert bucket_batch_size(40, 8) == 5 and bucket_batch_size(10, 128) == 1


def test_batches_have_planned_shapes_and_contents():
    pairs = random_pairs()
    batcher = BucketBatcher(pairs, batch_tokens=512, max_len=40)
    shapes = batcher.shapes()
    batches = iterate(batcher.dataset(0))
    assert len(batches) == len(batcher) == len(batcher.plan(0))
    for (src, tgt), indices in zip(batches, batcher.plan(0)):
        assert isinstance(src, np.ndarray) and src.dtype == np.int32 and tgt.dtype == np.int32
        assert src.shape == tgt.shape and src.shape in shapes
        length = src.shape[1]
        assert length in batcher.boundaries
        for row, i in enumerate(indices):
            s, t = pairs[i]
            longest = max(len(s), len(t))
            assert longest <= length and not any(longest <= b < length for b in batcher.boundaries)
            assert src[row].tolist() == [*s.tolist(), *[PAD] * (length - len(s))]
            assert tgt[row].tolist() == [*t.tolist(), *[PAD] * (length - len(t))]


def test_batch_tokens_respected():
    batcher = BucketBatcher(random_pairs(), batch_tokens=512, max_len=40)
    for batch, length in batcher.shapes():
        assert batch * length <= 512
    full = {batcher.batch_sizes[k] for k in range(len(batcher.boundaries))}
    assert all(b % 8 == 0 for b in full if b >= 8)


def test_plan_depends_only_on_seed_and_epoch():
    pairs = random_pairs()
    a = BucketBatcher(pairs, batch_tokens=512, max_len=40)
    b = BucketBatcher(pairs, batch_tokens=512, max_len=40)
    same = [x.tolist() for x in a.plan(3)]
    assert same == [x.tolist() for x in b.plan(3)] == [x.tolist() for x in a.plan(3)]
    assert same != [x.tolist() for x in a.plan(4)]
    assert same != [x.tolist() for x in BucketBatcher(pairs, batch_tokens=512, max_len=40, seed=1).plan(3)]
    ordered = BucketBatcher(pairs, batch_tokens=512, max_len=40, shuffle=False)
    assert [x.tolist() for x in ordered.plan(0)] == [x.tolist() for x in ordered.plan(1)]


def test_every_pair_once_per_epoch():
    pairs = random_pairs()
    batcher = BucketBatcher(pairs, batch_tokens=512, max_len=40)
    for epoch in range(3):
        seen = np.concatenate(batcher.plan(epoch))
        assert sorted(seen.tolist()) == list(range(len(pairs)))


def test_drop_remainder_keeps_only_full_batches():
    batcher = BucketBatcher(random_pairs(), batch_tokens=512, max_len=40, drop_remainder=True)
    full = dict(zip(batcher.boundaries, batcher.batch_sizes))
    assert all(batch == full[length] for batch, length in batcher.shapes())
    plan = batcher.plan(0)
    assert len(plan) == len(batcher)
    assert all(len(b) == full[batcher.pad_to[b[0]]] for b in plan)


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_shards_are_disjoint_and_cover_the_plan(drop_remainder):
    pairs = random_pairs()
    kwargs = dict(batch_tokens=512, max_len=40, drop_remainder=drop_remainder)
    whole = BucketBatcher(pairs, **kwargs).plan(2)
    shards = [BucketBatcher(pairs, num_shards=3, shard_id=k, **kwargs) for k in range(3)]
    plans = [s.plan(2) for s in shards]
    assert [len(p) for p in plans] == [len(s) for s in shards]
    ids = [set(np.concatenate(p).tolist()) for p in plans]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    if drop_remainder:
        assert len({len(p) for p in plans}) == 1
        whole = whole[:3 * len(plans[0])]
    assert [b.tolist() for b in whole] == [plans[k % 3][k // 3].tolist() for k in range(len(whole))]


def test_skip_batches_resumes_exactly():
    batcher = BucketBatcher(random_pairs(300), batch_tokens=256, max_len=40)
    full = iterate(batcher.dataset(5))
    resumed = iterate(batcher.dataset(5, skip_batches=7))
    assert len(resumed) == len(full) - 7
    for (s1, t1), (s2, t2) in zip(full[7:], resumed):
        assert np.array_equal(s1, s2) and np.array_equal(t1, t2)
    with pytest.raises(ValueError, match="skip_batches"):
        batcher.dataset(5, skip_batches=len(batcher))


def test_padding_ratio_counts_pad_positions():
    pairs = random_pairs(200)
    batcher = BucketBatcher(pairs, batch_tokens=256, max_len=40)
    pads = total = 0
    for src, tgt in iterate(batcher.dataset(0)):
        pads += int((src == PAD).sum() + (tgt == PAD).sum())
        total += src.size + tgt.size
    assert batcher.padding_ratio(0) == pytest.approx(pads / total)
    fixed = fixed_length_padding_ratio([(np.arange(3), np.arange(5))], length=8)
    assert fixed == pytest.approx(1 - 8 / 16)


def test_batcher_rejects_bad_input():
    with pytest.raises(ValueError, match="max_len"):
        BucketBatcher(random_pairs(max_len=40), max_len=20)
    with pytest.raises(ValueError, match="shard_id"):
        BucketBatcher(random_pairs(), num_shards=2, shard_id=2)
    with pytest.raises(ValueError):
        BucketBatcher([])


def test_real_multi30k_bucketing_beats_fixed_length_padding(multi30k_dir):
    pairs = load_split(multi30k_dir, "train")
    src_vocab = Vocab.build(tokenize(de) for de, _ in pairs)
    tgt_vocab = Vocab.build(tokenize(en) for _, en in pairs)
    encoded = encode_pairs(pairs, src_vocab, tgt_vocab, max_len=128)
    batcher = BucketBatcher(encoded, batch_tokens=4096, max_len=128)
    bucketed, fixed = batcher.padding_ratio(0), fixed_length_padding_ratio(encoded, 32)
    report = f"bucketed padding {bucketed:.1%} (batch_tokens=4096) vs fixed-32 padding {fixed:.1%}"
    assert fixed > 0.5, report
    assert bucketed < 0.2 and bucketed < fixed / 2, report

    start = time.perf_counter()
    batches = iterate(batcher.dataset(0))
    elapsed = time.perf_counter() - start
    assert len(batches) == len(batcher)
    assert {src.shape for src, _ in batches} <= batcher.shapes()
    assert sum(src.shape[0] for src, _ in batches) == len(encoded)
    assert elapsed < 20, f"a full epoch of batches took {elapsed:.1f}s"
