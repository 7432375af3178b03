"""BLEU on token lists against sacreBLEU (same quantity: no tokenization, no smoothing), and perplexity."""
import math

import numpy as np
import pytest
import sacrebleu
from sacrebleu.metrics import BLEU

from mindtrans.data import tokenize
from mindtrans.metrics import perplexity, sacrebleu_score, tokenized_bleu


def reference_bleu(hyps, refs, max_n=4):
    """sacreBLEU on the space-joined tokens: tokenize="none" keeps our tokens as they are,
    smooth_method="none" makes a missing n-gram order give 0 as in `tokenized_bleu`, and
    force=True silences its warning about already tokenized input."""
    metric = BLEU(tokenize="none", smooth_method="none", force=True, max_ngram_order=max_n)
    return metric.corpus_score([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]]).score


def toks(*sentences):
    return [tokenize(s) for s in sentences]


EXAMPLES = {
    "one sentence": (toks("the cat sat on the mat ."), toks("the cat sat on a mat .")),
    "corpus of three": (
        toks("a man rides a bike .", "two dogs play in the snow .", "a woman sits on a red bench ."),
        toks("a man is riding a bicycle .", "two dogs play in the snow .", "a woman sits on a bench ."),
    ),
    "brevity penalty": (  # hypotheses much shorter than the references
        toks("a man rides .", "two dogs play ."),
        toks("a man rides a red bike in the park .", "two dogs play in the deep snow ."),
    ),
    "longer hypothesis, no penalty": (
        toks("a man rides a red bike in the big park today ."),
        toks("a man rides a red bike in the park ."),
    ),
    "clipped counts": (toks("the the the the the the the ."), toks("the cat is on the mat .")),
    "zero 4-gram matches": (  # unigrams to trigrams match, no 4-gram does
        toks("a man rides x a dog runs y a cat sits"),
        toks("a man rides z a dog runs w a cat sits"),
    ),
    "an empty hypothesis in the corpus": (
        [[], *toks("two dogs play in the snow .")],
        toks("a man rides a bike .", "two dogs play in the white snow ."),
    ),
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_tokenized_bleu_equals_sacrebleu_without_tokenization_or_smoothing(name):
    hyps, refs = EXAMPLES[name]
    ours = tokenized_bleu(hyps, refs)
    assert ours == pytest.approx(reference_bleu(hyps, refs), abs=1e-9)
    assert 0.0 <= ours <= 100.0


def test_the_examples_cover_the_edge_cases():
    """Guard the examples themselves: the penalty, zero and clipping cases really are what they claim."""
    assert tokenized_bleu(*EXAMPLES["zero 4-gram matches"]) == 0.0
    assert tokenized_bleu(*EXAMPLES["zero 4-gram matches"], max_n=3) > 0.0
    # with sacreBLEU's default exponential smoothing the zero 4-gram case would not be 0: a different quantity
    hyps, refs = EXAMPLES["zero 4-gram matches"]
    assert sacrebleu.corpus_bleu([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]],
                                 tokenize="none", force=True).score > 0.0
    def brevity_penalty(name):
        hyps, refs = EXAMPLES[name]
        metric = BLEU(tokenize="none", smooth_method="none", force=True)
        return metric.corpus_score([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]]).bp

    assert brevity_penalty("brevity penalty") < 0.5
    assert brevity_penalty("longer hypothesis, no penalty") == 1.0


def test_brevity_penalty_by_hand():
    # every n-gram of the hypothesis is in the reference: precision 1, BLEU = BP = exp(1 - 8/4)
    hyp, ref = ["a", "b", "c", "d"], ["a", "b", "c", "d", "e", "f", "g", "h"]
    assert tokenized_bleu([hyp], [ref]) == pytest.approx(100 * math.exp(1 - 8 / 4))


@pytest.mark.parametrize("max_n", [1, 2, 3])
def test_lower_orders_equal_sacrebleu(max_n):
    hyps, refs = EXAMPLES["corpus of three"]
    assert tokenized_bleu(hyps, refs, max_n=max_n) == pytest.approx(reference_bleu(hyps, refs, max_n), abs=1e-9)


def test_random_corpora_equal_sacrebleu():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(6)]  # a tiny vocabulary: many n-gram matches and repeats
    for _ in range(20):
        n = int(rng.integers(1, 6))
        hyps = [list(rng.choice(words, size=int(rng.integers(0, 12)))) for _ in range(n)]
        refs = [list(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(n)]
        assert tokenized_bleu(hyps, refs) == pytest.approx(reference_bleu(hyps, refs), abs=1e-9)


def test_perfect_match_is_100_and_nothing_is_0():
    refs = toks("a man rides a bike .", "two dogs play in the snow .")
    assert tokenized_bleu(refs, refs) == pytest.approx(100.0)
    assert tokenized_bleu([[], []], refs) == 0.0
    assert tokenized_bleu([["zebra"] * 6, ["zebra"] * 7], refs) == 0.0


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        tokenized_bleu([["a"], ["b"]], [["a"]])


def test_sacrebleu_score_is_standard_sacrebleu():
    hyps = ["A man rides a bike.", "Two dogs play in the snow."]
    refs = ["A man is riding a bike.", "Two dogs play in the snow."]
    assert sacrebleu_score(hyps, refs) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert sacrebleu_score(refs, refs) == pytest.approx(100.0)


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(7.0)) == pytest.approx(7.0)
    assert math.isfinite(perplexity(1e6))  # capped, no OverflowError


def test_paired_bootstrap_interval_brackets_the_difference_and_separates_clear_cases():
    from mindtrans.metrics import paired_bootstrap

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    refs = [list(rng.choice(words, size=12)) for _ in range(300)]
    good = [r[:] for r in refs]
    for hyp in good[::3]:
        hyp[rng.integers(12)] = "oops"           # one wrong word in a third of the sentences
    bad = [r[:6] + ["oops"] * 6 for r in refs]   # half of every sentence wrong
    result = paired_bootstrap(bad, good, refs, samples=200)
    assert result["a"] == pytest.approx(tokenized_bleu(bad, refs))
    assert result["b"] == pytest.approx(tokenized_bleu(good, refs))
    assert result["low"] <= result["difference"] <= result["high"]
    assert result["low"] > 0 and result["b_better"] == 1.0        # clearly better: the interval excludes 0
    same = paired_bootstrap(good, good, refs, samples=50)
    assert same["low"] == same["high"] == same["difference"] == 0.0
    near = [r[:] for r in refs]
    for hyp in near[1::3]:
        hyp[rng.integers(12)] = "oops"           # as good as `good`, on other sentences
    tie = paired_bootstrap(good, near, refs, samples=300)
    assert tie["low"] < 0 < tie["high"]        # indistinguishable: the interval contains 0
