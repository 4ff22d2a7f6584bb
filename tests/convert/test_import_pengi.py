"""Pengi importer: tiny base / base_no_text_enc checkpoints in the published layout are
imported, load with one call, and compute exactly what the same weights loaded
directly into pengi-kit's modules compute; strictness; the CLI end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from layouts import (
    TINY_HTSAT, module_prefixed, old_transformers_gpt2_buffers, randomize, tiny_clip_dir, tiny_gpt2_dir,
    torchlibrosa_front_end,
)

import pengi_kit
from pengi_kit.convert import ConversionError, import_checkpoint
from pengi_kit.checkpoint import read_recipe
from pengi_kit.model import build_model
from pengi_kit.recipe import from_dict
from pengi_kit.sources import ARCHITECTURE_ONLY

K = 4  # prefix tokens per modality in the tiny models
FRONT = dict(sample_rate=44100, clip_seconds=7.0, mel_sample_rate=32000, window_size=1024, hop_size=320)


def reference_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """pengi-kit names -> the reference PENGI module's names (models/pengi.py, decoder.py)."""
    renames = [
        ("audio_encoder.", "audio_encoder.base.htsat."),
        ("audio_projection.", "audio_encoder.projection."),
        ("text_encoder.model.text_model.", "caption_encoder.base."),
        ("text_encoder.model.text_projection.", "caption_encoder.clip_text_projection."),
        ("text_projection.", "caption_encoder.projection."),
        ("lm.model.", "caption_decoder.gpt."),
        ("audio_mapper.", "caption_decoder.audio_project."),
        ("text_mapper.", "caption_decoder.text_project."),
    ]
    out = {}
    for key, value in sd.items():
        old, new = next((o, n) for o, n in renames if key.startswith(o))
        out[new + key[len(old):]] = value.clone()
    return out


def build_reference(tmp: Path, with_text: bool, fmax: float) -> tuple[torch.nn.Module, Path, dict[str, Path]]:
    """A tiny Pengi in pengi-kit modules and the same weights saved as the reference saves them."""
    dirs = {"lm": tiny_gpt2_dir(tmp / "gpt2")}
    model_cfg = {
        "projection_dim": 24, "prompt_length": 40, "target_length": 77,
        "audio_encoder": {"name": "htsat", **TINY_HTSAT, **FRONT, "fmax": fmax},
        "audio_mapper": {"name": "transformer", "prefix_length": K, "num_layers": 1, "num_heads": 8},
        "text_mapper": {"name": "transformer", "prefix_length": K if with_text else 40, "num_layers": 2,
                        "num_heads": 8, **({} if with_text else {"mask_padding": False})},
        "lm": {"name": "gpt2", "pretrained": str(dirs["lm"])},
    }
    if with_text:
        dirs["text_encoder"] = tiny_clip_dir(tmp / "clip")
        model_cfg["text_encoder"] = {"name": "clip-text", "pretrained": str(dirs["text_encoder"])}
    torch.manual_seed(3)
    model = build_model(from_dict({"model": model_cfg})).eval()
    randomize(model, seed=4)
    front = torchlibrosa_front_end(32000, 1024, 320, 16, 50, fmax, prefix="audio_encoder.")
    with torch.no_grad():
        model.audio_encoder.logmel_extractor.melW.copy_(front["audio_encoder.logmel_extractor.melW"])
    sd = reference_keys({**model.state_dict(), **front})
    sd.update(old_transformers_gpt2_buffers("caption_decoder.gpt.", 1, 160))
    if with_text:
        sd["caption_encoder.base.embeddings.position_ids"] = torch.arange(48)[None]
    path = tmp / ("base.pth" if with_text else "base_no_text_enc.pth")
    torch.save({"model": module_prefixed(sd), "epoch": 60}, path)
    return model, path, dirs


def clip(seconds: float = 1.0, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, int(44100 * seconds), generator=gen) * 2 - 1


