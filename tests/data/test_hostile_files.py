"""Nothing hangs, nothing vanishes: a named pipe, a symlink loop, a broken symlink, junk
bytes named .mp3 and an unreadable file, mixed with good clips, through every path that
opens audio (data check, data shard, generate over a folder, the training dataset).
Each bad entry is reported once with its true reason; libmpg123 stays off stderr."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.testing import tiny_recipe

SR = 16000
TIMEOUT = 120.0  # seconds: a regression fails here instead of hanging CI

# file name -> the reason its one-line report must give
REASONS = {
    "pipe.wav": r"is a named pipe \(FIFO\), not a regular file",
    "loop_a.wav": r"symlink loop",
    "loop_b.wav": r"symlink loop",
    "dangling.wav": r"broken symlink \(points to gone\.wav which does not exist\)",
    "junk.mp3": r"not an MP3 file: no MPEG audio frames found",
    "sync.mp3": r"not an MP3 file: no MPEG audio frames found",
    "locked.wav": r"permission denied \(check the file's permissions",
}
NOT_REGULAR = ("pipe.wav", "loop_a.wav", "loop_b.wav", "dangling.wav")  # left out before anything opens them
GOOD = ("good0.wav", "good1.wav", "good2.flac")
# what libmpg123 prints when it is handed junk ("Note: Illegal Audio-MPEG-Header ...")
NOISE = re.compile(r"mpg123|Illegal Audio-MPEG-Header|resync|Note: |Warning: ", re.IGNORECASE)


def sine(seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def within(seconds: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a thread; fail the test if it has not returned in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{getattr(fn, '__name__', fn)} still running after {seconds:g} s: it hangs")
    if "error" in box:
        raise box["error"]
    return box["result"]


def unblock(fifo: Path) -> None:
    """Release any reader stuck on ``fifo`` (a regression), so the test process can end."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting: nothing to release


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A folder of good clips and every hostile entry, and a manifest listing all of them.

    ``locked.wav`` is a good WAV without read permission. The tests run as root, who
    may read it anyway, so the refusal a normal user gets (EACCES from ``open``) is
    simulated for that one path.
    """
    clips = tmp_path / "corpus" / "clips"
    clips.mkdir(parents=True)
    for i, name in enumerate(GOOD):
        sf.write(clips / name, sine(0.5, 300 + 100 * i), SR)
    os.mkfifo(clips / "pipe.wav")
    os.symlink("loop_b.wav", clips / "loop_a.wav")
    os.symlink("loop_a.wav", clips / "loop_b.wav")
    os.symlink("gone.wav", clips / "dangling.wav")
    rng = np.random.default_rng(0)
    (clips / "junk.mp3").write_bytes(rng.integers(0, 256, 20000, dtype=np.uint8).tobytes())
    # a frame sync, then junk: libmpg123 warns "Cannot read next header" on stderr
    (clips / "sync.mp3").write_bytes(b"\xff\xfb" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    locked = clips / "locked.wav"
    sf.write(locked, sine(0.5, 900), SR)
    locked.chmod(0)
    if os.geteuid() == 0:
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if os.path.abspath(os.fspath(path)) == str(locked) and not flags & (os.O_WRONLY | os.O_RDWR):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    rows = [{"audio": f"clips/{name}", "task": "caption", "text": f"clip {name}"}
            for name in sorted([*GOOD, *REASONS])]
    manifest = tmp_path / "corpus" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yield clips, manifest
    unblock(clips / "pipe.wav")
    locked.chmod(0o644)


def assert_each_reported_once(messages: list[str], names) -> None:
    for name in names:
        hits = [m for m in messages if f"{name}:" in m]
        assert len(hits) == 1, f"{name}: expected one report, got {hits or messages}"
        assert re.search(REASONS[name], hits[0]), hits[0]
        assert "\n" not in hits[0]


def assert_quiet(err: str) -> None:
    noise = [line for line in err.splitlines() if NOISE.search(line)]
    assert not noise, f"libmpg123 noise on stderr: {noise}"


# ---------------------------------------------------------------- the building blocks

def test_load_audio_names_each_true_reason(hostile, capfd):
    from pengi_kit.data.audio import check_audio_file, load_audio
    from pengi_kit.errors import AudioError

    clips, _ = hostile
    for name, reason in REASONS.items():
        with pytest.raises(AudioError, match=reason) as info:
            within(TIMEOUT, load_audio, clips / name, SR)
        assert str(info.value).startswith(f"{clips / name}: ")
        assert "possibly a pipe" not in str(info.value) and "audio file not found" not in str(info.value)
    for name in NOT_REGULAR:  # refused by stat alone
        with pytest.raises(AudioError, match=REASONS[name]):
            within(TIMEOUT, check_audio_file, clips / name)
    for name in GOOD:
        assert len(within(TIMEOUT, load_audio, clips / name, SR)) == SR // 2
    assert_quiet(capfd.readouterr().err)


def test_other_stderr_output_is_kept(capfd):
    """Only libmpg123's lines are dropped; anything else written meanwhile comes through."""
    from pengi_kit.data import audio

    with audio._quiet_stderr():
        os.write(2, b"Note: Illegal Audio-MPEG-Header 0x00000000 at offset 4996.\n")
        os.write(2, b"skipped: something else\n")
    err = capfd.readouterr().err
    assert err == "skipped: something else\n"


