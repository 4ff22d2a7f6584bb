"""The built-in evaluation tasks (``pengi-kit evaluate --task NAME``), registered by the built-in
plugin (:mod:`pengi_kit.builtin`); the functions live in :mod:`pengi_kit.evaluation.tasks`."""

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
    ("multiple-choice", "pengi_kit.evaluation.tasks:multiple_choice",
     "MMAU/MMAR/AIR-Bench questions: official, strict and likelihood accuracy"),
    ("listening", "pengi_kit.evaluation.tasks:listening",
     "Listening check: loss rise (nats/token) when clips' audio is swapped; ~0 = ignores audio"),
]


def register(register):
    """Register the tasks (:func:`pengi_kit.builtin.register_tasks` calls it)."""
    for name, function, description in TASKS:
        register(name, function, description=description)
