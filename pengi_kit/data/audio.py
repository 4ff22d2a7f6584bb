"""Audio loading with soundfile (libsndfile) and soxr: mono float32 at a target rate.

Every problem a file can have ends in one :class:`AudioError` line that names the file
and says what to do about it.

Example::

    wav = load_audio("clip.flac", 32000, start=1.5, end=8.5)   # (224000,) float32
    wav = fit_length(wav, 32000 * 7, mode="centre")
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pengi_kit.errors import AudioError

__all__ = ["load_audio", "fit_length", "audio_formats", "FIT_MODES"]

FIT_MODES = ("start", "centre", "random")
_SOXR_QUALITIES = ("QQ", "LQ", "MQ", "HQ", "VHQ")
# Rates outside this range are header damage, not real recordings.
_MIN_RATE, _MAX_RATE = 1_000, 768_000
# Float files peaking beyond +6 dBFS almost always hold integer-scale values.
_MAX_FLOAT_PEAK = 2.0
# libsndfile's log line for a WAV whose data chunk is shorter than its header says.
_WAV_DATA_SHORT = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers (ffmpeg, sox on pipes) put placeholders in the size field.
_UNKNOWN_SIZE = 0x7FFF0000
# mpg123 estimates the length of an MP3 without a Xing/LAME header from its size.
_MP3_LENGTH_SLACK = 4 * 1152


def audio_formats() -> dict[str, str]:
    """The container formats the installed libsndfile reads, e.g. ``{"FLAC": "FLAC (...)"}``."""
    return dict(sorted(sf.available_formats().items()))


def _fail(path: Path, what: str, fix: str) -> AudioError:
    return AudioError(f"{path}: {what} ({fix})")


def _clean(message: str) -> str:
    """libsndfile's text without its 'Error : ' prefix and final full stop."""
    return message.strip().removeprefix("Error : ").rstrip(".")


def _open(path: Path) -> sf.SoundFile:
    if not path.exists():
        raise _fail(path, "audio file not found", "check the path, or the manifest it came from")
    if path.is_dir():
        raise _fail(path, "is a directory, not an audio file", "point to the audio file itself")
    if path.stat().st_size == 0:
        raise _fail(path, "audio file is empty (0 bytes)", "re-export or re-download it")
    try:
        return sf.SoundFile(path)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        msg = str(exc).split(": ", 1)[-1] if "Error opening" in str(exc) else str(exc)
        raise _fail(
            path,
            f"unreadable audio header: {_clean(msg)}",
            "the file is corrupt or not a format libsndfile reads; re-encode it to WAV or FLAC",
        ) from None


def _check_wav_truncation(path: Path, f: sf.SoundFile) -> None:
    """libsndfile silently shortens a WAV whose data chunk was cut off; report it instead."""
    if f.format not in ("WAV", "WAVEX"):
        return
    m = _WAV_DATA_SHORT.search(f.extra_info)
    if m:
        declared, present = int(m.group(1)), int(m.group(2))
        if 0 < declared < _UNKNOWN_SIZE and present < declared:
            raise _fail(
                path,
                f"truncated: the header declares {declared} bytes of audio, the file holds {present}",
                "re-download or re-export it",
            )


def _read(path: Path, f: sf.SoundFile, first: int, count: int) -> np.ndarray:
    """Read ``count`` frames from frame ``first`` as float32 (count, channels)."""
    try:
        if f.format == "MP3":
            # mpg123 through libsndfile can seek inexactly and can even lose samples
            # across read calls on some VBR files; one read from frame 0 is exact.
            data = f.read(first + count, dtype="float32", always_2d=True)[first:]
        else:
            f.seek(first)
            data = f.read(count, dtype="float32", always_2d=True)
    except (RuntimeError, OSError, ValueError) as exc:
        raise _fail(
            path, f"corrupt or truncated audio data: {_clean(str(exc))}", "re-download or re-export it"
        ) from None
    short = count - len(data)
    slack = _MP3_LENGTH_SLACK if f.format == "MP3" and first + count == f.frames else 0
    if short > slack or len(data) == 0:
        raise _fail(
            path,
            f"truncated: expected {count} frames from frame {first}, could read only {len(data)}",
            "re-download or re-export it",
        )
    return data


