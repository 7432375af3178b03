"""Fixtures for the end-to-end test: a private JupyterLab server and headless Chromium.

Everything lives under pytest's tmp dir: a copy of notebooks/ served as the root dir (the
lessons write ../data and ../runs next to it), the Jupyter data/config/runtime dirs (the
project's kernel is registered there, never in ~/.local) and the lessons' data dir.

Environment knobs:
  MINDTRANS_CHROMIUM          Chromium binary (default /usr/bin/chromium, Debian's package)
  MINDTRANS_SCREENSHOTS       where the screenshots go (default artifacts/screenshots)
  MINDTRANS_LESSON_TIMEOUT    seconds one lesson may take to run all its cells (default 600)
  MINDTRANS_REQUIRE_BROWSER=1 turn "cannot run here" skips into failures
  MINDTRANS_FAST              passed to the kernels; defaults to 1 (fast mode) here
"""
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MINDTRANS_CHROMIUM", "/usr/bin/chromium")
INSTALL_HINT = "run scripts/install_browser_deps.sh (make test does)"
# As root in a container: no sandbox; no GPU; no background traffic (a closed network answers
# it with floods of refused connections); /tmp rather than a small /dev/shm for shared memory.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
KERNEL_NAME = "mindtrans"
KERNEL_DISPLAY_NAME = "Python 3 (mindtrans)"
SERVER_START_TIMEOUT = 120
SCREENSHOTS = pytest.StashKey[list]()  # (lesson, path, note), listed at the end of the run


