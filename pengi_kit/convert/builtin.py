"""The built-in checkpoint importers (``pengi-kit import FORMAT``), registered by the built-in plugin
(:mod:`pengi_kit.builtin`): names and ``"module:attr"`` targets only, so registering them imports
no importer."""

IMPORTERS = [  # name, function, description (`pengi-kit import NAME SOURCE --out DIR`)
    ("pengi", "pengi_kit.convert.pengi:import_pengi", "Pengi base.pth / base_no_text_enc.pth -> checkpoint directory"),
    ("panns", "pengi_kit.convert.panns:import_panns", "PANNs Cnn14 (32 kHz or 16 kHz) -> cnn14 encoder folder"),
    ("laion-clap", "pengi_kit.convert.clap:import_laion_clap", "LAION-CLAP (HTSAT + RoBERTa) -> CLAP folder"),
    ("ms-clap", "pengi_kit.convert.clap:import_ms_clap",
     "Microsoft CLAP 2022 (CNN14 + BERT) / 2023 (HTSAT + GPT-2) -> CLAP folder"),
    ("ms-clapcap", "pengi_kit.convert.clapcap:import_ms_clapcap",
     "Microsoft CLAPCap 2023 (HTSAT + mapper + GPT-2 captioner) -> checkpoint directory"),
]


def register(register):
    """Register the importers (:func:`pengi_kit.builtin.register_importers` calls it)."""
    for name, function, description in IMPORTERS:
        register(name, function, description=description)
