import pytest

from pengi_kit.errors import RecipeError
from pengi_kit.recipe import apply_overrides, dumps, from_dict, load_recipe
from pengi_kit.testing import tiny_recipe

TRANSFORMER = {"name": "transformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2}


def test_defaults_fill_and_factory_defaults_resolve(tmp_path):
    recipe = from_dict(tiny_recipe(tmp_path, text_encoder=True))
    assert recipe["optim"]["schedule"] == "linear"
    assert recipe["model"]["audio_encoder"]["num_classes"] == 527  # from cnn14's signature
    assert recipe["model"]["audio_encoder"]["trainable"] is True
    assert recipe["model"]["text_encoder"]["trainable"] is True  # given
    assert recipe["model"]["lm"]["name"] == "gpt2"


@pytest.mark.parametrize("override,message", [
    ("train.batch_sise=3", "train.batch_sise: unknown key; did you mean 'batch_size'?"),
    ("trian.batch_size=3", "unknown top-level key 'trian'; did you mean 'train'?"),
    ("train.batch_size='x'", "train.batch_size: expected integer, got string"),
    ("train.precision='fp8'", "train.precision: 'fp8' is not one of"),
    ("model.lm.name='gtp2'", "unknown causal_lm 'gtp2'; did you mean 'gpt2'?"),
    ("model.lm.n_layr=2", "model.lm.n_layr: unknown argument of causal_lm 'gpt2'; did you mean 'n_layer'?"),
    ("model.lm.n_layer='two'", "model.lm.n_layer: expected integer, got string 'two'"),
    ("model.audio_mapper.in_dim=3", "model.audio_mapper.in_dim: set by the model"),
    ("train.grad_accum=3", "not divisible by train.grad_accum"),
])
def test_validation_names_the_key_and_the_fix(tmp_path, override, message):
    with pytest.raises(RecipeError) as err:
        from_dict(tiny_recipe(tmp_path), [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_extends_merges_and_component_change_drops_old_arguments(tmp_path):
    base = tiny_recipe(tmp_path / "run", train={"max_steps": 4}, audio_mapper=TRANSFORMER)
    (tmp_path / "base.toml").write_text(dumps(base))
    (tmp_path / "child.toml").write_text(
        'extends = "base"\n[train]\nbatch_size = 4\n'
        '[model.audio_mapper]\nname = "mlp"\nprefix_length = 2\n')
    recipe = load_recipe(tmp_path / "child.toml")
    assert recipe["train"]["batch_size"] == 4 and recipe["train"]["max_steps"] == 4
    assert recipe["model"]["audio_mapper"] == {"name": "mlp", "trainable": True, "prefix_length": 2}


def test_extends_loop_is_reported(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    with pytest.raises(RecipeError, match="loops back"):
        load_recipe(tmp_path / "a.toml")


def test_overrides_parse_toml_values_and_switch_components(tmp_path):
    raw = apply_overrides(tiny_recipe(tmp_path), ["optim.lr=3e-4", "model.lm.pretrained=gpt2-medium",
                                                  "optim.betas=[0.8, 0.9]"])
    assert raw["optim"]["lr"] == 3e-4 and raw["optim"]["betas"] == [0.8, 0.9]
    assert raw["model"]["lm"]["pretrained"] == "gpt2-medium"
    recipe = from_dict(tiny_recipe(tmp_path, text_encoder=True), ["model.text_encoder.name=roberta"])
    assert recipe["model"]["text_encoder"]["name"] == "roberta"
    assert "projection_dim" not in recipe["model"]["text_encoder"]  # clip-text's arguments are gone
    no_text = from_dict(tiny_recipe(tmp_path, text_encoder=True, text_mapper=TRANSFORMER),
                        ["model.text_encoder.name=none", "model.text_mapper.prefix_length=48"])
    assert "text_encoder" not in no_text["model"]


def test_shipped_recipes_validate():
    from pathlib import Path

    shipped = sorted(p for p in Path("recipes").rglob("*.toml") if "eval" not in p.parts)  # eval/: suites
    assert len(shipped) >= 13  # demo, base, no text encoder, eight ablations, two pretraining recipes
    recipes = {path.stem: load_recipe(path) for path in shipped}
    assert recipes.pop("tagging")["task"] == "tagging" and recipes.pop("contrastive")["task"] == "contrastive"
    assert recipes.pop("pair_tagger")["task"] == "tagging" and recipes["demo_chat"]["model"]["layout"] == "chat"
    lms = {stem: r["model"]["lm"] for stem, r in recipes.items()}
    assert lms.pop("smollm2_135m")["pretrained"] == "HuggingFaceTB/SmolLM2-135M"
    qwen = lms.pop("qwen_lora")
    assert qwen["name"] == "causal-lm" and qwen["lora"]["rank"] > 0 and not qwen["trainable"]
    assert lms.pop("whisper_qwen_lora") == qwen
    assert recipes["whisper_qwen_lora"]["model"]["audio_mapper"]["name"] == "downsample"
    small = recipes["whisper_smollm2"]["model"]
    assert lms.pop("whisper_smollm2")["lora"]["rank"] > 0 and small["audio_mapper"]["name"] == "qformer"
    assert small["audio_encoder"] == {"name": "whisper", "pretrained": "openai/whisper-base", "trainable": False}
    assert all(lm["name"] == "gpt2" for lm in lms.values())
    ablation = {stem: r for stem, r in recipes.items() if r["name"].startswith("ablation_")}
    assert all(r["model"]["projection_dim"] == 1024 for r in ablation.values())  # the rest is pengi_base
    assert ablation["mlp_mappers"]["model"]["audio_mapper"]["name"] == "mlp"
    assert ablation["prefix_10"]["model"]["text_mapper"]["prefix_length"] == 10
    assert ablation["frozen_audio"]["model"]["audio_encoder"]["trainable"] is False
    assert ablation["gpt2_medium"]["model"]["lm"]["pretrained"] == "gpt2-medium"
    assert ablation["cnn14_audio"]["model"]["audio_encoder"]["name"] == "cnn14"
    assert "variant" not in ablation["cnn14_audio"]["model"]["audio_encoder"]  # htsat's arguments are gone
    assert ablation["roberta_text"]["model"]["text_encoder"]["name"] == "roberta"
    base = load_recipe("recipes/pengi_base.toml")
    assert base["model"]["audio_mapper"]["prefix_length"] == 40 and base["model"]["projection_dim"] == 1024
    assert "text_encoder" not in load_recipe("recipes/pengi_no_text_encoder.toml")["model"]


def test_show_output_round_trips(tmp_path):
    recipe = from_dict(tiny_recipe(tmp_path))
    (tmp_path / "resolved.toml").write_text(dumps(recipe))
    assert load_recipe(tmp_path / "resolved.toml") == recipe


def test_every_recipe_key_is_documented():
    from pathlib import Path

    from pengi_kit.recipe import SCHEMA

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reference" / "recipes.md").read_text(encoding="utf-8")
    missing = [f"{section}.{key}" for section, fields in SCHEMA.items() for key in fields if f"`{key}`" not in doc]
    assert not missing, f"docs/reference/recipes.md lacks {missing}; run: python scripts/gen_docs.py"
