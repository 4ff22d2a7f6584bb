"""Rerun the learning tests over several seeds and print the spread of every figure they record.

A learning test (``@pytest.mark.learning``) trains something and asserts what it learned. Its
corpora, torch seed and recipe seed follow the ``learning_seed`` fixture (tests/conftest.py:
``PENGI_KIT_TEST_SEED``, 0 by default), and it records each figure it asserts with pytest's
``record_property``. This script runs ``pytest -m learning`` once per seed, in one process each
(one torch thread), and prints, per test and figure, the value of every seed with its minimum
and maximum: each test states that spread beside its threshold, which sits well inside it.
Not part of .ci/run (about 7 minutes a seed on one core)::

    python scripts/learning_spread.py --seeds 5
    python scripts/learning_spread.py --seeds 1-4 -- tests/models/test_chat.py
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seeds(text: str) -> list[int]:
    """``5`` is seeds 0-4; ``2-6`` is 2 to 6; ``0,3`` is those two."""
    if "-" in text:
        low, high = map(int, text.split("-"))
        return list(range(low, high + 1))
    return [int(s) for s in text.split(",")] if "," in text else list(range(int(text)))


def run(seed: int, xml: Path, pytest_args: list[str]) -> list[tuple[str, str, str]]:
    """(test, figure, value) for every figure the learning tests recorded with this seed; a failed
    test records ``failed`` as well."""
    env = {**os.environ, "PENGI_KIT_TEST_SEED": str(seed), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "learning", "-n", "0", "-p", "no:cacheprovider",
                    f"--junitxml={xml}", *pytest_args], cwd=ROOT, env=env, check=False)
    found = []
    for case in ET.parse(xml).iter("testcase"):
        test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        for prop in case.iter("property"):
            if prop.get("name") != "seed":
                found.append((test, prop.get("name"), prop.get("value")))
        if case.find("failure") is not None or case.find("error") is not None:
            found.append((test, "failed", "yes"))
    return found


def _number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=seeds, default=seeds("5"), help="5 (0-4), 2-6, or 0,3")
    parser.add_argument("pytest_args", nargs="*", help="after --: which tests, other pytest options")
    args = parser.parse_args()
    table: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(f"== seed {seed}", flush=True)
            for test, figure, value in run(seed, Path(tmp) / f"seed-{seed}.xml", args.pytest_args):
                table[test, figure][seed] = value
    print(f"\n{'figure':44} " + " ".join(f"{'seed ' + str(s):>8}" for s in args.seeds) + "      min      max")
    for test in sorted({test for test, _ in table}):
        print(test)
        for (_, figure), values in sorted(item for item in table.items() if item[0][0] == test):
            numbers = [n for n in map(_number, values.values()) if n is not None]
            spread = f"{min(numbers):8.3f} {max(numbers):8.3f}" if numbers else ""
            print(f"  {figure[:42]:42} " + " ".join(f"{values.get(s, '-')[:8]:>8}" for s in args.seeds) + f" {spread}")


if __name__ == "__main__":
    main()
