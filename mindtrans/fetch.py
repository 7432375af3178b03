"""Download the German-English Multi30k task 1 corpus (train, val, test2016).

Layout written, and read by the rest of mindtrans::

    <data_dir>/multi30k/train.de     <data_dir>/multi30k/train.en       29000 lines
    <data_dir>/multi30k/val.de       <data_dir>/multi30k/val.en          1014 lines
    <data_dir>/multi30k/test2016.de  <data_dir>/multi30k/test2016.en     1000 lines

Plain UTF-8 text, one sentence per line, byte-identical to the decompressed originals:
every file is checked against the sha256 pinned in ``TEXT_SHA256``, whatever its container.
A file that fails the check is reported with what differs (line count, CRLF, BOM, final
newline, first differing block of 50 lines: see ``mindtrans.multi30k_digests``).

Where the files come from, in this order:

1. each ``--mirror``, then ``BUILTIN_MIRRORS`` (the course's ModelScope zip, then the
   Multi30k repository on GitHub). ``parse_source`` tells two kinds of source apart:

   - an *archive*: a zip or tar (``.zip``, ``.tar.gz``, ``.tgz``, ``.tar``) given as an
     ``http(s)://`` or ``file://`` URL or a local file, or a URL whose query names one
     (``...?Revision=master&FilePath=Multi30K.zip``). Its members become the six files by
     name at any depth (``train.de``, ``val.de``, ``test2016.de``, ``test_2016_flickr.de``)
     or by folder and extension, as the course reads its zip (``datasets/train/*.de``,
     ``datasets/valid/*.en``, ``datasets/test/*.de``; also ``val``, ``dev``, ``test2016``);
   - a *base* (a URL or directory): on it, the per-file gzip of the Multi30k repository
     (``train.de.gz``, ``test_2016_flickr.en.gz``, ...) first, then the WMT16 tarball holding
     the file (``training.tar.gz``, ``validation.tar.gz``, ``mmt_task1_test2016.tar.gz``).
     A local directory is searched instead, as an archive is (any depth, case ignored), for
     the texts plain or gzipped (told apart by content); a single such file is a mirror too;

2. each remote file with the ``download`` package, then ``wget`` (which reads the user's
   wgetrc), then ``curl``, each in a child process that is stopped after ``--timeout``
   seconds without a byte, ``--deadline`` seconds in all (a mirror that slow is then given up,
   for every tool and file), or once the file is larger than
   it can be (``download_cap``: about twice the texts it may hold). A fetch stopped by
   SIGTERM removes its partial files; those of a killed one are removed by the next fetch.

Archives are checked before anything is unpacked: a member with an absolute path, ``..``,
a drive letter or a backslash, a link or special file, or two members for one output file
refuse the whole archive. Only the members that become output files are unpacked, each at
most about twice the size of its file (counted while streaming: headers are not trusted).
Downloads and unpacked files go to hidden temporary names in the target directory and only
verified text is renamed into place, so a refused archive or an interrupted run never
leaves anything behind. TLS certificates are checked unless ``--insecure`` is given; the
checksums always are.

Command line: ``python data_scripts/fetch_multi30k.py --help`` (or ``mindtrans fetch``).
"""
import argparse
import contextlib
import functools
import gzip
import hashlib
import importlib.util
import itertools
import math
import os
import posixpath
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path, PureWindowsPath
from typing import Callable, NamedTuple

from mindtrans import multi30k_digests as digests
from mindtrans.files import sha256_file

DEFAULT_DATA_DIR = os.environ.get("MINDTRANS_DATA_DIR", "data")
DEFAULT_TIMEOUT = 10.0  # seconds without a byte before an attempt is abandoned
DEFAULT_DEADLINE = 600.0  # seconds one file may take in all


class Split(NamedTuple):
    """Where one split lives in the two published layouts."""

    stem: str  # Multi30k repository: <stem>.<lang>.gz
    tarball: str  # WMT16 archive holding <split>.<lang>


SPLITS = {
    "train": Split("train", "training.tar.gz"),
    "val": Split("val", "validation.tar.gz"),
    "test2016": Split("test_2016_flickr", "mmt_task1_test2016.tar.gz"),
}
LANGS = ("de", "en")

# sha256 of the decompressed text, keyed by the output file name.
TEXT_SHA256 = {
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "test2016.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test2016.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
}

