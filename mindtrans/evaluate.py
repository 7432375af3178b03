"""Score a trained bundle on a whole split: BLEU (both ways), loss and perplexity."""
import time

from mindtrans.batching import BucketBatcher
from mindtrans.data import detokenize, encode_pairs, load_split, tokenize
from mindtrans.decode import DEFAULT_ALPHA, DEFAULT_BEAM
from mindtrans.metrics import perplexity, sacrebleu_score, tokenized_bleu
from mindtrans.steps import validation_loss


def evaluate_bundle(bundle, data_dir, split: str = "test2016", corpus: str = "multi30k",
                    beam_size: int = DEFAULT_BEAM, alpha: float = DEFAULT_ALPHA, limit: int = None) -> dict:
    """Translate every sentence of `split` (or the first `limit`) and score the output."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a whole number of at least 1 (or None: every sentence), got {limit!r}")
    pairs = load_split(data_dir, split, corpus=corpus)[:limit]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    translator = bundle.translator()
    started = time.time()
    ids = translator.translate_ids(sources, beam_size=beam_size, alpha=alpha)
    seconds = time.time() - started
    hyp_tokens = [bundle.tgt_vocab.decode(h) for h in ids]
    encoded = encode_pairs(pairs, bundle.src_vocab, bundle.tgt_vocab, max_len=bundle.config.max_len)
    loss = validation_loss(bundle.model, BucketBatcher(encoded, max_len=bundle.config.max_len, shuffle=False))
    bundle.model.set_train(False)
    return {
        "split": split, "corpus": corpus, "sentences": len(pairs), "beam_size": beam_size, "alpha": alpha,
        "bleu_tokenized": tokenized_bleu(hyp_tokens, [tokenize(r) for r in references]),
        "sacrebleu": sacrebleu_score([detokenize(t) for t in hyp_tokens], references),
        "loss": loss["loss"], "ppl": perplexity(loss["loss"]), "translate_seconds": seconds,
    }
