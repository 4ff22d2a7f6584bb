import torch
import torch.nn.functional as F

from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe

TRANSFORMER = {"name": "transformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2}  # a mapper with prefix_const


def _inputs(model, texts, prompts=None):
    prompts = prompts or ["generate audio caption"] * len(texts)
    p, t = model.tokenize_prompts(prompts), model.tokenize_targets(texts)
    return {"audio": torch.randn(len(texts), 8000) * 0.1, "prompt_ids": p["input_ids"],
            "prompt_mask": p["attention_mask"], "target_ids": t["input_ids"], "target_mask": t["attention_mask"]}


def test_loss_covers_target_tokens_only(tmp_path):
    torch.manual_seed(0)
    model = build_model(from_dict(tiny_recipe(tmp_path), ["model.lm.tokenizer='byte'"])).eval()
    inputs = _inputs(model, ["a dog", "two high tones"])
    out = model(**inputs)
    # by hand: logits at prefix_end-1+t predict target t; padding after end-of-text is ignored
    prefix = model.prefix(inputs["audio"], inputs["prompt_ids"], inputs["prompt_mask"])
    embeds = torch.cat([prefix, model.lm.embed(inputs["target_ids"])], 1)
    mask = torch.cat([torch.ones(2, prefix.shape[1], dtype=torch.long), inputs["target_mask"]], 1)
    logits, _ = model.lm(embeds, mask)
    expected = 0.0
    for row in range(2):
        n = int(inputs["target_mask"][row].sum())
        expected += F.cross_entropy(logits[row, prefix.shape[1] - 1: prefix.shape[1] - 1 + n],
                                    inputs["target_ids"][row, :n], reduction="sum")
    torch.testing.assert_close(out["loss_sum"], expected)
    assert out["tokens"] == len("a dog") + 1 + len("two high tones") + 1  # bytes + end-of-text
    # changing what sits in the padding changes nothing
    padded = dict(inputs, target_ids=inputs["target_ids"].masked_fill(inputs["target_mask"] == 0, 7))
    torch.testing.assert_close(model(**padded)["loss_sum"], out["loss_sum"])


def test_frozen_lm_passes_gradients_to_the_prefix(tmp_path):
    raw = tiny_recipe(tmp_path, text_encoder=True, audio_mapper=TRANSFORMER, text_mapper=TRANSFORMER)
    raw["model"]["lm"]["trainable"] = False
    raw["model"]["text_encoder"]["trainable"] = False
    model = build_model(from_dict(raw))
    model.train()
    assert not model.lm.training and not model.text_encoder.training  # frozen parts stay in eval mode
    model(**_inputs(model, ["a dog"]))["loss_sum"].backward()
    assert all(p.grad is None for p in model.lm.parameters())
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.audio_mapper.prefix_const.grad.abs().sum() > 0
    assert model.text_mapper.prefix_const.grad.abs().sum() > 0
    assert next(model.audio_encoder.parameters()).grad is not None


def test_variant_without_text_encoder_uses_lm_embeddings(tmp_path):
    model = build_model(from_dict(tiny_recipe(tmp_path, prompt_length=48,
                                              text_mapper={**TRANSFORMER, "prefix_length": 48}))).eval()
    assert model.text_encoder is None and model.text_mapper.accepts_sequence
    inputs = _inputs(model, ["yes", "no"], ["question: is there a tone?", "this is a sound of"])
    prefix = model.prefix(inputs["audio"], inputs["prompt_ids"], inputs["prompt_mask"])
    assert prefix.shape == (2, 2 + 48, 32)
    # the prompt matters, and padding beyond it does not
    other = model.tokenize_prompts(["question: is there a tone?"] * 2)
    prefix2 = model.prefix(inputs["audio"], other["input_ids"], other["attention_mask"])
    torch.testing.assert_close(prefix[0], prefix2[0])
    assert not torch.allclose(prefix[1], prefix2[1])
    loss = model(**inputs)["loss_sum"]
    loss.backward()
    assert model.text_mapper.prefix_const.grad is not None


def test_normalize_switch(tmp_path):
    model = build_model(from_dict(tiny_recipe(tmp_path))).eval()
    emb = model.embed_audio(torch.randn(3, 8000))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    model = build_model(from_dict(tiny_recipe(tmp_path), ["model.normalize=false"])).eval()
    assert not torch.allclose(model.embed_audio(torch.randn(3, 8000)).norm(dim=-1), torch.ones(3))


def test_target_logprobs_give_the_loss_and_join_prefix_shares_one_prompt(tmp_path):
    torch.manual_seed(0)
    model = build_model(from_dict(tiny_recipe(tmp_path))).eval()
    inputs = _inputs(model, ["a dog", "two high tones"], ["this is a sound of"] * 2)
    with torch.no_grad():
        prefix = model.prefix(inputs["audio"], inputs["prompt_ids"], inputs["prompt_mask"])
        # one prompt's prefix row serves every clip, as inference caches it
        shared = model.join_prefix(model.audio_prefix(inputs["audio"]), model.prompt_prefix(["this is a sound of"]))
        torch.testing.assert_close(shared, prefix)
        logp = model.target_logprobs(prefix, inputs["target_ids"], inputs["target_mask"])
        assert logp.shape == inputs["target_ids"].shape and (logp <= 0).all()
        assert (logp[inputs["target_mask"] == 0] == 0).all() and (logp[inputs["target_mask"] == 1] < 0).all()
        torch.testing.assert_close(-logp.sum(), model(**inputs)["loss_sum"])
