#!/usr/bin/env bash
# The compatibility suite: the model, train-step, decode and CLI tests on older MindSpore
# releases, each in its own cached virtualenv. A set is named by its lock in constraints/
# (ms<MindSpore>-py<Python>.txt); with no argument every such lock is run.
#
#   scripts/test_compat.sh                 # all sets
#   scripts/test_compat.sh ms2.0.0-py3.9   # one
#
# For each set it (1) builds the venv from the lock once, as an image with that MindSpore
# preinstalled would have it (cached under $MINDTRANS_COMPAT_CACHE, by default
# ~/.cache/mindtrans/compat, keyed by the lock's sha256); (2) runs `pip install -e .` there
# and fails if that changed MindSpore or NumPy (a learner's image keeps its own); (3) runs
# the tests below. Whatever cannot work on an old release is skipped with its reason.
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=(  # the model and its train step (test_model), decoding, the CLI end to end (train, evaluate, translate)
    tests/test_compat.py tests/test_attention.py tests/test_layers.py tests/test_model.py tests/test_decode.py
    tests/test_cli.py
    "tests/test_train.py::test_atomic_save_round_trip"
    "tests/test_train.py::test_average_weights_is_the_element_wise_mean"
    # forces the 2.6 branches on the installed MindSpore: make test runs it on the pinned one
    --deselect "tests/test_compat.py::test_older_branches_train_and_decode_like_the_newest"
)
CACHE=${MINDTRANS_COMPAT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mindtrans/compat}

find_python() {  # the first python$1 that runs: on PATH (a pyenv shim may not), else a pyenv install
    local candidate
    for candidate in $(command -v "python$1") $(ls -d "$HOME"/.pyenv/versions/"$1".*/bin/python 2>/dev/null | sort -rV); do
        if "$candidate" -c 'import sys' 2>/dev/null; then echo "$candidate"; return; fi
    done
}

run_set() {
    local set=$1 lock=constraints/$1.txt
    [ -f "$lock" ] || { echo "no lock $lock: sets are $(ls constraints | sed -n 's/^\(ms.*\)\.txt$/\1/p' | tr '\n' ' ')"; return 1; }
    local version=${set##*-py} python
    python=$(find_python "$version")
    [ -n "$python" ] || { echo "$set: Python $version not found (install it, or put python$version on PATH)"; return 1; }
    local venv="$CACHE/$set-$(sha256sum "$lock" | cut -c1-12)"
    if [ ! -f "$venv/.ready" ]; then
        echo "== $set: building $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -r "$lock"
        touch "$venv/.ready"
    fi
    local before after
    before=$("$venv/bin/python" -m pip freeze 2>/dev/null | grep -iE '^(mindspore|numpy)==')
    local out  # pip's output (setuptools' build warnings) only when the install fails
    if ! out=$("$venv/bin/python" -m pip install --quiet -e '.[test]' 2>&1); then
        echo "$out"
        return 1
    fi
    after=$("$venv/bin/python" -m pip freeze 2>/dev/null | grep -iE '^(mindspore|numpy)==')
    if [ "$before" != "$after" ]; then
        echo "$set: pip install -e . replaced the preinstalled $(echo $before) with $(echo $after)"
        return 1
    fi
    echo "== $set: pip install -e . kept $(echo $before); running the compatibility tests"
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
}

sets=("$@")
[ ${#sets[@]} -gt 0 ] || sets=($(ls constraints | sed -n 's/^\(ms.*\)\.txt$/\1/p'))
# The sets run side by side (their tests are mostly single-threaded compiling), each into
# its own log, printed whole when it ends; the exit status says whether all passed.
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
for set in "${sets[@]}"; do
    (run_set "$set" > "$logs/$set.log" 2>&1; echo $? > "$logs/$set.rc") &
done
wait
failed=()
for set in "${sets[@]}"; do
    cat "$logs/$set.log"
    [ "$(cat "$logs/$set.rc")" = 0 ] || failed+=("$set")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "compatibility suite failed on: ${failed[*]}"
    exit 1
fi
echo "compatibility suite passed on: ${sets[*]}"
