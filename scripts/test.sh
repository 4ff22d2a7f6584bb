#!/usr/bin/env bash
# Install pengi-kit with its test extras and the plugins in plugins/ into .venv, and run
# the whole test suite: tests/ and each plugin's tests (pyproject.toml's testpaths). A leading
# --fast runs the fast lane instead: everything but the tests marked slow (-m "not slow"); other
# arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt: the versions a green run used (scripts/versions.sh tests the newest and the oldest allowed)
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/python -m pip install -q -c constraints.txt -e plugins/pengi-kit-timm -e plugins/pengi-kit-openclip \
    -e plugins/pengi-kit-plugin-template -e plugins/pengi-kit-vggish
if [[ "${1:-}" == "--fast" ]]; then
    shift
    set -- -m "not slow" "$@"
fi
.venv/bin/python -m pytest -q "$@"