# The course notebook's download: one zip (about 1.4 MB) holding datasets/{train,valid,test}/.
MODELSCOPE_ZIP = (
    "https://modelscope.cn/api/v1/datasets/SelinaRR/Multi30K/repo"
    "?Revision=master&FilePath=Multi30K.zip"
)
BUILTIN_MIRRORS = (  # reachable from mainland China first; GitHub often is not
    MODELSCOPE_ZIP,
    "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw",
)
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
TOOLS = ("download", "wget", "curl")  # tried in this order for every remote file

# Causes meaning "this tool cannot reach this mirror at all": stop asking it there.
UNREACHABLE = {"connection refused", "timeout", "host not found", "SSL verification failed"}


class FetchError(RuntimeError):
    """Every source failed; the message lists each attempt and the two ways out."""


class _Failed(Exception):
    """One attempt failed; the message is its cause, e.g. "HTTP 404"."""


class Source(NamedTuple):
    """One mirror, as parse_source() reads it."""

    kind: str  # "archive" (one zip or tar holding the texts) or "base" (gzips, tarballs)
    location: str  # the URL or path, as given
    archive: str = ""  # kind "archive": its file name, e.g. Multi30K.zip


def parse_source(mirror):
    """Tell a single archive from a base (a URL or directory of per-file gzips and tarballs).

    An archive is a local file, or a path or URL ending in one of ARCHIVE_SUFFIXES, or a URL
    whose query names such a file (ModelScope: ``...repo?Revision=master&FilePath=Multi30K.zip``).
    """
    mirror = str(mirror)
    local = _local_path(mirror)
    if local is not None:
        if local.is_file() or (not local.is_dir() and _is_archive_name(local.name)):
            return Source("archive", mirror, local.name)
        return Source("base", mirror)
    parsed = urllib.parse.urlparse(mirror)
    for candidate in [parsed.path, *(value for _, value in urllib.parse.parse_qsl(parsed.query))]:
        name = posixpath.basename(candidate)
        if _is_archive_name(name):
            return Source("archive", mirror, name)
    return Source("base", mirror)


def _is_archive_name(name):
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def multi30k_dir(data_dir):
    """The directory holding the six text files."""
    return Path(data_dir).expanduser() / "multi30k"


def gzip_name(name):
    """Per-file gzip name in the Multi30k repository, e.g. test2016.de -> test_2016_flickr.de.gz."""
    split, lang = name.split(".")
    return f"{SPLITS[split].stem}.{lang}.gz"


def env_mirrors() -> list:
    """Mirrors listed in $MINDTRANS_MIRROR, separated like PATH (``:`` on Linux, ``;`` on Windows), tried
    before the built-in ones. The colons of a URL (``https://host:8080/multi30k``) do not separate."""
    value = os.environ.get("MINDTRANS_MIRROR", "")
    separator = re.escape(os.pathsep) + (r"(?!//)(?!\d+(?:/|$))" if os.pathsep == ":" else "")
    return [m for m in re.split(separator, value) if m]


def fetch_multi30k(data_dir=DEFAULT_DATA_DIR, mirrors=(), insecure=False, timeout=DEFAULT_TIMEOUT, log=print,
                   deadline=DEFAULT_DEADLINE):
    """Make sure ``<data_dir>/multi30k`` holds the six verified files; return that directory.

    `mirrors` (URLs, directories or archives, or a single one: see parse_source) are tried
    before BUILTIN_MIRRORS. Each download is stopped after `timeout` seconds without a byte,
    `deadline` seconds in all, or once larger than what it can hold (`download_cap`).
    Raises FetchError when some file could not be obtained from any mirror.
    """
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    out = multi30k_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(out, timeout, log)
    missing = [name for name in TEXT_SHA256 if not _is_verified(out / name, log)]
    if not missing:
        log(f"Multi30k already present and verified in {out}; nothing to download.")
        return out
    if insecure:
        log("WARNING: --insecure: TLS certificates are NOT verified (sha256 checksums still are).")
    log(f"Fetching Multi30k into {out}: {', '.join(missing)}")
    run = _Run(out, missing, insecure, timeout, deadline, log)
    with _terminate_as_exit():
        for mirror in [*mirrors, *BUILTIN_MIRRORS]:
            run.from_mirror(str(mirror))
            if not run.missing:
                log(f"Multi30k ready in {out}")
                return out
    raise FetchError(_failure_message(out, run))


