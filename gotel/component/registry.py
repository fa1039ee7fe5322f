"""Component factories found through entry points, so a third party adds a component by installing a package."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from gotel.component.contract import (
    ConnectorFactory,
    ExporterFactory,
    ExtensionFactory,
    Factory,
    Kind,
    ProcessorFactory,
    ReceiverFactory,
)

log = logging.getLogger(__name__)

GROUPS: dict[Kind, str] = {
    Kind.RECEIVER: "gotel.receivers",
    Kind.PROCESSOR: "gotel.processors",
    Kind.EXPORTER: "gotel.exporters",
    Kind.CONNECTOR: "gotel.connectors",
    Kind.EXTENSION: "gotel.extensions",
}

_EXPECTED: dict[Kind, type[Factory]] = {
    Kind.RECEIVER: ReceiverFactory,
    Kind.PROCESSOR: ProcessorFactory,
    Kind.EXPORTER: ExporterFactory,
    Kind.CONNECTOR: ConnectorFactory,
    Kind.EXTENSION: ExtensionFactory,
}


@dataclass
class Registry:
    factories: dict[Kind, dict[str, Factory]] = field(default_factory=lambda: {k: {} for k in GROUPS})
    aliases: dict[Kind, dict[str, str]] = field(default_factory=lambda: {k: {} for k in GROUPS})
    errors: list[str] = field(default_factory=list)

    def add(self, factory: Factory) -> None:
        kind = factory.kind
        self.factories[kind][factory.type] = factory
        for a in factory.aliases:
            self.aliases[kind][a] = factory.type

    def get(self, kind: Kind, typ: str) -> Factory | None:
        typ = self.aliases[kind].get(typ, typ)
        return self.factories[kind].get(typ)

    def canonical(self, kind: Kind, typ: str) -> str:
        return self.aliases[kind].get(typ, typ)

    def types(self, kind: Kind) -> list[str]:
        return sorted(self.factories[kind])


def load_factory(spec: str) -> Factory:
    """'module:attr' -> factory (used by entry points and by receiver processes)."""
    mod, _, attr = spec.partition(":")
    obj = getattr(importlib.import_module(mod), attr or "factory")
    if not isinstance(obj, Factory):
        raise TypeError(f"{spec} is not a gotel factory")
    return obj


_CACHE: Registry | None = None


def _load_entry(reg: Registry, kind: Kind, group: str, ep: EntryPoint) -> Factory | None:
    try:
        f = ep.load()
    except Exception as e:  # a broken plugin must not take the agent down
        reg.errors.append(f"{group} {ep.name}: cannot import {ep.value}: {e}")
        log.warning("component %s %s cannot be loaded: %s", kind, ep.name, e)
        return None
    if not isinstance(f, _EXPECTED[kind]):
        reg.errors.append(f"{group} {ep.name}: {ep.value} is not a {_EXPECTED[kind].__name__}")
        return None
    reg.add(f)
    return f


class LazyRegistry(Registry):
    """The factories a config names, each imported when first asked for by its entry point's name; every
    installed plugin (registry()) only for what that cannot answer: an alias, an unknown type, the list
    of types. The agent then imports its configured components only, not every plugin (docs/performance.md:
    those pages, shared by the whole process tree, are memory none of its processes uses)."""

    def __init__(self) -> None:
        super().__init__()
        self._complete = False

    def _all(self) -> None:
        if not self._complete:
            full = registry()
            for kind in GROUPS:
                self.factories[kind].update(full.factories[kind])
                self.aliases[kind].update(full.aliases[kind])
            self.errors[:] = full.errors
            self._complete = True

    def get(self, kind: Kind, typ: str) -> Factory | None:
        f = super().get(kind, typ)
        if f is None and not self._complete:
            for ep in entry_points(group=GROUPS[kind], name=typ):
                f = _load_entry(self, kind, GROUPS[kind], ep)
                break
            if f is None or f.type != typ:
                self._all()
                f = super().get(kind, typ)
        return f

    def canonical(self, kind: Kind, typ: str) -> str:
        if typ not in self.factories[kind]:
            self._all()
        return super().canonical(kind, typ)

    def types(self, kind: Kind) -> list[str]:
        self._all()
        return super().types(kind)


def registry(refresh: bool = False) -> Registry:
    """All installed factories. A component that fails to import is reported, not fatal."""
    global _CACHE
    if _CACHE is not None and not refresh:
        return _CACHE
    reg = Registry()
    for kind, group in GROUPS.items():
        for ep in entry_points(group=group):
            _load_entry(reg, kind, group, ep)
    _CACHE = reg
    return reg
