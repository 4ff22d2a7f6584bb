"""train.strategy = "fsdp" with LoRA ([model.lm.lora]) on a frozen pretrained Llama, on two CPU processes
over gloo (docs/language-models.md, "Several GPUs: FSDP"): only the adapters and the trainable
projections/mappers change, the checkpoint holds the LM's adapters and not its base, fp32 training equals
one process's with the double batch (which DDP's equals, test_distributed.py), a bf16 run resumed from its
step-2 checkpoint repeats steps 3 and 4 bit for bit, and the final checkpoint loads on one process, with the
base from its pretrained folder, and generates."""
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pengi_kit
from pengi_kit import Trainer
from pengi_kit import checkpoint as ckpt
from pengi_kit.components.hf_causal_lm import causal_lm
from pengi_kit.recipe import dumps, from_dict
from pengi_kit.testing import tiny_recipe
from test_distributed import _deterministic, _losses
from workers import train_two  # tests/engine is on sys.path (basenames)

WORDS = "pengi_kit.data.synthetic:tokenizer"
LAYERS = 2
LORA = {"rank": 4, "alpha": 8, "dropout": 0.0}  # no adapter dropout: two runs on two processes compare
FSDP = ("-s", "train.strategy='fsdp'")
BF16 = (*FSDP, "-s", "train.precision='bf16'")


def _llama_base(folder):
    """A random two-layer Llama saved as a hub model is (config + safetensors): a local
    ``pretrained`` source, so the LM is a frozen base that checkpoints refer to, not copy."""
    torch.manual_seed(0)
    lm = causal_lm(architecture="llama", tokenizer=WORDS, hidden_size=32, num_layers=LAYERS, num_heads=2,
                   num_kv_heads=1, max_positions=64)
    lm.model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One recipe (4 steps, a checkpoint every 2) trained on two processes of 4 examples each with
    FSDP, in fp32 and in bf16; and here, on one process of 8 examples (what DDP computes, as
    test_distributed shows), starting from the weights every run starts from."""
    tmp = tmp_path_factory.mktemp("fsdp_lora")
    raw = _deterministic(tiny_recipe(tmp / "unused", train={"max_steps": 4, "save_every": 2, "batch_size": 4}))
    raw["model"]["lm"] = {"name": "causal-lm", "pretrained": str(_llama_base(tmp / "base")), "tokenizer": WORDS,
                          "trainable": False, "lora": LORA}
    (tmp / "r.toml").write_text(dumps(raw))
    train_two(tmp / "r.toml", tmp / "fsdp", *FSDP)
    train_two(tmp / "r.toml", tmp / "bf16", *BF16)
    trainer = Trainer(from_dict(raw, ["train.batch_size=8", f"train.output_dir='{tmp / 'one'}'"]), progress=False)
    initial = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    return tmp, initial


def _final(run_dir):
    return load_file(str(ckpt.resolve(run_dir) / ckpt.WEIGHTS))


@pytest.mark.slow
@pytest.mark.parametrize("run", ["fsdp", "bf16"])
def test_fsdp_lora_trains_the_adapters_and_checkpoints_hold_only_them_of_the_lm(runs, run):
    tmp, initial = runs
    weights = _final(tmp / run)
    lm_keys = [k for k in weights if k.startswith("lm.")]
    # A and B of q/k/v/o in each layer, gathered from the shards; the base (embeddings, MLPs, norms,
    # head, the adapted layers' own weights) is not stored
    assert len(lm_keys) == 2 * 4 * LAYERS and all(".lora_A." in k or ".lora_B." in k for k in lm_keys), lm_keys
    assert weights.keys() == _final(tmp / "one").keys()
    for key, value in weights.items():
        # bf16 computes in the blocks; the weights stay float32
        assert value.dtype == torch.float32 or not value.is_floating_point(), key
        moved = not torch.equal(value, initial[key])
        if key.startswith(("lm.", "audio_projection.", "audio_mapper.", "text_mapper.")):
            assert moved, f"{key} did not train"  # lora_B starts at zero
        else:
            assert key.startswith("audio_encoder.") and not moved, f"{key} is frozen but changed"
    assert sorted(_losses(tmp / run)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_fsdp_lora_trains_as_one_process_does(runs):
    tmp, _ = runs
    fsdp, one = _final(tmp / "fsdp"), _final(tmp / "one")
    for key in one:  # fp32: the same sums, perhaps in another order (equal to 1e-5, as in test_distributed)
        torch.testing.assert_close(fsdp[key], one[key], atol=1e-5, rtol=1e-4, msg=key)
    assert _losses(tmp / "fsdp") == pytest.approx(_losses(tmp / "one"), abs=1e-5)
    # bf16 blocks: within 2e-3 of fp32 (measured: 1.2e-4; the loss moves some 4e-2 a step)
    assert _losses(tmp / "bf16") == pytest.approx(_losses(tmp / "one"), abs=2e-3)


@pytest.mark.slow
def test_fsdp_lora_bf16_resumes_exactly_and_loads_on_one_process(runs):
    tmp, _ = runs
    full = tmp / "bf16"
    step2 = full / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in (step2 / "optimizer").iterdir() if p.suffix == ".distcp") == \
        ["__0_0.distcp", "__1_0.distcp"]  # the optimiser state, one shard per process
    resumed = tmp / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000004")
    run = train_two(tmp / "r.toml", resumed, *BF16, "--resume")
    assert "resumed from" in run.stderr and "step 2" in run.stderr
    assert _losses(resumed) == _losses(full)  # steps 3 and 4 again, bit for bit
    final = load_file(str(full / "checkpoints" / "step-00000004" / ckpt.WEIGHTS))
    again = load_file(str(resumed / "checkpoints" / "step-00000004" / ckpt.WEIGHTS))
    assert again.keys() == final.keys()
    for key, value in final.items():
        assert torch.equal(again[key], value), key
    # one process, no FSDP: the adapters and the rest from the checkpoint, the base from its folder
    pengi = pengi_kit.load(full / "checkpoints" / "step-00000004")
    state = pengi.model.state_dict()
    for key, value in final.items():
        assert torch.equal(state[key], value), key
    base = load_file(str(tmp / "base" / "model.safetensors"))
    for name, param in pengi.model.lm.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param.detach(), base[name.replace(".base_layer", "")]), name
    texts = pengi.generate([(np.zeros(8000, dtype=np.float32), 16000)], "this is a sound of",
                           min_new_tokens=2, max_new_tokens=2)
    assert len(texts) == 1 and isinstance(texts[0], str) and texts[0].strip(), texts  # two tokens
