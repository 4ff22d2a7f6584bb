"""build_hf, the one builder of the transformers-backed components: a fresh config, a folder
saved with save_pretrained, an architecture-only folder; architecture arguments refused
beside pretrained weights; a missing source named in one line. Every factory goes through it."""
import pytest
import torch

from pengi_kit.components import hf_causal_lm, hf_text
from pengi_kit.errors import WeightsError
from pengi_kit.sources import mark_architecture_only

_BERT_LIKE = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}
FACTORIES = {  # name: (factory, tiny architecture arguments, config attribute -> expected value)
    "clip-text": (hf_text.clip_text, {**_BERT_LIKE, "projection_dim": 8, "max_positions": 24},
                  {"num_hidden_layers": 1, "intermediate_size": 64, "projection_dim": 8,
                   "max_position_embeddings": 24}),
    "roberta": (hf_text.roberta, _BERT_LIKE, {"num_hidden_layers": 1, "intermediate_size": 64,
                                              "max_position_embeddings": 514}),
    "bert": (hf_text.bert, _BERT_LIKE, {"num_hidden_layers": 1, "intermediate_size": 64}),
    "gpt2-text": (hf_text.gpt2_text, {"n_layer": 1, "n_embd": 16, "n_head": 2}, {"n_layer": 1, "n_embd": 16}),
    "gpt2": (hf_causal_lm.gpt2, {"n_layer": 1, "n_embd": 16, "n_head": 2, "dropout": 0.0},
             {"n_layer": 1, "n_embd": 16, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}),
}


def _fresh(name, seed=0, **extra):
    factory, sizes, _ = FACTORIES[name]
    torch.manual_seed(seed)
    return factory(pretrained="", **sizes, **extra)


def _save(component, folder, weights=True):
    if weights:
        component.model.save_pretrained(folder)
    else:
        component.model.config.save_pretrained(folder)
    component.tokenizer.save_pretrained(folder)


@pytest.mark.parametrize("name", FACTORIES)
def test_a_fresh_model_takes_the_sizes_and_the_tokenizer(name):
    component = _fresh(name)
    config, tok = component.model.config, component.tokenizer
    expected = FACTORIES[name][2]
    assert {key: getattr(config, key) for key in expected} == expected
    assert config.vocab_size == len(tok) and config.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize("name", FACTORIES)
def test_a_saved_folder_gives_back_the_same_weights(name, tmp_path):
    component = _fresh(name)
    _save(component, tmp_path)
    loaded = FACTORIES[name][0](pretrained=str(tmp_path))
    assert loaded.model.state_dict().keys() == component.model.state_dict().keys()
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in component.model.state_dict().items())
    assert loaded.tokenizer("a dog barks")["input_ids"] == component.tokenizer("a dog barks")["input_ids"]


@pytest.mark.parametrize("name", FACTORIES)
def test_an_architecture_only_folder_builds_its_config_with_fresh_weights(name, tmp_path):
    component = _fresh(name)
    _save(component, tmp_path, weights=False)
    mark_architecture_only(tmp_path, "test")
    torch.manual_seed(1)
    built = FACTORIES[name][0](pretrained=str(tmp_path))
    expected = FACTORIES[name][2]
    assert {key: getattr(built.model.config, key) for key in expected} == expected
    assert built.model.state_dict().keys() == component.model.state_dict().keys()
    first = next(iter(component.model.state_dict()))
    assert not torch.equal(built.model.state_dict()[first], component.model.state_dict()[first])


def test_model_arguments_reach_every_source(tmp_path):
    component = _fresh("roberta", pooling="pooler")
    assert component.model.pooler is not None and _fresh("roberta").model.pooler is None
    _save(component, tmp_path)
    assert hf_text.roberta(pretrained=str(tmp_path), pooling="pooler").model.pooler is not None


@pytest.mark.parametrize("name", FACTORIES)
def test_architecture_arguments_beside_pretrained_weights_are_refused(name):
    factory, sizes, _ = FACTORIES[name]
    with pytest.raises(WeightsError, match=f"^{name}: .* only apply when pretrained is empty"):
        factory(pretrained="some/model", **sizes)


def test_a_missing_source_is_named_in_one_line(tmp_path):
    with pytest.raises(WeightsError, match=f"cannot load gpt2 weights '{tmp_path / 'nowhere'}'"):
        hf_causal_lm.gpt2(pretrained=str(tmp_path / "nowhere"))