@contextlib.contextmanager
def _terminate_as_exit():
    """SIGTERM (a `kill`, a closing notebook) raises SystemExit inside this block, so that the
    partial files are removed on the way out instead of being left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _remove_stale_parts(out, timeout, log):
    """Delete partial files that a killed fetch left in `out`: untouched for longer than a live
    download could be (it is abandoned after `timeout` seconds without a byte)."""
    stale = [path for path in out.glob(".*.part-*") if _PART_NAME.fullmatch(path.name)
             and path.is_file() and time.time() - path.stat().st_mtime > timeout + 60]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        log(f"removed {len(stale)} partial file(s) an interrupted fetch left in {out}")


def download_cap(filename=None):
    """The most bytes a download may have: a per-file gzip or a split's tarball at most what its
    texts may unpack to (`_cap`), the archive of the whole corpus (`filename` None) all six; plus 1 MiB."""
    names = [name for name in TEXT_SHA256 if filename is None
             or filename in (gzip_name(name), SPLITS[name.split(".")[0]].tarball)]
    return sum(_cap(name) for name in names) + (1 << 20)


def _is_verified(path, log):
    """True if `path` exists with its pinned sha256 (a corrupt one is reported)."""
    if not path.is_file():
        return False
    if sha256_file(path) == TEXT_SHA256[path.name]:
        return True
    kept = _set_aside(path)
    log(f"{path} does not match Multi30k's sha256: kept as {kept.name}, and fetching it again.")
    return False


def _set_aside(path):
    """Rename `path` (a file that is not ours to replace) to a free ``<name>.replaced-<n>``; return the new path."""
    for number in itertools.count(1):
        kept = path.with_name(f"{path.name}.replaced-{number}")
        if not kept.exists():
            path.rename(kept)
            return kept


class _Run:
    """State of one fetch: what is still missing, what failed, which tools are cut off."""

    def __init__(self, out, missing, insecure, timeout, deadline, log):
        self.out = out
        self.missing = list(missing)
        self.insecure = insecure
        self.timeout = timeout
        self.deadline = deadline
        self.log = log
        self.tools = _available_tools()
        self.failures = []  # one line per failed attempt
        self.cut_off = defaultdict(set)  # mirror -> tools that could not reach it
        self.tried_tarballs = set()

    def from_mirror(self, mirror):
        """Try one mirror: an archive once, or on a base each missing file's gzip, then tarball."""
        source = parse_source(mirror)
        local = _local_path(source.location)
        if local is None and not self.tools:
            self._fail("-", source.location, "no download tool available (download, wget, curl)")
            return
        if source.kind == "archive":
            if local is not None and _output_name(local.name):  # one text file, plain or gzipped
                self._from_local_files(local.parent, [local])
            else:
                self._get(source, None, self._from_archive)
            return
        if local is not None and not local.is_dir():
            self._fail("local", str(local), "no such directory")
            return
        if local is not None:
            self._from_local_files(local, _files_under(local))
        for name in list(self.missing):
            if name not in self.missing:  # delivered meanwhile by a tarball
                continue
            if local is None and self.cut_off[source.location] >= {tool for tool, _ in self.tools}:
                self.log(f"  skipping the rest of {source.location}: unreachable or too slow")
                return
            gz = gzip_name(name)
            if local is None and self._get(source, gz, functools.partial(self._install_file, name, label=gz,
                                                                         must_be_gzip=True)):
                continue
            tarball = SPLITS[name.split(".")[0]].tarball
            if (source.location, tarball) not in self.tried_tarballs:
                self.tried_tarballs.add((source.location, tarball))
                self._get(source, tarball, self._from_archive)

    def _get(self, source, filename, use):
        """Obtain base/filename (the archive itself if None) until ``use(path)`` accepts it."""
        local = _local_path(source.location)
        if local is not None:
            path = local / filename if filename else local
            return self._attempt("local", str(path), lambda: use(_existing(path))) is None
        mirror = source.location
        url = f"{mirror.rstrip('/')}/{filename}" if filename else mirror
        for tool, download_with in self.tools:
            if tool in self.cut_off[mirror]:
                continue
            part = _part_file(self.out, filename or source.archive)
            limit = Limit(download_cap(filename), self.deadline)

            def attempt():
                download_with(url, part, self.insecure, self.timeout, limit)
                use(part)

            try:
                cause = self._attempt(tool, url, attempt)
            finally:  # download() leaves its own <dest>.part behind on failure
                for leftover in (part, part.with_name(part.name + ".part")):
                    leftover.unlink(missing_ok=True)
            if cause is None:
                return True
            if cause in UNREACHABLE:
                self.cut_off[mirror].add(tool)
            if cause.endswith("(--deadline)"):  # as slow for every tool and file: give the mirror up
                self.cut_off[mirror].update(tool for tool, _ in self.tools)
                break
            if cause == "HTTP 404":  # the server answered: another tool would hear the same
                break
        return False

    def _attempt(self, tool, source, action):
        """Run one attempt; return None on success, else its (logged, recorded) cause."""
        try:
            action()
        except _Failed as err:
            self._fail(tool, source, str(err))
            return str(err)
        self.log(f"  [{tool}] {source}: ok")
        return None

    def _fail(self, tool, source, cause):
        line = f"[{tool}] {source}: {cause}"
        self.failures.append(line)
        self.log(f"  {line}")

    def _from_local_files(self, root, paths):
        """Install the missing files found among `paths` (under the directory `root`), each recognised
        by its path as an archive member is (case ignored, a ``.gz`` suffix dropped); a known name is
        tried before a file recognised by its folder, and the next one when a file fails its check."""
        candidates = defaultdict(list)
        for path in paths:
            relative = path.relative_to(root).as_posix()
            name = _output_name(relative)
            if name in self.missing:
                candidates[name].append((not _has_known_name(relative), str(path), path))
        for name, found in candidates.items():
            for _, label, path in sorted(found):
                if self._attempt("local", label, lambda: self._install_file(name, path, label)) is None:
                    break

    def _install_file(self, name, path, label, must_be_gzip=False):
        """Install `name` from the file at `path`: its text, gzipped or not, told apart by content (a
        download named .gz must be a gzip)."""
        opener = functools.partial(gzip.open, path) if must_be_gzip else functools.partial(
            _gunzipped_if_gzip, functools.partial(open, path, "rb"))
        try:
            self._install([(name, label, opener)])
        except (OSError, EOFError, zlib.error) as err:
            raise _Failed(_classify(str(err))) from err

    def _from_archive(self, path):
        """Install every missing file a zip or tar archive holds, after checking all its members."""
        try:
            with _archive_members(path) as members:
                chosen = _choose_members(members)
                wanted = [(name, m.name, functools.partial(_gunzipped_if_gzip, m.open))
                          for name, m in chosen.items() if name in self.missing]
                if not wanted:
                    raise _Failed("archive holds none of the missing files")
                self._install(wanted)
        except _BROKEN_ARCHIVE as err:
            raise _Failed(_classify(str(err))) from err

    def _install(self, members):
        """Unpack each (name, label, open) to a hidden file, then move the verified ones into place.

        A member unpacking past its size cap refuses them all and leaves nothing behind; a
        checksum mismatch rejects only that file, with a diagnosis of what differs.
        """
        parts, verified, problems = {}, [], []
        try:
            for name, label, open_member in members:
                part = parts[name] = _part_file(self.out, name)
                with open_member() as stream:
                    digest = _copy_capped(stream, part, _cap(name), f"{label} (for {name})")
                if digest == TEXT_SHA256[name]:
                    verified.append(name)
                else:
                    problems.append(f"checksum mismatch for {name}: {_diagnose(name, part)}")
            for name in verified:
                os.replace(parts[name], self.out / name)
                self.missing.remove(name)
        finally:
            for part in parts.values():
                part.unlink(missing_ok=True)
        if problems:
            raise _Failed("\n      ".join(problems))


