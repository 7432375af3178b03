"""Tests for mindtrans.fetch: loopback HTTP(S) servers and local files only."""
import gzip
import http.server
import io
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from mindtrans import fetch
from mindtrans.fetch import TEXT_SHA256, FetchError, Source, fetch_multi30k, gzip_name, main
from mindtrans.fetch import parse_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k"
NAMES = list(TEXT_SHA256)
BUILTIN_MIRRORS = fetch.BUILTIN_MIRRORS  # as shipped: the `hermetic` fixture empties it
COURSE_ZIP = {  # the course's Multi30K.zip: datasets/{train,valid,test}/, found by extension
    "datasets/train/train.de": "train.de",
    "datasets/train/train.en": "train.en",
    "datasets/valid/valid.de": "val.de",
    "datasets/valid/valid.en": "val.en",
    "datasets/test/test.de": "test2016.de",
    "datasets/test/test.en": "test2016.en",
}
MODELSCOPE_PATH = "api/v1/datasets/x/repo?Revision=master&FilePath=Multi30K.zip"
TARBALL_MEMBERS = {  # WMT16 layout; one archive keeps its files in a subfolder
    "training.tar.gz": ["train.de", "train.en"],
    "validation.tar.gz": ["val.de", "val.en"],
    "mmt_task1_test2016.tar.gz": ["mmt16/test2016.de", "mmt16/test2016.en"],
}


# ---- data ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gz_files():
    """The six real per-file gzips, name -> bytes."""
    paths = [SHARED / gzip_name(name) for name in NAMES]
    if not all(path.is_file() for path in paths):
        pytest.skip(f"real Multi30k gzips not found in {SHARED}")
    return {path.name: path.read_bytes() for path in paths}


@pytest.fixture(scope="session")
def texts(gz_files):
    """The six decompressed texts, output name -> bytes."""
    return {name: gzip.decompress(gz_files[gzip_name(name)]) for name in NAMES}


def make_tarball(members):
    """A .tar.gz (bytes) of (TarInfo, data-or-None) pairs."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.fixture(scope="session")
def tarballs(texts):
    """The three WMT16 tarballs built from the real texts, name -> bytes."""
    return {
        tarball: make_tarball([regular(m, texts[m.split("/")[-1]]) for m in members])
        for tarball, members in TARBALL_MEMBERS.items()
    }


def make_zip(members):
    """A zip (bytes) of (name-or-ZipInfo, data) pairs; names ending in / are folders."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for info, data in members:
            archive.writestr(info, data)
    return buffer.getvalue()


def course_members(texts, **replaced):
    """(member, data) of the course's zip, plus a folder and a macOS leftover.

    `replaced` maps output names to other data for their members.
    """
    members = [("datasets/", b""), ("__MACOSX/datasets/train/._train.de", b"\0\5\26\7")]
    for member, name in COURSE_ZIP.items():
        members.append((member, replaced.get(name, texts[name])))
    return members


def zip_special(name, mode, data=b""):
    """A zip member carrying a Unix file type (symlink, fifo) in its external attributes."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = mode << 16
    return info, data


def write_dir(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def populate(data_dir, texts, names):
    """Put verified output files in place, as if an earlier run had fetched them."""
    write_dir(fetch.multi30k_dir(data_dir), {name: texts[name] for name in names})


def leftovers(directory):
    """Hidden (temporary) files anywhere under `directory`."""
    return sorted(str(p) for p in Path(directory).rglob(".*"))


def assert_fetched(data_dir, texts):
    out = fetch.multi30k_dir(data_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    for name in NAMES:
        assert (out / name).read_bytes() == texts[name]


# ---- environment and servers --------------------------------------------------------


@pytest.fixture(autouse=True)
def hermetic(monkeypatch, tmp_path_factory):
    """No built-in (internet) mirrors, no proxies, no user wgetrc/curlrc."""
    monkeypatch.setattr(fetch, "BUILTIN_MIRRORS", ())
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    config = tmp_path_factory.mktemp("config")
    (config / "wgetrc").write_text("")
    monkeypatch.setenv("WGETRC", str(config / "wgetrc"))
    monkeypatch.setenv("CURL_HOME", str(config))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """Clients hanging up early (download() probes twice) is expected: stay quiet."""


class _Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5  # a stuck client never pins a server thread

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.server.truncate else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    """serve(files, truncate=False, tls=None) -> (base URL, server); server.requests logs paths."""
    servers = []

    def start(files, truncate=False, tls=None):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.files, server.truncate, server.requests = files, truncate, []
        scheme = "http"
        if tls is not None:
            server.socket = tls.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
            scheme = "https"
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def refused_url():
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url():
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory):
    """(cert, server TLS context) for a self-signed 127.0.0.1 certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not found")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def need(*tools):
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not on PATH: {', '.join(missing)}")