@pytest.mark.parametrize("with_text,fmax", [(True, 14000.0), (False, 8000.0)])
def test_imported_model_matches_direct_modules(tmp_path, with_text, fmax):
    reference, path, dirs = build_reference(tmp_path, with_text, fmax)
    out = tmp_path / "imported"
    report = import_checkpoint("pengi", path, out, lm=str(dirs["lm"]), text_encoder=str(dirs.get("text_encoder")
                                                                                     or "unused"))
    assert report["variant"] == ("base" if with_text else "base_no_text_enc")
    assert report["mel_matrix"] == "matches slaney"
    ignored = {k for keys in report["ignored"].values() for k in keys}
    assert "module." not in "".join(ignored)
    assert "audio_encoder.base.htsat.spectrogram_extractor.stft.conv_real.weight" in ignored
    assert "caption_decoder.gpt.transformer.h.0.attn.masked_bias" in ignored

    recipe = read_recipe(out)
    audio = recipe["model"]["audio_encoder"]
    assert (audio["sample_rate"], audio["clip_seconds"], audio["mel_sample_rate"], audio["fmax"]) == \
        (44100, 7.0, 32000, fmax)
    assert recipe["model"]["lm"]["pretrained"] == "lm" and recipe["train"]["save_frozen"] is True
    assert (out / "lm" / ARCHITECTURE_ONLY).is_file() and not (out / "lm" / "model.safetensors").exists()
    assert ("text_encoder" in recipe["model"]) == with_text
    if not with_text:
        assert recipe["model"]["text_mapper"]["mask_padding"] is False
    meta = json.loads((out / "meta.json").read_text())
    assert "lm/config.json" in meta["sha256"] and meta["referenced"] == []

    imported = pengi_kit.load_model(out)
    own = reference.state_dict()
    for key, value in imported.state_dict().items():
        torch.testing.assert_close(value, own[key], rtol=0, atol=0, msg=key)
    prompts = ["generate audio caption", "this is a sound of"]
    tokens = imported.tokenize_prompts(prompts)
    if with_text:
        assert torch.equal(tokens["input_ids"], reference.tokenize_prompts(prompts)["input_ids"])
    else:  # as the reference wrapper: GPT-2 tokens of prompt + ' <|endoftext|>', padded with '!' to 40
        from transformers import AutoTokenizer

        wrapper = AutoTokenizer.from_pretrained(dirs["lm"])
        wrapper.pad_token = "!"
        want = wrapper([p + " <|endoftext|>" for p in prompts], padding="max_length", max_length=40,
                       return_tensors="pt")["input_ids"]
        assert torch.equal(tokens["input_ids"], want) and int(want[0, -1]) == wrapper.convert_tokens_to_ids("!")
        assert imported.lm.tokenizer("a dog", add_special_tokens=False)["input_ids"] == \
            wrapper("a dog")["input_ids"]  # targets: no suffix
    targets = reference.tokenize_targets(["a dog barks", "rain"])
    with torch.no_grad():
        want = reference.prefix(clip(), tokens["input_ids"], tokens["attention_mask"])
        got = imported.prefix(clip(), tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(got, want)
        args = (clip(), tokens["input_ids"], tokens["attention_mask"], targets["input_ids"],
                targets["attention_mask"])
        torch.testing.assert_close(imported(*args)["loss_sum"], reference(*args)["loss_sum"])


def test_strictness_and_safety(tmp_path, capfd):
    _, path, dirs = build_reference(tmp_path, True, 14000.0)
    sd = torch.load(path, weights_only=True)["model"]
    opts = dict(lm=str(dirs["lm"]), text_encoder=str(dirs["text_encoder"]))

    extra = dict(sd, **{"module.caption_decoder.something_new.weight": torch.zeros(1)})
    torch.save({"model": extra}, tmp_path / "extra.pth")
    with pytest.raises(ConversionError, match="neither mapped nor knowingly ignored: caption_decoder.something_new"):
        import_checkpoint("pengi", tmp_path / "extra.pth", tmp_path / "a", **opts)

    missing = {k: v for k, v in sd.items() if "audio_project.prefix_const" not in k}
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(ConversionError, match="audio mapper"):
        import_checkpoint("pengi", tmp_path / "missing.pth", tmp_path / "b", **opts)

    no_ln = {k: v for k, v in sd.items() if "audio_encoder.projection.layer_norm.bias" not in k}
    torch.save({"model": no_ln}, tmp_path / "no_ln.pth")
    with pytest.raises(ConversionError, match="missing audio_projection.layer_norm.bias"):
        import_checkpoint("pengi", tmp_path / "no_ln.pth", tmp_path / "c", **opts)

    wide = tiny_gpt2_dir(tmp_path / "gpt2-wide", n_embd=48)  # an --lm that does not fit
    with pytest.raises(ConversionError, match="shape mismatch.*--lm"):
        import_checkpoint("pengi", path, tmp_path / "d", lm=str(wide), text_encoder=opts["text_encoder"])

    class Evil:  # an object that unpickling would construct
        def __reduce__(self):
            return (print, ("unpickled!",))
    torch.save({"model": sd, "evil": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="cannot be read .* weights_only=True .*(Unsupported global|print)"):
        import_checkpoint("pengi", tmp_path / "evil.pth", tmp_path / "e", **opts)
    assert "unpickled!" not in capfd.readouterr().out

    import_checkpoint("pengi", path, tmp_path / "ok", **opts)
    with pytest.raises(ConversionError, match="already exists"):
        import_checkpoint("pengi", path, tmp_path / "ok", **opts)
    with pytest.raises(ConversionError, match="takes no --text-encoder"):
        import_checkpoint("panns", path, tmp_path / "f", text_encoder="x")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging debris


def test_cli_import_then_generate(tmp_path):
    from click.testing import CliRunner

    from pengi_kit.cli import main

    _, path, dirs = build_reference(tmp_path, False, 8000.0)
    wav = tmp_path / "clip.wav"
    sf.write(wav, (np.random.default_rng(0).uniform(-0.5, 0.5, 22050)).astype(np.float32), 22050)
    runner = CliRunner()
    result = runner.invoke(main, ["import", "pengi", str(path), "--out", str(tmp_path / "ck"), "--lm", str(dirs["lm"])])
    assert result.exit_code == 0, result.output
    assert "base_no_text_enc" in result.output and "torchlibrosa STFT kernels" in result.output
    result = runner.invoke(main, ["generate", str(tmp_path / "ck"), str(wav), "--prompt", "generate audio caption",
                                  "--method", "greedy", "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.strip().splitlines()[-1])
    assert row["audio"] == str(wav) and row["prompt"] == "generate audio caption" and isinstance(row["text"], str)
    result = runner.invoke(main, ["import", "pengi", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "file not found" in result.output
