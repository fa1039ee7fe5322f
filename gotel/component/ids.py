"""Component ids and kinds: a leaf module, so that telemetry, config and the contract can all name a
component without importing one another (gotel.component.contract re-exports both)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    RECEIVER = "receiver"
    PROCESSOR = "processor"
    EXPORTER = "exporter"
    EXTENSION = "extension"
    CONNECTOR = "connector"


@dataclass(frozen=True, order=True)
class ComponentID:
    type: str
    name: str = ""

    @classmethod
    def parse(cls, s: str) -> ComponentID:
        s = s.strip()
        if not s:
            raise ValueError("empty component id")
        typ, sep, name = s.partition("/")
        if not typ or (sep and not name):
            raise ValueError(f"invalid component id {s!r}: expected type[/name]")
        return cls(typ, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type