def run(data_dir, mirrors, **kwargs):
    """fetch_multi30k with a short timeout; returns (output dir, log text)."""
    lines = []
    kwargs.setdefault("timeout", 5)
    out = fetch_multi30k(data_dir, mirrors, log=lines.append, **kwargs)
    return out, "\n".join(lines)


def run_failing(data_dir, mirrors, **kwargs):
    """Like run() but expects FetchError; returns (message, log text)."""
    lines = []
    kwargs.setdefault("timeout", 5)
    with pytest.raises(FetchError) as caught:
        fetch_multi30k(data_dir, mirrors, log=lines.append, **kwargs)
    return str(caught.value), "\n".join(lines)


# ---- tests --------------------------------------------------------------------------


def test_dead_mirrors_then_good_one(tmp_path, serve, refused_url, gz_files, texts):
    url_404, _ = serve({})
    good, _ = serve(gz_files)
    out, log = run(tmp_path, [refused_url, url_404, good])
    assert_fetched(tmp_path, texts)
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {refused_url}/train.de.gz: connection refused" in log
    assert f"skipping the rest of {refused_url}: unreachable or too slow" in log
    assert log.count(refused_url) == 4  # three tools once each, then the mirror is skipped
    assert f"[download] {url_404}/train.de.gz: HTTP 404" in log
    assert f"[wget] {url_404}/train.de.gz" not in log  # a 404 is not asked again
    assert f"[download] {url_404}/training.tar.gz: HTTP 404" in log
    assert f"[download] {good}/test_2016_flickr.en.gz: ok" in log
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "body, cause",
    [(gzip.compress(b"wrong\n"), "checksum mismatch"), (b"<html>wrong</html>", "not a gzip file")],
    ids=["wrong-text", "not-gzip"],
)
def test_wrong_bytes_are_rejected(tmp_path, serve, texts, body, cause):
    populate(tmp_path, texts, [n for n in NAMES if n != "val.en"])
    url, _ = serve({gzip_name("val.en"): body})
    message, log = run_failing(tmp_path, [url])
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {url}/val.en.gz: {cause}" in message
    assert not (fetch.multi30k_dir(tmp_path) / "val.en").exists()
    assert leftovers(tmp_path) == []


def test_truncated_transfer_is_rejected(tmp_path, serve, gz_files, texts):
    populate(tmp_path, texts, [n for n in NAMES if n != "train.de"])
    url, _ = serve(gz_files, truncate=True)
    message, _ = run_failing(tmp_path, [url])
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {url}/train.de.gz: truncated" in message
    assert not (fetch.multi30k_dir(tmp_path) / "train.de").exists()
    assert leftovers(tmp_path) == []


def test_wmt16_tarball_mirror(tmp_path, serve, tarballs, texts):
    url, _ = serve(tarballs)
    _, log = run(tmp_path, [url])
    assert_fetched(tmp_path, texts)
    for tarball in TARBALL_MEMBERS:
        assert log.count(f"{url}/{tarball}") == 1  # one download serves both languages
    assert f"[download] {url}/train.de.gz: HTTP 404" in log
    assert f"{url}/train.en.gz" not in log  # already delivered by training.tar.gz
    assert leftovers(tmp_path) == []


