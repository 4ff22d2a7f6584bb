"""Progress bars and status lines for long work.

Bars are drawn only on a terminal (``enabled=None``), so logs written to a file stay
readable; messages go through :func:`say`, which clears any bar first, so a message
never shares a line with a bar.
"""
from __future__ import annotations

import sys
from typing import Any


def bar(total: int | None, desc: str, unit: str, *, enabled: bool | None = None, initial: int = 0) -> Any:
    """A labelled tqdm bar on standard error; ``enabled=None`` draws it only on a terminal."""
    from tqdm.auto import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not show, file=sys.stderr,
                dynamic_ncols=True, mininterval=1.0, leave=False)


def say(text: str) -> None:
    """Print one line on standard error, never on the line of an active bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)
    sys.stderr.flush()
