"""The corpora ``pengi-kit data prepare NAME`` knows: dataset adapters (:mod:`pengi_kit.data.adapters`)
that turn a corpus's root folder into manifest rows, registered by the built-in plugin
(:mod:`pengi_kit.builtin`) as components of kind ``dataset``."""

DATASETS = [  # name, adapter, description
    ("clotho", "clotho", "Clotho v2 audio captioning: 5 caption rows per clip"),
    ("audiocaps", "audiocaps", "AudioCaps captions, audio found by YouTube id"),
    ("clotho-aqa", "clotho_aqa", "Clotho-AQA question answering, yes/no and open answers"),
    ("esc50", "esc50", "ESC-50 environmental sound classes, 5 folds"),
    ("urbansound8k", "urbansound8k", "UrbanSound8K urban sound classes, 10 folds"),
    ("fsd50k", "fsd50k", "FSD50K multi-label sound events"),
    ("gtzan", "gtzan", "GTZAN music genres"),
    ("nsynth", "nsynth", "NSynth notes: instrument, pitch, velocity, qualities"),
    ("free-spoken-digit", "free_spoken_digit", "Free Spoken Digit Dataset as 'which digit is spoken?'"),
    ("mmau", "pengi_kit.data.benchmarks:mmau", "MMAU multiple-choice (test-mini, test), original or v05.15.25"),
    ("mmar", "pengi_kit.data.benchmarks:mmar", "MMAR multiple-choice audio reasoning (1,000 items)"),
    ("air-bench", "pengi_kit.data.benchmarks:air_bench", "AIR-Bench foundation multiple-choice (~19k items)"),
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
    "air-bench": ("airbench", "air-bench-foundation"),
    "free-spoken-digit": ("fsdd", "free-spoken-digit-dataset", "free_spoken_digit", "spoken-digit"),
}


def register(register):
    """Register the dataset adapters (:func:`pengi_kit.builtin.register_components` calls it)."""
    for name, attr, description in DATASETS:
        register("dataset", name, attr if ":" in attr else f"pengi_kit.data.adapters:{attr}", description=description,
                 aliases=DATASET_ALIASES.get(name, ()))
