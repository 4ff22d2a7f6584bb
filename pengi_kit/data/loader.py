"""DataLoaders for training and evaluation: workers, pinned memory, buckets, resumption.

``TrainLoader(dataset, ...)`` builds each epoch's loader: ``len(loader)`` batches per
rank and epoch, ``loader.epoch(e, start_batch=k)`` the DataLoader of epoch ``e`` from
its batch ``k`` on. A map-style dataset goes through
:class:`~pengi_kit.data.sampler.BucketBatchSampler` (weights of a
:meth:`~pengi_kit.data.base.PengiDataset.mixture`, target-length buckets, rank slices);
a :class:`~pengi_kit.data.shards.ShardDataset` streams and batches itself. Either way
the batches depend on the seed, the epoch and the rank only, not on ``num_workers``:
items are pure functions of ``(seed, epoch, draw)`` and the DataLoader returns
worker results in order. Only whole batches train: the examples left over at the end
of an epoch sit out, different ones each epoch (:meth:`TrainLoader.examples_per_epoch`).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from pengi_kit.data.base import PengiDataset
from pengi_kit.data.collate import collate
from pengi_kit.data.sampler import BucketBatchSampler, DurationBatchSampler
from pengi_kit.errors import PengiKitError

__all__ = ["TrainLoader", "eval_loader"]


def _whole(batch: Any) -> Any:
    """Collate function of a dataset that yields whole batches."""
    return batch


def _ignore_interrupts(worker_id: int) -> None:
    """Worker processes leave SIGINT and SIGTERM to the main process: a Ctrl-C reaches the whole
    process group, torchrun signals it, and the trainer stops cleanly after the current step
    (a worker that died of the signal first would turn that into a DataLoader error)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _options(num_workers: int, pin_memory: bool, seed: int) -> dict[str, Any]:
    options: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory,
                               # worker base seeds come from here, not from the global RNG
                               "generator": torch.Generator().manual_seed(seed)}
    if num_workers:
        options["prefetch_factor"] = 4
        options["worker_init_fn"] = _ignore_interrupts
    return options


class TrainLoader:
    """One epoch's DataLoader at a time; see the module docstring.

    ``bucket_batches`` is the pool (in global batches) sorted by target-text length;
    0 turns bucketing off, and so does a dataset whose ``text_lengths()`` is None.
    """

    def __init__(self, dataset: PengiDataset, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                 bucket_batches: int = 50, mixup: float = 0.0, batch_seconds: float = 0.0) -> None:
        self.dataset, self.batch_size, self.seed, self.mixup = dataset, batch_size, seed, mixup
        self.rank, self.world_size = rank, world_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler: BucketBatchSampler | DurationBatchSampler | None = None
        if isinstance(dataset, IterableDataset):
            if batch_seconds:
                raise PengiKitError("train.batch_seconds batches by duration, which a stream of shards does not "
                                    "know ahead; use train.batch_size, or manifests")
            dataset.configure(batch_size=batch_size, rank=rank, world_size=world_size, train=True)  # type: ignore[attr-defined]
        elif batch_seconds:
            sizes, weights = dataset.mixture()
            durations = dataset.durations()
            if durations is None:
                raise PengiKitError(f"train.batch_seconds batches by duration, which {type(dataset).__name__} does "
                                    "not know ahead; use train.batch_size")
            self.sampler = DurationBatchSampler(sizes, durations, batch_seconds, weights=weights,
                                                num_replicas=world_size, rank=rank, seed=seed)
        else:
            sizes, weights = dataset.mixture()
            self.sampler = BucketBatchSampler(
                sizes, batch_size, weights=weights, lengths=dataset.text_lengths() if bucket_batches > 0 else None,
                num_replicas=world_size, rank=rank, seed=seed, pool_batches=bucket_batches)

    def __len__(self) -> int:
        if self.sampler is None:
            return self.dataset.batches_per_epoch  # type: ignore[attr-defined]
        return self.sampler.batches_per_epoch

    def examples_per_epoch(self) -> tuple[int, int]:
        """``(used, drawn)``: examples in the whole batches of an epoch, over every rank, and
        examples drawn for it; the ``drawn - used`` left over fill no batch and sit out (the
        sampler rotates which ones; a shard stream leaves out a random tail each epoch)."""
        if isinstance(self.sampler, DurationBatchSampler):
            return self.sampler.examples_per_epoch, self.sampler.draws_per_epoch
        used = len(self) * self.batch_size * self.world_size
        if self.sampler is None:
            return used, self.dataset.num_examples()
        return used, self.sampler.draws_per_epoch

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterable[dict[str, Any]]:
        """The batches of ``epoch``, from its batch ``start_batch`` on (with ``mixup``, mixed:
        :func:`pengi_kit.data.augment.mix_batch`, drawn from (seed, rank, epoch, batch))."""
        self.dataset.set_epoch(epoch)
        options = _options(self.num_workers, self.pin_memory, self.seed + epoch)
        if self.sampler is None:
            self.dataset.configure(batch_size=self.batch_size, epoch=epoch, start_batch=start_batch,  # type: ignore[attr-defined]
                                   rank=self.rank, world_size=self.world_size, train=True)
            loader = DataLoader(self.dataset, batch_size=None, collate_fn=_whole, **options)
        else:
            self.sampler.set_epoch(epoch, start_batch)
            loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate, **options)
        return self._mixed(loader, epoch, start_batch) if self.mixup else loader

    def _mixed(self, loader: DataLoader, epoch: int, start_batch: int) -> Iterator[dict[str, Any]]:
        from pengi_kit.data.augment import mix_batch

        for i, batch in enumerate(loader, start_batch):
            if len(batch["prompts"]) > 1:
                rng = np.random.default_rng([self.seed, self.rank, epoch, i, 2])
                partner, weight = mix_batch(batch["audio"].numpy(), self.mixup, rng)  # in place
                batch["mixup"] = {"partner": partner, "weight": weight}
            yield batch


def eval_loader(dataset: PengiDataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                num_workers: int = 0, pin_memory: bool = False, seed: int | None = None) -> DataLoader:
    """Every example once, this rank's share (DistributedSampler pads with repeats): in order, or
    with ``seed`` in a random order drawn from it over the whole set (the listening check pairs
    rows of a batch, and should not pair a manifest's neighbours). Shards stream in their order."""
    options = _options(num_workers, pin_memory, 0)
    if isinstance(dataset, IterableDataset):
        dataset.configure(batch_size=batch_size, rank=rank, world_size=world_size, train=False)  # type: ignore[attr-defined]
        return DataLoader(dataset, batch_size=None, collate_fn=_whole, **options)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=seed is not None,
                                 seed=seed or 0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, **options)
