"""Training runs never lose or mix work: an output directory that holds a run is refused
(--resume continues it, --overwrite starts over), SIGINT/SIGTERM stop with a checkpoint,
--device is checked before a model is built, and the left-over examples of each epoch rotate."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.data.sampler import BucketBatchSampler
from pengi_kit import checkpoint as ckpt
from pengi_kit.engine.trainer import Trainer, TrainingAborted, TrainingError, TrainingInterrupted
from pengi_kit.errors import PengiKitError
from pengi_kit.recipe import dumps, from_dict
from pengi_kit.testing import tiny_recipe

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "pengi_kit", *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run):
    return {r["step"]: r["loss"] for r in _rows(run) if "loss" in r}


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model gets built."""
    def build_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr("pengi_kit.engine.trainer.build_model", build_model)


# ---------------------------------------------------------------- A. a run directory holds one run

@pytest.mark.slow
def test_a_second_run_into_a_run_directory_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(tiny_recipe(run, train={"max_steps": 2})))
    first = _cli("train", str(recipe))
    assert first.returncode == 0, first.stderr[-2000:]
    (run / "audio_tagger.pth").write_bytes(b"weights a recipe loads")  # not a run: never counts, never goes
    before = _hashes(run)
    assert {"metrics.jsonl", "checkpoints/step-00000002/model.safetensors", "best/meta.json"} <= set(before)

    second = _cli("train", str(recipe), "-s", "train.max_steps=3")
    assert second.returncode == 2
    assert second.stderr.splitlines() == [
        f"error: {run} holds another run (checkpoints up to step 2); continue it with --resume, or start over "
        "with --overwrite (deletes it), or set train.output_dir"]
    assert second.stdout == ""
    assert _hashes(run) == before  # nothing of the first run changed


@pytest.mark.parametrize("leftover", ["best", "metrics.jsonl", "checkpoints"])
def test_any_trace_of_a_run_is_refused_before_the_model_is_built(tmp_path, no_model, leftover):
    run = tmp_path / "run"
    run.mkdir()
    (run / "audio_tagger.pth").write_bytes(b"x")
    if leftover == "metrics.jsonl":
        (run / leftover).write_text('{"step": 7, "loss": 1.0}\n')
    else:
        (run / leftover / ".step-00000003.tmp-1").mkdir(parents=True)
    with pytest.raises(TrainingError, match=r"holds another run \((a metrics.jsonl up to step 7|a best/ checkpoint|"
                                            r"an unfinished checkpoints/ folder)\); continue it with --resume"):
        Trainer(from_dict(tiny_recipe(run)), progress=False)
    result = CliRunner().invoke(main, ["train", "--help"])  # the flags the message names exist
    assert "--resume" in result.output and "--overwrite" in result.output


def test_a_directory_without_a_run_is_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "audio_tagger.pth").write_bytes(b"x")  # e.g. the demo's tagger, which its recipe loads
    trainer = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 1, "best_metric": ""})), progress=False)
    assert trainer.fit().name == "step-00000001"


def test_resume_continues_and_overwrite_starts_over_keeping_other_files(tmp_path):
    run = tmp_path / "run"
    Trainer(from_dict(tiny_recipe(run, train={"max_steps": 2})), progress=False).fit()
    resumed = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 3})), resume=True, progress=False)
    assert resumed.step == 2 and resumed.fit().name == "step-00000003"
    assert sorted(_losses(run)) == [1, 2, 3]

    (run / "audio_tagger.pth").write_bytes(b"kept")
    raw = tiny_recipe(run, train={"max_steps": 2, "save_every": 1, "keep_last": 5})
    raw["optim"]["lr"] = 5e-4  # another run: its checkpoint must be its own, not the first run's step 2
    with pytest.raises(TrainingError, match="choose one"):
        Trainer(from_dict(raw), resume=True, overwrite=True, progress=False)
    path = Trainer(from_dict(raw), overwrite=True, progress=False).fit()
    assert [p.name for p in ckpt.checkpoints(run)] == ["step-00000001", "step-00000002"]
    assert path == ckpt.checkpoints(run)[-1]
    assert ckpt.read_recipe(path)["optim"]["lr"] == 5e-4
    assert [r["step"] for r in _rows(run) if "loss" in r] == [1, 2]  # the first run's metrics are gone
    assert ckpt.verify(run / "best")["step"] <= 2
    assert (run / "audio_tagger.pth").read_bytes() == b"kept"


