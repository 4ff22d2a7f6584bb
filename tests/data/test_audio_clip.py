"""load_audio with clip_seconds (crop chosen in the file's frames, before decoding) and
with in-memory sources."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pengi_kit.data.audio import fit_length, load_audio
from pengi_kit.errors import AudioError

from corpora import tone, write

SR = 16000


@pytest.mark.parametrize("crop", ["start", "centre"])
def test_crop_is_the_same_window_as_cropping_the_whole_file(tmp_path, crop):
    path = write(tmp_path / "a.flac", tone(2.0, SR), SR)
    whole = load_audio(path, SR)
    np.testing.assert_array_equal(load_audio(path, SR, clip_seconds=0.5, crop=crop), fit_length(whole, 8000, crop))


def test_random_crop_is_reproducible_and_inside_the_segment(tmp_path):
    path = write(tmp_path / "a.wav", np.arange(SR * 2, dtype=np.float32) / (SR * 4), SR, subtype="FLOAT")
    crops = [load_audio(path, SR, start=0.5, end=1.5, clip_seconds=0.25, crop="random",
                        rng=np.random.default_rng(seed)) for seed in (1, 1, 2)]
    np.testing.assert_array_equal(crops[0], crops[1])
    assert not np.array_equal(crops[0], crops[2])
    for c in crops:  # samples are their own index / (4 * SR): the window lies in [0.5, 1.5) s
        assert len(c) == 4000 and c[0] * 4 >= 0.5 and c[-1] * 4 < 1.5 and np.allclose(np.diff(c), 1 / (4 * SR), rtol=0.01)


def test_resampled_crop_has_the_exact_length_and_short_clips_repeat(tmp_path):
    path = write(tmp_path / "a.wav", tone(1.0, 44100), 44100, subtype="PCM_16")
    assert load_audio(path, 32000, clip_seconds=0.7, crop="random", rng=np.random.default_rng(0)).shape == (22400,)
    short = load_audio(path, SR, clip_seconds=2.5)
    assert short.shape == (40000,)
    np.testing.assert_array_equal(short[:SR], short[SR: 2 * SR])


def test_max_seconds_applies_to_the_file_not_the_crop(tmp_path):
    path = write(tmp_path / "long.wav", tone(3.0, 8000), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match="over the 2 s limit"):
        load_audio(path, SR, clip_seconds=0.5, max_seconds=2.0)


def test_in_memory_source_named_in_messages(tmp_path):
    path = write(tmp_path / "a.flac", tone(0.5, SR), SR)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes()), SR), load_audio(path, SR))
    with pytest.raises(AudioError, match=r"^shard.tar:7.flac: audio file is empty"):
        load_audio(io.BytesIO(b""), SR, name="shard.tar:7.flac")
    with pytest.raises(AudioError, match=r"^shard.tar:8.flac: unreadable audio header"):
        load_audio(io.BytesIO(b"not audio" * 10), SR, name="shard.tar:8.flac")


def test_clip_arguments_are_checked(tmp_path):
    path = write(tmp_path / "a.wav", tone(0.5, SR), SR)
    for kw, msg in [({"clip_seconds": 0}, "clip_seconds"), ({"clip_seconds": 1, "crop": "middle"}, "crop"),
                    ({"clip_seconds": 1, "crop": "random"}, "rng")]:
        with pytest.raises(ValueError, match=msg):
            load_audio(path, SR, **kw)