def _local_path(mirror):
    """The path a ``file://`` URL or plain path names; None for a remote URL."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and not PureWindowsPath(mirror).drive:
        return None
    return Path(mirror).expanduser()


@contextlib.contextmanager
def _gunzipped_if_gzip(open_binary):
    """The binary stream `open_binary()` returns, gunzipped if it starts as a gzip does (told apart
    by content: a browser may have saved a ``.gz`` already unpacked, and an archive may hold either)."""
    with open_binary() as raw:
        if raw.peek(2)[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw) as text:
                yield text
        else:
            yield raw


def _files_under(root, most: int = 10_000, depth: int = 6) -> list:
    """The files under `root`, at most `most` and `depth` folders deep, hidden folders skipped, sorted."""
    found = []
    for directory, folders, files in os.walk(root):
        inside = len(Path(directory).relative_to(root).parts)
        folders[:] = sorted(f for f in folders if not f.startswith(".") and inside < depth)
        found += [Path(directory) / name for name in sorted(files)]
        if len(found) >= most:
            break
    return found[:most]


def _existing(path):
    if not path.is_file():
        raise _Failed("not found")
    return path


_PART_NAME = re.compile(r"\..+\.part-[0-9a-f]{8}(\.part)?")  # _part_file's names, and download()'s .part beside one


def _part_file(directory, name):
    """A fresh hidden temporary file next to the final one, e.g. .train.de.gz.part-1a2b3c4d."""
    path = directory / f".{name}.part-{secrets.token_hex(4)}"
    path.touch(exist_ok=False)  # unlike mkstemp, keeps the usual umask-based permissions
    return path


# ---- archives: zip and tar members, checked the same way

_BROKEN_ARCHIVE = (
    zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error, NotImplementedError,
)  # fmt: skip
_FOLDERS = {  # the course's zip: datasets/train/, datasets/valid/, datasets/test/
    "train": "train",
    "valid": "val", "val": "val", "dev": "val",
    "test": "test2016", "test2016": "test2016",
}  # fmt: skip
_KNOWN_NAMES = {  # train.de, test2016.de, test_2016_flickr.de, ... -> output name
    f"{prefix}.{lang}": f"{split}.{lang}"
    for split, where in SPLITS.items()
    for prefix in (split, where.stem)
    for lang in LANGS
}


class _Member(NamedTuple):
    """An archive member as the checks see it, from a zip or a tar."""

    name: str
    kind: str  # "file", "dir", "link", "special" or "encrypted"
    size: int  # what the header says: checked, never trusted
    open: Callable  # () -> binary stream of its content


@contextlib.contextmanager
def _archive_members(path):
    """Yield the members of the zip or tar archive at `path` (told apart by content)."""
    with open(path, "rb") as f:
        head = f.read(40)
    if head.startswith(b"PK"):
        with zipfile.ZipFile(path) as archive:
            yield [_zip_member(archive, info) for info in archive.infolist()]
        return
    if not head:
        raise _Failed("empty file")
    try:
        archive = tarfile.open(path, "r:*")
    except tarfile.ReadError:
        raise _Failed(f"not a zip or tar archive (starts with {head!r})") from None
    with archive:
        yield [_tar_member(archive, info) for info in archive.getmembers()]


def _zip_member(archive, info):
    mode = info.external_attr >> 16  # Unix mode, where the zip was made on Unix
    if stat.S_ISLNK(mode):
        kind = "link"
    elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        kind = "special"
    elif info.flag_bits & 0x1:
        kind = "encrypted"
    else:
        kind = "dir" if info.is_dir() else "file"
    return _Member(info.filename, kind, info.file_size, lambda: archive.open(info))


def _tar_member(archive, info):
    if info.issym() or info.islnk():
        kind = "link"
    elif info.isfile():
        kind = "file"
    else:
        kind = "dir" if info.isdir() else "special"
    return _Member(info.name, kind, info.size, lambda: archive.extractfile(info))


def _check_member(member):
    """Refuse an archive member that could write outside the target or is not a plain file."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        reason = "absolute path"
    elif "\\" in name:
        reason = "backslash in path"
    elif ".." in name.split("/"):
        reason = "'..' in path"
    elif member.kind == "link":
        reason = "link"
    elif member.kind == "special":
        reason = "device, fifo or other special file"
    elif member.kind == "encrypted":
        reason = "encrypted"
    else:
        return
    raise _Failed(f"unsafe archive member {name!r} ({reason}); archive refused")


