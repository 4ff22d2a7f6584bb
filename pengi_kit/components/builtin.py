"""The built-in zoo, evaluation tasks and checkpoint importers, registered through the same
entry point group as third-party plugins.

Factories are ``"module:attr"`` strings so that listing components imports no torch.
"""
from pengi_kit.hookspecs import hookimpl

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
    # dataset adapters: root folder -> manifest rows (`pengi-kit data prepare NAME`)
    *[("dataset", name, f"pengi_kit.data.adapters:{attr}", description, {}) for name, attr, description in [
        ("clotho", "clotho", "Clotho v2 audio captioning: 5 caption rows per clip"),
        ("audiocaps", "audiocaps", "AudioCaps captions, audio found by YouTube id"),
        ("clotho-aqa", "clotho_aqa", "Clotho-AQA question answering, yes/no and open answers"),
        ("esc50", "esc50", "ESC-50 environmental sound classes, 5 folds"),
        ("urbansound8k", "urbansound8k", "UrbanSound8K urban sound classes, 10 folds"),
        ("fsd50k", "fsd50k", "FSD50K multi-label sound events"),
        ("gtzan", "gtzan", "GTZAN music genres"),
        ("nsynth", "nsynth", "NSynth notes: instrument, pitch, velocity, qualities"),
        ("free-spoken-digit", "free_spoken_digit", "Free Spoken Digit Dataset as 'which digit is spoken?'"),
    ]],
]


# Short and spelled-out names users type for the corpora (`pengi-kit data prepare fsdd`).
# Hyphenated "esc-50" is left to the "did you mean 'esc50'?" hint.
DATASET_ALIASES = {
    "clotho": ("clotho-v2", "clotho2"),
    "audiocaps": ("audio-caps",),
    "clotho-aqa": ("clotho_aqa", "clothoaqa"),
    "urbansound8k": ("us8k", "urbansound", "urban-sound-8k", "urbansound-8k"),
    "fsd50k": ("fsd-50k",),
    "gtzan": ("gtzan-genre",),
    "free-spoken-digit": ("fsdd", "free-spoken-digit-dataset", "free_spoken_digit", "spoken-digit"),
}


@hookimpl
def register_components(register):
    for kind, name, factory, description, example_args in BUILTIN:
        aliases = DATASET_ALIASES.get(name, ()) if kind == "dataset" else ()
        register(kind, name, factory, description=description, example_args=example_args, aliases=aliases)


TASKS = [  # name, function, description (`pengi-kit evaluate --task NAME`)
    ("captioning", "pengi_kit.evaluation.tasks:captioning",
     "One caption per clip: BLEU, METEOR, ROUGE-L, CIDEr-D, SPICE, SPIDEr"),
    ("aqa", "pengi_kit.evaluation.tasks:aqa", "Audio question answering: accuracy, also by answer type"),
    ("classification", "pengi_kit.evaluation.tasks:classification",
     "Zero-shot classification by generation or likelihood: accuracy or mAP"),
    ("retrieval", "pengi_kit.evaluation.tasks:retrieval",
     "Text-to-audio and audio-to-text retrieval: R@1/5/10, mAP@10"),
    ("linear-probe", "pengi_kit.evaluation.tasks:linear_probe",
     "Logistic regression on frozen audio embeddings: accuracy or mAP"),
    ("listening", "pengi_kit.evaluation.tasks:listening",
     "Listening check: loss rise (nats/token) when clips' audio is swapped; ~0 = ignores audio"),
]

IMPORTERS = [  # name, function, description (`pengi-kit import NAME SOURCE --out DIR`)
    ("pengi", "pengi_kit.convert.pengi:import_pengi", "Pengi base.pth / base_no_text_enc.pth -> checkpoint directory"),
    ("panns", "pengi_kit.convert.panns:import_panns", "PANNs Cnn14 (32 kHz or 16 kHz) -> cnn14 encoder folder"),
    ("laion-clap", "pengi_kit.convert.clap:import_laion_clap", "LAION-CLAP (HTSAT + RoBERTa) -> CLAP folder"),
    ("ms-clap", "pengi_kit.convert.clap:import_ms_clap",
     "Microsoft CLAP 2022 (CNN14 + BERT) / 2023 (HTSAT + GPT-2) -> CLAP folder"),
    ("ms-clapcap", "pengi_kit.convert.clapcap:import_ms_clapcap",
     "Microsoft CLAPCap 2023 (HTSAT + mapper + GPT-2 captioner) -> checkpoint directory"),
]


@hookimpl
def register_tasks(register):
    for name, function, description in TASKS:
        register(name, function, description=description)


@hookimpl
def register_importers(register):
    for name, function, description in IMPORTERS:
        register(name, function, description=description)
