"""METEOR and SPICE through their Java programs, as coco-caption runs them.

Both need a Java runtime (``java`` on PATH or ``JAVA_HOME``). The jars are looked up in
``PENGI_KIT_METEOR_JAR`` / ``PENGI_KIT_SPICE_JAR``, then in the installed
``pycocoevalcap`` package, which ships ``meteor-1.5.jar`` and ``spice-1.0.jar``; SPICE
also needs the Stanford CoreNLP 3.6.0 jars in ``spice/lib``, which pycocoevalcap fetches
once with ``python -m pycocoevalcap.spice.get_stanford_models``. When something is
missing, :class:`Unavailable` says what and how to get it; a metric is never reported as 0.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Unavailable", "meteor", "spice"]


class Unavailable(RuntimeError):
    """A metric cannot run here; the message says why and what to install."""


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if not java:
        raise Unavailable("no Java runtime (install Java 8+, e.g. `apt install default-jre`, or set JAVA_HOME)")
    return java


def _jar(env: str, relative: str) -> Path:
    given = os.environ.get(env)
    if given:
        if not Path(given).is_file():
            raise Unavailable(f"{env}={given} is not a file")
        return Path(given)
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")  # a namespace package: no __file__
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable(f"jar not found (pip install pycocoevalcap, which ships it, or set {env})")
    jar = Path(list(spec.submodule_search_locations)[0]) / relative
    if not jar.is_file():
        raise Unavailable(f"{jar} is missing (reinstall pycocoevalcap or set {env})")
    return jar


def _clean(text: str) -> str:
    return " ".join(text.replace("|||", " ").split())


def meteor(cands: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR 1.5 (``-l en -norm``) of tokenised candidates against their references."""
    java, jar = _java(), _jar("PENGI_KIT_METEOR_JAR", "meteor/meteor-1.5.jar")
    proc = subprocess.Popen([java, "-jar", "-Xmx2G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"],
                            cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8")
    try:
        # a writer thread keeps the pipes from filling up both ways on large corpora
        lines = [" ||| ".join(["SCORE", *map(_clean, rs), _clean(c)]) + "\n" for c, rs in zip(cands, refs)]
        writer = threading.Thread(target=lambda: (proc.stdin.writelines(lines), proc.stdin.flush()))
        writer.start()
        stats = [proc.stdout.readline().strip() for _ in lines]
        writer.join()
        if not all(stats):
            raise Unavailable(f"METEOR stopped: {proc.stderr.read().strip()[-500:]}")
        proc.stdin.write(" ||| ".join(["EVAL", *stats]) + "\n")
        proc.stdin.close()
        scores = proc.stdout.read().split()
        return float(scores[len(stats)])
    except (OSError, ValueError, IndexError) as exc:
        raise Unavailable(f"METEOR failed: {exc}: {proc.stderr.read().strip()[-500:]}") from None
    finally:
        proc.kill()
        proc.wait()


def spice(cands: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus SPICE 1.0 (mean of the per-caption F-scores) of tokenised candidates."""
    java, jar = _java(), _jar("PENGI_KIT_SPICE_JAR", "spice/spice-1.0.jar")
    if not list((jar.parent / "lib").glob("stanford-corenlp-3.6.0*.jar")):
        raise Unavailable(f"SPICE needs the Stanford CoreNLP 3.6.0 jars in {jar.parent / 'lib'} (fetch them once: "
                          "python -m pycocoevalcap.spice.get_stanford_models)")
    with tempfile.TemporaryDirectory() as tmp:
        data = [{"image_id": i, "test": _clean(c), "refs": [_clean(r) for r in rs]}
                for i, (c, rs) in enumerate(zip(cands, refs))]
        (Path(tmp) / "in.json").write_text(json.dumps(data))
        cache = Path(tmp) / "cache"
        cache.mkdir()
        run = subprocess.run([java, "-jar", "-Xmx8G", str(jar), str(Path(tmp) / "in.json"), "-cache", str(cache),
                              "-out", str(Path(tmp) / "out.json"), "-subset", "-silent"],
                             cwd=jar.parent, capture_output=True, text=True)
        if run.returncode != 0:
            raise Unavailable(f"SPICE failed (exit {run.returncode}): {run.stderr.strip()[-500:]}")
        scores = json.loads((Path(tmp) / "out.json").read_text())
    return sum(s["scores"]["All"]["f"] for s in scores) / len(scores)