def _choose_members(members):
    """Check every member, then map the files among them to output names (see _output_name).

    Refuses the archive for an unsafe member, two members for one output file, or a
    member whose header announces more than that file's size cap.
    """
    for member in members:
        _check_member(member)
    chosen = {}
    for member in members:
        name = _output_name(member.name) if member.kind == "file" else None
        if name is None:
            continue
        if name in chosen and _same_file_gzipped(chosen[name].name, member.name):
            chosen[name] = min(chosen[name], member, key=lambda m: m.name.lower().endswith(".gz"))  # plain first
            continue
        if name in chosen:
            raise _Failed(
                f"ambiguous archive: {chosen[name].name!r} and {member.name!r} could both be"
                f" {name}; archive refused"
            )
        if member.size > _cap(name):
            raise _Failed(
                f"archive member {member.name!r} would unpack to {member.size} bytes, more than"
                f" the {_cap(name)} allowed for {name}; archive refused"
            )
        chosen[name] = member
    return chosen


def _output_name(member_name):
    """The output file an archive member or a file in a local mirror becomes, or None.

    A known name at any depth (train.de, val.en, test2016.de, test_2016_flickr.en), else
    a ``.de``/``.en`` file in a folder named train, valid/val/dev or test/test2016, as in the
    course's zip (``datasets/valid/<anything>.de``); case ignored, a ``.gz`` suffix dropped.
    Hidden files and ``__MACOSX`` are skipped.
    """
    parts = [part for part in _case_and_gz_dropped(member_name).split("/") if part not in ("", ".")]
    if not parts or any(part.startswith(".") or part == "__macosx" for part in parts):
        return None
    if parts[-1] in _KNOWN_NAMES:
        return _KNOWN_NAMES[parts[-1]]
    stem, _, lang = parts[-1].rpartition(".")
    folder = parts[-2].lower() if len(parts) > 1 else ""
    if stem and lang in LANGS and folder in _FOLDERS:
        return f"{_FOLDERS[folder]}.{lang}"
    return None


