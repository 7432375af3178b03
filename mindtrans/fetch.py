"""Download the German-English Multi30k task 1 corpus (train, val, test2016).

Layout written, and read by the rest of mindtrans::

    <data_dir>/multi30k/train.de     <data_dir>/multi30k/train.en       29000 lines
    <data_dir>/multi30k/val.de       <data_dir>/multi30k/val.en          1014 lines
    <data_dir>/multi30k/test2016.de  <data_dir>/multi30k/test2016.en     1000 lines

Plain UTF-8 text, one sentence per line, byte-identical to the decompressed originals:
every file is checked against the sha256 pinned in ``TEXT_SHA256``.

Where the files come from, in this order:

1. each ``--mirror`` (an ``http(s)://`` or ``file://`` URL, or a directory), then
   ``BUILTIN_MIRRORS``;
2. on each mirror, the per-file gzip of the Multi30k repository (``train.de.gz``,
   ``test_2016_flickr.en.gz``, ...) first, then the WMT16 tarball holding the file
   (``training.tar.gz``, ``validation.tar.gz``, ``mmt_task1_test2016.tar.gz``);
3. each remote file with the ``download`` package, then ``wget`` (which reads the user's
   wgetrc), then ``curl``.

Downloads go to hidden temporary names in the target directory and only verified text
is renamed into place, so an interrupted run never leaves a half-written file. TLS
certificates are checked unless ``--insecure`` is given; the checksums always are.

Command line: ``python data_scripts/fetch_multi30k.py --help`` (or ``mindtrans fetch``).
"""
import argparse
import contextlib
import gzip
import hashlib
import importlib.util
import math
import os
import posixpath
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
import zlib
from collections import defaultdict
from pathlib import Path, PureWindowsPath
from typing import NamedTuple

DEFAULT_DATA_DIR = os.environ.get("MINDTRANS_DATA_DIR", "data")


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

BUILTIN_MIRRORS = (
    "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw",
    "http://www.quest.dcs.shef.ac.uk/wmt16_files_mmt",
)
TOOLS = ("download", "wget", "curl")  # tried in this order for every remote file

# Causes meaning "this tool cannot reach this mirror at all": stop asking it there.
UNREACHABLE = {"connection refused", "timeout", "host not found", "SSL verification failed"}


class FetchError(RuntimeError):
    """Every source failed; the message lists each attempt and the two ways out."""


class _Failed(Exception):
    """One attempt failed; the message is its cause, e.g. "HTTP 404"."""


def multi30k_dir(data_dir):
    """The directory holding the six text files."""
    return Path(data_dir).expanduser() / "multi30k"


def gzip_name(name):
    """Per-file gzip name in the Multi30k repository, e.g. test2016.de -> test_2016_flickr.de.gz."""
    split, lang = name.split(".")
    return f"{SPLITS[split].stem}.{lang}.gz"


def env_mirrors() -> list:
    """Mirrors listed in $MINDTRANS_MIRROR (separated like PATH), tried before the built-in ones."""
    return [m for m in os.environ.get("MINDTRANS_MIRROR", "").split(os.pathsep) if m]


