from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.telemetry.counters import Telemetry
from tests.helpers.certs import Certs, make_certs


class Harness:
    """A private telemetry registry, so counts are exact per test."""

    def __init__(self) -> None:
        self.telemetry = Telemetry()

    def ctx(self, cid: str, kind: Kind) -> Context:
        id_ = ComponentID.parse(cid)
        return Context(id_, kind, logging.getLogger(f"gotel.{kind}.{id_}"), self.telemetry.component(id_, kind))

    def value(self, name: str, **labels: str) -> float:
        v = self.telemetry.registry.get_sample_value("gotel_" + name, labels)
        return 0.0 if v is None else v


@pytest.fixture
def harness() -> Harness:
    return Harness()


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gotel-") as d:
        yield Path(d)
