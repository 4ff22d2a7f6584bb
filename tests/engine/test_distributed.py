"""Many processes and faults: DDP equivalence, gradient accumulation, SIGKILL and resume; train.strategy =
"fsdp" (FSDP2) on two CPU processes over gloo: the same training as DDP, sharded checkpoints that resume
exactly, bf16 mixed precision with activation checkpointing."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import pengi_kit
from pengi_kit import checkpoint as ckpt
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import dumps, from_dict
from pengi_kit.testing import tiny_recipe
from workers import train_two  # tests/engine is on sys.path (basenames)

pytestmark = pytest.mark.slow  # every test trains in subprocesses (two processes, SIGKILL): not in the fast lane


def _deterministic(raw):
    """No batch-dependent behaviour: frozen (eval-mode) audio encoder, no dropout anywhere,
    so that splitting a batch across processes or micro-batches changes nothing."""
    raw["model"]["audio_encoder"]["trainable"] = False
    raw["model"]["projection_dropout"] = 0.0
    raw["model"]["lm"]["dropout"] = 0.0
    return raw


def _run(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pengi_kit", *args], env=env, capture_output=True, text=True,
                          **kwargs)


def _weights(run_dir):
    return load_file(str(ckpt.resolve(run_dir) / "model.safetensors"))


def test_two_processes_equal_one_process_with_double_batch(tmp_path):
    raw = _deterministic(tiny_recipe(tmp_path / "unused", train={"max_steps": 3}))
    (tmp_path / "r.toml").write_text(dumps(raw))
    one = _run(["train", str(tmp_path / "r.toml"), "-s", "train.batch_size=8", "-s", f"train.output_dir='{tmp_path / 'one'}'"])
    assert one.returncode == 0, one.stderr[-2000:]
    train_two(tmp_path / "r.toml", tmp_path / "two", "-s", "train.batch_size=4")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in a:
        # float sums in another order: equal to 1e-5, stated tolerance for two processes
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)
    losses = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2, 3]


def test_sigkill_then_resume_gives_the_uninterrupted_losses(tmp_path):
    raw = tiny_recipe(tmp_path / "unused", train={"max_steps": 10, "save_every": 1})
    (tmp_path / "r.toml").write_text(dumps(raw))
    full = _run(["train", str(tmp_path / "r.toml"), "-s", f"train.output_dir='{tmp_path / 'full'}'"])
    assert full.returncode == 0, full.stderr[-2000:]
    run = tmp_path / "killed"
    kill_at = random.Random(0).randint(2, 8)  # seeded: a failure reproduces
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pengi_kit", "train", str(tmp_path / "r.toml"),
                             "-s", f"train.output_dir='{run}'"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        log = run / "metrics.jsonl"
        steps = [json.loads(l).get("step", 0) for l in log.read_text().splitlines()] if log.exists() else []
        if steps and max(steps) >= kill_at:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = _run(["train", str(tmp_path / "r.toml"), "--resume", "-s", f"train.output_dir='{run}'"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr

    def losses(path):  # the last value logged for each step (steps after the last checkpoint rerun)
        rows = [json.loads(l) for l in (path / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    assert losses(run) == losses(tmp_path / "full")  # bitwise, one process


def test_corrupted_newest_checkpoint_resumes_from_the_previous(tmp_path):
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "save_every": 2, "keep_last": 5})
    (tmp_path / "r.toml").write_text(dumps(raw))
    assert _run(["train", str(tmp_path / "r.toml")]).returncode == 0
    newest = ckpt.checkpoints(tmp_path / "run")[-1]
    (newest / "training_state.pt").write_bytes(b"truncated")
    more = _run(["train", str(tmp_path / "r.toml"), "--resume", "-s", "train.max_steps=6"])
    assert more.returncode == 0, more.stderr[-2000:]
    assert "step-00000002" in more.stderr and "damaged" in more.stderr


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_fsdp_trains_as_ddp_does_and_accumulates_gradients_alike(tmp_path):
    raw = _deterministic(tiny_recipe(tmp_path / "unused", train={"max_steps": 3}))
    (tmp_path / "r.toml").write_text(dumps(raw))
    train_two(tmp_path / "r.toml", tmp_path / "ddp")
    train_two(tmp_path / "r.toml", tmp_path / "fsdp", "-s", "train.strategy='fsdp'", "-s", "train.grad_accum=2")
    ddp = load_file(str(ckpt.resolve(tmp_path / "ddp") / ckpt.WEIGHTS))
    fsdp = load_file(str(ckpt.resolve(tmp_path / "fsdp") / ckpt.WEIGHTS))
    assert ddp.keys() == fsdp.keys()  # full weights, gathered from the shards
    for key in ddp:
        torch.testing.assert_close(fsdp[key], ddp[key], atol=1e-5, rtol=1e-4, msg=key)
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "ddp"), abs=1e-5)


def test_fsdp_bf16_checkpoints_are_sharded_and_resume_exactly(tmp_path, monkeypatch):
    import transformers

    with monkeypatch.context() as old:  # before 5.23 the recomputation runs FSDP's hooks again: refused
        old.setattr(transformers, "__version__", "5.22.2")
        train = {"strategy": "fsdp", "precision": "bf16", "activation_checkpointing": True}
        with pytest.raises(RecipeError, match=r"needs transformers >= 5.23 \(installed: 5.22.2"):
            from_dict(tiny_recipe(tmp_path / "unused", train=train))
    if tuple(int(x) for x in transformers.__version__.split(".")[:2]) < (5, 23):
        pytest.skip(f"transformers {transformers.__version__}: FSDP in bf16 with activation checkpointing needs 5.23")
    raw = tiny_recipe(tmp_path / "unused", train={"max_steps": 4, "save_every": 2, "strategy": "fsdp",
                                                  "precision": "bf16", "activation_checkpointing": True})
    (tmp_path / "r.toml").write_text(dumps(raw))
    full = tmp_path / "full"
    train_two(tmp_path / "r.toml", full)
    step2 = full / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in (step2 / "optimizer").iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]  # one shard of the optimiser state per process
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    run = train_two(tmp_path / "r.toml", resumed, "--resume")
    assert "resumed from" in run.stderr and "step 2" in run.stderr
    assert _losses(resumed) == _losses(full)  # steps 3 and 4 again, bit for bit
    one = load_file(str(resumed / "checkpoints" / "step-00000004" / ckpt.WEIGHTS))
    for key, value in load_file(str(full / "checkpoints" / "step-00000004" / ckpt.WEIGHTS)).items():
        assert torch.equal(one[key], value), key
    pengi = pengi_kit.load(full / "checkpoints" / "step-00000004")  # one process, no FSDP
    assert isinstance(pengi.generate([(torch.zeros(8000).numpy(), 16000)], ["this is a sound of"])[0], str)
