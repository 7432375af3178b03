"""The whole Transformer: what the masks guarantee, cached decoding, gradients, PyNative vs graph."""
import dataclasses

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindtrans.model import Transformer

TOL = 1e-5
PAD = 1
VARIANTS = {  # name -> overrides of the tiny_config fixture
    "post_ln": {},
    "pre_ln_rms_unfused_tied_gelu": dict(norm_first=True, norm="rmsnorm", fused_qkv=False, tie_embeddings=True,
                                         activation="gelu"),
}


def ids(array):
    return ms.Tensor(np.asarray(array), ms.int32)


def build(config, **overrides):
    ms.set_seed(0)
    model = Transformer(dataclasses.replace(config, **overrides))
    model.set_train(False)
    return model


def make_batch(config, rng, src_len=7, tgt_len=6, batch=3):
    """Source ids with padding at the end of rows 0 and 1; target ids without padding.

    Real tokens are drawn from [2, V): never the pad id (1).
    """
    src = rng.integers(2, config.src_vocab_size, size=(batch, src_len))
    src[0, 4:] = PAD
    src[1, 6:] = PAD
    tgt = rng.integers(2, config.tgt_vocab_size, size=(batch, tgt_len))
    return src, tgt


def max_diff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# --------------------------------------------------------------------------- shapes
def test_forward_shapes_and_tied_projection(tiny_config):
    rng = np.random.default_rng(0)
    src, tgt = make_batch(tiny_config, rng)
    untied = build(tiny_config)
    assert untied(ids(src), ids(tgt)).shape == (3, 6, tiny_config.tgt_vocab_size)
    tied = build(tiny_config, tie_embeddings=True)
    assert tied.generator is None
    assert not any("generator" in p.name for p in tied.trainable_params())
    memory, src_mask, enc_weights = tied.encode(ids(src))
    assert memory.shape == (3, 7, 32) and src_mask.shape == (3, 1, 1, 7)
    assert len(enc_weights) == 2 and enc_weights[0].shape == (3, 4, 7, 7)
    hidden, _, cross_weights = tied.decoder(ids(tgt), memory, src_mask)
    logits = tied(ids(src), ids(tgt)).asnumpy()
    table = tied.decoder.embed.weight.asnumpy()
    assert max_diff(logits, hidden.asnumpy() @ table.T) <= TOL
    assert cross_weights[-1].shape == (3, 4, 6, 7)


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("variant", ["post_ln", "pre_ln_rms_unfused_tied_gelu"])
def test_padded_source_positions_change_nothing(tiny_config, variant):
    """Whatever token sits behind a padded (masked) source position, real positions see the same."""
    model = build(tiny_config, **VARIANTS[variant])
    rng = np.random.default_rng(1)
    src, tgt = make_batch(tiny_config, rng)
    memory, src_mask, _ = model.encode(ids(src))
    logits, _, _ = model.decode(ids(tgt), memory, src_mask)
    real = src != PAD

    # other tokens behind the padded positions, the mask kept as it was
    src2 = src.copy()
    src2[~real] = rng.integers(2, tiny_config.src_vocab_size, size=int((~real).sum()))
    memory2, _ = model.encoder(ids(src2), src_mask)
    assert max_diff(memory2.asnumpy()[real], memory.asnumpy()[real]) <= TOL
    assert max_diff(memory2.asnumpy()[~real], memory.asnumpy()[~real]) > 1e-3  # they did change
    logits2, _, _ = model.decode(ids(tgt), memory2, src_mask)
    assert max_diff(logits2.asnumpy(), logits.asnumpy()) <= TOL

    # another vector behind the pad token itself, through the full model
    table = model.encoder.embed.weight
    new_table = table.asnumpy().copy()
    new_table[PAD] = rng.normal(size=new_table.shape[1]) * 5
    table.set_data(ms.Tensor(new_table))
    assert max_diff(model(ids(src), ids(tgt)).asnumpy(), logits.asnumpy()) <= TOL

    # the test can fail: a real source token does matter
    src3 = src.copy()
    src3[0, 1] = 2 if src[0, 1] != 2 else 3
    assert max_diff(model(ids(src3), ids(tgt)).asnumpy()[0], logits.asnumpy()[0]) > 1e-3


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln_rms_unfused_tied_gelu"])
def test_future_target_tokens_change_no_earlier_output(tiny_config, variant):
    """Row b of the batch gets another token at position b+1: positions 0..b must not notice."""
    model = build(tiny_config, **VARIANTS[variant])
    rng = np.random.default_rng(2)
    src, tgt = make_batch(tiny_config, rng, tgt_len=6, batch=5)
    memory, src_mask, _ = model.encode(ids(src))

    def decoder_outputs(tokens):
        hidden = model.decoder(ids(tokens), memory, src_mask)[0]
        return hidden.asnumpy(), model.project(hidden).asnumpy()

    hidden, logits = decoder_outputs(tgt)
    changed = tgt.copy()
    for b in range(5):
        k = b + 1
        changed[b, k] = (tgt[b, k] - 2 + 1) % (tiny_config.tgt_vocab_size - 2) + 2  # another real token
    hidden2, logits2 = decoder_outputs(changed)
    for b in range(5):
        k = b + 1
        assert max_diff(hidden2[b, :k], hidden[b, :k]) <= TOL, f"a position before {k} saw token {k}"
        assert max_diff(logits2[b, :k], logits[b, :k]) <= TOL, f"a position before {k} saw token {k}"
        assert max_diff(logits2[b, k], logits[b, k]) > 1e-3  # position k itself does see it
    assert max_diff(logits, model(ids(src), ids(tgt)).asnumpy()) <= TOL  # the same path as a forward pass


