"""Moved to :mod:`pengi_kit.models` (the Pengi model: :mod:`pengi_kit.models.pengi`); these
names stay importable here for plugins and user code written before the move."""
from pengi_kit.models import build_model  # noqa: F401
from pengi_kit.models.base import Composite, Projection  # noqa: F401
from pengi_kit.models.listening import LISTENING_THRESHOLD, listening_warning  # noqa: F401
from pengi_kit.models.pengi import PengiModel  # noqa: F401
