"""The plugin manager: loads the ``pengi_kit`` entry points and isolates broken plugins.

A plugin that fails to import or to register is reported in one line and skipped; the
rest keeps working. Set ``PENGI_KIT_STRICT_PLUGINS=1`` (CI does) to make that fatal.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import pluggy

from pengi_kit import hookspecs
from pengi_kit.errors import PengiKitError
from pengi_kit.registry import Registry

ENTRY_POINT_GROUP = "pengi_kit"
STRICT_ENV = "PENGI_KIT_STRICT_PLUGINS"
# each hook and the kind its ``register`` callback fills (None: the plugin names the kind in each call)
HOOKS = {"register_components": None, "register_tasks": "task", "register_importers": "importer"}


class PluginError(PengiKitError):
    """A plugin failed to load or register, in strict mode."""


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class PluginState:
    manager: pluggy.PluginManager
    registry: Registry
    plugins: list[PluginInfo]


_state: PluginState | None = None


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "").lower() in ("1", "true", "yes")


def _fail(info: PluginInfo, exc: BaseException, stage: str) -> None:
    info.error = f"{type(exc).__name__}: {exc}"
    message = f"pengi-kit: plugin '{info.name}' ({info.distribution}) failed to {stage} and was skipped: {info.error}"
    if strict():
        raise PluginError(message + f" [{STRICT_ENV} is set]") from exc
    print(message, file=sys.stderr)


def load_plugins(extra: list[tuple[str, Any]] | None = None) -> PluginState:
    """Load every ``pengi_kit`` entry point (plus ``extra`` (name, module) pairs) once."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    plugins: list[PluginInfo] = []
    candidates = [(ep.name, ep, ep.dist.name if ep.dist else "?", ep.dist.version if ep.dist else "?")
                  for ep in entry_points(group=ENTRY_POINT_GROUP)]
    candidates += [(name, module, "(in-process)", "") for name, module in extra or []]
    for name, source, dist, version in sorted(candidates, key=lambda c: (c[0] != "builtin", c[0])):
        info = PluginInfo(name, dist, version)
        plugins.append(info)
        try:
            plugin = source.load() if hasattr(source, "load") else source
            manager.register(plugin, name=name)
        except Exception as exc:  # a broken plugin must not take the others down
            _fail(info, exc, "load")
            continue
        info.hooks = sorted(h.name for h in manager.get_hookcallers(plugin) or [])
        staging = registry.staged(name)  # all of a plugin's hooks register, or none
        try:
            for hook, kind in HOOKS.items():
                for impl in getattr(manager.hook, hook).get_hookimpls():
                    if impl.plugin is plugin:
                        impl.function(register=staging if kind is None else staging.of(kind))
            staging.commit()
        except Exception as exc:
            _fail(info, exc, "register")
            manager.unregister(plugin)
    return PluginState(manager, registry, plugins)


def state() -> PluginState:
    global _state
    if _state is None:
        _state = load_plugins()
    return _state


def registry() -> Registry:
    return state().registry


def reset() -> None:
    """Forget loaded plugins (tests install and remove entry points)."""
    global _state
    _state = None
