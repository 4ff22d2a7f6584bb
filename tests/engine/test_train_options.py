"""train.activation_checkpointing, train.compile, best-checkpoint retention, TensorBoard."""
import json

import pytest
import torch

import pengi_kit
from pengi_kit import checkpoint as ckpt
from pengi_kit.engine.trainer import Trainer
from pengi_kit.errors import RecipeError
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_activation_checkpointing_trains_to_the_same_loss(tmp_path, capsys):
    losses = []
    for flag in (False, True):
        raw = tiny_recipe(tmp_path / str(flag), text_encoder=True,
                          train={"max_steps": 1, "activation_checkpointing": flag, "best_metric": ""})
        raw["data"]["valid"] = ""
        trainer = Trainer(from_dict(raw), progress=False)
        if flag:
            assert trainer.model.lm.model.is_gradient_checkpointing
            assert trainer.model.text_encoder.model.is_gradient_checkpointing
        trainer.fit()
        losses.append([r["loss"] for r in _rows(tmp_path / str(flag)) if "loss" in r])
    assert "activation checkpointing: text_encoder, lm" in capsys.readouterr().err
    torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(losses[1]))


def test_compile_and_best_options_are_validated(tmp_path):
    recipe = from_dict(tiny_recipe(tmp_path))
    assert recipe["train"]["compile"] is False and recipe["train"]["activation_checkpointing"] is False
    assert (recipe["train"]["best_metric"], recipe["train"]["best_mode"]) == ("valid_loss", "min")
    assert from_dict(tiny_recipe(tmp_path, train={"compile": True}))["train"]["compile"] is True
    with pytest.raises(RecipeError, match="train.compile: expected boolean"):
        from_dict(tiny_recipe(tmp_path, train={"compile": "yes"}))
    with pytest.raises(RecipeError, match="train.best_mode: 'lowest' is not one of"):
        from_dict(tiny_recipe(tmp_path, train={"best_mode": "lowest"}))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_checkpoint_follows_the_metric_and_survives_pruning(tmp_path, mode):
    run = tmp_path / "run"
    raw = tiny_recipe(run, train={"max_steps": 4, "eval_every": 1, "save_every": 1, "keep_last": 1,
                               "best_mode": mode})
    raw["data"]["synthetic_valid_size"] = 2
    trainer = Trainer(from_dict(raw), progress=False)
    trainer.fit()
    valid = {r["step"]: r["valid_loss"] for r in _rows(run) if "valid_loss" in r}
    best_step = (min if mode == "min" else max)(valid, key=valid.get)
    meta = ckpt.verify(run / "best")
    assert (meta["step"], meta["best_metric"], meta["best_mode"]) == (best_step, "valid_loss", mode)
    assert meta["best_value"] == pytest.approx(valid[best_step])
    assert [p.name for p in ckpt.checkpoints(run)] == ["step-00000004"]  # keep_last pruned, best kept
    assert ckpt.resolve(run).name == "step-00000004"  # a run directory still means its newest step
    assert pengi_kit.load_model(run / "best") is not None
    assert not list(run.glob(".*"))  # no temporary folders left


def test_best_metric_disabled(tmp_path):
    run = tmp_path / "run"
    Trainer(from_dict(tiny_recipe(run, train={"max_steps": 2, "best_metric": ""})), progress=False).fit()
    assert not (run / "best").exists()


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    Trainer(from_dict(tiny_recipe(run, train={"max_steps": 2})), progress=False).fit()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "valid_loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss")] == [1, 2]
