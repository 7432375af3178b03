"""Translation quality: BLEU two ways, and perplexity.

* `sacrebleu_score`: sacreBLEU on detokenized text against the raw references, the
  standard, comparable figure.
* `tokenized_bleu`: corpus BLEU-4 on lowercased tokens, the figure the original
  MindSpore lesson and the common PyTorch tutorials report (torchtext's `bleu_score`),
  so results can be compared with theirs.
"""
import math
from collections import Counter


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def sentence_statistics(hypothesis, reference, max_n: int = 4) -> list:
    """BLEU's sufficient statistics of one sentence: [hyp length, ref length, clipped matches
    of n = 1..max_n, hypothesis n-grams of n = 1..max_n]; corpus BLEU sums them."""
    matches = []
    for n in range(1, max_n + 1):
        reference_counts = _ngrams(reference, n)
        matches.append(sum(min(c, reference_counts[g]) for g, c in _ngrams(hypothesis, n).items()))
    totals = [max(len(hypothesis) - n + 1, 0) for n in range(1, max_n + 1)]
    return [len(hypothesis), len(reference), *matches, *totals]


def bleu_from_statistics(sums) -> float:
    """Corpus BLEU (0-100) from summed `sentence_statistics`."""
    hyp_len, ref_len = sums[0], sums[1]
    max_n = (len(sums) - 2) // 2
    matches, totals = sums[2:2 + max_n], sums[2 + max_n:]
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = min(0.0, 1.0 - ref_len / hyp_len)
    return 100.0 * math.exp(log_precision + brevity)


def _statistics(hypotheses, references, max_n: int) -> list:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return [sentence_statistics(h, r, max_n) for h, r in zip(hypotheses, references)]


def tokenized_bleu(hypotheses, references, max_n: int = 4) -> float:
    """Corpus BLEU (0-100) of token lists against one reference token list each.

    Clipped n-gram precisions for n = 1..max_n, combined by geometric mean, times the
    brevity penalty exp(min(0, 1 - ref_len / hyp_len)) (Papineni et al., 2002). No smoothing:
    a corpus with no matching 4-gram scores 0.
    """
    stats = _statistics(hypotheses, references, max_n)
    return bleu_from_statistics([sum(column) for column in zip(*stats)] if stats else [0] * (2 + 2 * max_n))


def paired_bootstrap(hypotheses_a, hypotheses_b, references, samples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict:
    """Tokenized BLEU of systems A and B on the same sentences, and a confidence interval of B - A.

    Paired bootstrap resampling (Koehn, 2004): draw the test sentences with replacement
    `samples` times, score both systems on each draw, and take the central `confidence` range
    of the differences. An interval that contains 0 means the test set cannot tell them apart.
    Returns {"a", "b", "difference", "low", "high", "b_better"} (b_better: the share of draws
    where B scores higher).
    """
    import numpy as np

    stats_a = np.array(_statistics(hypotheses_a, references, 4), dtype=np.float64)
    stats_b = np.array(_statistics(hypotheses_b, references, 4), dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(references), size=(samples, len(references)))
    differences = np.array([bleu_from_statistics(stats_b[d].sum(0)) - bleu_from_statistics(stats_a[d].sum(0))
                            for d in draws])
    tail = 100 * (1 - confidence) / 2
    a, b = bleu_from_statistics(stats_a.sum(0)), bleu_from_statistics(stats_b.sum(0))
    return {"a": a, "b": b, "difference": b - a, "low": float(np.percentile(differences, tail)),
            "high": float(np.percentile(differences, 100 - tail)), "b_better": float(np.mean(differences > 0))}


def sacrebleu_score(hypotheses, references) -> float:
    """sacreBLEU (13a tokenization, cased) of detokenized strings against raw reference strings."""
    import sacrebleu

    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score


def sacrebleu_signature() -> str:
    """sacreBLEU's signature of `sacrebleu_score`'s settings, e.g. nrefs:1|case:mixed|eff:no|tok:13a|..."""
    import sacrebleu

    bleu = sacrebleu.BLEU()
    bleu.corpus_score(["a"], [["a"]])  # the signature is only known once the metric has run
    return str(bleu.get_signature())


def perplexity(mean_nll: float) -> float:
    """exp(mean negative log-likelihood per token)."""
    return math.exp(min(mean_nll, 700.0))
