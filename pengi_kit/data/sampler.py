"""The training batch sampler: weighted mixing, length bucketing, rank sharding, resume.

One epoch's batches are a pure function of ``(seed, epoch, num_replicas, rank)``:

1. *Draws.* Source ``s`` (``sizes[s]`` examples, weight ``w``) contributes
   ``round(w * sizes[s])`` draws: ``floor(w)`` full passes in shuffled order plus a
   random subset for the fraction (weight 2.0 shows every example twice an epoch,
   0.5 shows a different half each epoch). A draw is the integer
   ``copy * total + index``, so that the dataset can tell the copies of one example
   apart (each gets its own random crop); ``index = draw % total``.
2. *Order.* All draws are shuffled and cut to a whole number of global batches
   (``batch_size * num_replicas``). The ``r`` draws left over do not fill a batch and
   sit out this epoch; which ones rotates: a fixed, seeded order of the examples is
   walked ``r`` examples per epoch, so consecutive epochs leave out disjoint sets and,
   with every weight 1, each example sits out about once every ``total / r`` epochs
   and is seen in at least one of any two consecutive epochs (while ``2r <= total``).
3. *Buckets.* With target-text ``lengths``, each pool of ``pool_batches`` global
   batches is sorted by length and cut into global batches, and the batches of the
   epoch are shuffled again: batches hold texts of similar length (little padding),
   yet their order stays random. Lengths are compared in steps of :data:`LENGTH_STEP`
   characters (a few tokens of padding at most): texts within a step stay in random order,
   so short answers whose length follows their class ("one", "three"; "yes", "no") are
   not sorted into batches of one class, which a classifier, and BatchNorm's batch
   statistics above all, learn badly from.
4. *Ranks.* Rank ``r`` takes slice ``r`` of every global batch, as DistributedSampler
   would, so every rank runs the same number of steps.

``start_batch`` skips the first batches of the epoch: resuming mid-epoch is exact.
Nothing here touches a global random state.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler", "DurationBatchSampler", "epoch_draws"]


def epoch_draws(sizes: Sequence[int], weights: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """The draws (``copy * total + index``) of one epoch, per source in order, unshuffled."""
    total = int(sum(sizes))
    parts = []
    offset = 0
    for size, weight in zip(sizes, weights):
        count = int(round(weight * size))
        full, rest = divmod(count, size) if size else (0, 0)
        for copy in range(full):
            parts.append(copy * total + offset + rng.permutation(size))
        if rest:
            parts.append(full * total + offset + np.sort(rng.choice(size, rest, replace=False)))
        offset += size
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


class _EpochSampler(Sampler[list[int]]):
    """What both training samplers share: weighted sources, the epoch, and the batch to start from."""

    sizes: list[int]
    weights: list[float]
    epoch: int = 0
    start_batch: int = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch, and the batch of it to start from (resumption)."""
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def draws_per_epoch(self) -> int:
        """Examples drawn per epoch (every source's ``round(weight * size)``), before the cut."""
        return sum(int(round(w * n)) for n, w in zip(self.sizes, self.weights))

    @property
    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)


LENGTH_STEP = 16  # characters: lengths within a step count as equal when bucketing


