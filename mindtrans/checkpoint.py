"""Checkpoints written atomically: a crash mid-save never replaces a good file."""
import json
import os
import tempfile
from pathlib import Path

import mindspore as ms

from mindtrans.data import default_file_mode


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
