"""Hugging Face datasets as a data source (``pip install "pengi-kit[hf]"``; docs/data.md,
"Hugging Face datasets").

A local dataset saved with ``save_to_disk`` (a folder with ``state.json``, or ``dataset_dict.json``
and a folder per split), or Parquet or Arrow files (a path or a glob pattern), read memory-mapped:
rows are not loaded into memory. The audio column is read with ``Audio(decode=False)``, so the
clip's bytes (or its path) reach pengi-kit's own audio path (soundfile and soxr, with its bad-input
reports), not ``datasets``' decoder (torchcodec and FFmpeg in recent versions). ``streaming = true``
reads the files as it goes (:class:`HFStream`). A recipe names the columns a row is read from::

    [data]
    train = [{manifest = "data/clotho_hf", split = "train", columns = {text = "caption"},
              prompt = "generate audio caption"}]

Pengi rows: ``audio``, ``text`` and ``prompt`` (columns of those names unless ``columns`` says
otherwise; a recipe's ``prompt`` serves rows without one). Chat rows (the chat layout): a
``messages`` (or ShareGPT ``conversations``) column and an ``audios`` column, a list of clips,
as LLaMA-Factory keeps them (:mod:`pengi_kit.data.conversations`). No network is needed.
"""
from __future__ import annotations

import glob
import io
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from pengi_kit.data.augment import Augment, augment, draw_epoch
from pengi_kit.data.collate import clip_key
from pengi_kit.data.dataset import _Clips
from pengi_kit.errors import PengiKitError, RecipeError

__all__ = ["COLUMNS", "HFDataset", "HFStream", "is_hf_source"]

#: the columns a recipe's ``columns`` table may rename, by default of the same names
COLUMNS = {key: key for key in ("audio", "text", "prompt", "messages", "audios")}
_FILES = (".parquet", ".arrow")


def is_hf_source(name: str) -> bool:
    """Whether ``name`` is a dataset saved with ``save_to_disk``, or Parquet/Arrow files."""
    path = Path(name)
    if path.is_dir():
        return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
    return path.suffix.lower() in _FILES


def _open(name: str, split: str | None) -> Any:
    try:
        import datasets
    except ImportError:
        raise RecipeError(f"{name}: a Hugging Face dataset needs the datasets package: pip install "
                          "\"pengi-kit[hf]\"") from None
    path = Path(name)
    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split is None and len(loaded) == 1:
                split = next(iter(loaded))
            if split not in loaded:
                raise RecipeError(f"{name}: a dataset of splits {', '.join(loaded)}; name one with split = \"...\" "
                                  "in the recipe's data table")
            loaded = loaded[split]
        return loaded
    files = sorted(glob.glob(name))
    if not files:
        raise RecipeError(f"{name}: no such file (check the path or pattern)")
    if path.suffix.lower() == ".arrow":
        return datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    return datasets.Dataset.from_parquet(files)


def _undecoded(ds: Any, column: str) -> Any:
    """``column`` read as ``{"bytes", "path"}`` where it is an ``Audio`` column (or a list of them)."""
    import datasets

    feature = (ds.features or {}).get(column)
    if isinstance(feature, datasets.Audio):
        return ds.cast_column(column, datasets.Audio(decode=False))
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Audio):
        return ds.cast_column(column, datasets.List(datasets.Audio(decode=False)))
    return ds


