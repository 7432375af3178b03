"""Decoding on a briefly trained tiny model: cache, beam vs greedy, batching, attention, odd inputs."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs
from mindtrans.batching import BucketBatcher
from mindtrans.data import BOS, EOS, PAD, UNK, Vocab, encode_pairs, tokenize
from mindtrans.decode import Translator, beam_search, default_max_new_tokens, greedy_decode, length_penalty
from mindtrans.model import Transformer
from mindtrans.schedule import WarmupSchedule
from mindtrans.steps import make_train_step
from mindtrans.train_config import TrainConfig

MAX_LEN = 32  # the model's max_len: longer inputs are truncated
EPOCHS = 25   # of 4 batches
ALPHA = 0.6


@pytest.fixture(scope="module")
def trained():
    """(model, src_vocab, tgt_vocab, training sources, held-out sources): 100 steps on 64 pairs.

    Trained enough to translate the training sentences and to be unsure about new ones,
    which is where beam search and greedy decoding part ways.
    """
    pairs = [p for p in synthetic_pairs(300, seed=1) if len(tokenize(p[0])) <= 14 and len(tokenize(p[1])) <= 14]
    train_pairs, held_out = pairs[:64], pairs[64:80]
    src_vocab = Vocab.build((tokenize(s) for s, _ in pairs), min_freq=1)
    tgt_vocab = Vocab.build((tokenize(t) for _, t in train_pairs), min_freq=1)
    batcher = BucketBatcher(encode_pairs(train_pairs, src_vocab, tgt_vocab, max_len=16), batch_tokens=16 * 16,
                            boundaries=(16,), max_len=16, shuffle=True, seed=0, drop_remainder=True)
    ms.set_seed(0)
    config = TransformerConfig.preset("tiny", dropout=0.0, max_len=MAX_LEN).with_vocab(len(src_vocab), len(tgt_vocab))
    model = Transformer(config)
    model.set_train(True)
    cfg = TrainConfig(preset="tiny", lr=5e-3, warmup_steps=10, schedule="constant", label_smoothing=0.1)
    optimizer = nn.Adam(model.trainable_params(), learning_rate=WarmupSchedule(cfg.lr, cfg.warmup_steps, "constant"),
                        beta1=0.9, beta2=0.98, eps=1e-9)
    step = make_train_step(model, optimizer, cfg)
    for epoch in range(EPOCHS):
        for indices in batcher.plan(epoch):
            src, tgt = batcher.collate(indices)
            step(ms.Tensor(src), ms.Tensor(tgt))
    model.set_train(False)
    return model, src_vocab, tgt_vocab, [s for s, _ in train_pairs], [s for s, _ in held_out]


def padded(translator, sentences):
    """Sources as one padded (B, L) batch, the way Translator builds them."""
    encoded = [translator.encode(s) for s in sentences]
    src = np.full((len(encoded), max(map(len, encoded))), PAD, dtype=np.int32)
    for row, ids in enumerate(encoded):
        src[row, :len(ids)] = ids
    return src


def uncached_greedy(model, ids, max_new_tokens):
    """Reference: run the decoder on the whole prefix at every step, no cache."""
    memory, src_mask, _ = model.encode(ms.Tensor([ids], ms.int32))
    out = [BOS]
    for _ in range(max_new_tokens):
        logits, _, _ = model.decode(ms.Tensor([out], ms.int32), memory, src_mask)
        token = int(logits[0, -1].asnumpy().argmax())
        if token == EOS:
            break
        out.append(token)
    return out[1:]


def model_scores(model, sources, hyps, alpha):
    """Summed log-probability of each hyp + <eos> under teacher forcing, / length penalty (one padded batch)."""
    width = max(len(ids) for ids in sources)
    src = np.full((len(sources), width), PAD, dtype=np.int32)
    length = max(len(h) for h in hyps) + 1
    tgt = np.full((len(hyps), length + 1), PAD, dtype=np.int32)
    for row, (ids, hyp) in enumerate(zip(sources, hyps)):
        src[row, :len(ids)] = ids
        tgt[row, :len(hyp) + 2] = [BOS, *hyp, EOS]
    logits = model(ms.Tensor(src), ms.Tensor(tgt[:, :-1]))
    log_probs = ops.log_softmax(logits.astype(ms.float32), axis=-1).asnumpy()
    scores = []
    for row, hyp in enumerate(hyps):
        targets = [*hyp, EOS]
        total = float(sum(log_probs[row, j, token] for j, token in enumerate(targets)))
        scores.append(total / length_penalty(len(targets), alpha))
    return np.array(scores)


@pytest.fixture(scope="module")
def decoded(trained):
    """Greedy and beam 3/4 translations (with attention) of 16 training and 10 new sentences, decoded once.

    Returns (sentences, {beam_size: (hyps, attentions)}, {beam_size: model scores}).
    """
    model, src_vocab, tgt_vocab, train_sources, held_out = trained
    translator = Translator(model, src_vocab, tgt_vocab)
    sentences = train_sources[:16] + held_out[:10]
    sources = [translator.encode(s) for s in sentences]
    results = {k: translator.translate_ids(sentences, beam_size=k, alpha=ALPHA, return_attention=True)
               for k in (1, 3, 4)}
    scores = {k: model_scores(model, sources, hyps, ALPHA) for k, (hyps, _) in results.items()}
    return sentences, results, scores


def test_the_model_learned_something(trained, decoded):
    _, _, tgt_vocab, train_sources, _ = trained
    hyps = decoded[1][1][0][:16]
    reference = dict(synthetic_pairs(300, seed=1))
    exact = sum(h == tgt_vocab.encode(tokenize(reference[s])) for h, s in zip(hyps, train_sources[:16]))
    assert exact >= 8, f"only {exact}/16 training sentences translated exactly: the other tests would be vacuous"


def test_cached_greedy_equals_uncached_reference(trained, decoded):
    model, src_vocab, tgt_vocab, train_sources, held_out = trained
    translator = Translator(model, src_vocab, tgt_vocab)
    sentences, results, _ = decoded
    for row in (0, 1, 16, 17, 18):  # two training sentences, three new ones
        ids = translator.encode(sentences[row])
        reference = uncached_greedy(model, ids, default_max_new_tokens(len(ids), MAX_LEN))
        assert results[1][0][row] == reference, sentences[row]
    assert all(len(results[1][0][row]) > 3 for row in (0, 1, 16, 17, 18))


def test_beam_size_1_is_exactly_greedy(trained):
    model, src_vocab, tgt_vocab, train_sources, held_out = trained
    src = padded(Translator(model, src_vocab, tgt_vocab), train_sources[:3] + held_out[:5])
    greedy, greedy_attn = greedy_decode(model, src, return_attention=True)
    beam, beam_attn = beam_search(model, src, beam_size=1, return_attention=True)
    assert beam == greedy
    for a, b in zip(greedy_attn, beam_attn):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_batched_equals_one_by_one(trained, beam_size, monkeypatch):
    """Padding and the batch's other sentences change nothing, the output budget included.

    Regression: the default budget (source length + 50) came from the padded batch width,
    so a short sentence next to a long one could get a longer translation than on its own.
    """
    import mindtrans.decode as decode

    model, src_vocab, tgt_vocab, train_sources, held_out = trained
    # A budget below the real lengths, so that sentences run out of it at different steps (the
    # real one needs a model with max_len > 60 and many slow steps to show the difference).
    monkeypatch.setattr(decode, "default_max_new_tokens", lambda src_len, limit: max(1, src_len - 4))
    sentences = ["Ein Hund.", train_sources[0], held_out[0]]
    one_by_one = Translator(model, src_vocab, tgt_vocab, batch_size=1).translate_ids(sentences, beam_size)
    batched = Translator(model, src_vocab, tgt_vocab, batch_size=64).translate_ids(sentences, beam_size)
    assert batched == one_by_one
    assert len(one_by_one[0]) <= 1 and len(one_by_one[1]) > 1


@pytest.mark.parametrize("beam_size", [3, 4])
def test_beam_search_scores_at_least_as_well_as_greedy_under_the_model(decoded, beam_size):
    """Under the model's own score (summed log-probability / length penalty) beam search beats greedy.

    Not a theorem: the greedy path can fall out of the beam when k other prefixes score
    higher for a while, which happens on sentences the model is unsure of. So: on the
    training sentences, where the model is confident, never worse than greedy; on new
    sentences, better on average.

    Also a regression test: the search used to stop as soon as beam_size hypotheses had
    ended, all of them poor, while a far better one was still alive, and returned one of
    the poor ones (on training sentences that greedy decoding translated correctly).
    """
    sentences, results, scores = decoded
    greedy, beam = results[1][0], results[beam_size][0]
    g_scores, b_scores = scores[1], scores[beam_size]
    worse = [(s, g, b) for s, g, b, gs, bs in zip(sentences[:16], greedy, beam, g_scores, b_scores)
             if bs < gs - 1e-4]
    assert not worse, f"beam {beam_size} scored below greedy on {len(worse)} training sentences: {worse[:2]}"
    assert b_scores[16:].mean() > g_scores[16:].mean()
    assert sum(b != g for g, b in zip(greedy, beam)) > 0  # the search did something


def test_model_scores_match_the_decoders_own_scores(trained, decoded):
    """The scoring helper above agrees with the decoder's per-step log-probabilities."""
    model, src_vocab, tgt_vocab, _, _ = trained
    sentences, results, scores = decoded
    ids = Translator(model, src_vocab, tgt_vocab).encode(sentences[17])
    hyp = results[1][0][17]
    memory, src_mask, _ = model.encode(ms.Tensor([ids], ms.int32))
    logits, _, _ = model.decode(ms.Tensor([[BOS, *hyp]], ms.int32), memory, src_mask)
    log_probs = ops.log_softmax(logits, axis=-1).asnumpy()[0]
    total = sum(float(log_probs[j, t]) for j, t in enumerate([*hyp, EOS]))
    assert scores[1][17] == pytest.approx(total / length_penalty(len(hyp) + 1, ALPHA), abs=1e-4)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_return_attention_shapes(trained, decoded, beam_size):
    model, src_vocab, tgt_vocab, _, _ = trained
    translator = Translator(model, src_vocab, tgt_vocab)
    sentences, results, _ = decoded
    hyps, attns = results[beam_size]
    assert len(hyps) == len(attns) == len(sentences)
    for sentence, hyp, attn in zip(sentences, hyps, attns):
        assert attn.shape == (len(hyp) + 1, len(translator.encode(sentence)))  # a row per token and for <eos>
        assert (attn >= 0).all()
        np.testing.assert_allclose(attn.sum(axis=-1), 1.0, atol=1e-4)  # padding got no weight
    assert len({a.shape[1] for a in attns}) > 1  # sentences of several lengths, batched with padding


