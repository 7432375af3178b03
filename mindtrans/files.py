"""Files written safely and hashed: the standard library only (`fetch` uses it before NumPy exists)."""
import hashlib
import os
import tempfile
from pathlib import Path


class SaveError(OSError):
    """A file could not be written; the message says which and why, and what was kept."""


def first_line(error: BaseException, width: int = None) -> str:
    """The first line of an error's message (MindSpore's run to pages), cut to `width` characters
    if given; the error's type name when the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:width]


def describe_os_error(err: BaseException) -> str:
    """'No space left on device' rather than '[Errno 28] No space left on device: '/x/.tmp''."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror[0].lower() + err.strerror[1:]
    return first_line(err)


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode a plain open() would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file and ``os.replace``.

    Readers see either the old file or the complete new one, never a half-written one.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SaveError(f"cannot write {path}: {describe_os_error(err)}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, default_file_mode())  # mkstemp makes it private; a bundle is meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        os.unlink(tmp)
        kept = f"; the previous {path.name} is kept" if path.is_file() else ""
        raise SaveError(f"cannot write {path}: {describe_os_error(err)}{kept}") from None
    except BaseException:
        os.unlink(tmp)
        raise


def check_writable(path) -> None:
    """Raise `atomic_write_text`'s SaveError now if ``path`` could not be written later: its folder
    cannot be made or written to. Call it before long work whose result goes there; the folder
    is made if it is missing."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as err:
        raise SaveError(f"cannot write {path}: {describe_os_error(err)}") from None


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
