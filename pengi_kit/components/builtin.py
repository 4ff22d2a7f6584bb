"""The built-in zoo: one row per component, registered by the built-in plugin
(:mod:`pengi_kit.builtin`) through the same entry point group as third-party plugins.

Factories are ``"module:attr"`` strings so that listing components imports no torch.
"""

_TINY_HF = {"pretrained": "", "hidden_size": 16, "num_layers": 1, "num_heads": 2}
_TINY_MAPPER = {"in_dim": 12, "out_dim": 16, "prefix_length": 3}

BUILTIN = [  # kind, name, factory, description, example_args (a small offline instance)
    ("audio_encoder", "cnn14", "pengi_kit.components.cnn14:cnn14",
     "PANNs CNN14 over a 64-bin log-mel front-end; variants by width and sample rate (32k/16k)",
     {"sample_rate": 16000, "width": 2, "clip_seconds": 0.5, "spec_augment": False}),
    ("audio_encoder", "htsat", "pengi_kit.components.htsat:htsat",
     "HTSAT Swin transformer (tiny/base/large) with token-semantic head, Pengi's audio encoder",
     {"sample_rate": 16000, "clip_seconds": 1.0, "hop_size": 160, "window_size": 512, "fmax": 8000.0,
      "spec_size": 64, "patch_embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
      "attn_window_size": 2, "num_classes": 5, "spec_augment": False}),
    ("audio_encoder", "whisper", "pengi_kit.components.whisper:whisper",
     "Whisper's encoder (tiny ... large-v3) with its log-mel front-end: frames of 20 ms and a mask, 30 s windows",
     {"pretrained": "", "d_model": 16, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
      "max_source_positions": 50}),
    ("audio_encoder", "hf-audio", "pengi_kit.components.hf_audio:hf_audio",
     "Any transformers audio model with a feature extractor (AST, wav2vec2, HuBERT, WavLM ...): frames and a mask",
     {"pretrained": "", "architecture": "wav2vec2",
      "config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                 "conv_dim": [8, 8], "conv_stride": [5, 4], "conv_kernel": [10, 8], "num_conv_pos_embeddings": 16,
                 "num_conv_pos_embedding_groups": 2}}),
    ("text_encoder", "clip-text", "pengi_kit.components.hf_text:clip_text",
     "CLIP text tower through transformers: pooled output through its text projection",
     {**_TINY_HF, "projection_dim": 8}),
    ("text_encoder", "roberta", "pengi_kit.components.hf_text:roberta",
     "RoBERTa through transformers: first-token or pooler embedding (LAION-CLAP)", _TINY_HF),
    ("text_encoder", "bert", "pengi_kit.components.hf_text:bert",
     "BERT through transformers: [CLS] or pooler embedding (Microsoft CLAP 2022)", _TINY_HF),
    ("text_encoder", "gpt2-text", "pengi_kit.components.hf_text:gpt2_text",
     "GPT-2 as a text encoder: end-of-text hidden state (Microsoft CLAP 2023)",
     {"pretrained": "", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}),
    ("mapper", "transformer", "pengi_kit.components.mappers:transformer",
     "Pengi/ClipCap transformer mapper: linear to k tokens plus k learned constants",
     {**_TINY_MAPPER, "num_layers": 1, "num_heads": 2}),
    ("mapper", "qformer", "pengi_kit.components.mappers:qformer",
     "Q-Former: k learned queries cross-attend to a frame encoder's output (BLIP-2, SALMONN)",
     {**_TINY_MAPPER, "num_layers": 1, "num_heads": 2}),
    ("mapper", "downsample", "pengi_kit.components.mappers:downsample",
     "Stack k frames, MLP to the LM width: audio tokens that follow the clip's length (SLAM-LLM)",
     {"in_dim": 12, "out_dim": 16, "factor": 2, "hidden": 8}),
    ("mapper", "mlp", "pengi_kit.components.mappers:mlp",
     "ClipCap MLP mapper: in -> k*d/2 -> k*d with tanh", _TINY_MAPPER),
    ("causal_lm", "gpt2", "pengi_kit.components.hf_causal_lm:gpt2",
     "GPT-2 family through transformers (gpt2, distilgpt2, gpt2-medium, a local dir, or a small config)",
     {"pretrained": "", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}),
    ("causal_lm", "causal-lm", "pengi_kit.components.hf_causal_lm:causal_lm",
     "Any transformers causal LM (Llama/SmolLM2, Qwen2/3, Gemma, Phi-3, OPT, GPT-2 ...): hub id, local dir or a "
     "fresh config; chat template, LoRA",
     {"architecture": "llama", "hidden_size": 16, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
      "max_positions": 64}),
]


def register(register):
    """Register the built-in components (:func:`pengi_kit.builtin.register_components` calls it)."""
    for kind, name, factory, description, example_args in BUILTIN:
        register(kind, name, factory, description=description, example_args=example_args)
