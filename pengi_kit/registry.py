"""Components, evaluation tasks and checkpoint importers by (kind, name): a lazy factory, a
description and the plugin that gave it."""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pengi_kit.errors import PengiKitError

COMPONENT_KINDS = ("audio_encoder", "text_encoder", "mapper", "causal_lm", "dataset")
KINDS = (*COMPONENT_KINDS, "task", "importer")  # these two each have a hook of their own


class RegistryError(PengiKitError):
    """A component is unknown, or two plugins claim the same name."""


@dataclass(frozen=True)
class ComponentSpec:
    kind: str
    name: str
    factory: str | Callable[..., Any]
    description: str = ""
    plugin: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    example_args: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def load(self) -> Callable[..., Any]:
        """The factory itself, importing its module if it was given as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        module, _, attr = self.factory.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(
                f"{self.kind} '{self.name}' from plugin '{self.plugin}': cannot load factory "
                f"'{self.factory}' ({exc}); reinstall the plugin that provides it"
            ) from exc
        return obj

    @property
    def target(self) -> str:
        if isinstance(self.factory, str):
            return self.factory
        return f"{self.factory.__module__}:{self.factory.__qualname__}"


class Registry:
    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], ComponentSpec] = {}
        self._aliases: dict[tuple[str, str], str] = {}

    def register(
        self,
        kind: str,
        name: str,
        factory: str | Callable[..., Any],
        *,
        description: str = "",
        aliases: tuple[str, ...] | list[str] = (),
        example_args: dict[str, Any] | None = None,
        plugin: str = "",
    ) -> None:
        if kind not in KINDS:
            raise RegistryError(f"plugin '{plugin}' registers '{name}' under unknown kind '{kind}'; "
                                f"kinds are {', '.join(KINDS)}")
        if isinstance(factory, str) and ":" not in factory:
            raise RegistryError(f"plugin '{plugin}' registers {kind} '{name}' with factory '{factory}'; "
                                "give a callable or a 'module:attr' string")
        spec = ComponentSpec(kind, name, factory, description, plugin, tuple(aliases), dict(example_args or {}))
        for key in [name, *spec.aliases]:
            owner = self._owner(kind, key)
            if owner is not None and owner.plugin != plugin:
                raise RegistryError(
                    f"{kind} '{key}' is registered by two plugins, '{owner.plugin}' and '{plugin}'; "
                    "uninstall one of them or rename the component")
            if owner is not None and owner.name != name:
                raise RegistryError(f"plugin '{plugin}': {kind} '{key}' is already the name of '{owner.name}'")
        self._specs[(kind, name)] = spec  # the same plugin registering again replaces: idempotent
        for alias in spec.aliases:
            self._aliases[(kind, alias)] = name

    def _owner(self, kind: str, key: str) -> ComponentSpec | None:
        name = self._aliases.get((kind, key), key)
        return self._specs.get((kind, name))

    def get(self, kind: str, name: str, where: str = "") -> ComponentSpec:
        spec = self._owner(kind, name)
        if spec is None:
            known = self.names(kind)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known) or 'none'}"
            at = f"{where}: " if where else ""
            raise RegistryError(f"{at}unknown {kind} '{name}'; {hint} "
                                "(`pengi-kit list-components` lists them)")
        return spec

    def names(self, kind: str) -> list[str]:
        return sorted(name for k, name in self._specs if k == kind)

    def specs(self, kind: str | None = None) -> list[ComponentSpec]:
        return sorted((s for s in self._specs.values() if kind in (None, s.kind)),
                      key=lambda s: (KINDS.index(s.kind), s.name))

    def staged(self, plugin: str) -> "_Staging":
        return _Staging(self, plugin)


class _Staging:
    """Collects one plugin's registrations so that a plugin failing half-way adds nothing."""

    def __init__(self, registry: Registry, plugin: str) -> None:
        self.registry, self.plugin, self.calls = registry, plugin, []

    def __call__(self, kind: str, name: str, factory: str | Callable[..., Any], *, description: str = "",
                 aliases: tuple[str, ...] | list[str] = (), example_args: dict[str, Any] | None = None) -> None:
        """The ``register`` callback of ``register_components``."""
        if kind in KINDS and kind not in COMPONENT_KINDS:  # one hook per extension point
            raise RegistryError(f"plugin '{self.plugin}' registers {kind} '{name}' through register_components; "
                                f"use the register_{kind}s hook")
        self.calls.append((kind, name, factory, dict(description=description, aliases=tuple(aliases),
                                                     example_args=example_args)))

    def of(self, kind: str) -> Callable[..., None]:
        """The ``register`` callback of the hook that registers only ``kind`` (``register_tasks`` ...)."""
        def register(name: str, function: str | Callable[..., Any], *, description: str = "",
                     aliases: tuple[str, ...] | list[str] = ()) -> None:
            self.calls.append((kind, name, function, dict(description=description, aliases=tuple(aliases),
                                                          example_args=None)))
        return register

    def commit(self) -> None:
        snapshot = (dict(self.registry._specs), dict(self.registry._aliases))
        try:
            for kind, name, factory, options in self.calls:
                self.registry.register(kind, name, factory, plugin=self.plugin, **options)
        except Exception:
            self.registry._specs, self.registry._aliases = snapshot
            raise
