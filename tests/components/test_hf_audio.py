"""hf-audio against transformers called directly, for three architectures with small random configs:
from the waveform, the features, the frames, the mask and the pooled embedding; a clip's frames
are the same alone and in a batch of longer clips."""
import numpy as np
import pytest
import torch

from pengi_kit.components.hf_audio import hf_audio

CONV = {"conv_dim": [8, 8], "conv_stride": [5, 4], "conv_kernel": [10, 8], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2}
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
ARCHITECTURES = {
    "wav2vec2": ({**TINY, **CONV}, "mean"),  # group norm over time: clips one by one
    "hubert": ({**TINY, **CONV, "feat_extract_norm": "layer"}, "mean"),  # layer norm: a batch with a mask
    "audio-spectrogram-transformer": ({**TINY, "max_length": 128, "num_mel_bins": 32, "patch_size": 16},
                                      "first-two"),
}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_frames_mask_and_pooling_equal_transformers(architecture):
    config, pooling = ARCHITECTURES[architecture]
    torch.manual_seed(0)
    encoder = hf_audio("", architecture, pooling, config).eval()
    if architecture == "audio-spectrogram-transformer":  # the feature extractor follows the config
        assert (encoder.feature_extractor.num_mel_bins, encoder.feature_extractor.max_length) == (32, 128)
    rng = np.random.default_rng(0)
    clips = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (4000, 9000)]
    batch = torch.zeros(2, 9000)
    batch[0, :4000], batch[1] = torch.from_numpy(clips[0]), torch.from_numpy(clips[1])
    with torch.no_grad():
        frames, mask = encoder(batch, torch.tensor([4000, 9000]))
        for i, clip in enumerate(clips):  # the feature extractor and the model, called directly, one clip
            inputs = encoder.feature_extractor(clip, sampling_rate=16000, return_tensors="pt")
            out = encoder.model(**{k: v for k, v in inputs.items() if k != "attention_mask"})
            n = int(mask[i].sum())
            assert n == out.last_hidden_state.shape[1], (architecture, n)
            torch.testing.assert_close(frames[i, :n], out.last_hidden_state[0], atol=1e-5, rtol=1e-5)
            pooled = encoder.pool(frames[i:i + 1], mask[i:i + 1])[0]
            expected = (out.pooler_output[0] if architecture == "audio-spectrogram-transformer"
                        else out.last_hidden_state[0].mean(0))
            torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)
    if architecture != "audio-spectrogram-transformer":  # AST reads a fixed 128 frames: every frame kept
        assert int(mask[0].sum()) < int(mask[1].sum())


def test_a_pengi_on_hf_audio_frames_trains_and_generates(tmp_path):
    from pengi_kit.testing import check_trains

    config, _ = ARCHITECTURES["hubert"]
    check_trains(tmp_path, audio_encoder={"name": "hf-audio", "pretrained": "", "architecture": "hubert",
                                          "trainable": True, "config": config},
                 audio_mapper={"name": "qformer", "prefix_length": 2, "num_layers": 1, "num_heads": 2})