def test_cli_overwrite_starts_over(tmp_path):
    run = tmp_path / "run"
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(tiny_recipe(run, train={"max_steps": 3, "best_metric": ""})))
    runner = CliRunner()
    assert runner.invoke(main, ["train", str(recipe)]).exit_code == 0
    both = runner.invoke(main, ["train", str(recipe), "--resume", "--overwrite"])
    assert both.exit_code == 2 and both.stderr.startswith("error: --resume continues") and \
        len(both.stderr.splitlines()) == 1
    again = runner.invoke(main, ["train", str(recipe), "--overwrite", "-s", "train.max_steps=2"])
    assert again.exit_code == 0, again.output[-2000:]
    assert again.stdout.strip() == f"checkpoint: {run / 'checkpoints' / 'step-00000002'}"
    assert f"starting over: deleting the previous run in {run} (checkpoints up to step 3)" in again.stderr
    assert [p.name for p in ckpt.checkpoints(run)] == ["step-00000002"]
    assert sorted(_losses(run)) == [1, 2]


def test_the_final_checkpoint_replaces_a_damaged_one_of_the_same_step(tmp_path):
    run = tmp_path / "run"
    Trainer(from_dict(tiny_recipe(run, train={"max_steps": 4, "save_every": 2, "keep_last": 5})), progress=False).fit()
    newest = ckpt.checkpoints(run)[-1]
    (newest / "model.safetensors").write_bytes(b"truncated")
    resumed = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 4, "save_every": 2, "keep_last": 5})),
                      resume=True, progress=False)
    assert resumed.step == 2
    path = resumed.fit()  # step 4 again: written by this run, not the damaged folder left in place
    assert path == newest and ckpt.verify(path)["step"] == 4

    # keep_last = 1 while a damaged later checkpoint lingers: the one just written is never pruned
    (newest / "model.safetensors").write_bytes(b"truncated")
    resumed = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 3, "save_every": 1, "keep_last": 1})),
                      resume=True, progress=False)
    assert resumed.step == 2
    path = resumed.fit()
    assert path.name == "step-00000003" and ckpt.verify(path)["step"] == 3
    assert [p.name for p in ckpt.checkpoints(run)] == ["step-00000003", "step-00000004"]
    assert ckpt.resolve(run) == path  # the damaged step 4 is skipped


@pytest.mark.parametrize("launch", ["checked", "overwrite", "raw"])
def test_a_torchrun_restart_continues_its_own_run(tmp_path, monkeypatch, launch):
    run = tmp_path / "run"
    Trainer(from_dict(tiny_recipe(run, train={"max_steps": 2})), progress=False).fit()  # the first attempt's work
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    if launch == "checked":  # `pengi-kit train --max-restarts` checked the directory before the first attempt
        monkeypatch.setenv("PENGI_KIT_RUN_CHECKED", "1")
    recipe = from_dict(tiny_recipe(run, train={"max_steps": 3}))
    if launch == "raw":  # torchrun started by hand: nothing says the run there is this one's
        with pytest.raises(TrainingError, match="holds another run"):
            Trainer(recipe, progress=False)
        return
    restarted = Trainer(recipe, overwrite=launch == "overwrite", progress=False)  # the restart deletes nothing
    assert restarted.step == 2 and restarted.fit().name == "step-00000003"


# ---------------------------------------------------------------- B. SIGINT / SIGTERM

def test_a_signal_in_fit_stops_with_a_checkpoint_and_resume_is_exact(tmp_path):
    full = tmp_path / "full"
    Trainer(from_dict(tiny_recipe(full, train={"max_steps": 6})), progress=False).fit()

    run = tmp_path / "run"
    trainer = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 6})), progress=False)
    step = trainer.train_step

    def interrupted_step(batch):
        loss = step(batch)
        if trainer.step == 2:  # the third step: the signal arrives while it runs
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    trainer.train_step = interrupted_step
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # restored
    exc = err.value
    assert (exc.step, exc.signum, exc.exit_status) == (3, signal.SIGINT, 130)
    assert exc.checkpoint == run / "checkpoints" / "step-00000003"
    assert str(exc) == f"interrupted at step 3: checkpoint {exc.checkpoint}"
    assert ckpt.verify(exc.checkpoint)["step"] == 3
    assert [r for r in _rows(run) if r.get("event") == "interrupted"][0]["signal"] == "SIGINT"

    resumed = Trainer(from_dict(tiny_recipe(run, train={"max_steps": 6})), resume=True, progress=False)
    assert resumed.step == 3
    resumed.fit()
    assert _losses(run) == _losses(full)  # bitwise: the interrupted run lost nothing


