"""Label-smoothed cross-entropy that ignores padding."""
import mindspore as ms
from mindspore import ops


def label_smoothed_nll(logits, labels, smoothing: float, pad_id: int):
    """Summed losses over the real (non-pad) target tokens.

    logits (..., V), labels (...) ids, e.g. (B, L, V) and (B, L). With smoothing eps the target distribution
    puts 1 - eps on the gold token and eps spread uniformly over the vocabulary:
    loss = (1 - eps) * -log p(gold) + eps * mean_v(-log p(v)).
    Returns (smoothed loss sum, plain NLL sum, number of real tokens), float32 scalars;
    divide by the token count for per-token means (the NLL mean gives perplexity).
    """
    # One row per position: on CPU, reductions over the last axis of 2-D input are ~2x faster than of 3-D.
    labels = labels.reshape(-1)
    logp = ops.log_softmax(logits.reshape(-1, logits.shape[-1]).astype(ms.float32), axis=-1)
    nll = -ops.gather_elements(logp, -1, labels.expand_dims(-1)).squeeze(-1)
    mask = (labels != pad_id).astype(ms.float32)
    nll_sum = (nll * mask).sum()
    if smoothing > 0:
        uniform = -logp.sum(axis=-1) / logp.shape[-1]  # a mean; ReduceSum is far faster than ReduceMean on CPU
        loss_sum = ((1.0 - smoothing) * nll * mask + smoothing * uniform * mask).sum()
    else:
        loss_sum = nll_sum
    return loss_sum, nll_sum, mask.sum()
