"""Checkpoints: written atomically (a crash mid-save never replaces a good file), loaded,
and restored into a model or a whole training state."""
import json
import os
import tempfile
from pathlib import Path

import mindspore as ms

from mindtrans.files import default_file_mode


def atomic_save(params, path, extra: dict = None) -> None:
    """Save `params` (a Cell or a list of Parameters) and an optional JSON-able `extra` dict.

    Writes to a temporary file beside `path`, then renames it into place, so readers
    only ever see the previous complete file or the new complete one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.ckpt", dir=path.parent)
    os.close(fd)
    try:
        append = {"mindtrans_extra": json.dumps(extra)} if extra is not None else None
        if isinstance(params, (list, tuple)):  # as {name, data} dicts: what every MindSpore 2.x accepts
            params = [{"name": p.name, "data": p} for p in params]
        ms.save_checkpoint(params, tmp, append_dict=append)
        os.chmod(tmp, default_file_mode())  # MindSpore writes checkpoints read-only for the owner
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path) -> tuple:
    """(name -> Parameter dict, extra dict or None) from a file written by `atomic_save`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        params = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, TypeError, OSError) as err:
        raise ValueError(f"checkpoint {path} is corrupt or not a MindSpore checkpoint: {err}") from err
    extra = params.pop("mindtrans_extra", None)
    if extra is not None:
        extra = json.loads(extra.asnumpy().item() if hasattr(extra, "asnumpy") else str(extra))
    return params, extra


def restore(params, saved: dict, path, source: str = "the model") -> None:
    """Copy the `saved` values (from `load`) into `params` in place. A missing or misshapen
    entry raises ValueError: "<path> does not match <source>: ..." with the names or shapes."""
    params = list(params)
    absent = [param.name for param in params if param.name not in saved]
    if absent:
        raise ValueError(f"{path} does not match {source}: no weights for {absent[:3]}"
                         f"{' ...' if len(absent) > 3 else ''}")
    for param in params:
        value = saved[param.name]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(f"{path} does not match {source}: {param.name} has shape {tuple(value.shape)}, "
                             f"{source} implies {tuple(param.shape)}")
        param.set_data(value.astype(param.dtype))


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
