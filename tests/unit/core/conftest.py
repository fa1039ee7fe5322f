from __future__ import annotations

import logging

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.telemetry.counters import Telemetry


class Tel:
    """A private telemetry registry per test, so counts are exact."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()

    def ctx(self, cid: str, kind: Kind) -> Context:
        id_ = ComponentID.parse(cid)
        return Context(id_, kind, logging.getLogger(f"test.{id_}"), self.telemetry.component(id_, kind))

    def value(self, name: str, **labels: str) -> float:
        v = self.telemetry.registry.get_sample_value("gotel_" + name, labels)
        return 0.0 if v is None else v


@pytest.fixture
def tel() -> Tel:
    return Tel()
