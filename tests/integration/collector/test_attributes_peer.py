"""The documentation examples of the `attributes` and `resource` processors (tests/helpers/attrcases.py)
through the real collector (otelcol v0.161.0, one pipeline per example) and through gotel, with the same
config and input: the outputs must be the same items, attribute for attribute. This is the truth for the
collector's hash (SHA-256 encoding of each value kind), convert (Go's parsing and printing), extract and
include/exclude semantics. Attribute order is not compared: an attribute list is a map, and the
collector's delete moves the last attribute into the deleted one's place."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import Message

from gotel.component.contract import REQUEST_METADATA
from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Batch, batch_type
from gotel.processors import attributes, resource
from tests.helpers.attrcases import Case, cases
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.otelcol import Collector, items
from tests.helpers.prometheus_server import free_port

pytestmark = pytest.mark.slow

FACTORIES = {"attributes": attributes.factory, "resource": resource.factory}


def gotel_output(case: Case) -> Batch:
    f = FACTORIES[case.processor]
    proc: Any = f.create(case.signal, f.config.model_validate(case.config), None, make_ctx(f"{case.processor}/x"))  # type: ignore[arg-type]
    b = type(case.batch).from_bytes(case.batch.to_bytes())  # as a receiver hands it on: wire bytes first
    token = REQUEST_METADATA.set(case.metadata)
    try:
        proc.process(b)
    finally:
        REQUEST_METADATA.reset(token)
    return b


def sorted_attrs(req: Any) -> Any:
    """A copy of an export request with every attribute list sorted by key."""
    out = type(req).FromString(req.SerializeToString())

    def sort(kvs: Any) -> None:
        kept = sorted((type(x).FromString(x.SerializeToString()) for x in kvs), key=lambda x: x.key)
        del kvs[:]
        kvs.extend(kept)

    def walk(msg: Any) -> None:
        if "status" in msg.DESCRIPTOR.fields_by_name and msg.HasField("status") and msg.status.ByteSize() == 0:
            msg.ClearField("status")  # the collector's OTLP/JSON writes an empty status; the same span
        for fd, value in msg.ListFields():
            if fd.name == "attributes":
                sort(value)
            elif fd.message_type is not None:
                for v in ([value] if isinstance(value, Message) else value):
                    walk(v)

    walk(out)
    return out


def _has(n: int, bt: type[Batch]) -> Callable[[list[Any]], bool]:
    return lambda reqs: sum(bt(r).item_count() for r in reqs) >= n


async def test_documented_examples_match_the_collector(otelcol: Callable[..., Collector]) -> None:
    all_cases = cases()
    taken: set[int] = set()
    while len(taken) < len(all_cases):  # free_port() may hand out the same free port twice
        taken.add(free_port())
    ports = dict(zip((c.name for c in all_cases), sorted(taken), strict=True))
    receivers: dict[str, Any] = {}
    processors: dict[str, Any] = {}
    exporters: dict[str, Any] = {}
    pipelines: dict[str, Any] = {}
    for c in all_cases:
        grpc: dict[str, Any] = {"endpoint": f"127.0.0.1:{ports[c.name]}"}
        if c.metadata:
            grpc["include_metadata"] = True
        receivers[f"otlp/{c.name}"] = {"protocols": {"grpc": grpc}}
        processors[f"{c.processor}/{c.name}"] = c.config
        exporters[f"file/{c.name}"] = {"path": f"{c.name}.json", "flush_interval": "100ms"}
        pipelines[f"{c.signal.value}/{c.name}"] = {"receivers": [f"otlp/{c.name}"],
                                                   "processors": [f"{c.processor}/{c.name}"],
                                                   "exporters": [f"file/{c.name}"]}
    col = otelcol({"receivers": receivers, "processors": processors, "exporters": exporters,
                   "service": {"pipelines": pipelines}})  # with profiles support (the resource case)
    for c in all_cases:
        exp = otlp_exp.factory.create(c.signal, otlp_exp.Config.model_validate(
            {"endpoint": f"http://127.0.0.1:{ports[c.name]}", "headers": c.metadata}), make_ctx("otlp"))
        await exp.start()
        try:
            await exp.consume(c.batch.copy())
        finally:
            await exp.shutdown()
    await asyncio.sleep(0)
    failures = []
    for c in all_cases:
        reqs = col.wait_requests(c.signal, _has(c.batch.item_count(), batch_type(c.signal)), name=c.name)
        theirs = items(c.signal, [sorted_attrs(r) for r in reqs])
        ours = items(c.signal, [sorted_attrs(gotel_output(c).peek())])
        if theirs != ours:
            failures.append(f"{c.name}:\n  only in collector: {sorted(set(theirs) - set(ours))}\n"
                            f"  only in gotel:     {sorted(set(ours) - set(theirs))}")
    assert not failures, "\n".join(failures)
