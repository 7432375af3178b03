"""Every optimizer step updates the weights and Adam's step counter: compiled and eager,
packed and bucketed. (MindSpore's "Some side effect nodes were eliminated by mistake"
warning once made this worth proving; the decoder now returns only what training uses.)"""
import mindspore as ms
import numpy as np
import pytest

from mindtrans import compat
from mindtrans.batching import BucketBatcher, PackedBatcher
from mindtrans.config import TransformerConfig
from mindtrans.corpus import synthetic_pairs
from mindtrans.data import build_vocabs, encode_pairs
from mindtrans.model import Transformer
from mindtrans.steps import StepResult, host_step, make_train_step
from mindtrans.train_config import TrainConfig


@pytest.fixture(scope="module")
def corpus():
    pairs = synthetic_pairs(60, seed=8)
    src_vocab, tgt_vocab = build_vocabs(pairs, min_freq=1)
    return encode_pairs(pairs, src_vocab, tgt_vocab, max_len=16), len(src_vocab), len(tgt_vocab)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "bucketed"])
def test_every_step_updates_every_weight_and_the_step_counter(corpus, mode, packed):
    encoded, src_size, tgt_size = corpus
    batcher = (PackedBatcher(encoded, batch_tokens=256, seed=0) if packed else
               BucketBatcher(encoded, batch_tokens=256, max_len=16, boundaries=(16,), drop_remainder=True))
    ms.set_seed(0)
    model = Transformer(TransformerConfig.preset("tiny", max_len=32).with_vocab(src_size, tgt_size))
    model.set_train(True)
    cfg = TrainConfig(preset="tiny", mode=mode, lr=1e-3)
    optimizer = compat.adam(model.trainable_params(), learning_rate=cfg.lr, beta1=0.9, beta2=0.98, eps=1e-9)
    step = host_step(make_train_step(model, optimizer, cfg, packed=packed))
    for k, indices in enumerate(batcher.plan(0)[:3]):
        before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
        result = step([batcher.collate(indices)], lambda: [0.0, 0.0])
        assert isinstance(result, StepResult) and result.finite and result.tokens > 0 and np.isfinite(result.loss)
        assert int(optimizer.global_step.asnumpy().reshape(-1)[0]) == k + 1
        unchanged = [name for name, value in before.items()
                     if np.array_equal(value, dict(model.parameters_and_names())[name].asnumpy())]
        assert not unchanged, f"step {k + 1} left {unchanged} unchanged"
