#!/usr/bin/env bash
# Installs what tests/browser needs: Debian's Chromium and a CJK font (apt), and Playwright for Python
# (pip, into the given interpreter's environment, at the version pinned in pyproject.toml's
# `dev` extras). Idempotent: each part is skipped when it is already there.
#
#   scripts/install_browser_deps.sh [PYTHON]     (default: .venv/bin/python)
#
# It never runs `playwright install`: that downloads Playwright's own browser builds, which
# a closed network refuses; the tests launch /usr/bin/chromium instead.
# Exit status: 0 when both are installed; 1 when one could not be, with the reason printed
# (tests/browser then reports itself as skipped with that reason, never as passed).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${1:-.venv/bin/python}
CHROMIUM=${MINDTRANS_CHROMIUM:-/usr/bin/chromium}
status=0

# --- Chromium (and a CJK font: the lessons are written in Chinese) -----------------------
packages=()
[ -x "$CHROMIUM" ] || packages+=(chromium)
fc-list :lang=zh 2>/dev/null | grep -q . || packages+=(fonts-wqy-microhei)
if [ ${#packages[@]} = 0 ]; then
    echo "install_browser_deps: $CHROMIUM and a Chinese font already installed"
else
    privileged=yes SUDO=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            SUDO=(sudo -n)
        else
            privileged=no
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_browser_deps: cannot install ${packages[*]}: apt-get not found (not Debian/Ubuntu);" \
             "install Chromium yourself and set MINDTRANS_CHROMIUM to its path" >&2
        status=1
    elif [ "$privileged" = no ]; then
        echo "install_browser_deps: cannot install ${packages[*]}: not root and passwordless sudo is" \
             "unavailable; run: sudo apt-get install -y --no-install-recommends ${packages[*]}" >&2
        status=1
    else
        echo "install_browser_deps: apt-get install ${packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        if "${SUDO[@]}" apt-get update -qq &&
           "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null; then
            if [ -x "$CHROMIUM" ]; then
                "$CHROMIUM" --version 2>/dev/null || true
            else
                echo "install_browser_deps: apt installed chromium but $CHROMIUM does not exist" >&2
                status=1
            fi
        else
            echo "install_browser_deps: apt-get could not install ${packages[*]} (see the messages above)" >&2
            status=1
        fi
    fi
fi

# --- Playwright for Python ----------------------------------------------------------------
if [ ! -x "$PY" ]; then
    echo "install_browser_deps: no Python at $PY: create the virtual environment first (make test does)" >&2
    exit 1
fi
# The pin lives in pyproject.toml's dev extras (environment.yml repeats it; tests/test_packaging.py
# checks that they agree), so there is one version to change.
PIN=$("$PY" - <<'EOF'
import re, tomllib
with open("pyproject.toml", "rb") as f:
    dev = tomllib.load(f)["project"]["optional-dependencies"]["dev"]
print(next((r for r in dev if re.match(r"playwright\s*==", r)), "playwright"))
EOF
) || PIN=playwright
WANT=${PIN#*==}
HAVE=$("$PY" -c 'from importlib.metadata import version; print(version("playwright"))' 2>/dev/null)
if [ -n "$HAVE" ] && { [ "$PIN" = playwright ] || [ "$HAVE" = "$WANT" ]; }; then
    echo "install_browser_deps: playwright $HAVE already installed"
elif "$PY" -m pip install --quiet "$PIN"; then
    echo "install_browser_deps: installed $PIN"
else
    echo "install_browser_deps: pip could not install $PIN" >&2
    status=1
fi
exit $status
