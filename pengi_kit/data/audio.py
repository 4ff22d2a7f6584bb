"""Audio loading with soundfile (libsndfile) and soxr: mono float32 at a target rate.

Every problem a file can have ends in one :class:`AudioError` line that names the file
and says what to do about it.

Example::

    wav = load_audio("clip.flac", 32000, start=1.5, end=8.5)   # (224000,) float32
    wav = fit_length(wav, 32000 * 7, mode="centre")
    wav = load_audio("long.wav", 32000, clip_seconds=7.0, crop="random", rng=rng)  # decodes 7 s only

A source may also be an open binary file (``io.BytesIO`` of a shard member); give it a
``name`` for the messages.

A path is checked before anything opens it (:func:`check_audio_file`): only a readable
regular file gets to libsndfile, so a named pipe cannot block a run, and a symlink loop,
a broken symlink or a permission problem is named as what it is. What libmpg123 (inside
libsndfile) prints on the C-level standard error while a file is opened or an MP3 is
decoded is kept off the terminal; the problem reaches the caller as the error instead.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr

from pengi_kit.errors import AudioError

__all__ = ["load_audio", "prepare_waveform", "fit_length", "audio_formats", "audio_info", "check_audio_file",
           "read_audio_bytes", "FIT_MODES"]

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


# ---------------------------------------------------------------- before anything opens a path

_NOT_FOUND_FIX = "check the path, or the manifest it came from"
_PERMISSION_FIX = "check the file's permissions: it must be readable by this user, its folders searchable"


def _special_kind(mode: int) -> str | None:
    """What a file that is neither a regular file nor a folder is, in words."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if not stat.S_ISREG(mode):
        return "a special file"
    return None


def _access_error(path: Path | str, exc: OSError) -> AudioError:
    """The :class:`AudioError` for an ``os.stat``/``os.open`` failure, naming its real cause."""
    code = exc.errno
    if code == errno.ELOOP:
        return _fail(path, "symlink loop: its symbolic links lead back to themselves and never reach a file",
                     "point the link at the real audio file, or remove it")
    if code == errno.ENOENT:
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
            target = os.readlink(path) if is_link else ""
        except OSError:
            is_link = False
        if is_link:
            return _fail(path, f"broken symlink (points to {target} which does not exist)",
                         "restore the file it points to, or remove the link")
        return _fail(path, "audio file not found", _NOT_FOUND_FIX)
    if code == errno.ENOTDIR:
        return _fail(path, "audio file not found (a part of its path is a file, not a folder)", _NOT_FOUND_FIX)
    if code in (errno.EACCES, errno.EPERM):
        return _fail(path, "permission denied", _PERMISSION_FIX)
    if code == errno.ENAMETOOLONG:
        return _fail(path, "path too long for the file system", "shorten the path")
    return _fail(path, f"cannot open the file: {exc.strerror or exc}", "check the file and the disk it is on")


def _checked_fd(path: Path | str) -> int:
    """A read-only descriptor of ``path`` once it is known to be a non-empty regular file.

    ``os.stat`` comes first, so a pipe, a socket or a device is refused without being
    opened; the open is non-blocking all the same, and its ``fstat`` confirms the file
    did not change in between.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _access_error(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise _fail(path, "is a directory, not an audio file", "point to the audio file itself")
    kind = _special_kind(st.st_mode)
    if kind:
        raise _fail(path, f"is {kind}, not a regular file",
                    "point to the audio file itself; pipes and devices are not read, they can block forever")
    if st.st_size == 0:
        raise _fail(path, "audio file is empty (0 bytes)", "re-export or re-download it")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _access_error(path, exc) from None
    try:
        kind = _special_kind(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise _access_error(path, exc) from None
    if kind:
        os.close(fd)
        raise _fail(path, f"is {kind}, not a regular file (it was replaced while being opened)",
                    "point to the audio file itself")
    return fd


def check_audio_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`AudioError` unless ``path`` is a readable, non-empty regular file.

    Nothing but ``stat`` touches a path that is not a regular file, so this never blocks
    on a named pipe. Each refusal names its cause: not found, broken symlink (and its
    target), symlink loop, permission denied, a directory, a named pipe, a socket or a
    device, an empty file.
    """
    os.close(_checked_fd(path))