def load_audio(
    path: str | Path,
    sample_rate: int,
    *,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float = 3600.0,
    quality: str = "HQ",
) -> np.ndarray:
    """Load ``path`` as mono float32 ``(T,)`` in [-1, 1] at ``sample_rate``.

    Only the ``[start, end)`` segment (seconds) is decoded when given (MP3: from the
    file's start up to ``end``, because its seeking is not exact). Channels are
    averaged; a different file rate is resampled with soxr at ``quality``. Raises
    :class:`AudioError` naming the file for anything wrong with it, including a
    segment longer than ``max_seconds``.
    """
    if not isinstance(sample_rate, (int, np.integer)) or not _MIN_RATE <= sample_rate <= _MAX_RATE:
        raise ValueError(f"sample_rate must be an integer in [{_MIN_RATE}, {_MAX_RATE}], got {sample_rate!r}")
    if quality not in _SOXR_QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(_SOXR_QUALITIES)}, got {quality!r}")
    path = Path(path)
    with _open(path) as f:
        rate, channels, frames = f.samplerate, f.channels, f.frames
        if channels < 1:
            raise _fail(path, "has no audio channels", "re-export it with at least one channel")
        if not _MIN_RATE <= rate <= _MAX_RATE:
            raise _fail(
                path,
                f"implausible sample rate {rate} Hz in the header",
                f"the header is damaged or the rate is outside {_MIN_RATE}-{_MAX_RATE} Hz; re-export it",
            )
        if frames <= 0:
            raise _fail(path, "contains no audio frames", "remove it from the data or re-export it")
        _check_wav_truncation(path, f)
        first, last = _segment(path, start, end, rate, frames)
        if (last - first) / rate > max_seconds:
            raise _fail(
                path,
                f"{(last - first) / rate:.1f} s to decode, over the {max_seconds:g} s limit",
                "cut it into clips with start/end, or raise max_seconds",
            )
        data = _read(path, f, first, last - first)

    finite = np.isfinite(data)
    if not finite.all():
        bad = np.argwhere(~finite)[0][0] + first
        raise _fail(
            path,
            f"{int((~finite).sum())} NaN or infinite samples, the first at {bad / rate:.3f} s",
            "re-export the audio from its source",
        )
    peak = float(np.abs(data).max())
    if peak > _MAX_FLOAT_PEAK:
        raise _fail(
            path,
            f"samples reach {peak:g}, far outside [-1, 1]",
            "the file likely stores integer-scale values as float; rescale it to [-1, 1]",
        )
    wav = data.mean(axis=1) if channels > 1 else data[:, 0]
    if rate != sample_rate:
        wav = soxr.resample(wav, rate, sample_rate, quality=quality)
    # Resampling ringing and slightly hot float masters can exceed full scale a little.
    return np.ascontiguousarray(np.clip(wav, -1.0, 1.0), dtype=np.float32)


def _segment(
    path: Path, start: float | None, end: float | None, rate: int, frames: int
) -> tuple[int, int]:
    """Frame bounds of ``[start, end)`` seconds, checked against the file's length."""
    duration = frames / rate
    for name, value in (("start", start), ("end", end)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)
            or value < 0
        ):
            raise _fail(path, f"{name}={value!r} is not a time in seconds", f"give {name} as seconds >= 0")
    first = 0 if start is None else round(start * rate)
    last = frames if end is None else round(end * rate)
    if first >= frames:
        raise _fail(
            path,
            f"start {start:g} s is at or past the end of the file, which lasts {duration:.3f} s",
            "fix the segment's start",
        )
    if last > frames:
        raise _fail(
            path,
            f"end {end:g} s is past the end of the file, which lasts {duration:.3f} s",
            "fix the segment's end, or leave it out to read to the end",
        )
    if last <= first:
        s = 0.0 if start is None else start
        raise _fail(path, f"empty segment [{s:g}, {end:g}) s", "make end greater than start")
    return first, last


def fit_length(
    wav: np.ndarray,
    num_samples: int,
    mode: str = "start",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Repeat-pad a short clip (tile, then cut) or crop a long one to ``num_samples``.

    ``mode`` picks the crop: ``"start"``, ``"centre"`` or ``"random"`` (needs a seeded
    ``rng`` so runs are reproducible).
    """
    if mode not in FIT_MODES:
        raise ValueError(f"mode must be one of {', '.join(repr(m) for m in FIT_MODES)}, got {mode!r}")
    if mode == "random" and rng is None:
        raise ValueError("mode='random' needs rng=np.random.default_rng(seed)")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    wav = np.asarray(wav)
    if wav.ndim != 1 or len(wav) == 0:
        raise ValueError(f"wav must be a non-empty 1-D array, got shape {wav.shape}")
    n = len(wav)
    if n < num_samples:
        return np.tile(wav, -(-num_samples // n))[:num_samples]
    excess = n - num_samples
    if mode == "start":
        offset = 0
    elif mode == "centre":
        offset = excess // 2
    else:
        offset = int(rng.integers(0, excess + 1))
    return wav[offset : offset + num_samples].copy()
