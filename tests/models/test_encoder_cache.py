"""train.encoder_cache: a frozen encoder runs once per clip; later epochs and validations read its
outputs from disk, training is unchanged, and changed weights are not served old outputs."""
import pytest
import torch

from pengi_kit.engine.trainer import Trainer
from pengi_kit.errors import RecipeError
from pengi_kit.models.encoder_cache import EncoderCache
from pengi_kit.recipe import from_dict
from pengi_kit.testing import tiny_recipe


def _recipe(out, cache=""):
    raw = tiny_recipe(out, train={"max_steps": 10, "eval_every": 5, "save_every": 10, "encoder_cache": cache})
    raw["model"]["audio_encoder"]["trainable"] = False
    raw["data"] = {"synthetic_train_size": 8, "synthetic_valid_size": 8}
    return raw  # 8 clips x 5 prompts, 8 rows a step: two epochs of 5 steps, a validation after each


def test_later_epochs_read_the_frozen_encoders_outputs_and_train_alike(tmp_path):
    calls = []  # (step, clips encoded)
    cached = Trainer(from_dict(_recipe(tmp_path / "cached", str(tmp_path / "cache"))), progress=False)
    cached.model.audio_encoder.register_forward_hook(lambda module, args, out: calls.append((cached.step,
                                                                                            len(args[0]))))
    cached.fit()
    store = cached.model.encoder_cache
    # the first epoch and its validation encode each of the 8 + 8 clips once (after two silent rows of the
    # setup pass); the second epoch (steps 6-10) and the second validation read every clip from the disk
    assert sum(n for _, n in calls) == 16 == store.misses - 1 and max(step for step, _ in calls) <= 5
    assert store.hits == 2 * 40 + 2 * 40 + 1 - 16 and len(list(store.folder.glob("*.pt"))) == 17
    plain = Trainer(from_dict(_recipe(tmp_path / "plain")), progress=False)
    plain.fit()
    for (name, a), b in zip(cached.model.state_dict().items(), plain.model.state_dict().values()):
        if name.endswith("c_attn.bias"):  # the key bias's true gradient is 0 (softmax ignores a constant);
            third = len(a) // 3  # Adam scales the rounding noise it gets instead to lr-sized steps
            a, b = torch.cat([a[:third], a[2 * third:]]), torch.cat([b[:third], b[2 * third:]])
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)  # the encoder's outputs agree to 1e-9


def test_changed_weights_get_a_folder_of_their_own_and_recipes_that_cannot_use_it_are_refused(tmp_path):
    from pengi_kit.components.cnn14 import cnn14

    encoder = cnn14(sample_rate=16000, width=2, clip_seconds=0.5, spec_augment=False).eval()
    audio = torch.rand(3, 8000) - 0.5
    first = EncoderCache(tmp_path, encoder)
    out = first(audio)
    torch.testing.assert_close(first(audio), out)
    assert (first.misses, first.hits) == (3, 3)
    with torch.no_grad():
        encoder.fc1.weight.mul_(2)
    again = EncoderCache(tmp_path, encoder)
    assert again.folder != first.folder and not torch.allclose(again(audio), out)
    raw = _recipe(tmp_path / "run", str(tmp_path / "cache"))
    raw["data"]["augment"] = {"gain_db": [-3.0, 3.0]}
    with pytest.raises(RecipeError, match="encoder_cache: .*data.augment"):
        from_dict(raw)
    raw = _recipe(tmp_path / "run", str(tmp_path / "cache"))
    raw["model"]["audio_encoder"]["trainable"] = True
    with pytest.raises(RecipeError, match="encoder_cache keeps a frozen encoder"):
        from_dict(raw)
