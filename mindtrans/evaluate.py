"""Score a trained bundle on parallel text: sacreBLEU (cased, the headline), tokenized
lowercased BLEU (the tutorials' figure), loss and perplexity."""
import time
import warnings

from mindtrans.batching import BucketBatcher
from mindtrans.data import encode_pairs, load_split, read_parallel, tokenize
from mindtrans.decode import DEFAULT_ALPHA, DEFAULT_BEAM
from mindtrans.metrics import perplexity, sacrebleu_score, sacrebleu_signature, tokenized_bleu
from mindtrans.steps import validation_loss


def evaluate_bundle(bundle, data_dir, split: str = "test2016", corpus: str = "multi30k",
                    beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA, limit: int = None) -> dict:
    """Translate every sentence of `split` (or the first `limit`) and score the output."""
    _check_limit(limit)
    pairs = load_split(data_dir, split, corpus=corpus)[:limit]
    return {"split": split, "corpus": corpus, **score_pairs(bundle, pairs, beam_size, alpha)}


def evaluate_files(bundle, src_path, ref_path, beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA,
                   limit: int = None) -> dict:
    """The same for any parallel text: `src_path` (German) against `ref_path` (its English), line by line."""
    _check_limit(limit)
    pairs = read_parallel(src_path, ref_path)[:limit]
    lone = [number for number, (src, ref) in enumerate(pairs, 1) if not src and ref]
    if lone:  # scored as sacreBLEU would (an empty translation), but more likely a misalignment
        warnings.warn(f"{len(lone)} blank line(s) of {src_path} face a reference in {ref_path} (the first: line "
                      f"{lone[0]}): are the two files aligned?", stacklevel=2)
    return {"split": str(src_path), "reference": str(ref_path), **score_pairs(bundle, pairs, beam_size, alpha)}


def score_pairs(bundle, pairs, beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA) -> dict:
    """Translate the sources of `pairs` and score them against their targets.

    Returns the figures and "hypotheses": the translations, as `translate` prints them.
    """
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    started = time.time()
    ids = bundle.translator().translate_ids(sources, beam_size=beam_size, alpha=alpha)
    seconds = time.time() - started
    vocab = bundle.tgt_vocab
    hypotheses = [vocab.decode_text(h) for h in ids]
    encoded = encode_pairs(pairs, bundle.src_vocab, vocab, max_len=bundle.config.max_len)
    loss = validation_loss(bundle.model, BucketBatcher(encoded, max_len=bundle.config.max_len, shuffle=False))
    bundle.model.set_train(False)
    return {
        "sentences": len(pairs), "beam_size": beam_size, "alpha": alpha,
        "sacrebleu": sacrebleu_score(hypotheses, references), "sacrebleu_signature": sacrebleu_signature(),
        "bleu_tokenized": tokenized_bleu([vocab.words(h) for h in ids], [tokenize(r) for r in references]),
        "loss": loss["loss"], "ppl": perplexity(loss["loss"]), "translate_seconds": seconds,
        "hypotheses": hypotheses,
    }


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number of at least 1 (or None: every sentence), got {limit!r}")
