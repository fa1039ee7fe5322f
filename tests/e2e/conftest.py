"""Fixtures the e2e tests share: an OTLP/gRPC sink the agent under test exports to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.otlp_sink import OTLPGrpcSink


@pytest.fixture
def sink() -> Iterator[OTLPGrpcSink]:
    s = OTLPGrpcSink().start()
    yield s
    s.stop()