def _unsafe_members(tmp_path):
    def special(name, kind, target=""):
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        return info, None

    outside = tmp_path / "outside-evil"
    return {
        "dotdot": ("../evil", regular("../evil", b"evil\n")),
        "absolute": (str(outside), regular(str(outside), b"evil\n")),
        "symlink": ("val.de", special("val.de", tarfile.SYMTYPE, "/etc/passwd")),
        "hardlink": ("val.de", special("val.de", tarfile.LNKTYPE, "/etc/passwd")),
        "fifo": ("pipe", special("pipe", tarfile.FIFOTYPE)),
    }


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "fifo"])
def test_unsafe_tarball_is_refused(tmp_path, texts, gz_files, kind):
    member_name, bad = _unsafe_members(tmp_path)[kind]
    populate(tmp_path / "data", texts, [n for n in NAMES if not n.startswith("val.")])
    tarball = make_tarball(
        [regular("val.en", texts["val.en"]), bad, regular("val.de", texts["val.de"])]
    )
    evil = write_dir(tmp_path / "evil", {"validation.tar.gz": tarball})
    good = write_dir(tmp_path / "good", {n: gz_files[n] for n in ("val.de.gz", "val.en.gz")})

    _, log = run(tmp_path / "data", [evil, good])
    assert f"unsafe archive member {member_name!r}" in log and "archive refused" in log
    assert f"[local] {good / 'val.de.gz'}: ok" in log  # the next mirror delivered instead
    assert_fetched(tmp_path / "data", texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "evil", "good"]  # nothing outside
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("as_url", [False, True], ids=["directory", "file-url"])
def test_local_mirror(tmp_path, gz_files, texts, as_url):
    directory = write_dir(tmp_path / "mirror", gz_files)
    out, _ = run(tmp_path / "data", directory.as_uri() if as_url else str(directory))
    assert out == tmp_path / "data" / "multi30k"
    assert_fetched(tmp_path / "data", texts)
    assert leftovers(tmp_path) == []


def test_local_tarball_mirror(tmp_path, tarballs, texts):
    run(tmp_path / "data", [write_dir(tmp_path / "mirror", tarballs)])
    assert_fetched(tmp_path / "data", texts)


def test_second_run_touches_no_network(tmp_path, serve, refused_url, texts):
    populate(tmp_path, texts, NAMES)
    url, server = serve({})
    _, log = run(tmp_path, [url, refused_url])
    assert server.requests == []
    out = fetch.multi30k_dir(tmp_path)
    assert log == f"Multi30k already present and verified in {out}; nothing to download."


def test_a_file_that_is_not_multi30k_is_kept_aside_and_fetched_again(tmp_path, gz_files, texts):
    populate(tmp_path / "data", texts, NAMES)
    out = fetch.multi30k_dir(tmp_path / "data")
    (out / "val.de").write_bytes(b"my own sentences\n")
    (out / "val.de.replaced-1").write_bytes(b"set aside before\n")
    _, log = run(tmp_path / "data", [write_dir(tmp_path / "mirror", gz_files)])
    assert "val.de does not match Multi30k's sha256: kept as val.de.replaced-2" in log
    assert "val.de.gz: ok" in log and "train.de.gz" not in log
    assert (out / "val.de.replaced-2").read_bytes() == b"my own sentences\n"  # nothing a user made is lost
    assert (out / "val.de.replaced-1").read_bytes() == b"set aside before\n"
    assert all((out / name).read_bytes() == texts[name] for name in NAMES)


@pytest.mark.parametrize("layout", ["plain", "upper-case gzips", "nested, mixed", "the course's folders",
                                    "gzips saved unpacked"])
def test_a_local_mirror_is_searched_by_name_at_any_depth(tmp_path, gz_files, texts, layout):
    files = {
        "plain": {name: texts[name] for name in NAMES},
        "upper-case gzips": {gzip_name(name).upper(): gz_files[gzip_name(name)] for name in NAMES},
        "nested, mixed": {f"Multi30k/data/{gzip_name(name) if name.endswith('de') else name}":
                          gz_files[gzip_name(name)] if name.endswith("de") else texts[name] for name in NAMES},
        "the course's folders": {path: texts[name] for path, name in COURSE_ZIP.items()},
        "gzips saved unpacked": {gzip_name(name): texts[name] for name in NAMES},
    }[layout]
    mirror = tmp_path / "mirror"
    for relative, data in files.items():
        (mirror / relative).parent.mkdir(parents=True, exist_ok=True)
        (mirror / relative).write_bytes(data)
    (mirror / "test").mkdir(exist_ok=True)  # another test set in a folder named test: not test2016
    (mirror / "test" / "test_2017_flickr.de").write_bytes(b"Ein anderer Testsatz.\n")
    _, log = run(tmp_path / "data", [str(mirror)])
    assert log.count(": ok") == 6, log
    assert_fetched(tmp_path / "data", texts)


def test_a_single_text_file_is_a_mirror_of_itself(tmp_path, gz_files, texts):
    populate(tmp_path / "data", texts, [name for name in NAMES if name != "val.en"])
    single = write_dir(tmp_path / "download", {gzip_name("val.en"): gz_files[gzip_name("val.en")]})
    _, log = run(tmp_path / "data", [str(single / gzip_name("val.en"))])
    assert f"[local] {single / gzip_name('val.en')}: ok" in log
    assert_fetched(tmp_path / "data", texts)


