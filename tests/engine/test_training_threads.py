"""CPU threads for training: the cores other work leaves free, shared among the machine's
training processes, re-chosen as that work comes and goes; the user's own choice wins."""
from __future__ import annotations

import pytest
import torch

from pengi_kit import devices


class Clock:
    """Fake time: wall seconds, this process's CPU seconds, and the busy seconds of its cores."""

    def __init__(self) -> None:
        self.wall = self.own = self.busy = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.wall += seconds
        self.own += own_cores * seconds
        self.busy += (own_cores + other_cores) * seconds


@pytest.fixture
def machine(monkeypatch):
    """A 16-core machine where torch starts with 16 threads, on a fake clock; restores torch's
    thread count."""
    before = torch.get_num_threads()
    clock = Clock()
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(devices, "_torch_default_threads", lambda: 16)
    monkeypatch.setattr(devices, "_applied", None)
    monkeypatch.setattr(devices, "_cpu_busy", lambda cpus: clock.busy)
    monkeypatch.setattr(devices.time, "monotonic", lambda: clock.wall)
    monkeypatch.setattr(devices.time, "process_time", lambda: clock.own)
    monkeypatch.setattr(devices.time, "sleep", lambda s: clock.run(s, 0.0, 0.0))
    for name in (*devices.THREAD_VARIABLES, "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(16)
    yield clock
    torch.set_num_threads(before)


@pytest.mark.parametrize("busy, procs, expected", [(0, 1, 16), (0, 4, 4), (6, 1, 10), (5.6, 2, 5), (40, 1, 1)])
def test_threads_share_the_free_cores(machine, busy, procs, expected):
    assert devices.training_threads(busy, procs) == expected


def test_threads_follow_the_other_work(machine, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    threads = devices.TrainingThreads()
    assert threads.threads == 8 == torch.get_num_threads()  # a quiet machine: half the cores each
    machine.run(10.0, own_cores=8, other_cores=4)  # another program (or busy workers) takes 4 cores
    assert threads.update() == 6 == torch.get_num_threads()
    machine.run(10.0, own_cores=6, other_cores=4)  # this process's own use is not "other work"
    assert threads.update() == 6
    machine.run(10.0, own_cores=6, other_cores=0)  # it has gone
    assert threads.update() == 8 == torch.get_num_threads()


def test_the_users_choice_wins(machine, monkeypatch):
    torch.set_num_threads(3)  # not torch's default (16 here): the user's choice
    threads = devices.TrainingThreads()
    machine.run(10.0, own_cores=3, other_cores=0)
    assert threads.update() == 3 == torch.get_num_threads()
    torch.set_num_threads(16)
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    threads = devices.TrainingThreads()
    machine.run(10.0, own_cores=16, other_cores=12)
    assert threads.update() == 16 == torch.get_num_threads()  # the variable wins
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads = devices.TrainingThreads()  # torch's default: chosen here
    machine.run(10.0, own_cores=12, other_cores=12)
    assert threads.update() == 4
    again = devices.TrainingThreads()  # a second run in this process: 4 was this module's choice, not the user's
    assert not again.user and again.threads == 16 == torch.get_num_threads()
