"""Where a Transformer's parameters are: counted on a model, and worked out on paper.

Every function here returns the same kind of dict, a *breakdown*::

    {"embeddings": ..., "attention": ..., "ffn": ..., "norms": ..., "output": ..., "total": ...}

with `total` the sum of the five groups. Notation used in the formulas below:

    d  = d_model            f  = d_ff              V_src, V_tgt, V = vocabulary sizes
    N_enc, N_dec, N = number of layers              T  = context length (positions)

The building blocks (a Dense layer from a to b has a*b weights and b biases):

    one attention block    4 (d^2 + d)     Q, K, V and output projections, d -> d each.
                                           The number of heads does not matter: the heads
                                           split d, they do not multiply it. Fusing Q/K/V
                                           into one d -> 3d matrix does not change it either.
    one feed-forward net   2 d f + f + d   Dense(d, f) then Dense(f, d).
    one norm               2 d             LayerNorm: gain and bias per feature;
                           d               RMSNorm: gain only.

Nothing is counted for sinusoidal positions: that table is computed, not learned.
"""
from mindtrans.config import TransformerConfig

GROUPS = ("embeddings", "attention", "ffn", "norms", "output")

# A parameter's name is its path in the model, e.g. "decoder.layers.0.cross_attn.kv_proj.weight".
# It belongs to the group whose marker is one of the path's dot-separated components.
_MARKERS = {
    "embeddings": {"embed"},
    "attention": {"self_attn", "cross_attn"},
    "ffn": {"ffn"},
    "norms": {"norm", "final_norm"},
    "output": {"generator"},
}


def _breakdown(**groups) -> dict:
    counts = {group: int(groups.get(group, 0)) for group in GROUPS}
    counts["total"] = sum(counts.values())
    return counts


def classify(name: str) -> str:
    """The group of the parameter called `name` (its path in the model).

    Raises ValueError when no group, or more than one, claims the name: a new kind of
    layer then needs a marker in `_MARKERS` (and a term in `estimate_parameters`).
    """
    parts = set(name.split("."))
    groups = [group for group, markers in _MARKERS.items() if parts & markers]
    if len(groups) != 1:
        problem = "no group" if not groups else f"several groups {groups}"
        raise ValueError(f"parameter {name!r} matches {problem}; every parameter must land in exactly one of "
                         f"{GROUPS}: add its path component to mindtrans.params._MARKERS")
    return groups[0]


def count_parameters(model) -> dict:
    """Count the trainable parameters of `model` (a MindSpore Cell), by group.

    A parameter shared between two places (tied weights) is counted once. With
    `tie_embeddings=True` the `Transformer` has no separate output matrix at all: the
    logits are computed with the target embedding table, so "output" is 0.
    """
    counts = dict.fromkeys(GROUPS, 0)
    seen = set()
    for name, param in model.parameters_and_names():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        counts[classify(name)] += param.size
    breakdown = _breakdown(**counts)
    total = sum(p.size for p in {id(p): p for p in model.trainable_params()}.values())
    assert breakdown["total"] == total, (
        f"groups add up to {breakdown['total']} but the model has {total} trainable parameters")
    return breakdown


def estimate_parameters(config: TransformerConfig) -> dict:
    """The breakdown of `Transformer(config)`, from its sizes alone.

        embeddings = (V_src + V_tgt) d                    one table per language
                   = V d with share_embeddings            (one joint table)
        attention  = (N_enc + 2 N_dec) * 4 (d^2 + d)      encoder: self-attention;
                                                          decoder: self- and cross-attention
        ffn        = (N_enc + N_dec) * (2 d f + f + d)
        norms      = (2 N_enc + 3 N_dec + final) * n      one per residual sublayer, plus
                                                          final = 2 for Pre-LN (norm_first:
                                                          one after each stack), else 0;
                                                          n = 2d (LayerNorm) or d (RMSNorm)
        output     = d V_tgt + V_tgt                      Dense(d, V_tgt) generator, or
                   = 0 with tie_embeddings                (reuses the target embedding)

    The result equals `count_parameters(Transformer(config))` exactly.
    """
    c = config
    d, f = c.d_model, c.d_ff
    attention_block = 4 * (d * d + d)
    ffn_block = 2 * d * f + f + d
    norm = 2 * d if c.norm == "layernorm" else d
    final_norms = 2 if c.norm_first else 0
    return _breakdown(
        embeddings=(0 if c.share_embeddings else c.src_vocab_size) * d + c.tgt_vocab_size * d,
        attention=(c.n_encoder_layers + 2 * c.n_decoder_layers) * attention_block,
        ffn=(c.n_encoder_layers + c.n_decoder_layers) * ffn_block,
        norms=(2 * c.n_encoder_layers + 3 * c.n_decoder_layers + final_norms) * norm,
        output=0 if c.tie_embeddings else d * c.tgt_vocab_size + c.tgt_vocab_size,
    )


def estimate_decoder_only(n_layers: int, d_model: int, vocab_size: int, context: int, d_ff: int = None,
                          tie_embeddings: bool = True, learned_positions: bool = True) -> dict:
    """The breakdown of a GPT-style decoder-only model (no cross-attention, no encoder).

    Each of the N layers has masked self-attention and a feed-forward net, each behind
    a LayerNorm (Pre-LN, as GPT-2/3), and one more LayerNorm follows the stack:

        embeddings = V d + T d         tokens, plus learned positions (T d, if learned_positions)
        attention  = N * 4 (d^2 + d)
        ffn        = N * (2 d f + f + d)          f = d_ff, by default 4 d
        norms      = (2 N + 1) * 2 d
        output     = 0 if tied, else V d          GPT's output layer has no bias

    With f = 4d the FFN holds about 8 d^2 per layer against attention's 4 d^2: twice as
    many. Per layer that is ~12 d^2, so big models are ~12 N d^2, and the embeddings
    (linear in d) become a rounding error: GPT-3 (N=96, d=12288) has ~174.6 billion
    parameters, of which the embeddings are ~0.4%.
    """
    for name, value in (("n_layers", n_layers), ("d_model", d_model), ("vocab_size", vocab_size),
                        ("context", context)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    d = d_model
    f = 4 * d if d_ff is None else d_ff
    return _breakdown(
        embeddings=vocab_size * d + (context * d if learned_positions else 0),
        attention=n_layers * 4 * (d * d + d),
        ffn=n_layers * (2 * d * f + f + d),
        norms=(2 * n_layers + 1) * 2 * d,
        output=0 if tie_embeddings else vocab_size * d,
    )


def format_breakdown(breakdown: dict) -> str:
    """A text table of a breakdown: group, count, share of the total in percent.

    >>> print(format_breakdown(estimate_parameters(TransformerConfig.preset("tiny"))))
    group         count   share
    embeddings   64,000   45.8%
    attention    25,344   18.1%
    ffn          16,768   12.0%
    norms           640    0.5%
    output       33,000   23.6%
    total       139,752  100.0%
    """
    total = breakdown["total"]
    width = max(len(f"{total:,}"), len("count"))
    lines = [f"{'group':<10}  {'count':>{width}}  {'share':>6}"]
    for group in GROUPS:
        count = breakdown.get(group, 0)
        share = 100.0 * count / total if total else 0.0
        lines.append(f"{group:<10}  {count:>{width},}  {share:>5.1f}%")
    lines.append(f"{'total':<10}  {total:>{width},}  {100.0 if total else 0.0:>5.1f}%")
    return "\n".join(lines)