def test_mirrors_in_the_environment_keep_the_colons_of_their_urls(monkeypatch):
    monkeypatch.setattr(fetch.os, "pathsep", ":")
    monkeypatch.setenv("MINDTRANS_MIRROR", "/data/m30k:https://127.0.0.1:8731/multi30k:~/zips/Multi30K.zip::"
                                           "file:///srv/m30k:http://mirror.example/a")
    assert fetch.env_mirrors() == ["/data/m30k", "https://127.0.0.1:8731/multi30k", "~/zips/Multi30K.zip",
                                   "file:///srv/m30k", "http://mirror.example/a"]


def test_unresponsive_mirror_costs_about_the_timeout(tmp_path, silent_url, gz_files, texts):
    good = write_dir(tmp_path / "mirror", gz_files)
    start = time.monotonic()
    _, log = run(tmp_path / "data", [silent_url, good], timeout=1)
    assert time.monotonic() - start < 15
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {silent_url}/train.de.gz: timeout" in log
    assert f"skipping the rest of {silent_url}: unreachable or too slow" in log
    assert_fetched(tmp_path / "data", texts)


def test_insecure_still_enforces_checksums(tmp_path, serve, self_signed, texts):
    populate(tmp_path, texts, [n for n in NAMES if n != "val.de"])
    url, _ = serve({"val.de.gz": gzip.compress(b"tampered\n")}, tls=self_signed[1])
    message, log = run_failing(tmp_path, [url], insecure=True)
    assert "WARNING: --insecure" in log
    for tool in ("download", "wget", "curl"):  # TLS skipped by each tool, checksum still failed
        assert f"[{tool}] {url}/val.de.gz: checksum mismatch for val.de" in message
    assert not (fetch.multi30k_dir(tmp_path) / "val.de").exists()
    assert leftovers(tmp_path) == []


def test_insecure_python_path_accepts_self_signed(tmp_path, serve, self_signed, gz_files, texts):
    url, _ = serve(gz_files, tls=self_signed[1])
    _, log = run(tmp_path, [url], insecure=True)
    assert f"[download] {url}/train.de.gz: ok" in log
    assert_fetched(tmp_path, texts)


def test_self_signed_https_python_fails_wget_succeeds(
    tmp_path, monkeypatch, serve, self_signed, gz_files, texts
):
    """OpenI: Python's trust store lacks the certificate, the system wget (via wgetrc) has it."""
    need("wget")
    cert, context = self_signed
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "wgetrc").write_text(f"ca_certificate = {cert}\n")
    monkeypatch.setenv("WGETRC", str(tmp_path / "wgetrc"))
    url, _ = serve(gz_files, tls=context)

    _, log = run(tmp_path / "data", [url])
    assert f"[download] {url}/train.de.gz: SSL verification failed" in log
    assert log.count("[download]") == 1  # Python cannot reach this mirror: not asked again
    for name in NAMES:
        assert f"[wget] {url}/{gzip_name(name)}: ok" in log
    assert "[curl]" not in log
    assert_fetched(tmp_path / "data", texts)


def test_secure_by_default_without_wgetrc(tmp_path, monkeypatch, serve, self_signed, gz_files):
    need("wget", "curl")
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    url, server = serve(gz_files, tls=self_signed[1])
    message, _ = run_failing(tmp_path, [url])
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {url}/train.de.gz: SSL verification failed" in message
    assert "--insecure" in message
    assert server.requests == []  # no request ever got past the TLS handshake


def test_a_users_tool_config_cannot_switch_the_certificate_check_off(tmp_path, monkeypatch, serve, self_signed,
                                                                     gz_files):
    need("wget", "curl")
    for var in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "wgetrc").write_text("check_certificate = off\n")
    (tmp_path / ".curlrc").write_text("insecure\n")
    monkeypatch.setenv("WGETRC", str(tmp_path / "wgetrc"))
    monkeypatch.setenv("CURL_HOME", str(tmp_path))
    url, server = serve(gz_files, tls=self_signed[1])
    message, _ = run_failing(tmp_path / "data", [url])
    for tool in ("wget", "curl"):
        assert f"[{tool}] {url}/train.de.gz: SSL verification failed" in message
    assert server.requests == []


