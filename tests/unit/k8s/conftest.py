from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.kube_api import KubeAPIServer


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(bookmark_interval=0.2) as srv:
        yield srv


@pytest.fixture
def kubeconfig(kube: KubeAPIServer, tmp_path) -> str:
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))


class Collect:
    """The next consumer: keeps what it got."""

    mutates = False

    def __init__(self) -> None:
        self.batches: list = []

    async def consume(self, batch) -> None:
        self.batches.append(batch)


def make_ctx(type_: str = "k8s_attributes"):
    import logging

    from gotel.component.contract import ComponentID, Context, Kind
    from gotel.telemetry.counters import Telemetry

    t = Telemetry()
    cid = ComponentID(type_)
    return Context(id=cid, kind=Kind.PROCESSOR, logger=logging.getLogger(f"test.{type_}"),
                   telemetry=t.component(cid, Kind.PROCESSOR))


def traces_with(*resources: dict):
    """A Traces batch with one resource (and one span) per dict of resource attributes."""
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    from gotel.pdata.batch import Traces, attrs

    b = Traces()
    for i, ra in enumerate(resources):
        rs = ResourceSpans()
        rs.resource.attributes.extend(attrs(ra))
        rs.scope_spans.append(ScopeSpans(spans=[Span(name=f"span-{i}", trace_id=bytes(16), span_id=bytes(8))]))
        b.msg.resource_spans.append(rs)
    return b


def resource_attrs(batch) -> list[dict]:
    from gotel.pdata.batch import attr_dict

    return [attr_dict(rs.resource.attributes) for rs in batch.peek().resource_spans]
