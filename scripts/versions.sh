#!/usr/bin/env bash
# Test pengi-kit against the newest versions its dependency ranges allow (`newest`) or against the
# lower bounds pyproject.toml declares (`lowest`), each in a virtual environment of its own
# (.venv-newest, .venv-lowest), with the fast lane of the tests. Not part of .ci/run: run it on
# purpose before raising a floor or refreshing constraints.txt. Other arguments go to pytest.
#   bash scripts/versions.sh newest
#   bash scripts/versions.sh lowest -x
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: scripts/versions.sh newest|lowest [pytest arguments]}
shift
venv=".venv-$mode"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
plugins=(-e plugins/pengi-kit-timm -e plugins/pengi-kit-openclip -e plugins/pengi-kit-plugin-template)
case "$mode" in
  newest)
    "$venv/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]" "${plugins[@]}" ;;
  lowest)
    # every `name>=floor` of the dependencies and the test extra, pinned at its floor
    python3 - > "$venv/floors.txt" <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
    print(re.sub(r">=", "==", requirement.split(";")[0].strip()))
PY
    "$venv/bin/python" -m pip install -q -c "$venv/floors.txt" -e ".[test]" "${plugins[@]}" ;;
  *)
    echo "usage: scripts/versions.sh newest|lowest [pytest arguments]" >&2; exit 2 ;;
esac
"$venv/bin/python" -m pip list --format=freeze | grep -iE "^(torch|transformers|peft|numpy|tokenizers|safetensors)=" || true
"$venv/bin/python" -m pytest -q -m "not slow" "$@"