def cannot_run(reason):
    """Skip with the reason, or fail when the caller demands the browser test really runs."""
    if os.environ.get("MINDTRANS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser test required (MINDTRANS_REQUIRE_BROWSER=1) but cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def cpu_device():
    """Overrides tests/conftest.py's fixture: this process needs no MindSpore (the kernels do)."""
    return None


@pytest.fixture(scope="session")
def playwright_api():
    if not os.access(CHROMIUM, os.X_OK):
        cannot_run(f"Chromium not found at {CHROMIUM}: {INSTALL_HINT}; it needs apt-get and root "
                   "or passwordless sudo (or set MINDTRANS_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        cannot_run(f"Playwright is not importable ({err}): {INSTALL_HINT}")
    try:
        api = sync_playwright().start()
    except Exception as err:  # the driver (the node binary inside the wheel) cannot start
        cannot_run(f"Playwright's driver does not start: {first_line(err)}")
    yield api
    api.stop()


@pytest.fixture(scope="session")
def browser(playwright_api):
    try:
        # Playwright gives the browser a fresh, temporary --user-data-dir.
        browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                                 headless=True, timeout=60_000)
    except Exception as err:
        cannot_run(f"Chromium at {CHROMIUM} does not launch: {first_line(err)}")
    yield browser
    browser.close()


def first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


class LabServer:
    """A running `jupyter lab` on 127.0.0.1; `api()` calls its REST API with the token."""

    kernel_name, kernel_display_name = KERNEL_NAME, KERNEL_DISPLAY_NAME

    def __init__(self, process, port, token, root, log):
        self.process, self.port, self.token, self.root, self.log = process, port, token, root, log
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path, method="GET", timeout=10):
        request = urllib.request.Request(self.base + path, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def lab_url(self, notebook):
        # ?reset: a blank workspace, so only this lesson is open (no tabs restored from the last one).
        return f"{self.base}/lab/tree/{notebook}?reset&token={self.token}"

    def shutdown_kernels(self):
        """Ends every session and its kernel (each MindSpore kernel holds hundreds of MB)."""
        try:
            for session in self.api("/api/sessions"):
                self.api(f"/api/sessions/{session['id']}", method="DELETE", timeout=30)
            for kernel in self.api("/api/kernels"):
                self.api(f"/api/kernels/{kernel['id']}", method="DELETE", timeout=30)
        except (OSError, ValueError):
            pass

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        if self.process.poll() is None:
            self.shutdown_kernels()
            # The server runs in its own session (process group): SIGTERM lets it stop its
            # kernels, SIGKILL follows if it hangs. Kernels run in sessions of their own but
            # watch the server (JPY_PARENT_PID) and exit when it is gone.
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # anything the server left in its group
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def lab_environment(work):
    """The server's environment: private Jupyter dirs, fast mode, tmp data dir, the mirror."""
    env = dict(os.environ)
    for var, sub in (("JUPYTER_DATA_DIR", "jupyter/data"), ("JUPYTER_CONFIG_DIR", "jupyter/config"),
                     ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("IPYTHONDIR", "ipython")):
        env[var] = str(work / sub)
        (work / sub).mkdir(parents=True, exist_ok=True)
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_PREFER_ENV_PATH", None)
    # Kernels inherit the server's environment: this is how fast mode reaches the lessons.
    env["MINDTRANS_FAST"] = os.environ.get("MINDTRANS_FAST", "1")
    env["MINDTRANS_DATA_DIR"] = str(work / "data")
    env["MINDTRANS_MIRROR"] = os.environ.get("MINDTRANS_MIRROR", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_lab_settings(config_dir):
    """User settings in the private config dir: no news/update prompts (a toast would cover the
    page and ask the closed network), no autosave, every cell in the DOM (no windowing), no
    blank page after the last cell, and each cell's run time in its metadata (for the report)."""
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab"
    write_json(settings / "apputils-extension" / "notification.jupyterlab-settings",
               {"fetchNews": "false", "checkForUpdates": False})
    write_json(settings / "notebook-extension" / "tracker.jupyterlab-settings",
               {"windowingMode": "none", "scrollPastEnd": False, "recordTiming": True})
    write_json(settings / "docmanager-extension" / "plugin.jupyterlab-settings", {"autosave": False})


@pytest.fixture(scope="session")
def lab_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    shutil.copytree(ROOT / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    env = lab_environment(work)
    write_lab_settings(Path(env["JUPYTER_CONFIG_DIR"]))

    # The project's kernel, registered as `make lab` does (--user = $JUPYTER_DATA_DIR here).
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--user", "--name", KERNEL_NAME,
                    "--display-name", KERNEL_DISPLAY_NAME], env=env, check=True, timeout=120,
                   capture_output=True)

    token = secrets.token_hex(24)
    env["JUPYTER_TOKEN"] = token  # as `make lab` passes it: not on the command line, where ps shows it
    log = work / "jupyterlab.log"
    last_error = None
    for _attempt in range(3):  # a free port may be taken between choosing and binding it
        port = free_port()
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                   "--ServerApp.port_retries=0",
                   f"--ServerApp.root_dir={root}",
                   "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: read the cells' outputs
                   "--LabApp.news_url=None",
                   "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                   "--LabApp.extension_manager=readonly"]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with open(log, "ab") as out:
            process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        server = LabServer(process, port, token, root, log)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            try:
                server.api("/api/status", timeout=5)
                break
            except (urllib.error.URLError, OSError, ValueError) as err:
                last_error = err
                time.sleep(0.5)
        else:
            if process.poll() is not None:
                last_error = f"it exited with status {process.returncode}"
            server.stop()
            continue
        break
    else:
        pytest.fail(f"JupyterLab did not start within {SERVER_START_TIMEOUT} s ({last_error}); "
                    f"its log:\n{server.log_tail()}")

    try:
        try:  # token auth is on: without the token the API answers 403
            urllib.request.urlopen(f"{server.base}/api/kernelspecs", timeout=10)
            raise AssertionError("JupyterLab answered a request without the token")
        except urllib.error.HTTPError as err:
            assert err.code == 403, f"without the token: HTTP {err.code}, expected 403"
        specs = server.api("/api/kernelspecs")["kernelspecs"]
        assert KERNEL_NAME in specs, f"kernel {KERNEL_NAME!r} not registered: {sorted(specs)}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def screenshots(request):
    """Append (lesson, path, note) for each screenshot taken; they are listed after the tests."""
    return request.config.stash.setdefault(SCREENSHOTS, [])


def pytest_terminal_summary(terminalreporter, config):
    taken = config.stash.get(SCREENSHOTS, [])
    if taken:
        terminalreporter.section("JupyterLab screenshots")
        for lesson, path, note in taken:
            terminalreporter.write_line(f"{lesson}: {path}" + (f"\n    {note}" if note else ""))
