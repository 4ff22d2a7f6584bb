"""The Whisper encoder against transformers: the front-end equals WhisperFeatureExtractor, the
encoder equals WhisperModel's on those features, and only the frames that cover a clip are kept,
the same in any batch."""
import numpy as np
import pytest
import torch

from pengi_kit.components.whisper import whisper


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return whisper("", num_mel_bins=80, d_model=16, encoder_layers=2, encoder_attention_heads=2).eval()


def test_features_and_frames_equal_transformers(tiny):
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    clip = (0.3 * rng.standard_normal(int(16000 * 2.5))).astype(np.float32)  # 2.5 s: 125 frames of 20 ms
    reference = WhisperFeatureExtractor(feature_size=80)(clip, sampling_rate=16000, return_tensors="pt")
    ours = tiny.frontend(torch.nn.functional.pad(torch.from_numpy(clip), (0, 480000 - len(clip)))[None])
    torch.testing.assert_close(ours, reference["input_features"], atol=1e-4, rtol=0)
    with torch.no_grad():
        expected = tiny.encoder(reference["input_features"]).last_hidden_state  # WhisperModel's encoder
        frames, mask = tiny(torch.from_numpy(clip)[None])
    assert frames.shape == (1, 125, 16) and mask.all()
    torch.testing.assert_close(frames, expected[:, :125], atol=1e-5, rtol=0)


def test_a_clip_gives_the_same_frames_in_any_batch_and_long_clips_take_windows(tiny):
    rng = np.random.default_rng(1)
    short = torch.from_numpy((0.3 * rng.standard_normal(16000)).astype(np.float32))
    longer = torch.from_numpy((0.3 * rng.standard_normal(40000)).astype(np.float32))
    with torch.no_grad():
        alone, alone_mask = tiny(short[None])
        batch = torch.stack([torch.nn.functional.pad(short, (0, 24000)), longer])
        frames, mask = tiny(batch, torch.tensor([16000, 40000]))
        assert alone.shape[1] == 50 and mask.sum(1).tolist() == [50, 125]
        torch.testing.assert_close(frames[0, :50], alone[0], atol=1e-6, rtol=0)
        long_clip = torch.from_numpy((0.3 * rng.standard_normal(16000 * 31)).astype(np.float32))  # 31 s
        joined, _ = tiny(long_clip[None])
        first, _ = tiny(long_clip[None, :480000])
        rest, _ = tiny(long_clip[None, 480000:])
    assert joined.shape[1] == 1550  # two windows: 1500 frames, then the 50 that cover the last second
    torch.testing.assert_close(joined, torch.cat([first, rest], 1), atol=1e-6, rtol=0)


def test_a_saved_whisper_checkpoint_loads_and_wrong_sizes_are_named(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    from pengi_kit.errors import WeightsError

    torch.manual_seed(0)
    saved = WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                                       decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                                       max_source_positions=50, num_mel_bins=80))
    saved.save_pretrained(tmp_path / "whisper-mini")
    loaded = whisper(str(tmp_path / "whisper-mini"))
    assert loaded.build_args["d_model"] == 16 and loaded.window == 16000  # 50 frames of 20 ms
    for key, value in saved.get_encoder().state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    with pytest.raises(WeightsError, match="has d_model = 16, not d_model = 32"):
        whisper(str(tmp_path / "whisper-mini"), d_model=32)