# ---------------------------------------------------------------- data check, data shard

def test_data_check_reports_every_hostile_file(hostile, capfd):
    from pengi_kit.data.check import check_manifest

    _, manifest = hostile
    report = within(TIMEOUT, check_manifest, manifest, progress=False)
    assert_each_reported_once(report.problems, REASONS)
    assert len(report.problems) == len(REASONS)  # nothing else, nothing twice
    assert len(report.durations) == len(GOOD)
    assert_quiet(capfd.readouterr().err)


def test_data_check_cli_in_a_subprocess_does_not_hang(hostile, tmp_path):
    """The real command, killed by the timeout if it blocks (on the pipe, or on anything)."""
    clips, manifest = hostile
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    # the permission refusal is simulated in this process only
    manifest = manifest.with_name("no_locked.jsonl")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows if "locked" not in r["audio"]))
    try:
        proc = subprocess.run([sys.executable, "-m", "pengi_kit", "data", "check", str(manifest), "--no-progress",
                               "--jobs", "2"], capture_output=True, text=True, timeout=TIMEOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"pengi-kit data check still running after {TIMEOUT:g} s: it hangs")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    problems = [line for line in proc.stdout.splitlines() if line.startswith("problem: ")]
    assert_each_reported_once(problems, [n for n in REASONS if n != "locked.wav"])
    assert len(problems) == len(REASONS) - 1
    assert_quiet(proc.stderr)


def test_data_shard_lists_every_unreadable_file(hostile, tmp_path, capfd):
    from pengi_kit.data.shards import write_shards

    _, manifest = hostile
    report = within(TIMEOUT, write_shards, manifest, tmp_path / "shards", 4)
    unreadable = [*NOT_REGULAR, "locked.wav"]  # junk MP3s are sharded as they are; check decodes them
    assert_each_reported_once(report.problems, unreadable)
    assert len(report.problems) == len(unreadable)
    assert all("cannot read audio file" in p for p in report.problems)
    assert report.samples == len(GOOD) + 2
    assert_quiet(capfd.readouterr().err)


# ---------------------------------------------------------------- generate over a folder

def test_collect_inputs_reports_what_it_leaves_out(hostile):
    from pengi_kit.data.inputs import collect_inputs

    clips, _ = hostile
    jobs, problems = within(TIMEOUT, collect_inputs, [clips])
    assert sorted(Path(j.name).name for j in jobs) == sorted([*GOOD, "junk.mp3", "sync.mp3", "locked.wav"])
    assert_each_reported_once(problems, NOT_REGULAR)
    assert len(problems) == len(NOT_REGULAR)
    # given one by one, they get the same reasons
    for name in NOT_REGULAR:
        jobs, problems = within(TIMEOUT, collect_inputs, [clips / name])
        assert not jobs
        assert_each_reported_once(problems, [name])


