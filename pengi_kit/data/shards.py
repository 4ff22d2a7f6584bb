"""Webdataset-style tar shards: writing them from a manifest, and streaming them in training.

A shard is a plain tar file. Sample ``k`` is two members, ``<key>.<ext>`` (the audio
file's bytes, untouched: ``.flac``, ``.wav`` ...) and ``<key>.json`` (the manifest
fields: ``audio`` (the original path), ``prompt``, ``text`` and, when set, ``task``,
``start``, ``end``, plus ``source``, the manifest line it came from). A conversation (of
a conversation file, :mod:`pengi_kit.data.conversations`) is ``<key>.json`` with its
``messages`` and each clip as ``<key>.<n>.<ext>`` (n from 0, in the order of its
``<audio>``). Any webdataset reader can read them. ``pengi-kit data shard`` also writes ``shards.json`` beside them
with each shard's sample count, so a reader knows the epoch length without scanning.

A recipe names shards by pattern (``"shards/train-{000000..000009}.tar"``, globs work
too) or by folder. In training, shards are dealt to ranks (``shards[rank::world]``,
in an order shuffled per epoch), and each rank's stream is cut into batches that its
DataLoader workers take in turn (worker ``w`` decodes batches ``w, w + workers, ...``),
so the batches are the same for any number of workers. Samples are shuffled within
each shard. Every rank runs as many batches as the rank with the fewest samples has:
write many shards of equal size (the writer does) so that little is left out.
"""
from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from pengi_kit.data.augment import Augment, augment, draw_epoch
from pengi_kit.data.base import PengiDataset
from pengi_kit.data.collate import clip_key, collate
from pengi_kit.errors import PengiKitError

__all__ = ["ShardError", "ShardDataset", "write_shards", "resolve_shards", "shard_counts", "is_shard_source",
           "expand_braces", "INDEX"]

INDEX = "shards.json"
_BRACE = re.compile(r"\{([^{}]*)\}")


class ShardError(PengiKitError):
    """Shards are missing, unreadable, or cannot be written."""


def is_shard_source(spec: str) -> bool:
    """True for a tar pattern or a folder (of shards); manifests are files with other suffixes."""
    return spec.endswith(".tar") or Path(spec).is_dir()


def expand_braces(pattern: str) -> list[str]:
    """``"a-{000..002}.tar"`` -> ``["a-000.tar", "a-001.tar", "a-002.tar"]``; ``{x,y}`` lists too."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    if ".." in body:
        lo, _, hi = body.partition("..")
        if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
            raise ShardError(f"shard pattern '{pattern}': '{{{body}}}' is not a range like {{000000..000009}}")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [name for option in options for name in expand_braces(head + option + tail)]


def resolve_shards(spec: str | Path) -> list[Path]:
    """The shard files a pattern, glob or folder names, in order."""
    path = Path(spec)
    if path.is_dir():
        index = _read_index(path)
        found = [path / name for name in index] if index else sorted(path.glob("*.tar"))
        if not found:
            raise ShardError(f"{path}: no .tar shards in this folder (write them with `pengi-kit data shard`)")
        return found
    found = []
    for name in expand_braces(str(spec)):
        if glob.has_magic(name):
            found += sorted(Path(p) for p in glob.glob(name))
        else:
            found.append(Path(name))
    missing = [p for p in found if not p.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ShardError(f"{missing[0]}: shard not found{more} (check the pattern '{spec}')")
    if not found:
        raise ShardError(f"no shards match '{spec}' (check the pattern)")
    return found


def holds_conversations(spec: str | Path) -> bool:
    """Whether the shards of ``spec`` were written from a conversation file (``shards.json`` says)."""
    paths = resolve_shards(spec)
    try:
        return json.loads((paths[0].parent / INDEX).read_text(encoding="utf-8")).get("rows") == "conversations"
    except (OSError, ValueError, IndexError, AttributeError):
        return False


def _read_index(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / INDEX).read_text(encoding="utf-8"))
        return {entry["name"]: int(entry["count"]) for entry in data["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _key_and_ext(name: str) -> tuple[str, str]:
    """Webdataset's rule: the key is the path up to the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _samples(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """(key, {extension: member}) of each sample of a shard, in order."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if member.isfile():
                key, ext = _key_and_ext(member.name)
                samples.setdefault(key, {})[ext] = member
    return list(samples.items())


