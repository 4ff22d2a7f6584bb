"""Moved to :mod:`pengi_kit.models.tagging` and :mod:`pengi_kit.models.clap` (one CLAP model for
trained and imported weights); these names stay importable here."""
from pengi_kit.models import build_model as build_pretraining_model  # noqa: F401
from pengi_kit.models.clap import CLAP_FOLDER, MAX_LOGIT_SCALE, folder_arguments, text_keys  # noqa: F401
from pengi_kit.models.clap import ClapModel as ContrastiveModel  # noqa: F401
from pengi_kit.models.base import component_table, write_encoder_folder  # noqa: F401
from pengi_kit.models.tagging import (  # noqa: F401
    ENCODER_FOLDER, HEAD_FILE, TAGGER_FILE, TaggingModel, tagging_classes,
)