def test_a_second_signal_aborts_at_once(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 6})), progress=False)
    step = trainer.train_step

    def twice(batch):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        return step(batch)

    trainer.train_step = twice
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingAborted) as err:
        trainer.fit()
    assert err.value.signum == signal.SIGTERM and trainer.step == 0
    assert signal.getsignal(signal.SIGTERM) == before


def _logged_steps(text):
    for line in text.splitlines():
        try:
            yield json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # the line being written
            pass


def _wait_for_step(proc, run, step, timeout=240):
    deadline = time.time() + timeout
    log = run / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and max(_logged_steps(log.read_text()), default=0) >= step:
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"no step {step} in {timeout} s (exit {proc.returncode}): {err[-2000:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
def test_the_command_stops_on_a_signal_with_a_checkpoint_and_resumes(tmp_path, sig):
    run = tmp_path / "run"
    raw = tiny_recipe(run, train={"max_steps": 5000, "save_every": 0, "eval_every": 0, "best_metric": ""})
    raw["data"].update(synthetic_train_size=4000, num_workers=1 if sig == signal.SIGINT else 0)
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(raw))
    # a session of its own: SIGINT goes to the whole process group, DataLoader workers too, as Ctrl-C would
    proc = subprocess.Popen([sys.executable, "-m", "pengi_kit", "train", str(recipe)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_step(proc, run, 3)
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1, err[-3000:]
    match = re.fullmatch(r"interrupted at step (\d+): checkpoint (\S+); continue with: pengi-kit train (\S+) --resume",
                         lines[0])
    assert match and match[3] == str(recipe), lines[0]
    step, path = int(match[1]), Path(match[2])
    assert step >= 3 and path == run / "checkpoints" / f"step-{step:08d}"
    assert ckpt.verify(path)["step"] == step and out == ""
    assert f"pengi-kit: {signal.Signals(sig).name}: stopping after the current step" in err

    resumed = _cli("train", str(recipe), "--resume", "-s", f"train.max_steps={step + 2}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {path} at step {step}" in resumed.stderr
    assert resumed.stdout.strip() == f"checkpoint: {run / 'checkpoints' / f'step-{step + 2:08d}'}"


@pytest.mark.slow
def test_every_process_stops_at_the_same_step_under_torchrun(tmp_path):
    run = tmp_path / "run"
    raw = tiny_recipe(run, train={"max_steps": 5000, "save_every": 0, "eval_every": 0, "best_metric": ""})
    raw["data"]["synthetic_train_size"] = 4000
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(raw))
    proc = subprocess.Popen([sys.executable, "-m", "pengi_kit", "train", str(recipe), "--nproc-per-node", "2",
                             "--device", "cpu"], env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        _wait_for_step(proc, run, 2)
        proc.send_signal(signal.SIGTERM)  # a scheduler's warning to the launcher, which passes it on
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted at step")]
    assert len(lines) == 1 and "--nproc-per-node 2 --resume" in lines[0], err[-3000:]
    step = int(re.match(r"interrupted at step (\d+)", lines[0])[1])
    path = run / "checkpoints" / f"step-{step:08d}"
    assert ckpt.verify(path)["step"] == step
    state, _ = ckpt.load_training_state(path)
    assert state["world_size"] == 2 and (path / "rng-rank1.pt").is_file()  # both ranks wrote it, at one step
    more = _cli("train", str(recipe), "--resume", "--device", "cpu", "-s", f"train.max_steps={step + 1}")
    assert more.returncode == 0 and f"resumed from {path} at step {step}" in more.stderr, more.stderr[-2000:]


# ---------------------------------------------------------------- C. --device

@pytest.mark.slow
def test_device_that_torch_does_not_parse_is_one_line(tmp_path, no_model):
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(tiny_recipe(tmp_path / "run")))
    result = _cli("train", str(recipe), "--device", "gpu")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --device 'gpu' is not a device; use cpu, cuda, cuda:N or mps"]
    with pytest.raises(PengiKitError, match="is not a device"):
        Trainer(from_dict(tiny_recipe(tmp_path / "run")), device="gpu")


def test_cuda_without_cuda_is_one_line_before_the_model(tmp_path, monkeypatch, no_model):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    recipe = tmp_path / "r.toml"
    recipe.write_text(dumps(tiny_recipe(tmp_path / "run")))
    for args in (["train", str(recipe), "--device", "cuda"], ["train", str(recipe), "--device", "cuda:1"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].endswith("; use --device cpu"), lines
        assert lines[0].startswith(f"error: --device {args[-1]}: torch sees no CUDA GPU on this machine"), lines
    with pytest.raises(PengiKitError, match="no CUDA GPU"):
        Trainer(from_dict(tiny_recipe(tmp_path / "run")), device="cuda")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- D. the examples each epoch leaves out

def test_the_left_out_examples_rotate_so_every_one_is_seen():
    sampler = BucketBatchSampler([48], 10, lengths=np.arange(48) % 5, seed=4)
    assert (sampler.draws_per_epoch, sampler.batches_per_epoch, sampler.left_out_per_epoch) == (48, 4, 8)
    left_out = []
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seen = [i for batch in sampler for i in batch]
        assert len(seen) == len(set(seen)) == 40
        left_out.append(set(range(48)) - set(seen))
    assert all(not a & b for a, b in zip(left_out, left_out[1:]))  # every example in one of two epochs
    assert sorted(i for s in left_out for i in s) == list(range(48))  # each sits out once in 48 / 8 epochs

    def batches(rank, epoch, start=0):  # a pure function of (seed, epoch, rank); resume is exact
        s = BucketBatchSampler([48], 5, lengths=np.arange(48) % 5, num_replicas=2, rank=rank, seed=4)
        s.set_epoch(epoch, start)
        return list(s)

    assert batches(0, 3) == batches(0, 3) and batches(1, 3)[2:] == batches(1, 3, start=2)
    assert not {i for b in batches(0, 3) for i in b} & {i for b in batches(1, 3) for i in b}
    assert {i for b in batches(0, 3) + batches(1, 3) for i in b} == set(range(48)) - left_out[3]  # same window

    mixed = BucketBatchSampler([10, 40], 6, weights=[2.0, 0.25], seed=3)  # 30 draws, 5 batches: none left
    assert mixed.left_out_per_epoch == 0 and len([d for b in mixed for d in b]) == 30
    mixed = BucketBatchSampler([10, 40], 7, weights=[2.0, 0.25], seed=3)
    assert mixed.left_out_per_epoch == 2 and len([d for b in mixed for d in b]) == 28


def test_the_trainer_says_how_many_examples_each_epoch_leaves_out(tmp_path, capsys):
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["synthetic_train_size"] = 50
    Trainer(from_dict(raw), progress=False)
    err = capsys.readouterr().err
    # 50 clips, 5 examples each, 8 to a batch
    assert "pengi-kit: each epoch uses 248 of 250 examples (2 left out per epoch, different ones each epoch)" in err
    Trainer(from_dict(tiny_recipe(tmp_path / "other")), progress=False)  # 240 of 240: nothing to say
    assert "left out" not in capsys.readouterr().err


def test_the_demo_starts_over_in_its_run_directory_and_keeps_its_tagger(tmp_path):
    from pengi_kit.demo import pretrain_tagger
    from pengi_kit.recipe import load_recipe

    out = tmp_path / "demo"
    tagger = out / "tagger" / "encoder"
    small = ["-s", f"train.output_dir='{out}'", "-s", f"model.audio_encoder.pretrained='{tagger}'",
             "-s", "data.synthetic_train_size=16", "-s", "data.synthetic_valid_size=2", "-s", "train.batch_size=8"]
    pretrain_tagger(load_recipe("recipes/demo.toml", small[1::2]), tagger, steps=1, batch_size=2)
    kept = (tagger / "model.safetensors").read_bytes()
    runner = CliRunner()
    first = runner.invoke(main, ["demo", *small, "-s", "train.max_steps=3"])
    assert first.exit_code == 0, first.output[-2000:]
    assert [p.name for p in ckpt.checkpoints(out)] == ["step-00000003"]
    second = runner.invoke(main, ["demo", *small, "-s", "train.max_steps=2"])
    assert second.exit_code == 0, second.output[-2000:]
    assert f"checkpoint: {out / 'checkpoints' / 'step-00000002'}" in second.stdout
    assert [p.name for p in ckpt.checkpoints(out)] == ["step-00000002"]  # the first demo run is gone ...
    assert max(r["step"] for r in _rows(out) if "step" in r) == 2 and ckpt.verify(out / "best")["step"] <= 2
    assert (tagger / "model.safetensors").read_bytes() == kept  # ... its tagger is not
    assert "meant to be re-run" in runner.invoke(main, ["demo", "--help"]).output
