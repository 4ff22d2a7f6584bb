import json

import pytest
import torch

import pengi_kit
from pengi_kit import checkpoint as ckpt
from pengi_kit.engine.trainer import Trainer
from pengi_kit.errors import CheckpointError, WeightsError
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_checkpoint_round_trip_and_corruption(tmp_path):
    trainer = Trainer(from_dict(tiny_recipe(tmp_path / "run", train={"max_steps": 4})), progress=False)
    path = trainer.fit()
    assert path.name == "step-00000004"
    meta = json.loads((path / "meta.json").read_text())
    assert set(meta["sha256"]) >= {"model.safetensors", "recipe.toml", "training_state.pt", "rng-rank0.pt"}
    pengi = pengi_kit.load(tmp_path / "run")  # a run directory resolves to its newest checkpoint
    audio = torch.randn(2, 8000) * 0.1
    trainer.model.eval()
    torch.testing.assert_close(pengi.model.embed_audio(audio), trainer.model.embed_audio(audio))
    assert len(pengi.generate([(a.numpy(), 16000) for a in audio], "this is a sound of")) == 2
    # damage the newest checkpoint: loading it fails clearly, the run falls back to the previous one
    older = ckpt.save_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000002", trainer.model, trainer.recipe)
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="hash mismatch"):
        pengi_kit.load(path)
    assert ckpt.resolve(tmp_path / "run") == older


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    warmup = ["optim.warmup_steps=2"]  # then steps 1-3 have the same learning rates whether max_steps is 3 or 6
    full = tiny_recipe(tmp_path / "full", train={"max_steps": 6, "save_every": 3})
    Trainer(from_dict(full, warmup), progress=False).fit()
    part = tiny_recipe(tmp_path / "part", train={"max_steps": 3})
    Trainer(from_dict(part, warmup), progress=False).fit()
    resumed = Trainer(from_dict(tiny_recipe(tmp_path / "part", train={"max_steps": 6}), warmup), resume=True,
                      progress=False)
    assert resumed.step == 3
    resumed.fit()
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")  # bitwise, one process


def test_gradient_accumulation_matches_full_batch(tmp_path):
    params = []
    for accum in (1, 2):
        raw = tiny_recipe(tmp_path / f"acc{accum}", train={"max_steps": 2, "grad_accum": accum})
        raw["model"]["audio_encoder"]["name"] = "cnn14"
        trainer = Trainer(from_dict(raw), progress=False)
        trainer.model.eval()  # no dropout or batch-norm batch statistics: micro-batches must equal the batch
        trainer.model.train = lambda mode=True: trainer.model  # keep it that way inside fit()
        trainer.fit()
        params.append(torch.cat([p.detach().flatten() for p in trainer.params]))
    torch.testing.assert_close(params[0], params[1], atol=1e-5, rtol=1e-4)


def test_frozen_pretrained_components_are_referenced_not_copied(tmp_path):
    from pengi_kit.components.hf_causal_lm import gpt2

    local = tmp_path / "tiny-gpt2"
    lm = gpt2(pretrained="", n_layer=1, n_embd=32, n_head=2, n_positions=128)
    lm.model.save_pretrained(local)
    lm.tokenizer.save_pretrained(local)
    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 2})
    raw["model"]["lm"] = {"name": "gpt2", "pretrained": str(local), "trainable": False}
    path = Trainer(from_dict(raw), progress=False).fit()
    from safetensors.torch import load_file
    saved = load_file(str(path / "model.safetensors"))
    assert not any(k.startswith("lm.") for k in saved) and any(k.startswith("audio_mapper.") for k in saved)
    loaded = pengi_kit.load_model(path)
    torch.testing.assert_close(loaded.lm.model.transformer.wte.weight, lm.model.transformer.wte.weight)


def test_missing_pretrained_weights_is_one_clear_line(tmp_path):
    raw = tiny_recipe(tmp_path / "run")
    raw["model"]["lm"] = {"name": "gpt2", "pretrained": str(tmp_path / "no-such-model"), "trainable": False}
    with pytest.raises(WeightsError) as err:
        Trainer(from_dict(raw), progress=False)
    message = str(err.value)
    assert "no-such-model" in message and "local directory" in message and "\n" not in message


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_a_checkpoint(tmp_path):
    from pengi_kit.engine.trainer import TrainingError

    raw = tiny_recipe(tmp_path / "run", train={"max_steps": 8, "max_nonfinite_steps": 3})
    trainer = Trainer(from_dict(raw), progress=False)
    forward = trainer.module.forward
    calls = []

    def poisoned(**inputs):  # step 2 once, then every step from 4 on, gives a NaN loss
        calls.append(1)
        out = forward(**inputs)
        if len(calls) == 2 or len(calls) >= 4:
            out["loss_sum"] = out["loss_sum"] * float("nan")
        return out

    trainer.module.forward = poisoned
    with pytest.raises(TrainingError, match="3 non-finite steps in a row at step 6"):
        trainer.fit()
    assert trainer.skipped_steps == 4
    assert ckpt.checkpoints(tmp_path / "run")[-1].name == "step-00000006"
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "nonfinite"] == [2, 4, 5, 6]
