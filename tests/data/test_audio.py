"""Audio loading: every format libsndfile reads here, and every way a file can be bad."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pengi_kit.data.audio import audio_formats, fit_length, load_audio
from pengi_kit.errors import AudioError

SR = 16000
HAS_MP3 = "MP3" in sf.available_formats()


def sine(freq: float, seconds: float, sr: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wav: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wav * np.hanning(len(wav))))
    return float(np.fft.rfftfreq(len(wav), 1 / sr)[np.argmax(spectrum)])


def rms(wav: np.ndarray) -> float:
    return float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))


def write(path: Path, wav: np.ndarray, sr: int = SR, **kw) -> Path:
    sf.write(path, wav, sr, **kw)
    return path


# --- formats -----------------------------------------------------------------------

LOSSLESS = [
    ("wav", "PCM_U8", 1 / 128),
    ("wav", "PCM_16", 1 / 32768),
    ("wav", "PCM_24", 2**-23),
    ("wav", "PCM_32", 1e-7),  # float32 output resolution, not the 32-bit grid
    ("wav", "FLOAT", 0.0),
    ("flac", "PCM_16", 1 / 32768),
    ("flac", "PCM_24", 2**-23),
]


@pytest.mark.parametrize("ext,subtype,tol", LOSSLESS, ids=[f"{e}-{s}" for e, s, _ in LOSSLESS])
def test_lossless_round_trip(tmp_path, ext, subtype, tol):
    x = sine(440, 0.5, SR)
    y = load_audio(write(tmp_path / f"x.{ext}", x, subtype=subtype), SR)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() <= tol * 1.01


LOSSY = [("ogg", "OGG", "VORBIS", 44100), ("opus", "OGG", "OPUS", 48000)]
if HAS_MP3:
    LOSSY.append(("mp3", "MP3", "MPEG_LAYER_III", 44100))


@pytest.mark.parametrize("ext,fmt,subtype,sr", LOSSY, ids=[s for _, _, s, _ in LOSSY])
def test_lossy_round_trip_keeps_pitch_level_and_length(tmp_path, ext, fmt, subtype, sr):
    x = sine(1000, 1.0, sr)
    y = load_audio(write(tmp_path / f"x.{ext}", x, sr, format=fmt, subtype=subtype), sr)
    assert abs(len(y) - len(x)) <= sr // 100
    assert abs(peak_hz(y, sr) - 1000) <= 2
    assert rms(y) == pytest.approx(rms(x), rel=0.1)


def test_audio_formats_lists_what_libsndfile_reads():
    formats = audio_formats()
    assert {"WAV", "FLAC", "OGG"} <= set(formats)
    assert formats == dict(sf.available_formats())


# --- channels, rates, segments -------------------------------------------------------


def test_stereo_is_averaged_not_concatenated(tmp_path):
    x = sine(300, 0.25, SR)
    y = load_audio(write(tmp_path / "s.wav", np.stack([x, -x], 1), subtype="FLOAT"), SR)
    assert y.shape == x.shape
    assert np.abs(y).max() == 0.0
    z = load_audio(write(tmp_path / "t.wav", np.stack([x, 0.5 * x], 1), subtype="FLOAT"), SR)
    np.testing.assert_allclose(z, 0.75 * x, atol=1e-7)


def test_resample_44k1_to_32k_keeps_length_and_frequency(tmp_path):
    x = sine(1000, 1.0, 44100)
    y = load_audio(write(tmp_path / "r.wav", x, 44100, subtype="FLOAT"), 32000)
    assert len(y) == 32000
    assert abs(peak_hz(y, 32000) - 1000) <= 1
    assert rms(y) == pytest.approx(rms(x), rel=0.01)


@pytest.mark.parametrize("name,kw", [("seg.wav", {"subtype": "PCM_16"}), ("seg.flac", {"subtype": "PCM_24"}),
                                     ("seg.ogg", {"subtype": "VORBIS"}),
                                     ("seg.opus", {"format": "OGG", "subtype": "OPUS"})])
def test_segment_matches_slice_of_whole_file(tmp_path, name, kw):
    sr = 48000
    x = np.random.default_rng(0).uniform(-0.5, 0.5, sr).astype(np.float32)
    path = write(tmp_path / name, x, sr, **kw)
    whole = load_audio(path, sr)
    np.testing.assert_array_equal(load_audio(path, sr, start=0.25, end=0.5), whole[12000:24000])
    np.testing.assert_array_equal(load_audio(path, sr, start=0.75), whole[36000:])
    np.testing.assert_array_equal(load_audio(path, sr, end=0.125), whole[:6000])


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile built without MP3")
def test_mp3_segment_is_sample_exact(tmp_path):
    # A quiet ramped sine makes small VBR frames whose seek table is inexact; a plain
    # seek lands elsewhere, so the loader has to decode up to the start.
    t = np.arange(3 * 44100) / 44100
    x = (0.5 * np.sin(2 * np.pi * 440 * t) * np.linspace(0, 1, len(t))).astype(np.float32)
    path = write(tmp_path / "ramp.mp3", x, 44100, format="MP3")
    whole = load_audio(path, 44100)
    np.testing.assert_allclose(load_audio(path, 44100, start=1.0, end=1.5), whole[44100:66150], atol=1e-6)


def test_segment_of_damaged_file_decodes_only_the_segment(tmp_path):
    path = write(tmp_path / "cut.flac", sine(440, 2.0, SR), subtype="PCM_16")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(path, SR)
    assert len(load_audio(path, SR, start=0.0, end=0.25)) == SR // 4


# --- bad inputs ------------------------------------------------------------------------


def expect_error(path: Path, pattern: str, **kw) -> str:
    with pytest.raises(AudioError) as info:
        load_audio(path, SR, **kw)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert re.search(pattern, message), message
    return message


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.wav", "not found")


def test_directory(tmp_path):
    expect_error(tmp_path, "directory")


def test_zero_length_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    expect_error(tmp_path / "empty.wav", r"empty \(0 bytes\)")


def test_corrupt_header(tmp_path):
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00\x00\x00NOTAWAVE" + bytes(200))
    expect_error(tmp_path / "junk.wav", "unreadable audio header")


def test_text_file_with_audio_name(tmp_path):
    (tmp_path / "notes.flac").write_text("not audio at all\n" * 20)
    expect_error(tmp_path / "notes.flac", "unreadable audio header")


@pytest.mark.parametrize("ext,kw", [("wav", {"subtype": "PCM_16"}), ("flac", {"subtype": "PCM_16"}),
                                     ("ogg", {"subtype": "VORBIS"})])
def test_truncated_data(tmp_path, ext, kw):
    path = write(tmp_path / f"t.{ext}", sine(440, 1.0, SR), **kw)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    expect_error(path, "truncated|corrupt|unreadable")


def test_truncated_wav_is_named_truncated(tmp_path):
    path = write(tmp_path / "t.wav", sine(440, 1.0, SR), subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:-1000])
    expect_error(path, "truncated: the header declares 32000 bytes")


@pytest.mark.skipif(not HAS_MP3, reason="libsndfile built without MP3")
def test_truncated_mp3_short_read(tmp_path):
    path = write(tmp_path / "t.mp3", sine(440, 1.0, 44100), 44100, format="MP3")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_error(path, "truncated")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path, bad):
    x = sine(440, 0.1, SR)
    x[100] = bad
    expect_error(write(tmp_path / "nf.wav", x, subtype="FLOAT"), "NaN or infinite")


def test_integer_scale_float_file(tmp_path):
    expect_error(write(tmp_path / "big.wav", sine(440, 0.1, SR, amp=30000), subtype="FLOAT"), "outside")


def test_zero_frames(tmp_path):
    expect_error(write(tmp_path / "z.wav", np.zeros(0, np.float32)), "no audio frames")


def test_zero_channels(tmp_path):
    path = write(tmp_path / "c0.wav", sine(440, 0.1, SR), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[22:24] = struct.pack("<H", 0)  # fmt chunk: channel count
    path.write_bytes(bytes(data))
    expect_error(path, "[Cc]hannel")


@pytest.mark.parametrize("rate", [1, 10**9])
def test_absurd_sample_rate(tmp_path, rate):
    path = write(tmp_path / "sr.wav", sine(440, 0.1, SR), subtype="PCM_16")
    data = bytearray(path.read_bytes())
    data[24:28] = struct.pack("<I", rate)  # fmt chunk: sample rate
    path.write_bytes(bytes(data))
    expect_error(path, "implausible sample rate")


def test_absurd_length(tmp_path):
    path = write(tmp_path / "long.wav", sine(440, 1.0, SR))
    expect_error(path, "over the 0.5 s limit", max_seconds=0.5)
    assert len(load_audio(path, SR, start=0.0, end=0.4, max_seconds=0.5)) == 6400


@pytest.mark.parametrize(
    "start,end,pattern",
    [(2.0, None, "start 2 s is at or past the end"), (0.0, 1.5, "end 1.5 s is past the end"),
     (0.5, 0.5, "empty segment"), (0.6, 0.2, "empty segment"), (-1.0, None, "not a time"),
     (float("nan"), None, "not a time")],
)
def test_bad_segment(tmp_path, start, end, pattern):
    path = write(tmp_path / "seg.wav", sine(440, 1.0, SR))
    expect_error(path, pattern, start=start, end=end)


def test_bad_arguments_are_value_errors(tmp_path):
    path = write(tmp_path / "a.wav", sine(440, 0.1, SR))
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, 0)
    with pytest.raises(ValueError, match="quality"):
        load_audio(path, SR, quality="best")


# --- fit_length ------------------------------------------------------------------------


def test_fit_length_repeat_pads_short_clip():
    wav = np.array([1, 2, 3], np.float32)
    np.testing.assert_array_equal(fit_length(wav, 8), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(fit_length(wav, 3), wav)


def test_fit_length_crops():
    wav = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(fit_length(wav, 4, "start"), [0, 1, 2, 3])
    np.testing.assert_array_equal(fit_length(wav, 4, "centre"), [3, 4, 5, 6])
    np.testing.assert_array_equal(fit_length(wav, 3, "centre"), [3, 4, 5])


def test_fit_length_random_is_reproducible_per_seed():
    wav = np.arange(10_000, dtype=np.float32)
    a = fit_length(wav, 100, "random", np.random.default_rng(1))
    b = fit_length(wav, 100, "random", np.random.default_rng(1))
    c = fit_length(wav, 100, "random", np.random.default_rng(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.diff(a), 1)  # a contiguous window


def test_fit_length_bad_arguments():
    wav = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="'start', 'centre', 'random'"):
        fit_length(wav, 5, "middle")
    with pytest.raises(ValueError, match="rng"):
        fit_length(wav, 5, "random")
    with pytest.raises(ValueError, match="non-empty"):
        fit_length(np.zeros(0, np.float32), 5)