def _case_and_gz_dropped(member_name) -> str:
    """`member_name` as it is recognised: lower case, a ``.gz`` suffix dropped (Train.DE.gz -> train.de)."""
    return member_name.lower().removesuffix(".gz")


def _has_known_name(member_name) -> bool:
    """Whether `member_name` is recognised by its file name (train.de.gz, Test2016.EN), not by its folder."""
    return posixpath.basename(_case_and_gz_dropped(member_name)) in _KNOWN_NAMES


def _same_file_gzipped(name, other) -> bool:
    """Whether one of two member names is the other with ``.gz`` added (train.de, train.de.gz)."""
    return name != other and _case_and_gz_dropped(name) == _case_and_gz_dropped(other)


def _cap(name):
    """The most bytes unpacked for one output file: twice its real size, plus 64 KiB."""
    return 2 * digests.BYTES[name] + (1 << 16)


def _copy_capped(stream, path, cap, label):
    """Copy `stream` to `path`, refusing it before writing byte cap+1; return its sha256."""
    digest, written = hashlib.sha256(), 0
    with open(path, "wb") as f:
        while chunk := stream.read(min(1 << 20, cap - written + 1)):
            written += len(chunk)
            if written > cap:
                raise _Failed(f"{label} unpacks to more than {cap} bytes; refused")
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


# ---- saying what differs when a checksum does not match


def _diagnose(name, path):
    """What differs between the file at `path` and the pinned text `name`, in one line.

    Line count, then the usual culprits (BOM, CRLF, no final newline, not UTF-8), then the
    first block of digests.BLOCK_LINES lines that differs once those are undone, quoting the
    block's first line as served.
    """
    text, notes = path.read_bytes(), []
    if text.startswith(b"\xef\xbb\xbf"):
        notes.append("starts with a UTF-8 BOM")
        text = text[3:]
    if b"\r\n" in text:
        notes.append("CRLF line endings")
        text = text.replace(b"\r\n", b"\n")
    if text and not text.endswith(b"\n"):
        notes.append("no newline at the end")
        text += b"\n"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = text.count(b"\n", 0, err.start) + 1
        notes.append(f"not UTF-8 (from line {bad_line})")
    lines, expected = text.split(b"\n")[:-1], digests.LINES[name]
    count = f"{len(lines)} lines, expected {expected}"
    if len(lines) == expected:
        count = f"{expected} lines as expected"
    if hashlib.sha256(text).hexdigest() == TEXT_SHA256[name]:
        return "; ".join([count, *notes, "otherwise identical"])
    return "; ".join([count, *notes, _first_difference(name, lines)])


