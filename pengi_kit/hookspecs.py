"""Hook specifications of the ``pengi_kit`` plugin system: one hook per extension point.

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


@hookspec
def register_tasks(register: Callable[..., None]) -> None:
    """Register evaluation tasks by calling ``register(name, function, description=..., aliases=...)``.

    ``function(pengi, manifest, *, on_error="skip", limit=None, batch_size=32, prompt=None,
    **options)`` runs the task on a loaded model (:class:`pengi_kit.Pengi`) and returns a
    :class:`pengi_kit.evaluation.tasks.Result`; ``options`` are the suite table's options and
    the decoding settings. Like a component's factory, it may be a ``"module:attr"`` string.
    ``pengi-kit evaluate --task NAME`` and a suite's ``task = "NAME"`` run it. Example::

        @hookimpl
        def register_tasks(register):
            register("my-task", "my_plugin.task:evaluate", description="Exact-match accuracy")
    """


@hookspec
def register_importers(register: Callable[..., None]) -> None:
    """Register checkpoint importers by calling ``register(name, function, description=..., aliases=...)``.

    ``function(source, out, *, force=False, **options)`` converts the file ``source`` into the
    folder ``out`` and returns a report: a dict with ``mapped`` (how many keys) and ``ignored``
    (reason -> keys), optionally ``variant`` and ``usage`` (printed after the import).
    Keyword arguments it declares (``lm``, ``text_encoder``) are the options of
    ``pengi-kit import NAME SOURCE --out DIR``. Example::

        @hookimpl
        def register_importers(register):
            register("my-format", "my_plugin.convert:import_mine", description="My lab's .ckpt files")
    """