# --------------------------------------------------------------------------- cached decoding
@pytest.mark.parametrize("variant", ["post_ln", "pre_ln_rms_unfused_tied_gelu"])
def test_cached_step_by_step_decoding_equals_full_decoding(tiny_config, variant):
    model = build(tiny_config, **VARIANTS[variant])
    rng = np.random.default_rng(3)
    src, tgt = make_batch(tiny_config, rng)
    memory, src_mask, _ = model.encode(ids(src))
    full, _, full_weights = model.decode(ids(tgt), memory, src_mask)
    cache, steps = None, []
    for t in range(tgt.shape[1]):
        logits, cache, weights = model.decode(ids(tgt[:, t:t + 1]), memory, src_mask, cache)
        assert logits.shape == (3, 1, tiny_config.tgt_vocab_size)
        assert len(cache) == tiny_config.n_decoder_layers
        self_k, self_v, cross_k, cross_v = cache[0]
        assert self_k.shape == self_v.shape == (3, 4, t + 1, 8)  # grows by one position per step
        assert cross_k.shape == cross_v.shape == (3, 4, 7, 8)  # the projected memory, computed once
        steps.append(logits.asnumpy())
        assert max_diff(weights[-1].asnumpy()[:, :, 0], full_weights[-1].asnumpy()[:, :, t]) <= TOL
    assert max_diff(np.concatenate(steps, axis=1), full.asnumpy()) <= TOL


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln_rms_unfused_tied_gelu"])
@pytest.mark.parametrize("compiled", [False, True])
def test_fixed_slot_cache_decoding_equals_full_decoding(tiny_config, variant, compiled):
    """The cache of `init_cache` (written at `position`, shapes fixed) gives the same logits,
    eagerly and as the compiled step the decoders use; stale slots beyond `position` are ignored."""
    from mindtrans.step_graph import decode_step

    model = build(tiny_config, **VARIANTS[variant])
    model.set_train(False)
    src, tgt = make_batch(tiny_config, np.random.default_rng(3))
    memory, src_mask, _ = model.encode(ids(src))
    full, _, full_weights = model.decode(ids(tgt), memory, src_mask)
    slots = tgt.shape[1] + 3
    cache = model.decoder.init_cache(memory, slots)
    cache = tuple((ops.ones_like(k) * 7.0, ops.ones_like(v) * -7.0, ck, cv) for k, v, ck, cv in cache)  # garbage
    flat = tuple(t for layer in cache for t in layer)
    step = decode_step(model)
    rows = ids(np.arange(src.shape[0]))
    for t in range(tgt.shape[1]):
        position = ms.Tensor(t, ms.int32)
        if compiled:
            log_probs, flat, attention = step(ids(tgt[:, t:t + 1]), src_mask, ms.mutable(flat), position, rows)
            expected = ops.log_softmax(full[:, t], axis=-1).asnumpy()
            assert max_diff(log_probs.asnumpy(), expected) <= TOL
            assert max_diff(attention.asnumpy(), full_weights[-1].asnumpy()[:, :, t].mean(axis=1)) <= TOL
            assert flat[0].shape == (3, 4, slots, 8)
        else:
            logits, cache, _ = model.decode(ids(tgt[:, t:t + 1]), None, src_mask, cache, position)
            assert cache[0][0].shape == (3, 4, slots, 8)  # the same shape at every step
            assert max_diff(logits.asnumpy()[:, 0], full.asnumpy()[:, t]) <= TOL


def test_cached_decoding_can_start_from_a_prefix(tiny_config):
    """Decode a prefix of 4 at once, then 2 more positions in one call: same as all 6 together."""
    model = build(tiny_config, norm_first=True)
    src, tgt = make_batch(tiny_config, np.random.default_rng(4))
    memory, src_mask, _ = model.encode(ids(src))
    full = model.decode(ids(tgt), memory, src_mask)[0].asnumpy()
    first, cache, _ = model.decode(ids(tgt[:, :4]), memory, src_mask)
    rest, cache, _ = model.decode(ids(tgt[:, 4:]), memory, src_mask, cache)
    assert max_diff(np.concatenate([first.asnumpy(), rest.asnumpy()], axis=1), full) <= TOL


