"""Errors a user can cause. The CLI prints them as one line, without a traceback."""


class PengiKitError(Exception):
    """Base class: the message names the thing at fault and the fix."""


class RecipeError(PengiKitError):
    """A recipe key, value or component name is wrong."""


class AudioError(PengiKitError):
    """An audio file cannot be used: missing, unreadable, corrupt or degenerate."""


class ManifestError(PengiKitError):
    """A manifest line is malformed."""


class WeightsError(PengiKitError):
    """Pretrained weights are missing or do not fit the architecture."""


class ConversionError(WeightsError):
    """A published checkpoint cannot be imported: unreadable, of another layout, or with
    keys that are neither mapped nor knowingly ignored."""


class CheckpointError(PengiKitError):
    """A checkpoint directory is missing, truncated or corrupted."""
