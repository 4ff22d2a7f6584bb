"""The training loop reads no tensor on the host between log steps: on a GPU each such read
(.item(), float(), bool(), .tolist()) would make the CPU wait for the device. On the CPU no
read waits, so the test counts the reads themselves: pengi-kit's own (transformers' GPT-2 reads
its padding mask once per forward, which is outside pengi-kit)."""
import json
import sys

import pytest
import torch

from pengi_kit.engine.trainer import Trainer
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__")


@pytest.fixture
def reads(monkeypatch):
    """Every host read of a tensor in pengi-kit's code, as (trainer step at the time, inside train_step?)."""
    seen, where = [], {"trainer": None, "in_step": False}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, **kwargs):
            if where["trainer"] is not None and "pengi_kit" in sys._getframe(1).f_code.co_filename:
                seen.append((where["trainer"].step, where["in_step"]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    return seen, where


def _watch(trainer, where):
    step = trainer.train_step

    def watched(batch):
        where["in_step"] = True
        try:
            return step(batch)
        finally:
            where["in_step"] = False

    trainer.train_step = watched
    where["trainer"] = trainer


def test_tensors_are_read_only_at_log_steps(tmp_path, reads):
    seen, where = reads
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 6, "log_every": 3})),
                      progress=False)
    _watch(trainer, where)
    trainer.fit()
    assert not [s for s, in_step in seen if in_step]  # train_step never reads a tensor
    assert {s for s, _ in seen} == {3, 6}  # the loop reads losses and token counts at log steps only
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [3, 6]


def test_nonfinite_steps_are_found_at_the_next_check_and_left_the_weights_alone(tmp_path, reads):
    seen, where = reads
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 4, "log_every": 4})
    trainer = Trainer(from_dict(raw), progress=False)
    forward = trainer.module.forward
    calls, weights = [], {}

    def poisoned(**inputs):  # the second step's loss is NaN
        calls.append(1)
        if len(calls) == 2:
            weights["before"] = [p.detach().clone() for p in trainer.params]
        out = forward(**inputs)
        if len(calls) == 2:
            out["loss_sum"] = out["loss_sum"] * float("nan")
        return out

    trainer.module.forward = poisoned
    step = trainer.train_step

    def after(batch):
        loss = step(batch)
        if len(calls) == 2:
            weights["after"] = [p.detach().clone() for p in trainer.params]
        return loss

    trainer.train_step = after
    _watch(trainer, where)
    trainer.fit()
    for a, b in zip(weights["before"], weights["after"]):  # the skipped step changed nothing
        assert torch.equal(a, b)
    assert trainer.skipped_steps == 1 and {s for s, _ in seen} == {4}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("event") == "nonfinite"] == [2]