def read_audio_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an audio file, after the checks of :func:`check_audio_file`."""
    fd = _checked_fd(path)
    try:
        with os.fdopen(fd, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _fail(path, f"cannot read the file: {exc.strerror or exc}",
                    "check the file and the disk it is on") from None


# ---------------------------------------------------------------- libmpg123's messages

# libmpg123 prints to the C-level stderr: "Note: Illegal Audio-MPEG-Header ...", "Warning: ...",
# "[src/libmpg123/parse.c:wetwork():1349] error: Giving up resync ...".
_MPG123_NOISE = re.compile(rb"^(?:\[src/libmpg123/[^\]]*\] )?(?:Note|Warning|Error|note|warning|error): ")


class _StderrSink:
    """Reference-counted redirection of file descriptor 2 into a temporary file.

    The first ``hold`` redirects, the last ``release`` restores fd 2 and writes back
    whatever was captured meanwhile except libmpg123's lines, so other threads' output
    (progress bars, reports) is delayed, not lost. The temporary file is kept for the
    next time (one per process).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: int | None = None
        self.sink: BinaryIO | None = None

    def hold(self) -> bool:
        with self.lock:
            if self.depth == 0:
                _flush_python_stderr()
                saved = None
                try:
                    if self.sink is None:
                        self.sink = tempfile.TemporaryFile()  # type: ignore[assignment]
                    saved = os.dup(2)
                    os.dup2(self.sink.fileno(), 2)  # type: ignore[union-attr]
                except (OSError, ValueError):  # no fd 2, no temporary folder: stay loud
                    if saved is not None:
                        os.close(saved)
                    return False
                self.saved = saved
            self.depth += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth:
                return
            _flush_python_stderr()
            saved, sink = self.saved, self.sink
            self.saved = None
            assert saved is not None and sink is not None
            os.dup2(saved, 2)
            os.close(saved)
            try:
                sink.seek(0)
                captured = sink.read()
                sink.seek(0)
                sink.truncate()
            except OSError:
                captured = b""
                sink.close()
                self.sink = None
        if not captured:
            return
        keep = b"".join(line for line in captured.splitlines(keepends=True) if not _MPG123_NOISE.match(line))
        while keep:
            try:
                keep = keep[os.write(2, keep):]
            except OSError:
                break

    def after_fork(self) -> None:
        """In a forked child (a DataLoader worker): its own lock and sink, fd 2 as it should be."""
        self.lock = threading.Lock()
        if self.depth and self.saved is not None:  # forked while another thread held it
            with contextlib.suppress(OSError):
                os.dup2(self.saved, 2)
                os.close(self.saved)
        if self.sink is not None:  # its offset is shared with the parent's: never use it here
            with contextlib.suppress(OSError):
                self.sink.close()
        self.depth, self.saved, self.sink = 0, None, None


def _flush_python_stderr() -> None:
    for stream in {id(s): s for s in (sys.stderr, sys.__stderr__) if s is not None}.values():
        with contextlib.suppress(Exception):
            stream.flush()


_STDERR = _StderrSink()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_STDERR.after_fork)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Keep libmpg123's messages (written to fd 2 from C) off the terminal meanwhile."""
    held = _STDERR.hold()
    try:
        yield
    finally:
        if held:
            _STDERR.release()


# ---------------------------------------------------------------- opening

# libsndfile's answer when no reader recognised the file and its last resort, libmpg123,
# found no MPEG audio in it either (it is not about pipes: the path was checked first).
_NO_MPEG = "not a regular file (possibly a pipe?)"