class BucketBatchSampler(_EpochSampler):
    """Batches of draws for one rank; see the module docstring.

    >>> s = BucketBatchSampler([10], batch_size=2, lengths=[5] * 10, seed=0)
    >>> s.set_epoch(3); len(s), len(next(iter(s)))
    (5, 2)
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        lengths: Sequence[int] | np.ndarray | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        pool_batches: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        weights = [1.0] * len(sizes) if weights is None else list(weights)
        if len(weights) != len(sizes) or any(not w > 0 for w in weights):
            raise ValueError(f"need one positive weight per source, got {weights} for {len(sizes)} sources")
        self.sizes, self.weights = [int(n) for n in sizes], weights
        self.total = sum(self.sizes)
        if lengths is not None and len(lengths) != self.total:
            raise ValueError(f"lengths has {len(lengths)} entries for {self.total} examples")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size, self.num_replicas, self.rank = batch_size, num_replicas, rank
        self.seed, self.pool_batches = seed, pool_batches
        self._place: np.ndarray | None = None  # see _rotation

    @property
    def batches_per_epoch(self) -> int:
        return self.draws_per_epoch // (self.batch_size * self.num_replicas)

    @property
    def left_out_per_epoch(self) -> int:
        """Draws of each epoch that fill no whole global batch and sit out (different ones each epoch)."""
        return self.draws_per_epoch - self.batches_per_epoch * self.batch_size * self.num_replicas

    def _rotation(self) -> np.ndarray:
        """Each example's place in the seeded order along which the left-out window moves."""
        if self._place is None:
            order = np.random.default_rng([self.seed, 0x5EED]).permutation(self.total)
            self._place = np.empty(self.total, np.int64)
            self._place[order] = np.arange(self.total)
        return self._place

    def _leave_out(self, draws: np.ndarray, left: int) -> np.ndarray:
        """``draws`` (shuffled) without ``left`` of them: those whose examples come last in the
        seeded order shifted by ``epoch * left``, i.e. window ``[(epoch - 1) * left, epoch * left)``
        of that order (mod ``total``); the kept draws keep their shuffled order."""
        key = (self._rotation()[draws % self.total] - self.epoch * left) % self.total
        drop = np.argsort(-key, kind="stable")[:left]
        keep = np.ones(len(draws), bool)
        keep[drop] = False
        return draws[keep]

    def global_batches(self) -> np.ndarray:
        """The epoch's global batches, ``(batches, batch_size * num_replicas)`` draws."""
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = rng.permutation(epoch_draws(self.sizes, self.weights, rng))
        width = self.batch_size * self.num_replicas
        count = len(draws) // width
        if len(draws) > count * width:
            draws = self._leave_out(draws, len(draws) - count * width)
        if self.lengths is None or self.pool_batches <= 0:
            return draws.reshape(count, width)
        pools = []
        for start in range(0, len(draws), self.pool_batches * width):
            pool = draws[start : start + self.pool_batches * width]
            pools.append(pool[np.argsort(self.lengths[pool % self.total] // LENGTH_STEP, kind="stable")])
        batches = np.concatenate(pools).reshape(count, width)
        return batches[rng.permutation(count)]

    def __iter__(self) -> Iterator[list[int]]:
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for batch in self.global_batches()[self.start_batch :]:
            yield batch[lo:hi].tolist()


class DurationBatchSampler(_EpochSampler):
    """Batches of similar duration holding at most ``budget`` seconds of padded audio each (its
    rows times its longest row), instead of a fixed number of rows: short clips travel in large
    batches, long ones in small ones, and little of any batch is padding (``train.batch_seconds``).

    The examples are put in ``buckets`` by duration, quantiles of the examples' durations fixed
    for the run; bucket ``b`` (longest duration ``d_b``) batches ``s_b = budget // d_b`` rows (at
    least 1, and no more than the bucket's draws). Each epoch draws as :class:`BucketBatchSampler` does (weights), and bucket ``b`` gives
    ``G_b`` global batches of ``s_b * num_replicas`` draws, sorted by duration within the
    bucket; ``G_b`` is fixed for the run (the bucket's expected draws), so every epoch has the
    same steps: draws over it sit out (different ones each epoch), and a shortfall (a fractional
    weight's draw) is made up with repeated draws of the bucket. The epoch's batches are then
    shuffled; rank ``r`` takes slice ``r`` of each. A pure function of ``(seed, epoch,
    num_replicas, rank)``; ``start_batch`` resumes mid-epoch exactly.
    """

    def __init__(self, sizes: Sequence[int], durations: Sequence[float] | np.ndarray, budget: float, *,
                 weights: Sequence[float] | None = None, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 buckets: int = 16) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget}")
        self.sizes = [int(n) for n in sizes]
        self.weights = [1.0] * len(sizes) if weights is None else list(weights)
        self.total = sum(self.sizes)
        self.durations = np.asarray(durations, dtype=np.float64)
        if len(self.durations) != self.total:
            raise ValueError(f"durations has {len(self.durations)} entries for {self.total} examples")
        self.num_replicas, self.rank, self.seed = num_replicas, rank, seed
        edges = np.quantile(self.durations, np.linspace(0, 1, buckets + 1)[1:-1]) if self.total else np.zeros(0)
        self.bucket = np.searchsorted(edges, self.durations, side="left")  # each example's bucket
        source_weight = np.repeat(self.weights, self.sizes)
        self.rows, self.batches = {}, {}  # bucket -> rows per batch, global batches per epoch
        for b in np.unique(self.bucket):
            inside = self.bucket == b
            expected = float(source_weight[inside].sum())  # draws of the bucket in an epoch, on average
            fits = int(budget // max(float(self.durations[inside].max()), 1e-9))
            self.rows[b] = max(1, min(fits, int(expected // num_replicas)))  # no more than the bucket holds
            self.batches[b] = int(expected // (self.rows[b] * num_replicas))

    @property
    def batches_per_epoch(self) -> int:
        return sum(self.batches.values())

    @property
    def examples_per_epoch(self) -> int:
        """Draws in the epoch's batches, over every rank."""
        return sum(self.batches[b] * self.rows[b] * self.num_replicas for b in self.batches)

    def global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches (each ``rows * num_replicas`` draws), in their shuffled order."""
        rng = np.random.default_rng([self.seed, self.epoch])
        draws = rng.permutation(epoch_draws(self.sizes, self.weights, rng))
        of_bucket = self.bucket[draws % self.total] if len(draws) else np.zeros(0, np.int64)
        batches = []
        for b, count in self.batches.items():
            width = self.rows[b] * self.num_replicas
            mine = draws[of_bucket == b]
            need = count * width
            if len(mine) < need:  # a fractional weight drew fewer than expected: repeat some
                mine = np.concatenate([mine, rng.choice(mine if len(mine) else np.flatnonzero(self.bucket == b),
                                                        need - len(mine))])
            mine = mine[:need]
            mine = mine[np.argsort(self.durations[mine % self.total], kind="stable")]
            batches += list(mine.reshape(count, width))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start_batch:]:
            rows = len(batch) // self.num_replicas
            yield batch[self.rank * rows:(self.rank + 1) * rows].tolist()
