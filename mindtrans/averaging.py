"""Checkpoint averaging: the element-wise mean of the last epochs' weights, kept when it
validates better than the best single epoch (Vaswani et al., 2017, averaged the last 5-20)."""
import mindspore as ms
import numpy as np

from mindtrans import checkpoint
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


def try_averaged_weights(model, run: RunDir, last: int, val_batches, best_val_loss: float, step: int,
                         verbose: bool) -> dict:
    """Average the last `last` epoch checkpoints into `model`; if that lowers the validation loss,
    make it the run's model.ckpt. Returns what was tried and whether it was kept."""
    paths = run.epoch_checkpoints()[-last:]
    if len(paths) < 2:
        return {"epochs": [], "kept": False, "reason": "fewer than two epoch checkpoints"}
    epochs = [int(path.stem.split("_")[1]) for path in paths]
    before = {param.name: param.asnumpy().copy() for param in model.get_parameters()}
    averaged = average_weights(paths)
    for param in model.get_parameters():
        param.set_data(ms.Tensor(averaged[param.name]).astype(param.dtype))
    val = validation_loss(model, val_batches)
    kept = best_val_loss is None or val["loss"] < best_val_loss
    if kept:
        checkpoint.atomic_save(model, run.model, extra={"epoch": epochs[-1], "step": step, "val_loss": val["loss"],
                                                        "averaged_epochs": epochs})
        run.record_digests()
    else:  # the model in memory goes back to the last epoch's weights
        for param in model.get_parameters():
            param.set_data(ms.Tensor(before[param.name]))
    if verbose:
        verdict = "kept as model.ckpt" if kept else f"not kept (best single epoch: {best_val_loss:.3f})"
        print(f"mean of epochs {epochs[0]}-{epochs[-1]}: val loss {val['loss']:.3f}, val ppl {val['ppl']:.2f}, "
              f"{verdict}")
    return {"epochs": epochs, "val_loss": val["loss"], "kept": kept}