def test_empty_and_unknown_inputs_translate(trained):
    model, src_vocab, tgt_vocab, _, _ = trained
    translator = Translator(model, src_vocab, tgt_vocab, max_new_tokens=8)
    assert translator.encode("") == [BOS, EOS]
    assert translator.encode("Xylofonix Quirlbaum Blubbert") == [BOS, UNK, UNK, UNK, EOS]
    for beam_size in (1, 3):
        out = translator.translate(["", "Xylofonix Quirlbaum Blubbert", "   ", "Ein Mann fährt Fahrrad."], beam_size)
        assert len(out) == 4 and all(isinstance(s, str) for s in out)
        assert out[0] == out[2]  # whitespace only is empty too
        assert all(len(tokenize(s)) <= 8 for s in out)


def test_over_long_input_is_truncated_with_a_warning(trained):
    model, src_vocab, tgt_vocab, train_sources, _ = trained
    translator = Translator(model, src_vocab, tgt_vocab, max_new_tokens=6)
    long_sentence = " ".join([train_sources[0].rstrip(".")] * 8) + "."
    assert len(tokenize(long_sentence)) + 2 > MAX_LEN
    with pytest.warns(UserWarning, match=f"truncated to the model's max_len={MAX_LEN}"):
        ids = translator.encode(long_sentence)
    assert len(ids) == MAX_LEN and ids[0] == BOS and ids[-1] == EOS
    with pytest.warns(UserWarning, match="truncated"):
        out = translator.translate([long_sentence, train_sources[1]])
    assert len(out) == 2 and out[0]