def shard_counts(paths: list[Path]) -> list[int]:
    """Samples in each shard: from the folder's ``shards.json`` where it lists the shard, else by
    reading the tar headers. An unreadable shard counts 0 (it is reported when streamed)."""
    indexes: dict[Path, dict[str, int]] = {}
    counts = []
    for path in paths:
        index = indexes.setdefault(path.parent, _read_index(path.parent))
        if path.name in index:
            counts.append(index[path.name])
            continue
        try:
            counts.append(len(_samples(path)))
        except (tarfile.TarError, OSError):
            counts.append(0)
    return counts


# ---------------------------------------------------------------- writing

@dataclass
class ShardReport:
    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def pattern(self) -> str:
        if not self.shards:
            return ""
        prefix = self.shards[0].name[: -len("-000000.tar")]
        return str(self.shards[0].parent / f"{prefix}-{{000000..{len(self.shards) - 1:06d}}}.tar")


def write_shards(manifest: str | Path, out_dir: str | Path, shard_size: int, *, prefix: str = "train",
                 shuffle: bool = True, seed: int = 0) -> ShardReport:
    """Write the manifest's rows into tar shards of ``shard_size`` samples under ``out_dir``.

    Rows are shuffled first (``seed``) so that every shard is a fair sample of the
    corpus. Bad manifest lines and unreadable audio files are left out and listed in
    ``problems``; the audio is not decoded (``pengi-kit data check`` does that). Each
    shard is written to a temporary name and renamed; older ``<prefix>-NNNNNN.tar``
    files beyond the new set are removed, so the folder holds exactly one set.
    """
    from pengi_kit.data.conversations import is_conversation_file, read_conversations
    from pengi_kit.data.manifest import read_manifest

    if shard_size < 1:
        raise ShardError(f"shard size must be at least 1, got {shard_size}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", prefix):
        raise ShardError(f"shard prefix '{prefix}' may hold only letters, digits and '_'")
    conversations = is_conversation_file(manifest)
    examples, problems = (read_conversations if conversations else read_manifest)(manifest, on_error="skip")
    order = np.random.default_rng(seed).permutation(len(examples)) if shuffle else np.arange(len(examples))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = ShardReport(problems=problems)
    counts: list[int] = []
    try:
        _fill_shards(examples, order, out, prefix, shard_size, report, counts)
    finally:
        for tmp in out.glob(f".{prefix}-*.tar.*.tmp"):  # a shard left half-written by an error
            tmp.unlink(missing_ok=True)
    keep = {p.name for p in report.shards}
    for old in out.glob(f"{prefix}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if old.name not in keep:
            old.unlink()
    index = {"format": "pengi-kit shards 1", "source": str(manifest), "samples": report.samples,
             "rows": "conversations" if conversations else "pengi",
             "shards": [{"name": p.name, "count": n} for p, n in zip(report.shards, counts)]}
    tmp = _TarWriter.temporary(out / INDEX)
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / INDEX)
    return report


def _fill_shards(examples: list, order: np.ndarray, out: Path, prefix: str, shard_size: int,
                 report: ShardReport, counts: list[int]) -> None:
    from pengi_kit.data.audio import read_audio_bytes
    from pengi_kit.errors import AudioError

    from pengi_kit.data.conversations import Conversation, InlineAudio

    writer: _TarWriter | None = None
    for position in order:
        ex = examples[int(position)]
        where = f"{ex.source}:{ex.line}"
        clips = ex.audios if isinstance(ex, Conversation) else (ex.audio,)
        members = []
        try:  # checked first: a named pipe is refused, not read
            for clip in clips:
                members.append((clip.data, clip.format) if isinstance(clip, InlineAudio) else
                               (read_audio_bytes(clip), clip.suffix.lower().lstrip(".") or "audio"))
        except AudioError as exc:
            reason = str(exc).removeprefix(f"{clip}: ")
            report.problems.append(f"{where}: {clip}: cannot read audio file: {reason}")
            continue
        if writer is None:
            writer = _TarWriter(out / f"{prefix}-{len(report.shards):06d}.tar")
        key = f"{report.samples:09d}"
        if isinstance(ex, Conversation):
            row: dict[str, Any] = {"messages": ex.as_messages(), "source": where}
            for n, (data, ext) in enumerate(members):
                writer.add(f"{key}.{n}.{ext}", data)
        else:
            row = {"audio": str(ex.audio), "prompt": ex.prompt, "text": ex.text, "task": ex.task,
                   "start": ex.start, "end": ex.end, "source": where}
            writer.add(f"{key}.{members[0][1]}", members[0][0])
        writer.add(f"{key}.json", json.dumps({k: v for k, v in row.items() if v is not None},
                                             ensure_ascii=False).encode())
        report.samples += 1
        if writer.samples == shard_size:
            report.shards.append(writer.close())
            counts.append(shard_size)
            writer = None
    if writer is not None:
        counts.append(writer.samples)
        report.shards.append(writer.close())


