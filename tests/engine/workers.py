import os
import shutil
import signal
import subprocess
import sys
import warnings


def _worker_lines(stderr: str) -> str:
    """What a worker said before it died (a C++ ``terminate``/``what()``, Python's faulthandler
    stack), not torchrun's summary, which only names the signal."""
    keep = [line for line in stderr.splitlines()
            if any(k in line for k in ("terminate called", "what()", "Fatal Python", "File \"", "Error", "error:"))]
    return "\n".join(keep[:40])


def train_two(recipe, out, *extra):
    """``pengi-kit train ... --nproc-per-node 2 --device cpu`` in a subprocess (one torch thread
    each, faulthandler on). A worker killed by SIGABRT/SIGSEGV inside gloo, with no Python error,
    is run once more from where the first attempt started (an empty folder, or the one a
    resumed run started from), with a warning that carries what the worker printed: such a
    crash ("terminate called without an active exception"; seen once in CI and once in a run of
    the slow tests with the newest versions, after the last step) is the transport's, and the
    rerun still has to give the exact result. Any other failure fails the test."""
    cmd = [sys.executable, "-m", "pengi_kit", "train", str(recipe), "--nproc-per-node", "2", "--device", "cpu",
           "-s", f"train.output_dir='{out}'", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    start = f"{out}.start"
    if "--resume" in extra:
        shutil.copytree(out, start)
    for attempt in (1, 2):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        crashed = any(f"exitcode  : -{int(s)} " in proc.stderr for s in (signal.SIGABRT, signal.SIGSEGV))
        if proc.returncode == 0 or not crashed or attempt == 2:
            break
        warnings.warn(f"a worker crashed in {out}; running it once more:\n{_worker_lines(proc.stderr)}")
        shutil.rmtree(out, ignore_errors=True)
        if "--resume" in extra:
            shutil.copytree(start, out)
    shutil.rmtree(start, ignore_errors=True)
    assert proc.returncode == 0, _worker_lines(proc.stderr) + "\n...\n" + proc.stderr[-3000:]
    return proc