def test_invalid_beam_sizes_and_inputs_raise(trained):
    model, src_vocab, tgt_vocab, train_sources, _ = trained
    translator = Translator(model, src_vocab, tgt_vocab)
    for beam_size in (0, -2):
        with pytest.raises(ValueError, match="beam_size must be at least 1"):
            translator.translate([train_sources[0]], beam_size=beam_size)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, padded(translator, train_sources[:1]), beam_size=0)
    with pytest.raises(TypeError, match="list of sentences"):
        translator.translate(train_sources[0])


def test_max_new_tokens_caps_the_output(trained):
    model, src_vocab, tgt_vocab, train_sources, _ = trained
    translator = Translator(model, src_vocab, tgt_vocab, max_new_tokens=3)
    for beam_size in (1, 3):
        hyps = translator.translate_ids(train_sources[:4], beam_size=beam_size)
        assert all(len(h) <= 3 for h in hyps) and any(len(h) == 3 for h in hyps)


def test_the_cache_grows_when_a_translation_outruns_its_first_slots():
    """A 4-token source starts with 4 + SLOT_CHUNK slots: 40 output tokens need more, added on the way."""
    from mindtrans.decode import SLOT_CHUNK

    ms.set_seed(3)
    model = Transformer(TransformerConfig.preset("tiny", max_len=64).with_vocab(50, 40))
    bias = model.generator.bias.asnumpy()
    bias[EOS] = -1e4  # never ends: every decoder runs its whole budget
    model.generator.bias.set_data(ms.Tensor(bias))
    model.set_train(False)
    src = np.array([[BOS, 7, 9, EOS]], dtype=np.int32)
    steps = 40
    assert steps > src.shape[1] + SLOT_CHUNK  # the cache must grow
    hyp = greedy_decode(model, src, max_new_tokens=steps)[0]
    assert len(hyp) == steps
    assert hyp == uncached_greedy(model, src[0].tolist(), steps)
    assert beam_search(model, src, beam_size=1, max_new_tokens=steps)[0] == hyp
