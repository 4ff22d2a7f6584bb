"""Which torch device a command runs on: one place that parses ``--device`` and says, in one
line, why a device is not usable (used by training and inference alike); and how many CPU
threads a training process uses (:func:`set_training_threads`)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from pengi_kit.errors import PengiKitError


def resolve_device(device: str | torch.device | None, local_rank: int = 0,
                   world_size: int = 1) -> torch.device:
    """The device this process trains on, or a one-line PengiKitError for a device that does not
    parse or is not there (checked before a model is built or a process group joined).

    ``None`` or ``"auto"``: the GPU of the local rank when CUDA is available, else the CPU. With many
    processes each takes the GPU of its local rank, whatever index ``device`` names.
    """
    if device is None or device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)  # a torch.device passes through
    except (RuntimeError, ValueError, TypeError):
        raise PengiKitError(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f" (this torch {torch.__version__} is built without CUDA)"
            raise PengiKitError(f"--device {device}: torch sees no CUDA GPU on this machine{build}; "
                                "use --device cpu")
        index = local_rank if world_size > 1 or dev.index is None else dev.index
        if index >= count:
            who = f"local rank {local_rank} needs" if world_size > 1 else f"--device {device} names"
            raise PengiKitError(f"{who} GPU {index}, but torch sees {count} GPU(s) (cuda:0 to cuda:{count - 1})")
        return torch.device("cuda", index)
    available = getattr(getattr(torch, dev.type, None), "is_available", None)
    if callable(available) and not available():
        raise PengiKitError(f"--device {device}: torch finds no {dev.type} device on this machine; use --device cpu")
    return dev


# -------------------------------------------------------------------- CPU threads

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_applied: int | None = None  # the count TrainingThreads last set, to tell it from the user's


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask under taskset, cgroups or Slurm)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _torch_default_threads() -> int:
    """The intra-op threads torch starts with when no variable sets them: one per physical core
    this process may use (MKL's and cpuinfo's count; hyper-threads are not extra cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:  # no sysfs: count logical CPUs
            cores.add(("", str(cpu)))
    return len(cores)


def _cpu_busy(cpus: set[int]) -> float:
    """Seconds of CPU time ``cpus`` have spent busy (not idle) since boot, from Linux's /proc/stat."""
    busy = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(values) - values[3] - values[4]
    return busy / os.sysconf("SC_CLK_TCK")


def training_threads(busy: float = 0.0, local_world_size: int | None = None) -> int:
    """Intra-op threads for one training process on the CPU: the usable cores that other work
    does not keep busy (``busy`` cores, rounded), shared among the training processes on this
    machine (``local_world_size``, default ``$LOCAL_WORLD_SIZE`` or 1); at least 1.

    >>> training_threads(busy=0.0, local_world_size=1) == usable_cores()
    True
    """
    procs = max(1, local_world_size or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, (usable_cores() - round(busy)) // procs)


class TrainingThreads:
    """Sets torch's intra-op threads for training on the CPU to :func:`training_threads`, and
    re-chooses them at each :meth:`update` from how busy other work kept this process's cores
    since the previous call (measured where Linux tells: /proc/stat; elsewhere nothing changes).

    Why: torch's default, a thread per core, is fastest on a quiet machine, but a team of
    threads waits at every parallel step for its slowest member, so as soon as another program
    (or this run's own data-loader workers) takes a core, a step gets many times slower, not
    by the share it lost: on 2 cores, 2 threads trained the demo at 7-16 samples/s while other
    work ran and at 118 when it did not, 1 thread at 60-110 throughout. Other work comes and
    goes, so the count follows it. The user's choice wins: with ``OMP_NUM_THREADS`` (or
    ``MKL_NUM_THREADS``) set, or after ``torch.set_num_threads(n)`` to other than torch's
    default, nothing is changed. In a training loop::

        threads = TrainingThreads()   # once, before the first step
        ...
        threads.update()              # at each log line
    """

    def __init__(self, local_world_size: int | None = None) -> None:
        current = torch.get_num_threads()
        self.user = any(os.environ.get(v) for v in THREAD_VARIABLES) or (
            current != _torch_default_threads() and current != _applied)
        self.local_world_size = local_world_size
        self.threads = current
        self._mark: tuple[float, float, float] | None = None
        if not self.user:
            self._measure()
            time.sleep(0.2)  # a first look at what else runs, before the first step
            self.update()

    def _measure(self) -> tuple[float, float, float] | None:
        """(wall, this process's CPU, its cores' busy time) now, in seconds; None off Linux."""
        try:
            mark = (time.monotonic(), time.process_time(), _cpu_busy(os.sched_getaffinity(0)))
        except (AttributeError, OSError, ValueError):
            return None
        last, self._mark = self._mark, mark
        return last

    def update(self) -> int:
        """Re-choose the threads from the other work since the last call; returns the count in use."""
        global _applied
        if self.user:
            return self.threads
        last = self._measure()
        if last is None or self._mark is None or self._mark[0] <= last[0]:
            return self.threads
        wall, own, busy = (now - then for now, then in zip(self._mark, last))
        threads = training_threads(max(0.0, busy - own) / wall, self.local_world_size)
        if threads != self.threads or _applied is None:
            torch.set_num_threads(threads)
            self.threads = _applied = threads
        return self.threads