def test_everything_fails(tmp_path, serve, refused_url):
    url_404, _ = serve({})
    missing_dir = tmp_path / "nowhere"
    message, log = run_failing(tmp_path / "data", [refused_url, url_404, str(missing_dir)])
    failures = [line.strip() for line in log.splitlines() if line.startswith("  [")]
    assert len(failures) == 3 + 6 + 3 + 1  # refused x3 tools, 6 gzips and 3 tarballs 404, no dir
    for line in failures:
        assert line in message
    assert "--mirror DIR" in message  # way out (a)
    for name in NAMES:
        assert gzip_name(name) in message
        expected_path = fetch.multi30k_dir(tmp_path / "data") / name
        assert f"{expected_path}  sha256 {TEXT_SHA256[name]}" in message  # way out (b)
    for tarball in TARBALL_MEMBERS:
        assert tarball in message
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []


def test_missing_tools_are_skipped(tmp_path, monkeypatch, refused_url):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    message, _ = run_failing(tmp_path, [refused_url])
    assert f"[download] {refused_url}/train.de.gz: connection refused" in message
    assert "[wget]" not in message and "[curl]" not in message


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, serve, gz_files):
    def interrupted(url, dest, insecure, timeout, limit):
        dest.write_bytes(b"half")
        dest.with_name(dest.name + ".part").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setitem(fetch._TOOL_FUNCTIONS, "download", interrupted)
    url, _ = serve(gz_files)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, [url])
    assert list(fetch.multi30k_dir(tmp_path).iterdir()) == []


def test_main_exit_codes(tmp_path, capsys, gz_files, refused_url):
    mirror = write_dir(tmp_path / "mirror", gz_files)
    assert main(["--data-dir", str(tmp_path / "ok"), "--mirror", str(mirror)]) == 0
    assert main(["--data-dir", str(tmp_path / "ok")]) == 0
    assert "nothing to download" in capsys.readouterr().out

    failing = ["--data-dir", str(tmp_path / "ko"), "--mirror", refused_url, "--timeout", "2"]
    assert main(failing) == 1
    err = capsys.readouterr().err
    assert "connection refused" in err and "Two ways out" in err


def test_add_fetch_arguments_matches_fetch_signature():
    import argparse

    args = fetch.add_fetch_arguments(argparse.ArgumentParser()).parse_args(
        ["--mirror", "a", "--mirror", "b", "--insecure", "--timeout", "3", "--data-dir", "d"]
    )
    assert vars(args) == {"data_dir": "d", "mirrors": ["a", "b"], "insecure": True, "timeout": 3.0,
                          "deadline": fetch.DEFAULT_DEADLINE}


# ---- archives: the course's zip, ModelScope, safety, diagnostics ---------------------


def test_builtin_sources_start_with_modelscope():
    assert BUILTIN_MIRRORS[0] == fetch.MODELSCOPE_ZIP == (
        "https://modelscope.cn/api/v1/datasets/SelinaRR/Multi30K/repo"
        "?Revision=master&FilePath=Multi30K.zip"
    )
    assert parse_source(BUILTIN_MIRRORS[0]) == Source("archive", BUILTIN_MIRRORS[0], "Multi30K.zip")
    assert [parse_source(m).kind for m in BUILTIN_MIRRORS[1:]] == ["base"]
    assert "raw.githubusercontent.com/multi30k" in BUILTIN_MIRRORS[1]
    assert not any("shef.ac.uk" in m for m in BUILTIN_MIRRORS)  # that server is gone


def test_parse_source(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "saved-by-wget").write_bytes(b"")  # e.g. repo?Revision=master&FilePath=...
    cases = {
        "https://host/a/Multi30K.zip": "archive",
        "http://host/wmt16/training.tar.gz": "archive",
        "https://host/x.tgz?token=1": "archive",
        "https://host/repo?Revision=master&FilePath=data%2FMulti30K.zip": "archive",
        "https://host/task1/raw": "base",
        "https://host/task1/raw/": "base",
        str(tmp_path / "dir"): "base",
        (tmp_path / "dir").as_uri(): "base",
        str(tmp_path / "saved-by-wget"): "archive",
        str(tmp_path / "missing.zip"): "archive",  # fails later as "not found"
        str(tmp_path / "missing"): "base",  # fails later as "no such directory"
    }
    assert {mirror: parse_source(mirror).kind for mirror in cases} == cases
    assert parse_source("https://host/repo?FilePath=data%2FMulti30K.zip").archive == "Multi30K.zip"