def test_generate_over_the_folder_skips_each_with_its_reason(hostile, untrained_checkpoint, capfd):
    clips, _ = hostile
    result = within(TIMEOUT, CliRunner().invoke, main,
                    ["generate", str(untrained_checkpoint), str(clips), "--format", "jsonl", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(Path(r["audio"]).name for r in rows) == sorted(GOOD)
    skipped = result.stderr.splitlines()
    assert all(line.startswith("skipped: ") for line in skipped), skipped
    assert_each_reported_once(skipped, REASONS)
    assert len(skipped) == len(REASONS)  # every one, nothing twice
    assert_quiet(capfd.readouterr().err)


# ---------------------------------------------------------------- the training data path

def test_training_batches_carry_each_error(hostile, tmp_path, capfd):
    from pengi_kit.data.build import build_dataset
    from pengi_kit.data.loader import TrainLoader
    from pengi_kit.recipe import from_dict

    _, manifest = hostile
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["train"] = str(manifest)
    dataset = build_dataset(from_dict(raw), "train", SR, 0.5)
    assert len(dataset) == len(GOOD) + len(REASONS)
    loader = TrainLoader(dataset, 5, seed=0, bucket_batches=0)  # 2 batches: every row once

    def one_epoch() -> tuple[list[str], int]:
        errors, good = [], 0
        for batch in loader.epoch(0):
            errors += batch["errors"]
            good += len(batch["texts"])
        return errors, good

    errors, good = within(TIMEOUT, one_epoch)
    assert good == len(GOOD)
    assert_each_reported_once(errors, REASONS)
    assert len(errors) == len(REASONS)
    assert all(e.startswith(f"{manifest}:") for e in errors)  # named by manifest line too
    assert_quiet(capfd.readouterr().err)


# ---------------------------------------------------------------- data prepare

def test_prepared_manifest_loads_from_another_folder(tmp_path, monkeypatch):
    """--root relative to the current folder, --out in a sub-folder: every clip still loads."""
    from pengi_kit.data.audio import load_audio
    from pengi_kit.data.check import check_manifest
    from pengi_kit.data.manifest import read_manifest

    work = tmp_path / "work"
    for name in ("0_jackson_0.wav", "3_theo_7.wav", "9_nicolas_12.wav"):
        (work / "corpus" / "recordings").mkdir(parents=True, exist_ok=True)
        sf.write(work / "corpus" / "recordings" / name, sine(0.2), 8000)
    monkeypatch.chdir(work)
    for out, inside in (("sub/dir/m.jsonl", False), ("corpus/m.jsonl", True)):
        result = CliRunner().invoke(main, ["data", "prepare", "fsdd", "--root", "corpus", "--out", out])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in (work / out).read_text().splitlines()]
        assert len(rows) == 3
        if inside:  # clips under the manifest's folder: relative to it, so both can move together
            assert all(r["audio"].startswith("recordings/") for r in rows), rows
        monkeypatch.chdir(tmp_path)  # read from elsewhere
        examples, errors = read_manifest(work / out)
        assert errors == [] and len(examples) == 3
        assert all(len(load_audio(ex.audio, SR)) > 0 for ex in examples)
        report = check_manifest(work / out, progress=False)
        assert report.ok and len(report.durations) == 3, report.problems
        monkeypatch.chdir(work)


def test_short_dataset_names_resolve():
    from pengi_kit.plugins import registry

    reg = registry()
    assert reg.get("dataset", "fsdd").name == "free-spoken-digit"
    assert reg.get("dataset", "us8k").name == "urbansound8k"
    assert reg.get("dataset", "clotho-v2").name == "clotho"
    assert reg.get("dataset", "esc50").name == "esc50"
    result = CliRunner().invoke(main, ["data", "prepare", "fsdd", "--root", "/nonexistent", "--out", "x.jsonl"])
    assert "did you mean" not in result.output and "is not a folder" in result.output


def test_prepare_names_a_hostile_clip_by_its_reason(tmp_path):
    root = tmp_path / "fsdd"
    (root / "recordings").mkdir(parents=True)
    sf.write(root / "recordings" / "1_jackson_0.wav", sine(0.2), 8000)
    os.symlink("nowhere.wav", root / "recordings" / "2_jackson_0.wav")
    os.mkfifo(root / "recordings" / "3_jackson_0.wav")
    try:
        result = within(TIMEOUT, CliRunner().invoke, main,
                        ["data", "prepare", "fsdd", "--root", str(root), "--out", str(tmp_path / "m.jsonl")])
    finally:
        unblock(root / "recordings" / "3_jackson_0.wav")
    assert result.exit_code == 0, result.output
    assert re.search(r"2_jackson_0\.wav: broken symlink \(points to nowhere\.wav which does not exist\)",
                     result.output), result.output
    assert re.search(r"3_jackson_0\.wav: is a named pipe \(FIFO\)", result.output), result.output
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1
