#!/usr/bin/env bash
# Install pengi-kit with its test extras and the plugins in plugins/ into .venv, and run
# the whole test suite: tests/ and each plugin's tests (pyproject.toml's testpaths), on as many
# workers as cores, up to 4. A leading --fast runs the fast lane instead: everything but the tests
# marked slow (-m "not slow"); other arguments go to pytest.
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
# two workers on two cores (pytest-xdist; one torch thread each, tests/conftest.py), a test file per worker at a
# time (module fixtures such as a started server are built once); PENGI_KIT_TEST_WORKERS=0 runs in one process
.venv/bin/python -m pytest -q -n "${PENGI_KIT_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile "$@"
