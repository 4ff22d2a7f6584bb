"""Moved to :mod:`pengi_kit.models.base`; these names stay importable here."""
from pengi_kit.models.base import Composite, Projection  # noqa: F401
