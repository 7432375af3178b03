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


def tokenized_bleu(hypotheses, references, max_n: int = 4) -> float:
    """Corpus BLEU (0-100) of token lists against one reference token list each.

    Clipped n-gram precisions for n = 1..max_n, combined by geometric mean, times the
    brevity penalty exp(min(0, 1 - ref_len / hyp_len)) (Papineni et al., 2002). No smoothing:
    a corpus with no matching 4-gram scores 0.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += len(ref)
        for n in range(1, max_n + 1):
            hyp_counts, ref_counts = _ngrams(hyp, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(c, ref_counts[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = min(0.0, 1.0 - ref_len / hyp_len)
    return 100.0 * math.exp(log_precision + brevity)


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