def _first_difference(name, lines):
    """Where the first block differing from the reference digests starts, and its first line.

    E.g. "first difference in lines 951-1000: 'Ein Mann ...'" (the line as served).
    """
    size, reference = digests.BLOCK_LINES, digests.BLOCKS[name]
    total = max(len(lines), digests.LINES[name])
    for start in range(0, total, size):
        block = b"".join(line + b"\n" for line in lines[start : start + size])
        served = hashlib.sha256(block).hexdigest()[:8] if block else ""
        index = 8 * (start // size)
        if served != reference[index : index + 8]:
            where = f"first difference in lines {start + 1}-{min(start + size, total)}"
            if start >= len(lines):
                return f"{where}: the file ends at line {len(lines)}"
            first = lines[start].decode("utf-8", "replace")
            quote = first if len(first) <= 40 else first[:40] + "..."
            return f"{where}: {quote!r}"
    return "no differing block found"


# ---- the three download tools: each raises _Failed(cause) or leaves the file at `dest`
# Each runs as a child process, watched: stopped past the size the file can have or the deadline.

_DOWNLOAD_SCRIPT = """
import socket, ssl, sys
from download import download
url, dest, insecure, timeout = sys.argv[1], sys.argv[2], sys.argv[3] == "1", float(sys.argv[4])
socket.setdefaulttimeout(timeout)  # download() reads without a timeout and takes no TLS context
if insecure:
    ssl._create_default_https_context = ssl._create_unverified_context
try:
    download(url, dest, progressbar=False, replace=True, timeout=timeout, verbose=False)
except Exception as err:  # download() wraps every error in a RuntimeError
    sys.exit(str(err))
"""


class Limit(NamedTuple):
    """What one download may take: bytes written, and seconds in all (however slowly they trickle in)."""

    max_bytes: int
    deadline: float


def _with_download_package(url, dest, insecure, timeout, limit):
    command = [sys.executable, "-c", _DOWNLOAD_SCRIPT, url, str(dest), "1" if insecure else "0", str(timeout)]
    _run_tool(command, dest, limit)


def _with_wget(url, dest, insecure, timeout, limit):
    # Verbose (the default), because --no-verbose hides why a transfer broke off.
    # --check-certificate=on: a "check_certificate = off" in the user's ~/.wgetrc must not switch it off silently
    certificates = "--no-check-certificate" if insecure else "--check-certificate=on"
    command = ["wget", certificates, "--tries=1", f"--timeout={timeout:g}", "-O", str(dest), url]
    _run_tool(command, dest, limit)


def _with_curl(url, dest, insecure, timeout, limit):
    # "No byte for `timeout` seconds" rather than --max-time, which would also cut off
    # a slow download that is still making progress (the deadline is watched instead).
    command = [
        "curl", "-fsSL", "--retry", "0",
        "--connect-timeout", f"{timeout:g}",
        "--speed-limit", "1", "--speed-time", str(math.ceil(timeout)),
        "--max-filesize", str(limit.max_bytes),
        "-o", str(dest), url,
    ]  # fmt: skip
    # --no-insecure: an "insecure" in the user's ~/.curlrc must not switch the check off silently
    command.insert(1, "-k" if insecure else "--no-insecure")
    _run_tool(command, dest, limit)


def _run_tool(command, dest, limit):
    """Run a download command; stop it once `dest` (or download()'s `dest`.part) grows past
    limit.max_bytes or limit.deadline seconds have passed."""
    env = {**os.environ, "LC_ALL": "C"}  # English messages, for _classify
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: a chatty tool never blocks on it
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                   env=env, preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        try:
            cause = _watch(process, [dest, dest.with_name(dest.name + ".part")], limit)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
        if cause:
            raise _Failed(cause)
        if process.returncode:
            errors.seek(0)
            text = errors.read().decode("utf-8", "replace")
            raise _Failed(_classify(text or f"exit status {process.returncode}"))


def _die_with_parent():
    """In the child (Linux): be killed when the fetch dies, even by SIGKILL, whose limits (size, deadline)
    are watched from the fetch's side: an orphaned download would otherwise run on unwatched."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _watch(process, paths, limit, every: float = 0.05):
    """None once `process` has ended by itself within `limit`; else why it must be stopped."""
    started = time.monotonic()
    while True:
        ended = process.poll() is not None
        size = max((path.stat().st_size for path in paths if path.is_file()), default=0)
        if size > limit.max_bytes:
            return f"larger than the {limit.max_bytes} bytes this file can have; refused"
        if ended:
            return None
        if time.monotonic() - started > limit.deadline:
            return f"not finished after {limit.deadline:g} s (--deadline)"
        time.sleep(every)


_TOOL_FUNCTIONS = {"download": _with_download_package, "wget": _with_wget, "curl": _with_curl}


def _available_tools():
    """(name, function) for each tool in TOOLS that is installed, in order."""
    found = []
    for name in TOOLS:
        installed = importlib.util.find_spec(name) if name == "download" else shutil.which(name)
        if installed:
            found.append((name, _TOOL_FUNCTIONS[name]))
    return found


# ---- turning error text into a short cause

_HTTP_STATUS = re.compile(r"(?:HTTP Error|ERROR|returned error:) (\d{3})")
_CAUSES = [  # first match wins; covers Python, wget, curl, gzip, tarfile and zipfile messages
    (
        r"certificate verify failed|cannot verify|certificate of .* not trusted"
        r"|SSL certificate problem",
        "SSL verification failed",
    ),
    (r"[Cc]onnection refused|Couldn't connect", "connection refused"),
    (r"timed out|too slow", "timeout"),
    (r"not known|name resolution|resolve host", "host not found"),
    (
        r"IncompleteRead|Connection closed at byte|transfer closed|File size is \d+ and should be"
        r"|[Cc]ompressed file ended|unexpected end of data",
        "truncated",
    ),
    (r"[Nn]ot a gzip", "not a gzip file"),
    (r"could not be opened successfully|invalid header", "not a tar archive"),
    (r"File is not a zip file", "truncated or corrupt zip archive"),
    (r"Bad CRC-32|Bad magic number|Truncated file header|Error -3 while", "corrupt data"),
]


def _classify(text):
    """Map a tool's error text to a short cause ("HTTP 404", "timeout", ...)."""
    if re.search(r"infinite loop|redirections exceeded|Maximum \(\d+\) redirects", text):  # Python, wget, curl
        return "redirect loop"
    if match := _HTTP_STATUS.search(text):
        return f"HTTP {match.group(1)}"
    for pattern, cause in _CAUSES:
        if re.search(pattern, text):
            return cause
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "unknown error"


def _failure_message(out, run):
    gzips = " ".join(gzip_name(name) for name in TEXT_SHA256)
    tarballs = " ".join(split.tarball for split in SPLITS.values())
    lines = [f"Could not fetch Multi30k ({', '.join(run.missing)} still missing): no mirror delivered them; "
             f"download them by hand and pass --mirror DIR (or set MINDTRANS_MIRROR), as below. Attempts:"]
    lines += [f"  {line}" for line in run.failures] or ["  (none)"]
    if any(line.endswith("SSL verification failed") for line in run.failures):
        lines.append(
            "Note: TLS verification failed; if you trust the network, --insecure skips it"
            " (the checksums are still enforced)."
        )
    lines += [
        "Two ways out:",
        "  (a) download by hand (from any machine) either the course's zip",
        f"      {MODELSCOPE_ZIP}",
        "      and run again with --mirror PATH/TO/Multi30K.zip, or into a directory DIR",
        f"      the gzips {gzips}",
        f"      or the WMT16 tarballs {tarballs},",
        "      then run again with --mirror DIR;",
        "  (b) put the decompressed text files at exactly these paths (checked by sha256):",
    ]
    lines += [f"      {out / name}  sha256 {digest}" for name, digest in TEXT_SHA256.items()]
    return "\n".join(lines)


def add_data_dir_argument(parser, purpose: str = "where datasets live") -> None:
    """--data-dir, for every command and benchmark: the one owner of its default."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help=f"{purpose} (default: $MINDTRANS_DATA_DIR if set, else 'data')")


def add_fetch_arguments(parser):
    """Add --data-dir, --mirror, --insecure and --timeout; dests match fetch_multi30k()."""
    add_data_dir_argument(parser, "files go to DATA_DIR/multi30k")
    parser.add_argument(
        "--mirror", dest="mirrors", action="append", default=[], metavar="URL_OR_PATH",
        help="http(s)://, file:// URL or path of a directory (of per-file gzips or WMT16 tarballs) "
             "or of an archive (.zip, .tar.gz) to try before the built-in mirrors (repeatable; "
             "$MINDTRANS_MIRROR adds more)",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="do not verify TLS certificates (the sha256 checksums are still enforced)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT,
        help=f"seconds without progress before an attempt is abandoned (default: {DEFAULT_TIMEOUT:g})",
    )  # fmt: skip
    parser.add_argument(
        "--deadline", type=_positive_seconds, default=DEFAULT_DEADLINE,
        help=f"seconds one download may take in all, however slowly it arrives; a mirror that takes longer is "
             f"given up (default: {DEFAULT_DEADLINE:g})",
    )  # fmt: skip
    return parser


def _positive_seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv=None):
    """Command line entry point: 0 on success, 1 (after printing why) on failure."""
    parser = argparse.ArgumentParser(description="Download the Multi30k de-en corpus (task 1).")
    args = add_fetch_arguments(parser).parse_args(argv)
    try:
        fetch_multi30k(args.data_dir, args.mirrors + env_mirrors(), args.insecure, args.timeout,
                       deadline=args.deadline)
    except FetchError as err:
        print(err, file=sys.stderr)
        return 1
    return 0
