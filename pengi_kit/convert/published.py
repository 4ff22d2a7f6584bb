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
    where these facts come from. A checksum or size not yet read from the publisher is None: such
    a file is downloaded unchecked, and its md5 printed to compare with the publisher's."""

    format: str
    tag: str
    url: str
    checksum: str | None
    size: int | None
    licence: str
    source: str

    @property
    def filename(self) -> str:
        from urllib.parse import unquote

        return unquote(self.url.rsplit("/", 1)[-1].split("?")[0])


_ZENODO_PANNS, _ZENODO_PENGI = "https://zenodo.org/record/3987831/files", "https://zenodo.org/records/8387083/files"
_HF_LAION, _HF_MSCLAP = "https://huggingface.co/lukewys/laion_clap/resolve/main", \
    "https://huggingface.co/microsoft/msclap/resolve/main"
# Checksums are the publishers' own where they publish one (Zenodo: md5; the Hugging Face hub: the
# sha256 of the file's LFS pointer); ``source`` says where each value was read. Pengi's record could
# not be reached where this table was written: its files have no checksum or size here yet.
_PENGI_SOURCE = "Zenodo record 8387083 (its md5 is listed there; not yet recorded here)"
PUBLISHED: list[Published] = [
    Published("pengi", "base", f"{_ZENODO_PENGI}/base.pth?download=1", None, None,
              "as Zenodo record 8387083 states", _PENGI_SOURCE),
    Published("pengi", "base_no_text_enc", f"{_ZENODO_PENGI}/base_no_text_enc.pth?download=1", None, None,
              "as Zenodo record 8387083 states", _PENGI_SOURCE),
    Published("panns", "cnn14-32k", f"{_ZENODO_PANNS}/Cnn14_mAP%3D0.431.pth?download=1",
              "md5:541141fa2ee191a88f24a3219fff024e", 327428481, "CC-BY-4.0 (weights), MIT (code)",
              "Zenodo record 3987831's md5, as recorded in Labbeti/dcase2022task6a nn/urls.py"),
    Published("panns", "cnn14-16k", f"{_ZENODO_PANNS}/Cnn14_16k_mAP%3D0.438.pth?download=1",
              "md5:362fc5ff18f1d6ad2f6d464b45893f2c", 358668570, "CC-BY-4.0 (weights), MIT (code)",
              "Zenodo record 3987831's md5, as quoted by download scripts that check it"),
    Published("laion-clap", "630k-audioset-best", f"{_HF_LAION}/630k-audioset-best.pt",
              "sha256:8053c9775516af2f4902e1e8281e356cc1bf7a85e8b761908170767b77c3f037", 1863587645, "CC0-1.0",
              "huggingface.co/lukewys/laion_clap, the file's LFS pointer"),
    Published("laion-clap", "music-audioset", f"{_HF_LAION}/music_audioset_epoch_15_esc_90.14.pt",
              "sha256:fae3e9c087f2909c28a09dc31c8dfcdacbc42ba44c70e972b58c1bd1caf6dedd", 2352471003, "CC0-1.0",
              "huggingface.co/lukewys/laion_clap commit 4226474e, the file's LFS pointer"),
    Published("ms-clap", "2022", f"{_HF_MSCLAP}/CLAP_weights_2022.pth",
              "sha256:5b917c47fec10547b65cf1d9096e194896fa1c2d6180536c8524289721a4c5b8", 2333972488, "MS-PL",
              "huggingface.co/microsoft/msclap commit 23e65db4, the file's LFS pointer"),
    Published("ms-clap", "2023", f"{_HF_MSCLAP}/CLAP_weights_2023.pth",
              "sha256:2cef4016d47d00eb28d153d522f397222057f95000e9bad6b9583c631284a1e6", 689950036, "MS-PL",
              "huggingface.co/microsoft/msclap (the value several lock files record for it)"),
    Published("ms-clapcap", "2023", f"{_HF_MSCLAP}/clapcap_weights_2023.pth",
              "sha256:6d7b700f2bc1be7319fd60430a516a88f0277bf1158b4908687a14e6a2a3a006", 1712037386, "MS-PL",
              "huggingface.co/microsoft/msclap commit dc47f1cd, the file's LFS pointer"),
]


def cache_dir() -> Path:
    """Where downloads go: ``$PENGI_KIT_CACHE``, else ``$XDG_CACHE_HOME/pengi-kit`` or ``~/.cache/pengi-kit``."""
    if os.environ.get("PENGI_KIT_CACHE"):
        return Path(os.environ["PENGI_KIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pengi-kit"


def find(fmt: str, tag: str) -> Published | None:
    """The published file of ``fmt`` tagged ``tag`` (or named so), or None."""
    return next((p for p in PUBLISHED if p.format == fmt and tag in (p.tag, p.filename)), None)


def _digest(path: Path, algorithm: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def fetch(entry: Published, *, cache: Path | None = None, progress: bool | None = None,
          timeout: float = 30.0) -> Path:
    """The cached file of ``entry``, downloaded first when it is not there: into a ``.part`` file
    that a later call resumes (an HTTP range request) after a cut connection, then checked
    against the publisher's checksum and renamed into place. A wrong checksum removes the download
    and raises; a failed download keeps what arrived and raises one line with the URL. Without a
    recorded checksum the file's md5 is printed, to compare with the publisher's; without a
    recorded size the server's Content-Length tells a cut download."""
    from pengi_kit.progress import bar, say

    folder = (cache or cache_dir()) / entry.format
    target = folder / entry.filename
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(entry.url, headers={"Range": f"bytes={have}-"} if have else {})
    fix = f"download it by hand from {entry.url} and pass the file's path"
    total = entry.size
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # the server ignored the range: start over
                have = 0
            announced = response.headers.get("Content-Length")
            if total is None and announced:  # a size not recorded: the server's word
                total = have + int(announced)
            progress_bar = bar(total, f"downloading {entry.filename}", "B", initial=have, enabled=progress)
            with open(part, "ab" if have else "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    progress_bar.update(len(block))
            progress_bar.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        got = part.stat().st_size if part.exists() else 0
        kept = f"; {got}{f' of {total}' if total else ''} bytes kept, run it again to resume" if got else ""
        raise ConversionError(f"cannot download {entry.format} '{entry.tag}' from {entry.url} ({reason}){kept}; "
                              f"or {fix}") from None
    size = part.stat().st_size
    if total and size < total:
        raise ConversionError(f"the download of {entry.url} stopped at {size} of {total} bytes; run it again "
                              f"to resume, or {fix}")
    if entry.checksum is None:
        say(f"warning: {entry.format} '{entry.tag}' was downloaded unchecked: pengi-kit records no checksum for "
            f"{entry.filename} yet; its md5 is {_digest(part, 'md5')}, compare it with {entry.source}")
    else:
        algorithm, expected = entry.checksum.split(":", 1)
        actual = _digest(part, algorithm)
        if actual != expected:
            part.unlink()
            raise ConversionError(f"{entry.url}: {algorithm} {actual} is not the publisher's {expected}; the "
                                  f"download was removed (run it again, or {fix})")
    os.replace(part, target)
    return target
