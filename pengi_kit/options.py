"""Option tables as dataclasses (``[model.lm.lora]``, ``[data.augment]``): each field carries its
help and range, which recipe validation (``recipe._check_settings``) and the generated reference
read."""
from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, range: str = "") -> Any:
    """A dataclass field with ``help`` and ``range`` (``">= 1"``, ``"[0, 1)"``) in its metadata."""
    metadata = {"help": help, "range": range}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)
