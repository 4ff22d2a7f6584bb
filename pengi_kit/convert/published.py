"""Published checkpoints by tag: where each is published, the checksum its publisher gives, its
size and licence, as data (as timm and open_clip keep theirs); :func:`fetch` downloads one into
the cache, resuming a cut download and checking the checksum.

``pengi-kit import pengi base`` imports the tag ``base`` of format ``pengi``: the file comes from
the cache (``$PENGI_KIT_CACHE``, default ``~/.cache/pengi-kit``), or is downloaded there first
with a progress bar. A local file keeps working as before. Offline, a cached tag works and a
missing one is one line naming the URL to fetch by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pengi_kit.errors import ConversionError

__all__ = ["PUBLISHED", "Published", "cache_dir", "fetch", "find"]


@dataclass(frozen=True)
class Published:
    """One published checkpoint file: the importer ``format`` and its ``tag``, where it is, the
    publisher's checksum (``"md5:..."`` or ``"sha256:..."``), its size in bytes, its licence, and
    where these facts come from."""

    format: str
    tag: str
    url: str
    checksum: str
    size: int
    licence: str
    source: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1].split("?")[0]


PUBLISHED: list[Published] = []  # filled below from the publishers' own records


def cache_dir() -> Path:
    """Where downloads go: ``$PENGI_KIT_CACHE``, else ``$XDG_CACHE_HOME/pengi-kit`` or ``~/.cache/pengi-kit``."""
    if os.environ.get("PENGI_KIT_CACHE"):
        return Path(os.environ["PENGI_KIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pengi-kit"


def find(fmt: str, tag: str) -> Published | None:
    """The published file of ``fmt`` tagged ``tag`` (or named so), or None."""
    return next((p for p in PUBLISHED if p.format == fmt and tag in (p.tag, p.filename)), None)


def _digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(entry: Published, *, cache: Path | None = None, progress: bool | None = None,
          timeout: float = 30.0) -> Path:
    """The cached file of ``entry``, downloaded first when it is not there: into a ``.part`` file
    that a later call resumes (an HTTP range request) after a cut connection, then checked
    against the publisher's checksum and renamed into place. A wrong checksum removes the download
    and raises; a failed download keeps what arrived and raises one line with the URL."""
    from pengi_kit.progress import bar

    folder = (cache or cache_dir()) / entry.format
    target = folder / entry.filename
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    fix = f"download it by hand from {entry.url} and pass the file's path"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            progress_bar = bar(entry.size, f"downloading {entry.filename}", "B", initial=have, enabled=progress)
            with open(part, "ab" if have else "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress_bar.update(len(block))
            progress_bar.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        got = part.stat().st_size if part.exists() else 0
        kept = f"; {got} of {entry.size} bytes kept, run it again to resume" if got else ""
        raise ConversionError(f"cannot download {entry.format} '{entry.tag}' from {entry.url} ({reason}){kept}; "
                              f"or {fix}") from None
    size = part.stat().st_size
    if size < entry.size:
        raise ConversionError(f"the download of {entry.url} stopped at {size} of {entry.size} bytes; run it again "
                              f"to resume, or {fix}")
    algorithm, expected = entry.checksum.split(":", 1)
    actual = _digest(part, algorithm)
    if actual != expected:
        part.unlink()
        raise ConversionError(f"{entry.url}: {algorithm} {actual} is not the publisher's {expected}; the download "
                              f"was removed (run it again, or {fix})")
    os.replace(part, target)
    return target