@pytest.mark.parametrize(
    "member, name",
    [
        ("datasets/train/train.de", "train.de"),
        ("datasets/valid/newstest.en", "val.en"),
        ("./Dev/x.de", "val.de"),
        ("datasets/test/test.de", "test2016.de"),
        ("mmt16/test2016.en", "test2016.en"),
        ("a/b/test_2016_flickr.de", "test2016.de"),
        ("val.en", "val.en"),
        ("datasets/train/train.fr", None),
        ("datasets/other/x.de", None),
        ("datasets/train/.hidden.de", None),
        ("__MACOSX/datasets/train/._train.de", None),
        ("__MACOSX/datasets/train/train.de", None),
        ("datasets/train/", None),
        ("raw/TRAIN.DE.gz", "train.de"),
        ("Datasets/Valid/x.EN", "val.en"),
        ("datasets/train/train.de.gz.bak", None),
    ],
)
def test_output_name(member, name):
    assert fetch._output_name(member) == name


def test_course_zip_over_http(tmp_path, capsys, serve, texts):
    url, server = serve({"Multi30K.zip": make_zip(course_members(texts))})
    assert main(["--data-dir", str(tmp_path), "--mirror", f"{url}/Multi30K.zip"]) == 0
    assert f"[download] {url}/Multi30K.zip: ok" in capsys.readouterr().out
    assert set(server.requests) == {"/Multi30K.zip"}  # the archive only: no gzip is asked for
    assert_fetched(tmp_path, texts)
    assert leftovers(tmp_path) == []


def test_modelscope_shaped_query_url(tmp_path, capsys, serve, texts):
    url, server = serve({MODELSCOPE_PATH: make_zip(course_members(texts))})
    assert main(["--data-dir", str(tmp_path), "--mirror", f"{url}/{MODELSCOPE_PATH}"]) == 0
    assert f"[download] {url}/{MODELSCOPE_PATH}: ok" in capsys.readouterr().out
    assert set(server.requests) == {f"/{MODELSCOPE_PATH}"}
    assert_fetched(tmp_path, texts)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_course_zip_local_path(tmp_path, capsys, texts, as_url):
    archive = tmp_path / "Multi30K.zip"
    archive.write_bytes(make_zip(course_members(texts)))
    mirror = archive.as_uri() if as_url else str(archive)
    assert main(["--data-dir", str(tmp_path / "data"), "--mirror", mirror]) == 0
    assert f"[local] {archive}: ok" in capsys.readouterr().out
    assert_fetched(tmp_path / "data", texts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Multi30K.zip", "data"]
    assert leftovers(tmp_path) == []


def test_tarballs_as_archive_mirrors(tmp_path, tarballs, texts):
    mirror = write_dir(tmp_path / "mirror", tarballs)
    run(tmp_path / "data", [mirror / name for name in TARBALL_MEMBERS])
    assert_fetched(tmp_path / "data", texts)


@pytest.mark.parametrize("compression", ["w", "w:gz"])
def test_an_archive_of_the_six_gzips_is_unpacked_twice(tmp_path, gz_files, texts, compression):
    buffer = io.BytesIO()  # what `tar czf multi30k.tgz *.gz` makes of the repository's files
    with tarfile.open(fileobj=buffer, mode=compression) as tar:
        for name, data in gz_files.items():
            tar.addfile(regular(f"raw/{name.upper() if name.startswith('val') else name}", data)[0],
                        io.BytesIO(data))
    archive = write_dir(tmp_path / "mirror", {"multi30k.tgz": buffer.getvalue()}) / "multi30k.tgz"
    run(tmp_path / "data", [archive])
    assert_fetched(tmp_path / "data", texts)
    assert leftovers(tmp_path) == []


def test_an_archive_holding_a_file_both_plain_and_gzipped_is_not_ambiguous(tmp_path, gz_files, texts):
    members = [(name, data) for name, data in gz_files.items()]  # gunzipped beside the gzip, then the plain:
    members += [(name.removesuffix(".gz"), gzip.decompress(data)) for name, data in gz_files.items()]
    archive = write_dir(tmp_path / "mirror", {"both.zip": make_zip(members)}) / "both.zip"
    run(tmp_path / "data", [archive])
    assert_fetched(tmp_path / "data", texts)


def _unsafe_zip_members():
    return {
        "dotdot": ("../evil.de", ("../evil.de", b"evil\n")),
        "absolute": ("/tmp/evil.de", ("/tmp/evil.de", b"evil\n")),
        "drive": ("C:evil.de", ("C:evil.de", b"evil\n")),
        "backslash": ("datasets\\..\\..\\evil.de", ("datasets\\..\\..\\evil.de", b"evil\n")),
        "symlink": (
            "datasets/valid/val.de",
            zip_special("datasets/valid/val.de", stat.S_IFLNK | 0o777, b"/etc/passwd"),
        ),
        "fifo": ("datasets/pipe", zip_special("datasets/pipe", stat.S_IFIFO | 0o644)),
    }


@pytest.mark.parametrize("kind", list(_unsafe_zip_members()))
def test_unsafe_zip_is_refused(tmp_path, texts, kind):
    member_name, bad = _unsafe_zip_members()[kind]
    archive = tmp_path / "evil" / "Multi30K.zip"
    archive.parent.mkdir()
    archive.write_bytes(make_zip(course_members(texts) + [bad]))  # the bad one comes last

    message, _ = run_failing(tmp_path / "data", [archive])
    assert f"[local] {archive}: unsafe archive member {member_name!r}" in message
    assert "archive refused" in message
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []  # not even the good ones
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "evil"]  # nothing outside
    assert sorted(p.name for p in (tmp_path / "evil").iterdir()) == ["Multi30K.zip"]