@pytest.mark.slow
@pytest.mark.learning
def test_whisper_two_stage_learns_and_answers_a_clip_alike_in_any_batch(tmp_path, learning_seed, record_property):
    """A tiny Whisper pretrained as a tagger of the synthetic sounds, then frozen under a mapper
    (a Q-Former: 4 tokens per clip; downsample: one token per 10 frames, as many as the clip needs)
    and a tiny LM: the held-out clips' kinds are named well above chance (1/6), and a clip's answer
    and likelihoods do not depend on the lengths of the clips batched with it."""
    import pengi_kit
    from pengi_kit.data.synthetic import SyntheticCorpus
    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    encoder = {"name": "whisper", "pretrained": "", "d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2,
               "max_source_positions": 100, "trainable": True}  # 2 s windows, the synthetic clips' length
    tagger = {"name": "tagger", "task": "tagging", "seed": learning_seed, "model": {"audio_encoder": encoder},
              "data": {"synthetic_train_size": 960, "synthetic_valid_size": 32},
              "optim": {"lr": 3e-3, "warmup_steps": 10, "schedule": "cosine"},
              "train": {"batch_size": 32, "max_steps": 150, "log_every": 50, "eval_every": 150, "save_every": 150,
                        "output_dir": str(tmp_path / "tagger")}}
    torch.manual_seed(learning_seed)
    Trainer(from_dict(tagger), progress=False).fit()
    test = SyntheticCorpus(60, 12345 + learning_seed, 16000, 2.0)
    clips = [test.clip(i) for i in range(60)]
    varied = [(c.audio[: 16000 + 1600 * (i % 10)], 16000) for i, c in enumerate(clips[:16])]  # 1.0 to 1.9 s
    kinds = sorted({c.primary for c in clips})
    for mapper in ({"name": "qformer", "prefix_length": 4, "num_layers": 1, "num_heads": 2},
                   {"name": "downsample", "factor": 10, "hidden": 64}):
        raw = tiny_recipe(tmp_path / mapper["name"], audio_mapper=mapper,
                          audio_encoder={"name": "whisper", "trainable": False,
                                         "pretrained": str(tmp_path / "tagger" / "encoder")},
                          train={"max_steps": 600, "batch_size": 16, "log_every": 50})
        raw["seed"] = learning_seed
        raw["data"] = {"synthetic_train_size": 480, "synthetic_valid_size": 16}
        raw["optim"] = {"lr": 3e-3, "warmup_steps": 10}
        pengi = pengi_kit.load(Trainer(from_dict(raw), progress=False).fit())
        said = pengi.generate([(c.audio, 16000) for c in clips], "this is a sound of", method="greedy",
                              max_new_tokens=4)
        accuracy = sum(s == c.primary for s, c in zip(said, clips)) / len(clips)
        record_property(f"{mapper['name']}: held-out accuracy", float(accuracy))
        # seeds 0-4: 0.75-0.95 (qformer), 0.78-0.97 (downsample); listening at least 2.0 nats (chance 1/6)
        assert accuracy >= 0.5, (mapper["name"], accuracy, said[:6])
        alone = pengi.generate(varied, "this is a sound of", method="greedy", max_new_tokens=4, batch_size=1)
        together = pengi.generate(varied, "this is a sound of", method="greedy", max_new_tokens=4, batch_size=8)
        assert together == alone, mapper["name"]
        one = pengi.log_likelihood(varied, "this is a sound of", kinds, batch_size=1)
        torch.testing.assert_close(pengi.log_likelihood(varied, "this is a sound of", kinds, batch_size=16), one,
                                   atol=1e-5, rtol=0)
        heard = pengi.listening(varied, [(i, "this is a sound of", clips[i].primary) for i in range(16)], batch_size=4)
        record_property(f"{mapper['name']}: listening", float(heard["listening"]))
        assert heard["listening"] > 0.5, (mapper["name"], heard)  # the answers hang on the audio


def test_lora_on_a_frozen_whisper_trains_adapters_only_and_exports_merged(tmp_path):
    """[model.audio_encoder.lora]: the encoder's own weights stay its checkpoint's, the adapters
    train and are all the checkpoint holds of it; export folds them in (the same frames)."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig, WhisperModel

    from pengi_kit.engine.trainer import Trainer
    from pengi_kit.models import export, load_model
    from pengi_kit.recipe import from_dict
    from pengi_kit.testing import tiny_recipe

    torch.manual_seed(0)
    source = WhisperModel(WhisperConfig(d_model=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                                        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32,
                                        max_source_positions=50, num_mel_bins=80))
    source.save_pretrained(tmp_path / "whisper-mini")
    raw = tiny_recipe(tmp_path / "run", audio_encoder={"name": "whisper", "pretrained": str(tmp_path / "whisper-mini"),
                                                       "trainable": False, "lora": {"rank": 2}},
                      audio_mapper={"name": "qformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2},
                      train={"max_steps": 4})
    trainer = Trainer(from_dict(raw), progress=False)
    path = trainer.fit()
    encoder = trainer.model.audio_encoder.encoder
    base = {k.replace(".base_layer", ""): v for k, v in encoder.state_dict().items() if "lora_" not in k}
    for key, value in source.get_encoder().state_dict().items():
        assert torch.equal(base[key], value), key  # frozen
    assert any(p.abs().sum() > 0 for n, p in encoder.named_parameters() if "lora_B" in n)  # B starts at 0
    saved = [k for k in load_file(str(path / "model.safetensors")) if k.startswith("audio_encoder.")]
    assert saved and all("lora_" in k for k in saved), saved
    trained = load_model(path)
    merged = load_model(export(path, tmp_path / "merged"))
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert merged.recipe["model"]["audio_encoder"]["pretrained"] == "" and "lora" not in merged.recipe["model"][
        "audio_encoder"]
    wave = torch.rand(2, 8000) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(merged.audio_encoder(wave)[0], trained.audio_encoder(wave)[0], atol=1e-5,
                                   rtol=1e-4)
