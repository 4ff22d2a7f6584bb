"""Hook specifications of the ``pengi_kit`` plugin system.

A plugin is any module (or object) exposed through the ``pengi_kit`` entry point
group that implements one or more of these hooks with ``@pengi_kit.hookimpl``.
"""
from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "pengi_kit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_components(register: Callable[..., None]) -> None:
    """Register components by calling ``register(kind, name, factory, description=..., aliases=...,
    example_args=...)``.

    ``kind`` is one of ``audio_encoder``, ``text_encoder``, ``mapper``, ``causal_lm``,
    ``dataset``. ``factory`` is a callable or a ``"module:attr"`` string; a string keeps
    listing components cheap, because the module is imported only when the component
    is built. ``example_args`` build a small offline instance: the contract test in
    ``pengi_kit.testing`` runs every registered component with them. Example::

        @hookimpl
        def register_components(register):
            register("audio_encoder", "my-encoder", "my_plugin.encoder:build",
                     description="A tiny CNN over log-mels",
                     example_args={"channels": 4})
    """
