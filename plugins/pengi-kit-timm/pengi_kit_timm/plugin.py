"""The ``pengi_kit`` entry point of pengi-kit-timm. Imports no torch, so listing stays fast."""
from pengi_kit import hookimpl

# Small offline instances for the contract test: tiny random backbones, no downloads.
TINY_FRONTEND = {"sample_rate": 16000, "clip_seconds": 0.5, "n_mels": 32}


@hookimpl
def register_components(register):
    register("audio_encoder", "timm-ast", "pengi_kit_timm.encoders:timm_ast",
             description="Audio Spectrogram Transformer: a timm ViT over the log-mel, overlapping patches, "
                         "ImageNet weights adapted to 1 channel and the spectrogram grid",
             example_args={**TINY_FRONTEND, "model_name": "vit_tiny_patch16_224",
                           "model_args": {"depth": 1, "embed_dim": 16, "num_heads": 2}})
    register("audio_encoder", "timm-efficientnet", "pengi_kit_timm.encoders:timm_efficientnet",
             description="A timm EfficientNet over the log-mel as a 1-channel image, globally pooled",
             example_args={**TINY_FRONTEND, "model_name": "test_efficientnet"})
