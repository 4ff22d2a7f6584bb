"""LAION-CLAP and Microsoft CLAP importers: tiny checkpoints in the published layouts
become a CLAP folder whose towers load as ordinary components and whose rebuilt model
embeds clips and texts exactly as the same weights in pengi-kit's modules do."""
from __future__ import annotations

import tomllib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from layouts import module_prefixed, randomize, save_hf_dir, tiny_cnn14, tiny_htsat, with_torchlibrosa
from torch import nn

from pengi_kit.components.hf_text import bert, gpt2_text, roberta
from pengi_kit.convert import ConversionError, import_checkpoint
from pengi_kit.convert.clap import load_clap
from pengi_kit.model import Projection
from pengi_kit.plugins import registry

TEXTS = ["a dog barks twice", "rain on a tin roof"]


def prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in module.state_dict().items()}


def wave(rate: int, seconds: float = 1.0) -> torch.Tensor:
    return torch.rand(2, int(rate * seconds), generator=torch.Generator().manual_seed(5)) * 2 - 1


def check_towers_and_heads(out, audio_model, text_model, audio_head, text_head, rate, text_length, scale):
    clap = load_clap(out)
    x = wave(rate)
    tokens = text_model.tokenize(TEXTS, text_length)
    with torch.no_grad():
        want_a = F.normalize(audio_head(audio_model(x)), dim=-1)
        want_t = F.normalize(text_head(text_model(tokens["input_ids"], tokens["attention_mask"])), dim=-1)
        got_a, got_t = clap.embed_audio(x), clap.embed_text(TEXTS)
        torch.testing.assert_close(got_a, want_a)
        torch.testing.assert_close(got_t, want_t)
        torch.testing.assert_close(clap.logits(got_a, got_t), scale.exp() * want_a @ want_t.T)
    usage = tomllib.loads((out / "usage.toml").read_text())["model"]
    for slot, table in usage.items():  # the tables a recipe uses build and load the towers
        table = dict(table)
        registry().get(slot, table.pop("name")).load()(**table)
    return clap


def test_laion_clap(tmp_path):
    audio = tiny_htsat(sample_rate=48000, hop_size=480, window_size=1024, clip_seconds=10.0, fmax=14000)
    randomize(audio, 1)
    torch.manual_seed(2)
    text = roberta(pretrained="", hidden_size=16, num_layers=1, num_heads=2, pooling="pooler").eval()
    text_dir = save_hf_dir(text, tmp_path / "roberta")
    torch.manual_seed(3)
    heads = nn.ModuleDict({
        "audio_projection": nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8)),
        "text_projection": nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8)),
        "audio_transform": nn.ModuleDict({"sequential": nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(),
                                                                      nn.Linear(8, 8))}),
        "text_transform": nn.ModuleDict({"sequential": nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(),
                                                                     nn.Linear(8, 8))}),
    })
    sd = {**prefixed("audio_branch.", audio), **prefixed("text_branch.", text.model),
          **{k: v for k, v in heads.state_dict().items()},
          "logit_scale_a": torch.tensor(2.5), "logit_scale_t": torch.tensor(1.5),
          "text_branch.embeddings.position_ids": torch.arange(514)[None]}
    sd.update({f"audio_branch.{k}": v
               for k, v in with_torchlibrosa(audio, 48000, 1024, 480, 16, 50, 14000).items()})
    # a training checkpoint: metrics as numpy scalars, pickled by numpy 1 (module numpy.core), old format
    ckpt = tmp_path / "630k-audioset-best.pt"
    torch.save({"epoch": 45, "state_dict": module_prefixed(sd), "val_map": np.float64(0.41),
                "lr": np.float32(1e-4)}, ckpt, _use_new_zipfile_serialization=False)
    ckpt.write_bytes(ckpt.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))

    out = tmp_path / "laion"
    report = import_checkpoint("laion-clap", tmp_path / "630k-audioset-best.pt", out, text_encoder=str(text_dir))
    assert report["mel_matrix"] == "matches slaney"
    ignored = {k for keys in report["ignored"].values() for k in keys}
    assert ignored == {"audio_branch.spectrogram_extractor.stft.conv_real.weight",
                       "audio_branch.spectrogram_extractor.stft.conv_imag.weight",
                       "text_branch.embeddings.position_ids"}
    table = tomllib.loads((out / "usage.toml").read_text())["model"]["audio_encoder"]
    assert (table["sample_rate"], table["hop_size"], table["clip_seconds"]) == (48000, 480, 10.0)
    assert "mel_sample_rate" not in table  # LAION computes its filters at the 48 kHz it is fed
    clap = check_towers_and_heads(out, audio, text, heads["audio_projection"], heads["text_projection"], 48000, 77,
                                  torch.tensor(2.5))
    torch.testing.assert_close(clap.text_transform.sequential[3].weight,
                               heads["text_transform"]["sequential"][3].weight)
    torch.testing.assert_close(clap.logit_scale_t, torch.tensor(1.5))

    fused = dict(sd, **{"audio_branch.fusion_model.local_att.0.weight": torch.zeros(1)})
    torch.save({"state_dict": fused}, tmp_path / "fusion.pt")
    with pytest.raises(ConversionError, match="feature-fusion"):
        import_checkpoint("laion-clap", tmp_path / "fusion.pt", tmp_path / "f", text_encoder=str(text_dir))