@pytest.mark.parametrize("kind", ["unsafe", "json"])
def test_refused_remote_archive_leaves_nothing(tmp_path, serve, texts, kind):
    if kind == "unsafe":
        body = make_zip(course_members(texts) + [("../evil.de", b"evil\n")])
        cause = "unsafe archive member '../evil.de' ('..' in path); archive refused"
    else:  # what an API may answer, with status 200, instead of the file
        body = b'{"Code":10010205,"Message":"file not found"}'
        cause = f"not a zip or tar archive (starts with {body[:40]!r})"
    url, _ = serve({MODELSCOPE_PATH: body})
    message, _ = run_failing(tmp_path, [f"{url}/{MODELSCOPE_PATH}"])
    for tool in ("download", "wget", "curl"):
        assert f"[{tool}] {url}/{MODELSCOPE_PATH}: {cause}" in message
    assert list(fetch.multi30k_dir(tmp_path).iterdir()) == []
    assert leftovers(tmp_path) == []


def test_ambiguous_zip_is_refused(tmp_path, texts):
    members = course_members(texts) + [("datasets/dev/newstest.de", texts["val.de"])]
    archive = write_dir(tmp_path / "m", {"Multi30K.zip": make_zip(members)}) / "Multi30K.zip"
    message, _ = run_failing(tmp_path / "data", [archive])
    assert (
        "ambiguous archive: 'datasets/valid/valid.de' and 'datasets/dev/newstest.de' could both"
        " be val.de; archive refused"
    ) in message
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []


BOMB = b"\0" * (16 << 20)  # 16 MiB of zeros: 16 KiB deflated, far past val.de's cap


def _lying_zip(members, claimed):
    """A zip whose last member's headers claim `claimed` bytes instead of its real size."""
    data = bytearray(make_zip(members))
    real = len(members[-1][1]).to_bytes(4, "little")
    local, central = data.rfind(b"PK\x03\x04"), data.rfind(b"PK\x01\x02")
    for at in (local + 22, central + 24):  # uncompressed size, local header and central directory
        assert data[at : at + 4] == real
        data[at : at + 4] = claimed.to_bytes(4, "little")
    return bytes(data)


@pytest.mark.parametrize("kind", ["zip", "zip-lying-header", "gzip"])
def test_bomb_is_refused_without_writing_past_the_cap(tmp_path, monkeypatch, texts, kind):
    written = []  # (bytes in the temporary file, cap) for each member unpacked
    copy = fetch._copy_capped

    def spy(stream, path, cap, label):
        try:
            return copy(stream, path, cap, label)
        finally:
            written.append((path.stat().st_size, cap))

    monkeypatch.setattr(fetch, "_copy_capped", spy)
    members = [m for m in course_members(texts) if m[0] != "datasets/valid/valid.de"]
    members.append(("datasets/valid/valid.de", BOMB))
    mirror = tmp_path / "m"
    if kind == "gzip":
        write_dir(mirror, {"val.de.gz": gzip.compress(BOMB, compresslevel=1)})
        cause = "val.de.gz (for val.de) unpacks to more than 217498 bytes; refused"
    elif kind == "zip":
        write_dir(mirror, {"Multi30K.zip": make_zip(members)})
        cause = (
            f"archive member 'datasets/valid/valid.de' would unpack to {len(BOMB)} bytes, more"
            " than the 217498 allowed for val.de; archive refused"
        )
    else:  # the header claims the real size: zipfile stops there, and the CRC fails
        write_dir(mirror, {"Multi30K.zip": _lying_zip(members, len(texts["val.de"]))})
        cause = "corrupt data"
    if kind != "gzip":
        mirror = mirror / "Multi30K.zip"
    start = time.monotonic()
    message, _ = run_failing(tmp_path / "data", [mirror])
    assert time.monotonic() - start < 5
    assert cause in message
    assert fetch._cap("val.de") == 217498
    assert all(size <= cap for size, cap in written)
    if kind == "zip":
        assert written == []  # refused from its header, before unpacking anything
    if kind == "gzip":
        assert len(written) == 1  # no size in the header: refused while streaming