def fetch_multi30k(data_dir=DEFAULT_DATA_DIR, mirrors=(), insecure=False, timeout=10.0, log=print):
    """Make sure ``<data_dir>/multi30k`` holds the six verified files; return that directory.

    `mirrors` (URLs or directories, or a single one) are tried before BUILTIN_MIRRORS.
    Raises FetchError when some file could not be obtained from any mirror.
    """
    if isinstance(mirrors, (str, os.PathLike)):
        mirrors = [mirrors]
    out = multi30k_dir(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    missing = [name for name in TEXT_SHA256 if not _is_verified(out / name, log)]
    if not missing:
        log(f"Multi30k already present and verified in {out}; nothing to download.")
        return out
    if insecure:
        log("WARNING: --insecure: TLS certificates are NOT verified (sha256 checksums still are).")
    log(f"Fetching Multi30k into {out}: {', '.join(missing)}")
    run = _Run(out, missing, insecure, timeout, log)
    for mirror in [*mirrors, *BUILTIN_MIRRORS]:
        run.from_mirror(str(mirror))
        if not run.missing:
            log(f"Multi30k ready in {out}")
            return out
    raise FetchError(_failure_message(out, run))


def _is_verified(path, log):
    """True if `path` exists with its pinned sha256 (a corrupt one is reported)."""
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() == TEXT_SHA256[path.name]:
        return True
    log(f"{path} does not match its sha256; fetching it again.")
    return False


class _Run:
    """State of one fetch: what is still missing, what failed, which tools are cut off."""

    def __init__(self, out, missing, insecure, timeout, log):
        self.out = out
        self.missing = list(missing)
        self.insecure = insecure
        self.timeout = timeout
        self.log = log
        self.tools = _available_tools()
        self.failures = []  # one line per failed attempt
        self.cut_off = defaultdict(set)  # mirror -> tools that could not reach it
        self.tried_tarballs = set()

    def from_mirror(self, mirror):
        """Try every missing file on one mirror: its gzip first, then its tarball."""
        local = _local_dir(mirror)
        if local is not None and not local.is_dir():
            self._fail("local", str(local), "no such directory")
            return
        if local is None and not self.tools:
            self._fail("-", mirror, "no download tool available (download, wget, curl)")
            return
        for name in list(self.missing):
            if name not in self.missing:  # delivered meanwhile by a tarball
                continue
            if local is None and self.cut_off[mirror] >= {tool for tool, _ in self.tools}:
                self.log(f"  skipping the rest of {mirror}: unreachable")
                return
            if self._get(mirror, gzip_name(name), lambda path: self._from_gzip(path, name)):
                continue
            tarball = SPLITS[name.split(".")[0]].tarball
            if (mirror, tarball) not in self.tried_tarballs:
                self.tried_tarballs.add((mirror, tarball))
                self._get(mirror, tarball, self._from_tarball)

    def _get(self, mirror, filename, use):
        """Obtain mirror/filename until ``use(path)`` accepts a copy; True on success."""
        local = _local_dir(mirror)
        if local is not None:
            path = local / filename
            return self._attempt("local", str(path), lambda: use(_existing(path))) is None
        url = f"{mirror.rstrip('/')}/{filename}"
        for tool, download_with in self.tools:
            if tool in self.cut_off[mirror]:
                continue
            part = _part_file(self.out, filename)

            def attempt():
                download_with(url, part, self.insecure, self.timeout)
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

    def _from_gzip(self, path, name):
        try:
            with gzip.open(path) as stream:
                self._install(stream, name)
        except (OSError, EOFError, zlib.error) as err:
            raise _Failed(_classify(str(err))) from err

    def _from_tarball(self, path):
        """Install every missing file the tarball holds, after checking all its members."""
        try:
            with tarfile.open(path, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member)
                wanted = {
                    posixpath.basename(m.name): m
                    for m in members
                    if m.isfile() and posixpath.basename(m.name) in self.missing
                }
                if not wanted:
                    raise _Failed("archive holds none of the missing files")
                problems = []
                for name, member in wanted.items():
                    try:
                        self._install(tar.extractfile(member), name)
                    except _Failed as err:
                        problems.append(str(err))
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise _Failed(_classify(str(err))) from err
        if problems:
            raise _Failed("; ".join(problems))

    def _install(self, stream, name):
        """Write `stream` to <out>/<name> if its sha256 is the pinned one."""
        part = _part_file(self.out, name)
        try:
            digest = hashlib.sha256()
            with open(part, "wb") as f:
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != TEXT_SHA256[name]:
                raise _Failed(f"checksum mismatch for {name}")
            os.replace(part, self.out / name)
        finally:
            part.unlink(missing_ok=True)
        self.missing.remove(name)


def _local_dir(mirror):
    """The directory a ``file://`` URL or plain path names; None for a remote URL."""
    parsed = urllib.parse.urlparse(mirror)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme and not PureWindowsPath(mirror).drive:
        return None
    return Path(mirror).expanduser()


def _existing(path):
    if not path.is_file():
        raise _Failed("not found")
    return path


def _part_file(directory, name):
    """A fresh hidden temporary file next to the final one, e.g. .train.de.gz.part-1a2b3c4d."""
    path = directory / f".{name}.part-{secrets.token_hex(4)}"
    path.touch(exist_ok=False)  # unlike mkstemp, keeps the usual umask-based permissions
    return path


def _check_member(member):
    """Refuse a tar member that could write outside the target or is not a plain file."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        reason = "absolute path"
    elif ".." in re.split(r"[\\/]", name):
        reason = "'..' in path"
    elif member.issym() or member.islnk():
        reason = "link"
    elif not (member.isfile() or member.isdir()):
        reason = "device, fifo or other special file"
    else:
        return
    raise _Failed(f"unsafe archive member {name!r} ({reason}); archive refused")


# ---- the three download tools: each raises _Failed(cause) or leaves the file at `dest`


def _with_download_package(url, dest, insecure, timeout):
    from download import download  # pulls in tqdm: import only when needed

    with _python_network(insecure, timeout):
        try:
            download(url, str(dest), progressbar=True, replace=True, timeout=timeout, verbose=False)
        except Exception as err:  # download() wraps every error in a RuntimeError
            raise _Failed(_classify(str(err))) from err


@contextlib.contextmanager
def _python_network(insecure, timeout):
    """download() takes no TLS context and reads without a timeout: set both for one call."""
    saved_timeout, saved_context = socket.getdefaulttimeout(), ssl._create_default_https_context
    socket.setdefaulttimeout(timeout)
    if insecure:
        ssl._create_default_https_context = ssl._create_unverified_context
    try:
        yield
    finally:
        socket.setdefaulttimeout(saved_timeout)
        ssl._create_default_https_context = saved_context


def _with_wget(url, dest, insecure, timeout):
    # Verbose (the default), because --no-verbose hides why a transfer broke off.
    command = ["wget", "--tries=1", f"--timeout={timeout:g}", "-O", str(dest), url]
    if insecure:
        command.insert(1, "--no-check-certificate")
    _run_tool(command)


def _with_curl(url, dest, insecure, timeout):
    # "No byte for `timeout` seconds" rather than --max-time, which would also cut off
    # a slow download that is still making progress.
    command = [
        "curl", "-fsSL", "--retry", "0",
        "--connect-timeout", f"{timeout:g}",
        "--speed-limit", "1", "--speed-time", str(math.ceil(timeout)),
        "-o", str(dest), url,
    ]  # fmt: skip
    if insecure:
        command.insert(1, "-k")
    _run_tool(command)


def _run_tool(command):
    env = {**os.environ, "LC_ALL": "C"}  # English messages, for _classify
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode:
        raise _Failed(_classify(result.stderr or f"exit status {result.returncode}"))


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
_CAUSES = [  # first match wins; covers Python, wget, curl, gzip and tarfile messages
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
]


def _classify(text):
    """Map a tool's error text to a short cause ("HTTP 404", "timeout", ...)."""
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
    lines = [f"Could not fetch Multi30k: {', '.join(run.missing)} still missing. Attempts:"]
    lines += [f"  {line}" for line in run.failures] or ["  (none)"]
    if any(line.endswith("SSL verification failed") for line in run.failures):
        lines.append(
            "Note: TLS verification failed; if you trust the network, --insecure skips it"
            " (the checksums are still enforced)."
        )
    lines += [
        "Two ways out:",
        "  (a) download the files by hand (from any machine) into a directory DIR, either",
        f"      the gzips {gzips}",
        f"      or the WMT16 tarballs {tarballs},",
        "      then run again with --mirror DIR;",
        "  (b) put the decompressed text files at exactly these paths (checked by sha256):",
    ]
    lines += [f"      {out / name}  sha256 {digest}" for name, digest in TEXT_SHA256.items()]
    return "\n".join(lines)


def add_fetch_arguments(parser):
    """Add --data-dir, --mirror, --insecure and --timeout; dests match fetch_multi30k()."""
    parser.add_argument(
        "--data-dir", default=DEFAULT_DATA_DIR,
        help="files go to DATA_DIR/multi30k (default: $MINDTRANS_DATA_DIR or 'data')",
    )  # fmt: skip
    parser.add_argument(
        "--mirror", dest="mirrors", action="append", default=[], metavar="URL_OR_DIR",
        help="http(s)://, file:// URL or directory to try before the built-in mirrors (repeatable; "
             "$MINDTRANS_MIRROR adds more)",
    )  # fmt: skip
    parser.add_argument(
        "--insecure", action="store_true",
        help="do not verify TLS certificates (the sha256 checksums are still enforced)",
    )  # fmt: skip
    parser.add_argument(
        "--timeout", type=float, default=10.0,
        help="seconds without progress before an attempt is abandoned (default: 10)",
    )  # fmt: skip
    return parser


def main(argv=None):
    """Command line entry point: 0 on success, 1 (after printing why) on failure."""
    parser = argparse.ArgumentParser(description="Download the Multi30k de-en corpus (task 1).")
    args = add_fetch_arguments(parser).parse_args(argv)
    try:
        fetch_multi30k(args.data_dir, args.mirrors + env_mirrors(), args.insecure, args.timeout)
    except FetchError as err:
        print(err, file=sys.stderr)
        return 1
    return 0
