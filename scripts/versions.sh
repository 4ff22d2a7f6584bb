#!/usr/bin/env bash
# Test pengi-kit against the newest versions its dependency ranges allow (`newest`) or against the
# lower bounds pyproject.toml declares (`lowest`), each in a virtual environment of its own
# (.venv-newest, .venv-lowest), with the whole suite as scripts/test.sh runs it (the slow tests find
# what the fast lane does not: FSDP, servers, wheels). Not part of .ci/run: run it on purpose before
# raising a floor or refreshing constraints.txt. Other arguments go to pytest.
#   bash scripts/versions.sh newest
#   bash scripts/versions.sh lowest -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/versions.sh newest|lowest [pytest arguments]}
shift
venv=".venv-$mode"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
plugins=(-e plugins/pengi-kit-timm -e plugins/pengi-kit-openclip -e plugins/pengi-kit-plugin-template -e plugins/pengi-kit-vggish)
case "$mode" in
  newest)
    "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "${plugins[@]}" ;;
  lowest)
    # each direct dependency (pengi-kit's, its test extra's, the plugins') at the lowest release its
    # range allows: uv's lowest-direct resolution (pip has none, and a floor such as webdataset>=0.2
    # names no release of its own)
    "$venv/bin/python" -m pip install -q uv
    "$venv/bin/python" -m uv pip install -q --python "$venv/bin/python" --resolution lowest-direct \
        -e ".[test]" "${plugins[@]}" ;;
  *)
    echo "usage: scripts/versions.sh newest|lowest [pytest arguments]" >&2; exit 2 ;;
esac
"$venv/bin/python" -m pip list --format=freeze | grep -iE "^(torch|transformers|peft|numpy|tokenizers|safetensors)=" || true
"$venv/bin/python" -m pytest -q -n "${PENGI_KIT_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile "$@"