# --------------------------------------------------------------------------- max_len
def test_inputs_longer_than_max_len_raise(tiny_config):
    model = build(tiny_config, max_len=8)
    ok_src, ok_tgt = ids(np.full((1, 8), 5)), ids(np.full((1, 8), 5))
    assert model(ok_src, ok_tgt).shape == (1, 8, tiny_config.tgt_vocab_size)
    with pytest.raises(ValueError, match="sequence of 9 positions is longer than max_len=8"):
        model(ids(np.full((1, 9), 5)), ok_tgt)
    with pytest.raises(ValueError, match="sequence of 9 positions is longer than max_len=8"):
        model(ok_src, ids(np.full((1, 9), 5)))
    memory, src_mask, _ = model.encode(ok_src)
    _, cache, _ = model.decode(ok_tgt, memory, src_mask)
    with pytest.raises(ValueError, match="sequence of 9 positions is longer than max_len=8"):
        model.decode(ids([[5]]), memory, src_mask, cache)  # a 9th step with the cache


# --------------------------------------------------------------------------- training step
def loss_function(model, pad_id):
    def loss_fn(src, tgt_in, tgt_out):
        logits = model(src, tgt_in)
        return ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=pad_id)
    return loss_fn


def train_step(model, pad_id, learning_rate=0.05):
    """One SGD step: returns step(src, tgt_in, tgt_out) -> (loss before the update, gradients)."""
    optimizer = nn.SGD(model.trainable_params(), learning_rate=learning_rate)
    grad_fn = ms.value_and_grad(loss_function(model, pad_id), None, optimizer.parameters)

    def step(src, tgt_in, tgt_out):
        loss, grads = grad_fn(src, tgt_in, tgt_out)
        optimizer(grads)
        return loss, grads
    return step


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln_rms_unfused_tied_gelu"])
def test_training_step_reaches_every_parameter_in_pynative_and_graph_mode(tiny_config, variant):
    overrides = VARIANTS[variant]
    model = build(tiny_config, **overrides)
    twin = build(tiny_config, **overrides)  # same architecture, weights copied: the graph-mode run
    for mine, theirs in zip(model.trainable_params(), twin.trainable_params()):
        assert mine.name == theirs.name
        theirs.set_data(ms.Tensor(mine.asnumpy()))
    model.set_train(True)
    twin.set_train(True)
    rng = np.random.default_rng(5)
    src, tgt = make_batch(tiny_config, rng, tgt_len=7)
    tgt_in, tgt_out = ids(tgt[:, :-1]), ids(tgt[:, 1:])
    names = [p.name for p in model.trainable_params()]

    loss, grads = train_step(model, tiny_config.pad_id)(ids(src), tgt_in, tgt_out)
    grads = [g.asnumpy() for g in grads]
    assert len(grads) == len(names)
    assert np.isfinite(float(loss)) and float(loss) > 0
    for name, grad in zip(names, grads):
        size = np.abs(grad).max()
        if name.endswith("k_proj.bias"):
            # Only an unfused key projection has its own bias, and it gets no gradient: adding the
            # same vector b to every key adds q.b to all scores of a query, which softmax ignores.
            assert size < 1e-6, name
        else:
            assert size > 1e-8, f"{name} got no gradient"

    table_grad = grads[names.index("decoder.embed.embedding.embedding_table")]
    unseen = np.setdiff1d(np.arange(tiny_config.tgt_vocab_size), tgt[:, :-1])
    if overrides.get("tie_embeddings"):
        assert model.generator is None
        # the table is also the output layer: every row, even of tokens not in the input, learns
        assert np.all(np.abs(table_grad[unseen]).max(axis=1) > 0)
    else:
        assert "generator.weight" in names
        assert np.all(table_grad[unseen] == 0)  # an embedding row only learns from its own token

    graph_loss, graph_grads = ms.jit(train_step(twin, tiny_config.pad_id))(ids(src), tgt_in, tgt_out)
    assert abs(float(graph_loss) - float(loss)) <= TOL
    assert max(max_diff(a, b.asnumpy()) for a, b in zip(grads, graph_grads)) <= TOL
    for mine, theirs in zip(model.trainable_params(), twin.trainable_params()):  # the same update
        assert max_diff(mine.asnumpy(), theirs.asnumpy()) <= TOL, mine.name

    new_loss = loss_function(model, tiny_config.pad_id)(ids(src), tgt_in, tgt_out)
    assert float(new_loss) < float(loss)  # the step went downhill
