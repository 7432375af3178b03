"""Checkpoint averaging and the choice of the published weights.

At the end of a run with `--average-last N`, three sets of weights compete: the checkpoint
with the lowest validation loss (what `model.ckpt` holds during training), the last weights,
and the element-wise mean of the last N epochs' weights (Vaswani et al., 2017, averaged the
last 5-20). The one whose greedy translations of the validation split score the highest
BLEU becomes `model.ckpt`. Loss alone would pick too early: with label smoothing and a
learning rate decayed to 0, the validation loss often rises in the last epochs while the
translations still improve.
"""
import mindspore as ms
import numpy as np

from mindtrans import checkpoint
from mindtrans.data import tokenize
from mindtrans.decode import Translator
from mindtrans.metrics import tokenized_bleu
from mindtrans.rundir import RunDir
from mindtrans.steps import validation_loss


def keep_epoch_weights(model, run: RunDir, epoch: int, keep: int) -> None:
    """Save the weights after `epoch` (1-based) as epochs/epoch_NNN.ckpt; delete all but the last `keep`."""
    checkpoint.atomic_save(model, run.epoch_checkpoint(epoch), extra={"epoch": epoch})
    for old in run.epoch_checkpoints()[:-keep]:
        old.unlink()


def average_weights(paths) -> dict:
    """name -> float32 array: the element-wise mean of the checkpoints in `paths` (all of one model)."""
    total = {}
    for path in paths:
        arrays, _ = checkpoint.load(path)
        for name, param in arrays.items():
            value = param.astype(np.float64)
            if name in total and total[name].shape != value.shape:
                raise ValueError(f"cannot average {path}: {name} has shape {value.shape}, not {total[name].shape}")
            total[name] = total.get(name, 0.0) + value
    return {name: (value / len(paths)).astype(np.float32) for name, value in total.items()}


def validation_bleu(model, val_pairs, src_vocab, tgt_vocab) -> float:
    """Tokenized BLEU of the model's greedy translations of `val_pairs` [(german, english)]."""
    ids = Translator(model, src_vocab, tgt_vocab).translate_ids([src for src, _ in val_pairs], beam_size=1)
    return tokenized_bleu([tgt_vocab.words(h) for h in ids], [tokenize(tgt) for _, tgt in val_pairs])


def same_weights(a: dict, b: dict) -> bool:
    """Whether two name -> array dicts hold the same names and bit-identical values."""
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def set_weights(model, arrays: dict) -> None:
    for param in model.get_parameters():
        param.set_data(ms.Tensor(arrays[param.name]).astype(param.dtype))


def candidate_weights(model, run: RunDir, last: int) -> dict:
    """name -> weights: model.ckpt (the lowest-validation-loss checkpoint, or what an earlier choice
    published when a finished run is resumed), the last weights, the mean of the last epochs."""
    saved, extra = checkpoint.load(run.model)
    earlier = (extra or {}).get("published")
    candidates = {f"published earlier: {earlier}" if earlier else "lowest validation loss": saved,
                  "last": {param.name: param.asnumpy().copy() for param in model.get_parameters()}}
    paths = run.epoch_checkpoints()[-last:]
    if len(paths) >= 2:
        epochs = [int(path.stem.split("_")[1]) for path in paths]
        candidates[f"mean of epochs {epochs[0]}-{epochs[-1]}"] = average_weights(paths)
    return candidates


def publish_best_weights(model, run: RunDir, last: int, val_pairs, val_batches, vocabs, step: int,
                         verbose: bool) -> dict:
    """Compare `candidate_weights` by validation BLEU (greedy); save the winner as model.ckpt.
    Returns each candidate's validation loss and BLEU, and which was published. A candidate
    with the same weights as an earlier one gets that one's scores without a second pass."""
    scores, best, scored = {}, None, []
    for name, arrays in candidate_weights(model, run, last).items():
        twin = next((earlier for earlier, weights in scored if same_weights(weights, arrays)), None)
        if twin is None:  # e.g. the last weights are often the lowest-loss checkpoint: scored once
            set_weights(model, arrays)
            scores[name] = {"val_loss": validation_loss(model, val_batches)["loss"],
                            "val_bleu": validation_bleu(model, val_pairs, *vocabs)}
            scored.append((name, arrays))
        else:
            scores[name] = dict(scores[twin])
        if verbose:
            print(f"{name}: val loss {scores[name]['val_loss']:.3f}, val BLEU (greedy) {scores[name]['val_bleu']:.2f}")
        if best is None or scores[name]["val_bleu"] > scores[best[0]]["val_bleu"]:  # a tie keeps the earlier
            best = (name, arrays)
    winner, weights = best
    set_weights(model, weights)
    checkpoint.atomic_save(model, run.model, extra={"step": step, "published": winner, **scores[winner]})
    run.record_digests()
    if verbose:
        print(f"published as {run.model.name}: {winner}")
    return {"candidates": scores, "published": winner}
