"""Audio loading with soundfile (libsndfile) and soxr: mono float32 at a target rate.

Every problem a file can have ends in one :class:`AudioError` line that names the file
and says what to do about it.

Example::

    wav = load_audio("clip.flac", 32000, start=1.5, end=8.5)   # (224000,) float32
    wav = fit_length(wav, 32000 * 7, mode="centre")
    wav = load_audio("long.wav", 32000, clip_seconds=7.0, crop="random", rng=rng)  # decodes 7 s only

A source may also be an open binary file (``io.BytesIO`` of a shard member); give it a
``name`` for the messages.
"""

from __future__ import annotations

import io
import math
import re
from pathlib import Path
from typing import BinaryIO

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


def _fail(path: Path | str, what: str, fix: str) -> AudioError:
    return AudioError(f"{path}: {what} ({fix})")


def _clean(message: str) -> str:
    """libsndfile's text without its 'Error : ' prefix and final full stop."""
    return message.strip().removeprefix("Error : ").rstrip(".")


def _open(path: Path | str, source: Path | BinaryIO) -> sf.SoundFile:
    """Open ``source`` (a path, or a file object named ``path`` in messages)."""
    if not isinstance(source, Path):  # e.g. an in-memory member of a shard
        if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
            raise _fail(path, "audio file is empty (0 bytes)", "re-export or re-download it")
    elif not source.exists():
        raise _fail(path, "audio file not found", "check the path, or the manifest it came from")
    elif source.is_dir():
        raise _fail(path, "is a directory, not an audio file", "point to the audio file itself")
    elif source.stat().st_size == 0:
        raise _fail(path, "audio file is empty (0 bytes)", "re-export or re-download it")
    try:
        return sf.SoundFile(source)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        msg = str(exc).split(": ", 1)[-1] if "Error opening" in str(exc) else str(exc)
        raise _fail(
            path,
            f"unreadable audio header: {_clean(msg)}",
            "the file is corrupt or not a format libsndfile reads; re-encode it to WAV or FLAC",
        ) from None


def _check_wav_truncation(path: Path | str, f: sf.SoundFile) -> None:
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


def _read(path: Path | str, f: sf.SoundFile, first: int, count: int) -> np.ndarray:
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
    path: str | Path | BinaryIO,
    sample_rate: int,
    *,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float = 3600.0,
    quality: str = "HQ",
    clip_seconds: float | None = None,
    crop: str = "start",
    rng: np.random.Generator | None = None,
    name: str | None = None,
) -> np.ndarray:
    """Load ``path`` as mono float32 ``(T,)`` in [-1, 1] at ``sample_rate``.

    Only the ``[start, end)`` segment (seconds) is decoded when given (MP3: from the
    file's start up to ``end``, because its seeking is not exact). Channels are
    averaged; a different file rate is resampled with soxr at ``quality``. Raises
    :class:`AudioError` naming the file for anything wrong with it, including a
    segment longer than ``max_seconds``.

    With ``clip_seconds`` the result has exactly ``round(clip_seconds * sample_rate)``
    samples: a longer segment is cropped (``crop`` as in :func:`fit_length`) *before*
    decoding, in the file's own frames, so a 7-second crop of a 30-second file decodes
    7 seconds; a shorter one is repeat-padded. ``max_seconds`` still applies to the
    whole segment. ``path`` may be a binary file object, named in messages by ``name``.
    """
    if clip_seconds is not None:
        if not clip_seconds > 0:
            raise ValueError(f"clip_seconds must be positive, got {clip_seconds!r}")
        if crop not in FIT_MODES:
            raise ValueError(f"crop must be one of {', '.join(repr(m) for m in FIT_MODES)}, got {crop!r}")
        if crop == "random" and rng is None:
            raise ValueError("crop='random' needs rng=np.random.default_rng(seed)")
    if not isinstance(sample_rate, (int, np.integer)) or not _MIN_RATE <= sample_rate <= _MAX_RATE:
        raise ValueError(f"sample_rate must be an integer in [{_MIN_RATE}, {_MAX_RATE}], got {sample_rate!r}")
    if quality not in _SOXR_QUALITIES:
        raise ValueError(f"quality must be one of {', '.join(_SOXR_QUALITIES)}, got {quality!r}")
    source: Path | BinaryIO = Path(path) if isinstance(path, (str, Path)) else path
    path = source if isinstance(source, Path) else (name or "<audio stream>")  # named in messages
    with _open(path, source) as f:
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
        if clip_seconds is not None:
            first, last = _crop(first, last, round(clip_seconds * rate), crop, rng)
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
    wav = np.ascontiguousarray(np.clip(wav, -1.0, 1.0), dtype=np.float32)
    if clip_seconds is not None:  # exact length: a resampled crop can be a sample off
        wav = fit_length(wav, round(clip_seconds * sample_rate), "start")
    return wav


def _crop(first: int, last: int, need: int, mode: str, rng: np.random.Generator | None) -> tuple[int, int]:
    """The ``need``-frame window of ``[first, last)`` that ``mode`` picks; all of it if shorter."""
    excess = (last - first) - max(need, 1)
    if excess <= 0:
        return first, last
    if mode == "start":
        offset = 0
    elif mode == "centre":
        offset = excess // 2
    else:
        offset = int(rng.integers(0, excess + 1))  # type: ignore[union-attr]
    return first + offset, first + offset + max(need, 1)


def _segment(
    path: Path | str, start: float | None, end: float | None, rate: int, frames: int
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