def test_a_gzipped_member_unpacking_past_the_cap_is_refused(tmp_path, texts):
    members = [(name, texts[name]) for name in NAMES if name != "val.de"]
    members.append(("val.de.gz", gzip.compress(BOMB, compresslevel=1)))
    archive = write_dir(tmp_path / "mirror", {"bomb.zip": make_zip(members)}) / "bomb.zip"
    message, _ = run_failing(tmp_path / "data", [archive])
    assert "val.de.gz (for val.de) unpacks to more than 217498 bytes; refused" in message
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []
    assert list(fetch.multi30k_dir(tmp_path / "data").iterdir()) == []


def test_text_that_differs_is_diagnosed(tmp_path, capsys, texts):
    val_de = texts["val.de"].split(b"\n")
    val_de.insert(959, "Ein Mann mit einem zusätzlichen Satz.".encode())
    replaced = {
        "val.de": b"\n".join(val_de),  # one line too many, at line 960
        "val.en": texts["val.en"].replace(b"\n", b"\r\n"),
        "test2016.de": texts["test2016.de"][:-1],
    }
    archive = write_dir(tmp_path, {"Multi30K.zip": make_zip(course_members(texts, **replaced))})
    data_dir = tmp_path / "data"
    assert main(["--data-dir", str(data_dir), "--mirror", str(archive / "Multi30K.zip")]) == 1
    message = capsys.readouterr().err
    line_951 = texts["val.de"].split(b"\n")[950].decode()
    assert (
        f"checksum mismatch for val.de: 1015 lines, expected 1014;"
        f" first difference in lines 951-1000: {line_951[:40] + '...'!r}"
    ) in message
    assert (
        "checksum mismatch for val.en: 1014 lines as expected; CRLF line endings; otherwise"
        " identical"
    ) in message
    assert (
        "checksum mismatch for test2016.de: 1000 lines as expected; no newline at the end;"
        " otherwise identical"
    ) in message
    out = fetch.multi30k_dir(data_dir)
    assert sorted(p.name for p in out.iterdir()) == ["test2016.en", "train.de", "train.en"]
    assert leftovers(tmp_path) == []


def _edit_line(number, new):
    def edit(text):
        lines = text.split(b"\n")
        lines[number - 1] = new
        return b"\n".join(lines)

    return edit


@pytest.mark.parametrize(
    "edit, diagnosis",
    [
        (lambda t: b"\xef\xbb\xbf" + t,
         "1014 lines as expected; starts with a UTF-8 BOM; otherwise identical"),
        (_edit_line(120, b"Ein Hund."),
         "1014 lines as expected; first difference in lines 101-150: 'Ein älterer, "),
        (_edit_line(1014, b"Ein Hund."), "first difference in lines 1001-1014: "),
        (lambda t: t[: t.index(b"\n", 60000) + 1], ", expected 1014; first difference in lines "),
        (lambda t: b"\n".join(t.split(b"\n")[:1000]) + b"\n",
         "1000 lines, expected 1014; first difference in lines 1001-1014: the file ends at line"
         " 1000"),
        (lambda t: t.decode().encode("latin-1", "replace"),
         "1014 lines as expected; not UTF-8 (from line 1);"),
        (lambda t: b"",
         "0 lines, expected 1014; first difference in lines 1-50: the file ends at line 0"),
    ],
    ids=["bom", "line-120", "last-line", "truncated", "short", "latin-1", "empty"],
)  # fmt: skip
def test_diagnose(tmp_path, texts, edit, diagnosis):
    served = tmp_path / "served"
    served.write_bytes(edit(texts["val.de"]))
    assert diagnosis in fetch._diagnose("val.de", served)


@pytest.mark.parametrize("message", [
    "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.\n"
    "The last 30x error message was:\nFound",  # Python
    "Location: /x.gz [following]\n20 redirections exceeded.",  # wget
    "curl: (47) Maximum (50) redirects followed",  # curl
])
def test_a_redirect_loop_is_called_one(message):
    assert fetch._classify(message) == "redirect loop"