class _TarWriter:
    """One shard, written to a temporary name and renamed into place by :meth:`close`."""

    def __init__(self, path: Path) -> None:
        self.path, self.samples = path, 0
        self.tmp = self.temporary(path)
        self.tar = tarfile.open(self.tmp, mode="w", format=tarfile.PAX_FORMAT)

    @staticmethod
    def temporary(path: Path) -> Path:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        return Path(tmp)

    def add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same bytes on every run
        self.tar.addfile(info, io.BytesIO(data))
        self.samples += name.endswith(".json")

    def close(self) -> Path:
        self.tar.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path


# ---------------------------------------------------------------- streaming

class ShardDataset(PengiDataset, IterableDataset):
    """Stream shards as collated batches; see the module docstring.

    Call :meth:`configure` before each epoch (the trainer's loader does). Each item
    of the iteration is a whole batch, ``collate``-d, so give the DataLoader
    ``batch_size=None``.
    """

    def __init__(self, spec: str | Path, sample_rate: int, clip_seconds: float | None, crop: str = "random",
                 seed: int = 0, *, max_seconds: float = 3600.0, augment: Augment | None = None) -> None:
        self.augment = augment
        self.spec, self.paths = str(spec), resolve_shards(spec)
        self.counts = shard_counts(self.paths)
        self.sample_rate, self.clip_seconds, self.crop, self.seed = sample_rate, clip_seconds, crop, seed
        self.max_seconds = max_seconds
        self.load_errors: list[str] = [f"{p}: unreadable shard, or no samples in it (re-create it)"
                                       for p, n in zip(self.paths, self.counts) if n == 0]
        self.configure(batch_size=1)

    def configure(self, *, batch_size: int, epoch: int = 0, start_batch: int = 0, rank: int = 0,
                  world_size: int = 1, train: bool = True) -> None:
        """``train``: shuffled, every rank the same number of full batches; else in order, all of it."""
        self.batch_size, self.epoch, self.start_batch = batch_size, draw_epoch(self.augment, epoch), start_batch
        self.rank, self.world_size, self.train = rank, world_size, train

    def set_epoch(self, epoch: int) -> None:
        self.epoch = draw_epoch(self.augment, epoch)

    def num_examples(self) -> int:
        return sum(self.counts)  # a stream has no length

    def _rank_shards(self, rank: int) -> list[int]:
        order = np.arange(len(self.paths))
        if self.train:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.paths))
        return [int(i) for i in order[rank :: self.world_size]]

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank yields in a whole epoch."""
        if self.train:
            least = min(sum(self.counts[i] for i in self._rank_shards(r)) for r in range(self.world_size))
            return least // self.batch_size
        return -(-sum(self.counts[i] for i in self._rank_shards(self.rank)) // self.batch_size)

    def _stream(self) -> Iterator[tuple[int, int, Path, str, dict[str, tarfile.TarInfo] | str]]:
        """(shard, position, path, key, members or an error) in this rank's order."""
        for shard in self._rank_shards(self.rank):
            path = self.paths[shard]
            try:
                samples: list[tuple[str, dict[str, tarfile.TarInfo] | str]] = list(_samples(path))
            except (tarfile.TarError, OSError) as exc:
                samples = []
                reason = f"{path}: unreadable shard: {exc} (re-create it with `pengi-kit data shard`)"
                samples += [(f"#{i}", reason) for i in range(self.counts[shard])]
            order = np.arange(len(samples))
            if self.train:
                order = np.random.default_rng([self.seed, self.epoch, shard]).permutation(len(samples))
            for position in order:
                key, members = samples[int(position)]
                yield shard, int(position), path, key, members

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        limit = self.batches_per_epoch
        tars: dict[Path, tarfile.TarFile] = {}
        batch: list[tuple] = []
        number = 0
        try:
            for ref in self._stream():
                batch.append(ref)
                if len(batch) < self.batch_size:
                    continue
                if number >= limit:
                    break
                if number >= self.start_batch and (number - self.start_batch) % workers == worker:
                    yield collate([self._item(ref, tars) for ref in batch])
                batch, number = [], number + 1
            if batch and not self.train and number < limit and (number - self.start_batch) % workers == worker:
                yield collate([self._item(ref, tars) for ref in batch])
        finally:
            for tar in tars.values():
                tar.close()

    def _item(self, ref: tuple, tars: dict[Path, tarfile.TarFile]) -> dict[str, Any]:
        from pengi_kit.data.audio import load_audio

        shard, position, path, key, members = ref
        if isinstance(members, str):
            return {"error": members}
        where = f"{path}:{key}"
        if "json" not in members:
            return {"error": f"{where}: sample has no .json member (re-create the shards)"}
        # a conversation's clips are <key>.<n>.<ext>: in the order of n
        audio = sorted((m for ext, m in members.items() if ext != "json"),
                       key=lambda m: int(n) if (n := _key_and_ext(m.name)[1].split(".")[0]).isdigit() else 0)
        if path not in tars:
            for old in list(tars):  # the stream visits shards one after another
                tars.pop(old).close()
            tars[path] = tarfile.open(path, "r:")
        tar = tars[path]
        try:
            meta = json.loads(tar.extractfile(members["json"]).read().decode("utf-8"))  # type: ignore[union-attr]
            chat = isinstance(meta, dict) and "messages" in meta
            if not isinstance(meta, dict) or not chat and not all(isinstance(meta.get(k), str) for k in ("prompt", "text")):
                raise ValueError("it lacks 'prompt' or 'text', or 'messages'")
            if not chat and len(audio) != 1:
                raise ValueError(f"it has {len(audio)} audio members, expected 1")
            data = [tar.extractfile(m).read() for m in audio]  # type: ignore[union-attr]
        except (ValueError, UnicodeDecodeError, tarfile.TarError, OSError) as exc:
            return {"error": f"{where}: unreadable sample: {exc} (re-create the shards)"}
        clips = []
        for n, (member, raw) in enumerate(zip(audio, data)):
            rng = np.random.default_rng([self.seed, self.epoch, shard, position, *([n] if chat else [])])
            try:
                wav = load_audio(io.BytesIO(raw), self.sample_rate, start=meta.get("start"), end=meta.get("end"),
                                 max_seconds=self.max_seconds, clip_seconds=self.clip_seconds or None,
                                 crop=self.crop, rng=rng, name=_name(meta.get("audio"), f"{path}:{member.name}"))
            except PengiKitError as exc:
                source = meta.get("source")
                return {"error": f"{source}: {exc}" if source else str(exc)}
            if self.augment is not None:
                wav = augment(wav, self.sample_rate, self.augment,
                              np.random.default_rng([self.seed, self.epoch, shard, position, *([n] if chat else []), 1]),
                              len(wav) if self.clip_seconds else None)
            clips.append((wav, clip_key(meta.get("audio") or f"{path}:{member.name}", meta.get("start"),
                                        meta.get("end"))))
        if chat:
            return {"messages": meta["messages"], "audios": [w for w, _ in clips], "clips": [k for _, k in clips],
                    "prompt": "", "text": " ".join(m["content"] for m in meta["messages"] if m["role"] == "assistant"),
                    "task": "chat"}
        return {"audio": clips[0][0], "prompt": meta["prompt"], "text": meta["text"], "task": meta.get("task", ""),
                "clip": clips[0][1]}


def _name(original: Any, member: str) -> str:
    """How a clip is named in messages: its original file, and where it is in the shards."""
    return f"{original} in {member}" if isinstance(original, str) and original else member