@pytest.mark.parametrize("year", ["2022", "2023"])
def test_ms_clap(tmp_path, year):
    torch.manual_seed(4)
    if year == "2022":  # Cnn14 at 44.1 kHz (window 1024, hop 320, 50-14000 Hz) + BERT
        audio = tiny_cnn14(sample_rate=44100, window_size=1024, hop_size=320, fmax=14000, clip_seconds=5.0)
        audio_prefix, front = "audio_encoder.base.", (44100, 1024, 320, 64, 50, 14000)
        text = bert(pretrained="", hidden_size=16, num_layers=1, num_heads=2, pooling="pooler").eval()
    else:  # HTSAT fed 44.1 kHz with 32 kHz filters + GPT-2
        audio = tiny_htsat(sample_rate=44100, clip_seconds=7.0, mel_sample_rate=32000, window_size=1024,
                           hop_size=320, fmax=14000)
        audio_prefix, front = "audio_encoder.base.htsat.", (32000, 1024, 320, 16, 50, 14000)
        text = gpt2_text(pretrained="", n_layer=1, n_embd=16, n_head=2, n_positions=128).eval()
    randomize(audio, 6)
    text_dir = save_hf_dir(text, tmp_path / "text")
    heads = nn.ModuleDict({"audio_projection": Projection(audio.embed_dim, 12),
                           "text_projection": Projection(16, 12)}).eval()
    randomize(heads, 7)
    sd = {**prefixed("caption_encoder.base.", text.model),
          **prefixed("audio_encoder.projection.", heads["audio_projection"]),
          **prefixed("caption_encoder.projection.", heads["text_projection"]),
          "logit_scale": torch.tensor(3.0)}
    sd.update({audio_prefix + k: v for k, v in with_torchlibrosa(audio, *front).items()})
    if year == "2023":
        sd["caption_encoder.base.h.0.attn.bias"] = torch.ones(1, 1, 128, 128, dtype=torch.bool).tril()
    else:
        sd["caption_encoder.base.embeddings.position_ids"] = torch.arange(512)[None]
    torch.save({"model": sd}, tmp_path / f"CLAP_weights_{year}.pth")

    out = tmp_path / "msclap"
    report = import_checkpoint("ms-clap", tmp_path / f"CLAP_weights_{year}.pth", out, text_encoder=str(text_dir))
    assert report["variant"] == year and report["mel_matrix"] == "matches slaney"
    ignored = {k for keys in report["ignored"].values() for k in keys}
    if year == "2022":
        assert {"caption_encoder.base.pooler.dense.weight", "caption_encoder.base.embeddings.position_ids"} <= ignored
        text.pooling = "first"  # the reference embeds BERT's [CLS] hidden state; its pooler is unused
    else:
        assert "caption_encoder.base.h.0.attn.bias" in ignored
    rate = 44100
    check_towers_and_heads(out, audio, text, heads["audio_projection"], heads["text_projection"], rate,
                           100 if year == "2022" else 77, torch.tensor(3.0))
    table = tomllib.loads((out / "usage.toml").read_text())["model"]
    assert table["audio_encoder"]["name"] == ("cnn14" if year == "2022" else "htsat")
    assert table["text_encoder"]["name"] == ("bert" if year == "2022" else "gpt2-text")
    if year == "2023":
        assert table["audio_encoder"]["mel_sample_rate"] == 32000
