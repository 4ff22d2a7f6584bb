"""Augmentation in the data pipeline ([data.augment], pengi_kit.data.augment): each change does
what it says, draws depend on (example, epoch) only, validation clips are never changed, a
resumed run sees exactly the audio of an uninterrupted one, and mixup mixes tagging labels."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pengi_kit.data.augment import Augment, augment
from pengi_kit.data.build import build_dataset
from pengi_kit.engine.trainer import Trainer
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import check_files, from_dict
from pengi_kit.testing import tiny_recipe

RATE = 16000


def _tone(freq=440.0, seconds=1.0):
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(int(RATE * seconds)) / RATE)).astype(np.float32)


def _peak(wave):
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * RATE / len(wave))


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_speed_changes_tempo_and_pitch_and_pitch_keeps_the_duration():
    fast = augment(_tone(), RATE, Augment(speed=[1.25, 1.25]), _rng())
    assert len(fast) == pytest.approx(RATE / 1.25, abs=2) and _peak(fast) == pytest.approx(550, abs=5)
    up = augment(_tone(), RATE, Augment(pitch_semitones=[12.0, 12.0]), _rng())
    assert len(up) == pytest.approx(RATE, rel=0.02) and _peak(up) == pytest.approx(880, abs=10)
    kept = augment(_tone(), RATE, Augment(speed=[1.25, 1.25]), _rng(), length=RATE)
    assert len(kept) == RATE  # cut or padded back to the encoder's clip


def test_noise_gain_shift_and_reverberation():
    clean = _tone()
    noisy = augment(clean, RATE, Augment(noise="white", snr_db=[10.0, 10.0], noise_prob=1.0), _rng())
    snr = 10 * np.log10(np.mean(clean ** 2) / np.mean((noisy - clean) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)
    quiet = augment(clean, RATE, Augment(gain_db=[-6.0206, -6.0206]), _rng())
    np.testing.assert_allclose(quiet, clean / 2, atol=1e-6)
    click = np.zeros(RATE, dtype=np.float32)
    click[RATE // 2] = 0.5
    shifted = augment(click, RATE, Augment(shift=0.3), _rng(3))
    assert np.argmax(shifted) != RATE // 2 and len(shifted) == RATE
    wet = augment(click, RATE, Augment(reverb="room", rt60=[0.5, 0.5], reverb_prob=1.0), _rng())
    tail = np.abs(wet[RATE // 2 + 800: RATE // 2 + 4000])  # 50-250 ms after the click: the room's decay
    assert tail.max() > 1e-3 and np.abs(click[RATE // 2 + 1:]).max() == 0
    assert np.array_equal(augment(clean, RATE, Augment(), _rng()), clean)  # the defaults change nothing


def test_snr_is_against_the_active_level_and_each_clip_draws_one_source(tmp_path):
    """A 0.2 s tone in 1 s of silence at 10 dB SNR: 10 dB below the tone, not below the whole clip's
    mean (7 dB quieter); with two sources, white noise and a hum, some clips get each."""
    short = np.zeros(RATE, dtype=np.float32)
    short[RATE // 2: RATE // 2 + RATE // 5] = _tone()[: RATE // 5]
    noisy = augment(short, RATE, Augment(noise="white", snr_db=[10.0, 10.0], noise_prob=1.0), _rng())
    tone_power = np.mean(short[RATE // 2: RATE // 2 + RATE // 5] ** 2)
    assert 10 * np.log10(tone_power / np.mean((noisy - short) ** 2)) == pytest.approx(10.0, abs=0.3)
    (tmp_path / "hum").mkdir()
    sf.write(tmp_path / "hum" / "hum.wav", _tone(50.0, 2.0), RATE)
    both = Augment(noise=[str(tmp_path / "hum"), "white"], noise_prob=1.0, snr_db=[0.0, 0.0])
    added = [augment(np.zeros(RATE, np.float32) + short, RATE, both, _rng(seed)) - short for seed in range(12)]
    hums = [_peak(a) < 120 for a in added]  # the hum's 50 Hz dominates; white noise has no peak there
    assert 0 < sum(hums) < len(hums)
    with pytest.raises(ValueError, match="a list of sources"):
        Augment(noise=["white", ""])


def test_noise_and_impulse_responses_from_folders_and_a_missing_source_is_named(tmp_path):
    noise, rooms = tmp_path / "noise", tmp_path / "rooms"
    noise.mkdir()
    rooms.mkdir()
    sf.write(noise / "hum.wav", _tone(50.0, 2.0), RATE)
    ir = np.zeros(4000, dtype=np.float32)
    ir[0], ir[2000] = 1.0, 0.6  # a clear echo 125 ms later
    sf.write(rooms / "echo.wav", ir, RATE)
    config = Augment(noise=str(noise), noise_prob=1.0, snr_db=[0.0, 0.0], reverb=str(rooms), reverb_prob=1.0)
    click = np.zeros(RATE, dtype=np.float32)
    click[1000] = 0.5
    out = augment(click, RATE, config, _rng())
    assert _peak(out - augment(click, RATE, Augment(reverb=str(rooms), reverb_prob=1.0), _rng())) < 120  # the hum
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["augment"] = {"noise": str(tmp_path / "nowhere")}
    with pytest.raises(RecipeError, match="data.augment.noise = .*nowhere.*no audio there"):
        check_files(from_dict(raw))


def test_draws_follow_example_and_epoch_and_validation_is_untouched(tmp_path):
    raw = tiny_recipe(tmp_path / "run")
    raw["data"]["augment"] = {"speed": [0.8, 1.2], "noise": "white", "noise_prob": 1.0, "gain_db": [-6.0, 0.0]}
    recipe = from_dict(raw)
    train = build_dataset(recipe, "train", RATE, 0.5)
    again = build_dataset(recipe, "train", RATE, 0.5)
    first = train[3]["audio"]
    assert np.array_equal(first, again[3]["audio"]) and len(first) == RATE // 2
    train.set_epoch(1)
    assert not np.allclose(first, train[3]["audio"])  # another epoch, another draw
    plain = build_dataset(from_dict(tiny_recipe(tmp_path / "plain")), "train", RATE, 0.5)
    assert not np.allclose(first, plain[3]["audio"])
    valid = build_dataset(recipe, "valid", RATE, 0.5)
    plain_valid = build_dataset(from_dict(tiny_recipe(tmp_path / "plain")), "valid", RATE, 0.5)
    assert np.array_equal(valid[0]["audio"], plain_valid[0]["audio"])
    raw["data"]["augment"]["fixed_epochs"] = 2  # epochs 0 and 1 repeat epoch 0's draws; epoch 2 is fresh
    fixed = build_dataset(from_dict(raw), "train", RATE, 0.5)
    draws = []
    for epoch in range(3):
        fixed.set_epoch(epoch)
        draws.append(fixed[3]["audio"])
    assert np.array_equal(draws[0], first) and np.array_equal(draws[1], first)
    fresh = build_dataset(recipe, "train", RATE, 0.5)
    fresh.set_epoch(2)
    assert np.array_equal(draws[2], fresh[3]["audio"]) and not np.allclose(draws[2], first)


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_a_resumed_run_with_augmentation_is_bit_identical(tmp_path):
    augmentation = {"speed": [0.9, 1.1], "pitch_semitones": [-1.0, 1.0], "shift": 0.1, "reverb": "room",
                    "noise": "white", "gain_db": [-3.0, 3.0]}
    overrides = ["optim.warmup_steps=2"]

    def recipe(out, steps):
        raw = tiny_recipe(out, train={"max_steps": steps, "save_every": 3})
        raw["data"]["augment"] = augmentation
        return from_dict(raw, overrides)

    Trainer(recipe(tmp_path / "full", 6), progress=False).fit()
    Trainer(recipe(tmp_path / "part", 3), progress=False).fit()
    Trainer(recipe(tmp_path / "part", 6), resume=True, progress=False).fit()
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")  # bitwise, one process


def test_mixup_mixes_tagging_clips_and_their_labels(tmp_path):
    raw = {"name": "tagger", "task": "tagging",
           "model": {"audio_encoder": {"name": "cnn14", "sample_rate": RATE, "width": 2, "clip_seconds": 0.5,
                                       "spec_augment": False}},
           "data": {"synthetic_train_size": 32, "synthetic_valid_size": 8, "augment": {"mixup": 1.0}},
           "train": {"batch_size": 8, "max_steps": 2, "output_dir": str(tmp_path / "run")}}
    trainer = Trainer(from_dict(raw), progress=False)
    batch = next(iter(trainer.loader.epoch(0)))
    mix = batch["mixup"]
    assert sorted(mix["partner"]) == list(range(8)) and all(0 <= w <= 1 for w in mix["weight"])
    labels = trainer.model.batch_inputs(batch)["labels"]
    assert labels.dtype == torch.float32 and torch.allclose(labels.sum(1), torch.ones(8))
    assert (labels > 0).sum(1).max() == 2  # two classes per mixed clip (one where both are alike)
    trainer.fit()
    assert all(np.isfinite(_losses(tmp_path / "run")))
    raw_pengi = tiny_recipe(tmp_path / "p")
    raw_pengi["data"]["augment"] = {"mixup": 1.0}
    with pytest.raises(RecipeError, match="data.augment.mixup: mixes labels"):
        from_dict(raw_pengi)
