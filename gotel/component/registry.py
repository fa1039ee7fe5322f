"""Component factories found through entry points, so a third party adds a component by installing a package."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

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


def registry(refresh: bool = False) -> Registry:
    """All installed factories. A component that fails to import is reported, not fatal."""
    global _CACHE
    if _CACHE is not None and not refresh:
        return _CACHE
    reg = Registry()
    for kind, group in GROUPS.items():
        for ep in entry_points(group=group):
            try:
                f = ep.load()
            except Exception as e:  # a broken plugin must not take the agent down
                reg.errors.append(f"{group} {ep.name}: cannot import {ep.value}: {e}")
                log.warning("component %s %s cannot be loaded: %s", kind, ep.name, e)
                continue
            if not isinstance(f, _EXPECTED[kind]):
                reg.errors.append(f"{group} {ep.name}: {ep.value} is not a {_EXPECTED[kind].__name__}")
                continue
            reg.add(f)
    _CACHE = reg
    return reg
