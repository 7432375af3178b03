"""Checkpoints: written atomically (a crash mid-save never replaces a good file), loaded,
and restored into a model or a whole training state. Loading and checking need no MindSpore
(`mindtrans.numpy_steps` translates without it); saving and restoring import it."""
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from mindtrans.checkpoint_reader import DTYPES, CheckpointFormatError, read_checkpoint
from mindtrans.files import SaveError, default_file_mode, describe_os_error

EXTRA = "mindtrans_extra"  # the JSON string entry atomic_save adds beside the tensors


def atomic_save(params, path, extra: dict = None) -> None:
    """Save `params` (a Cell or a list of Parameters) and an optional JSON-able `extra` dict.

    Writes to a temporary file beside `path`, then renames it into place, so readers
    only ever see the previous complete file or the new complete one. A failed save (a full
    disk, no permission) raises SaveError, keeps the previous file and removes every
    temporary, MindSpore's own `<temporary>.tmp` included.
    """
    import mindspore as ms

    from mindtrans import compat

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.ckpt", dir=path.parent)
    except OSError as err:
        raise SaveError(f"cannot save {path}: {describe_os_error(err)}") from None
    os.close(fd)
    temporaries = (tmp, os.path.splitext(tmp)[0] + ".tmp")  # MindSpore writes the second, then renames it
    try:
        append = {EXTRA: json.dumps(extra)} if extra is not None else None
        if isinstance(params, (list, tuple)):  # as {name, data} dicts: what every MindSpore 2.x accepts
            params = [{"name": p.name, "data": p} for p in params]
        with compat.quiet_mindspore_log():
            ms.save_checkpoint(params, tmp, append_dict=append)
        os.chmod(tmp, default_file_mode())  # MindSpore writes checkpoints read-only for the owner
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        kept = f"; the previous {path.name} is kept" if path.is_file() else ""
        raise SaveError(f"cannot save {path}: {describe_os_error(err)}{kept}") from None
    finally:
        for leftover in temporaries:
            if os.path.exists(leftover):
                os.remove(leftover)


def load(path) -> tuple:
    """(name -> NumPy array dict, extra dict or None) from a file written by `atomic_save`.

    The file is parsed and checked by `checkpoint_reader` (never by MindSpore's native
    loader, which crashes on crafted files); anything malformed raises ValueError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        arrays = read_checkpoint(path)
    except CheckpointFormatError as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a MindSpore checkpoint: {err}") from None
    extra = arrays.pop(EXTRA, None)
    if extra is not None:
        try:
            extra = json.loads(extra)
        except (TypeError, ValueError):
            extra = None
        if not isinstance(extra, dict):
            raise ValueError(f"checkpoint {path} is corrupt: its {EXTRA} entry is not a JSON object")
    strings = [name for name, value in arrays.items() if isinstance(value, str)]
    if strings:
        raise ValueError(f"checkpoint {path} holds text where weights belong: {strings[:3]}")
    return arrays, extra


def restore(params, saved: dict, path, source: str = "the model", weights_only: bool = False) -> None:
    """Copy the `saved` arrays (from `load`) into `params` in place, after `check_weights`."""
    import mindspore as ms

    params = list(params)
    check_weights(saved, {param.name: (tuple(param.shape), np.dtype(DTYPES[str(param.dtype)])) for param in params},
                  path, source, weights_only)
    for param in params:
        param.set_data(ms.Tensor(saved[param.name]))


def check_weights(saved: dict, expected: dict, path, source: str = "the model", weights_only: bool = False) -> None:
    """ValueError "<path> does not match <source>: ..." unless `saved` (from `load`) holds an entry of
    each `expected` {name: (shape, dtype)}, with finite values, and nothing else (unless `weights_only`:
    the model's weights read from a training state)."""
    absent = [name for name in expected if name not in saved]
    unused = [] if weights_only else [name for name in saved if name not in expected]
    for problem, listed in (("no weights for", sorted(absent)), ("weights it does not use:", sorted(unused))):
        if listed:
            raise ValueError(f"{path} does not match {source}: {problem} {listed[:3]}"
                             f"{' ...' if len(listed) > 3 else ''}")
    for name, (shape, dtype) in expected.items():
        value = saved[name]
        if tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise ValueError(f"{path} does not match {source}: {name} has shape {tuple(value.shape)} of "
                             f"{value.dtype}, {source} implies {tuple(shape)} of {dtype}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ValueError(f"{path} is corrupt: {name} holds NaN or infinite values")


def training_state(model, optimizer, loss_scaler=None) -> list:
    """Every Parameter a resumed run needs: weights, Adam moments, step counter, loss scale."""
    from mindspore import nn

    state, seen = [], set()
    cells = [model, optimizer] + ([loss_scaler] if isinstance(loss_scaler, nn.Cell) else [])
    for cell in cells:
        for _, param in cell.parameters_and_names():
            if param.name not in seen:
                seen.add(param.name)
                state.append(param)
    if loss_scaler is not None and not isinstance(loss_scaler, nn.Cell):
        state += [loss_scaler.scale_value, loss_scaler.counter]
    return state
