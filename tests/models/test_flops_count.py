"""FLOPs of a training step (pengi_kit.models.flops, ``Trainable.flops``): forward and backward
counted as autograd runs them, checked against hand counts from the layers' shapes."""
import pytest
import torch

from pengi_kit.models import build_model
from pengi_kit.models.flops import step_flops
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

LLAMA = {"name": "causal-lm", "architecture": "llama", "hidden_size": 16, "num_layers": 2, "num_heads": 2,
         "num_kv_heads": 1, "intermediate_size": 24, "max_positions": 64, "pretrained": "",
         "tokenizer": "pengi_kit.data.synthetic:tokenizer"}


def _model(tmp_path, **lm):
    torch.manual_seed(0)
    return build_model(from_dict(tiny_recipe(tmp_path, lm={**LLAMA, **lm})))


def _inputs(model, batch, length):
    return model.example_inputs(batch, length)


def _linears(module, only_lora=False):
    """(name, in, out) of every Linear under ``module`` (the LoRA A/B matrices, or everything else)."""
    return [(n, m.in_features, m.out_features) for n, m in module.named_modules()
            if isinstance(m, torch.nn.Linear) and ("lora_" in n) == only_lora]


def test_lora_counts_adapter_weight_gradients_only(tmp_path):
    """A LoRA LM costs its frozen self (forward + input gradients) plus, per adapter matrix, its
    forward, its input gradient and its weight gradient: 3 x 2 x tokens x in x out. Counting the
    LM as trained, as before, overstated MFU by the weight gradients of every LM layer."""
    frozen, lora = _model(tmp_path, trainable=False), _model(tmp_path, trainable=False, lora={"rank": 4})
    trained = _model(tmp_path, trainable=True)
    batch, length = 3, 7
    tokens = batch * (frozen.prefix_length + length)  # every position the LM runs
    adapters = _linears(lora.lm, only_lora=True)
    assert len(adapters) == 2 * 4 * LLAMA["num_layers"]  # A and B on q, k, v, o of each layer
    hand = sum(3 * 2 * tokens * d_in * d_out for _, d_in, d_out in adapters)
    counted = {name: m.flops(_inputs(m, batch, length)) for name, m in
               (("frozen", frozen), ("lora", lora), ("trained", trained))}
    assert counted["lora"] - counted["frozen"] == pytest.approx(hand, rel=1e-9)
    # a trained LM adds the weight gradient of every linear layer (the output layer included)
    weights = sum(2 * tokens * d_in * d_out for _, d_in, d_out in _linears(trained.lm))
    assert counted["trained"] - counted["frozen"] == pytest.approx(weights, rel=1e-9)
    assert counted["lora"] < counted["trained"]


def test_any_batch_and_target_length_is_counted_exactly(tmp_path):
    """flops(inputs) is measured at three target lengths once and fitted exactly by a parabola
    (linear layers grow with the length, attention scores with its square)."""
    model = _model(tmp_path, trainable=False, lora={"rank": 2})
    for batch, length in ((1, 5), (3, 12), (2, 30)):
        inputs = _inputs(model, batch, length)
        assert model.flops(inputs) == pytest.approx(step_flops(model, inputs), rel=1e-9)


def test_a_frozen_encoder_costs_its_forward_only(tmp_path):
    """Nothing before a frozen audio encoder trains, so no gradient flows into it; a trained one
    adds a weight gradient and an input gradient for each of its layers (the fixed log-mel
    front-end before them needs neither)."""
    def model(trainable):
        raw = tiny_recipe(tmp_path, lm={**LLAMA, "trainable": False})
        raw["model"]["audio_encoder"]["trainable"] = trainable
        return build_model(from_dict(raw))

    frozen, trained = model(False), model(True)
    inputs = _inputs(frozen, 2, 4)
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        frozen.audio_encoder(inputs["audio"])
    per_module = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    layers = sum(per_module[f"Cnn14.{name}"] for name in ("conv_block1", "conv_block2", "conv_block3",
                                                          "conv_block4", "conv_block5", "conv_block6", "fc1"))
    assert per_module["Cnn14.logmel_extractor"] > 0 and layers > 0
    assert trained.flops(inputs) - frozen.flops(inputs) == pytest.approx(2 * layers, rel=2e-3)


def test_measuring_changes_nothing(tmp_path):
    """Counting runs in eval mode without touching the RNG or any .grad."""
    model = _model(tmp_path, trainable=False, lora={"rank": 2})
    model.train()
    state = torch.get_rng_state()
    model.flops(_inputs(model, 2, 4))
    assert torch.equal(state, torch.get_rng_state()) and model.training
    assert all(p.grad is None for p in model.parameters())