def _open(path: Path | str, source: Path | BinaryIO) -> sf.SoundFile:
    """Open ``source`` (a path, or a file object named ``path`` in messages)."""
    if not isinstance(source, Path):  # e.g. an in-memory member of a shard
        if isinstance(source, io.BytesIO) and not source.getbuffer().nbytes:
            raise _fail(path, "audio file is empty (0 bytes)", "re-export or re-download it")
    else:
        check_audio_file(source)
    try:
        with _quiet_stderr():
            return sf.SoundFile(source)
    except (RuntimeError, OSError, ValueError, TypeError) as exc:
        msg = str(exc).split(": ", 1)[-1] if "Error opening" in str(exc) else str(exc)
        fix = "the file is corrupt or not a format libsndfile reads; re-encode it to WAV or FLAC"
        if _NO_MPEG in msg:
            if Path(str(path)).suffix.lower() in (".mp3", ".mp2", ".mpga", ".mpeg"):
                raise _fail(path, "not an MP3 file: no MPEG audio frames found",
                            "the file is corrupt or not MP3 at all; re-download it, or re-encode it to WAV or FLAC"
                            ) from None
            msg = "format not recognised (no known audio header, no MPEG audio frames)"
        raise _fail(path, f"unreadable audio header: {_clean(msg)}", fix) from None


def audio_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of an audio file: ``{"rate", "channels", "frames", "format", "subtype"}``.

    Raises :class:`AudioError`, as :func:`load_audio` does, when the file cannot be opened.
    """
    source = Path(path)
    with _open(source, source) as f:
        return {"rate": f.samplerate, "channels": f.channels, "frames": f.frames, "format": f.format,
                "subtype": f.subtype}


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
            with _quiet_stderr():  # a damaged stream makes libmpg123 talk on stderr
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
    # the crop happened in the file's frames above; "start" only trims a resampled crop a sample off
    wav = prepare_waveform(data, rate, sample_rate, clip_seconds=clip_seconds, quality=quality, channel_axis=1)
    # Resampling ringing and slightly hot float masters can exceed full scale a little.
    return np.ascontiguousarray(np.clip(wav, -1.0, 1.0), dtype=np.float32)


def prepare_waveform(
    wav: np.ndarray,
    rate: int,
    sample_rate: int,
    *,
    clip_seconds: float | None = None,
    crop: str = "start",
    rng: np.random.Generator | None = None,
    quality: str = "HQ",
    channel_axis: int | None = None,
) -> np.ndarray:
    """Decoded audio at ``rate`` -> mono float32 ``(T,)`` at ``sample_rate``, of exactly
    ``round(clip_seconds * sample_rate)`` samples when ``clip_seconds`` is given.

    The one preparation step after decoding, for files (:func:`load_audio`) and for arrays
    handed to the Python API alike. ``wav`` is 1-D, or 2-D with channels on
    ``channel_axis``, which defaults to the shorter axis (a clip has more samples than
    channels). Channels are averaged, a different rate is resampled with soxr at
    ``quality``, and the length fitted as :func:`fit_length` does with ``crop``.
    Values are left as given (:func:`load_audio` clips files to [-1, 1]).
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim not in (1, 2) or wav.size == 0:
        raise ValueError(f"audio array must be 1-D (or 2-D with channels), got shape {wav.shape}")
    if wav.ndim == 2:
        axis = channel_axis if channel_axis is not None else int(wav.shape[0] >= wav.shape[1])
        wav = wav.mean(axis=axis) if wav.shape[axis] > 1 else wav.take(0, axis=axis)
    if rate != sample_rate:
        wav = soxr.resample(wav, rate, sample_rate, quality=quality).astype(np.float32, copy=False)
    if clip_seconds is not None:
        wav = fit_length(wav, round(clip_seconds * sample_rate), crop, rng)
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