class HFDataset(_Clips):
    """The rows of a Hugging Face dataset (see the module docstring), as items of a manifest's
    (Pengi rows) or of a conversation file's (chat rows: a dataset with a ``messages`` column, read
    under the chat layout, ``chat``); a bad row or clip becomes
    ``{"error": "<name>:row N: <one line>"}``, reported and skipped as a manifest's."""

    def __init__(self, name: str, sample_rate: int, clip_seconds: float | None, crop: str, seed: int = 0, *,
                 columns: dict[str, str] | None = None, split: str | None = None, prompt: str | None = None,
                 chat: bool = False, max_seconds: float = 3600.0, stream: int = 0,
                 augment: Augment | None = None) -> None:
        self.name, self.columns = name, {**COLUMNS, **(columns or {})}
        ds, present = self._open_rows(name, split)
        if self.columns["messages"] not in present and "conversations" in present and "messages" not in (columns or {}):
            self.columns["messages"] = "conversations"  # ShareGPT's
        conversational = self.columns["messages"] in present
        if conversational and not chat:
            raise RecipeError(f"{name}: rows of conversations (column '{self.columns['messages']}'), which the chat "
                              "layout reads; set model.layout = \"chat\"")
        needed = ["messages", "audios"] if conversational else ["audio", "text"] + (["prompt"] if prompt is None else [])
        for key in needed:
            if self.columns[key] not in present:
                raise RecipeError(f"{name}: no column '{self.columns[key]}' for the rows' {key} (columns: "
                                  f"{', '.join(present)}); name it: columns = {{{key} = \"...\"}}")
        self.ds = _undecoded(ds, self.columns["audios" if conversational else "audio"]) if ds is not None else None
        self.folder = Path(name) if Path(name).is_dir() else Path(name).parent
        self.chat, self.prompt = conversational, prompt
        super().__init__(sample_rate, clip_seconds, crop, seed, max_seconds, stream, augment)

    @staticmethod
    def _open_rows(name: str, split: str | None) -> tuple[Any, list[str]]:
        """The dataset, and its columns."""
        ds = _open(name, split)
        return ds, list(ds.features)

    def __len__(self) -> int:
        return len(self.ds)

    def _clip(self, value: Any, where: str, seed: list[int]) -> tuple[np.ndarray, str]:
        """A clip of the audio column (``{"bytes", "path"}``, or a path) and its key."""
        from pengi_kit.data.audio import load_audio

        if isinstance(value, dict) and value.get("bytes"):
            source: Any = io.BytesIO(value["bytes"])
            key = f"{self.name}#{value.get('path') or where}"
        elif isinstance(value, (dict, str)) and (value.get("path") if isinstance(value, dict) else value):
            path = Path(value["path"] if isinstance(value, dict) else value)
            source = key = path if path.is_absolute() else self.folder / path
        else:
            raise PengiKitError(f"an audio value of neither bytes nor a path: {type(value).__name__}")
        audio = load_audio(source, self.sample_rate, max_seconds=self.max_seconds,
                           clip_seconds=self.clip_seconds or None, crop=self.crop, rng=np.random.default_rng(seed),
                           name=where)
        if self.augment is not None:
            audio = augment(audio, self.sample_rate, self.augment, np.random.default_rng([*seed, 1]),
                            len(audio) if self.clip_seconds else None)
        return audio, clip_key(key)

    def __getitem__(self, index: int) -> dict[str, Any]:
        copy, index = divmod(index, len(self.ds))
        return self._item(self.ds[index], index, [self.seed, self.stream, self.epoch, copy, index])

    def _item(self, row: dict[str, Any], index: int, seed: list[int]) -> dict[str, Any]:
        """Row ``index`` as an item (its crops and augmentation drawn from ``seed``)."""
        from pengi_kit.data.conversations import _Bad, _parse

        where = f"{self.name}:row {index}"
        try:
            if not self.chat:
                text, prompt = row[self.columns["text"]], row.get(self.columns["prompt"]) or self.prompt
                if not isinstance(text, str) or not text.strip() or not isinstance(prompt, str):
                    raise _Bad(f"no text in '{self.columns['text']}' or no prompt in '{self.columns['prompt']}'")
                audio, key = self._clip(row[self.columns["audio"]], where, seed)
                return {"audio": audio, "prompt": prompt, "text": text, "task": "", "clip": key}
            clips = row[self.columns["audios"]] or []
            fmt = "sharegpt" if self.columns["messages"] == "conversations" else "llama-factory"
            conversation = _parse({"conversations" if fmt == "sharegpt" else "messages": row[self.columns["messages"]],
                                   "audios": [f"#{n}" for n in range(len(clips))]}, fmt, Path(""), True)
            loaded = [self._clip(clips[int(str(a)[1:])], f"{where} clip {n + 1}", [*seed, n])
                      for n, a in enumerate(conversation.audios)]
        except _Bad as bad:
            return {"error": f"{where}: {bad}"}
        except PengiKitError as exc:
            return {"error": f"{where}: {exc}"}
        return {"messages": conversation.as_messages(), "audios": [a for a, _ in loaded],
                "clips": [k for _, k in loaded], "prompt": "", "text": " ".join(conversation.answers()), "task": "chat"}


class HFStream(HFDataset, IterableDataset):
    """A Hugging Face dataset read as it goes (``streaming = true``): its Parquet or Arrow files
    (those of a ``save_to_disk`` folder too) read a record batch at a time with pyarrow, with no
    copy into ``datasets``' cache, for sets larger than memory or than the disk holds twice. Each
    epoch the files come in a seeded order and the rows are shuffled within a window of
    ``buffer`` rows; rank ``r`` takes every ``world``-th row, and the stream is cut into batches
    that the loader's workers take in turn (as shards are): the same batches for any
    ``num_workers``. A resumed run reads and drops the rows of the batches it has done, decoding
    no audio for them: resuming costs reading those rows again."""

    def __init__(self, *args: Any, buffer: int = 1000, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = buffer
        self.offsets = np.cumsum([0] + [self._count(f) for f in self.files])  # where each file's rows start
        self.rows = int(self.offsets[-1])
        self.configure(batch_size=1)

    def _open_rows(self, name: str, split: str | None) -> tuple[Any, list[str]]:
        import pyarrow.parquet as pq

        path = Path(name)
        pattern = str(path / (split or "") / "*.arrow") if path.is_dir() else name
        self.files = sorted(glob.glob(pattern))
        if not self.files:
            raise RecipeError(f"{name}: no {'Arrow files' if path.is_dir() else 'such file'} to stream "
                              f"({pattern}); {'name the split' if path.is_dir() and not split else 'check the path'}")
        self.parquet = self.files[0].endswith(".parquet")
        schema = pq.read_schema(self.files[0]) if self.parquet else self._reader(self.files[0]).schema
        return None, list(schema.names)

    @staticmethod
    def _reader(file: str) -> Any:
        import pyarrow as pa

        return pa.ipc.open_stream(pa.memory_map(file))

    def _count(self, file: str) -> int:
        import pyarrow.parquet as pq

        if self.parquet:
            return pq.ParquetFile(file).metadata.num_rows
        return sum(b.num_rows for b in self._reader(file))

    def _batches(self, file: str) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).iter_batches(batch_size=256) if self.parquet else self._reader(file)

    def configure(self, *, batch_size: int, epoch: int = 0, start_batch: int = 0, rank: int = 0,
                  world_size: int = 1, train: bool = True) -> None:
        self.batch_size, self.epoch, self.start_batch = batch_size, draw_epoch(self.augment, epoch), start_batch
        self.rank, self.world_size, self.train = rank, world_size, train

    def num_examples(self) -> int:
        return self.rows

    def __len__(self) -> int:
        raise TypeError("a streamed dataset has no length; see num_examples()")

    @property
    def batches_per_epoch(self) -> int:
        per_rank = self.rows // self.world_size  # every rank the same whole batches
        return per_rank // self.batch_size if self.train else -(-per_rank // self.batch_size)

    def _stream(self) -> Any:
        """(row index in the files, row) in this epoch's order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.files)) if self.train else range(len(self.files))
        window: list[tuple[int, dict[str, Any]]] = []
        for f in order:
            at = int(self.offsets[f])
            for record in self._batches(self.files[f]):
                for row in record.to_pylist():
                    window.append((at, row))
                    at += 1
                    if not self.train:
                        yield window.pop()
                    elif len(window) >= self.buffer:
                        j = int(rng.integers(len(window)))
                        window[j], window[-1] = window[-1], window[j]
                        yield window.pop()
        rng.shuffle(window)
        yield from window

    def __iter__(self) -> Any:
        from pengi_kit.data.collate import collate

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        batch: list[tuple[int, dict[str, Any]]] = []
        number = 0
        for position, (index, row) in enumerate(self._stream()):
            if position % self.world_size != self.rank:
                continue
            batch.append((index, row))
            if len(batch) < self.batch_size:
                continue
            if number >= self.batches_per_epoch:
                return
            if number >= self.start_batch and (number - self.start_batch) % workers == worker:
                yield collate([self._item(r, i, [self.seed, self.epoch, i]) for i, r in batch])
            batch, number = [], number + 1
        if batch and not self.train and (number - self.start_batch) % workers == worker:
            yield collate([self._item(r, i, [self.seed, self.epoch, i]) for i, r in batch])
