"""tail_sampling's deadline_missed policy on real go_ebpf spans: of three traced gRPC clients (calls that
succeed, one call that misses its 50 ms deadline, one call the server cancels), only the trace of the
missed deadline is kept, with both its sides (client and server span share the trace). The truth is the
client's own log (the status code it got)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.pdata.batch import Signal, Traces, attr_dict
from gotel.processors.tail_sampling import Config, TailSamplingProcessor
from gotel.telemetry.counters import Telemetry
from tests.helpers.memsink import MemorySink
from tests.helpers.tailtraces import trace_ids
from tests.integration.go_ebpf.test_grpc import CLIENT, SERVER, Env, until

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    e = Env("go1.27", stripped=False)
    await e.start()
    try:
        yield e
    finally:
        await e.close()


async def test_deadline_missed_keeps_only_the_trace_that_missed_its_deadline(env: Env) -> None:
    srv = await env.server()
    ok_pid, ok_recs = await env.client(srv, "-n", "3")
    late_pid, late_recs = await env.client(srv, "-deadline", "50ms", "-delay", "200ms")
    cancel_pid, cancel_recs = await env.client(srv, "-code", "1")
    assert [r["code"] for r in ok_recs if "code" in r] == [0, 0, 0]
    assert late_recs[0]["code"] == 4 and cancel_recs[0]["code"] == 1
    await until(lambda: len(env.spans(ok_pid, CLIENT)) == 3 and env.spans(late_pid, CLIENT)
                and env.spans(cancel_pid, CLIENT) and len(env.spans(srv.pid, SERVER)) == 5, 15)

    (_, late_client), = env.spans(late_pid, CLIENT)
    late_trace = bytes(late_client.trace_id)
    assert attr_dict(late_client.attributes)["gotel.rpc.deadline.exceeded"] is True
    late_server = [s for _, s in env.spans(srv.pid, SERVER) if bytes(s.trace_id) == late_trace]
    assert len(late_server) == 1  # the server side of the same call, in the same trace

    telemetry = Telemetry()
    cid = ComponentID.parse("tail_sampling")
    ctx = Context(cid, Kind.PROCESSOR, logging.getLogger("test.tail_sampling"),
                  telemetry.component(cid, Kind.PROCESSOR), Signal.TRACES)
    sink = MemorySink()
    cfg = Config.model_validate({"decision_wait": "5s",
                                 "policies": [{"name": "missed", "type": "deadline_missed"}]})
    clock = [0.0]
    proc = TailSamplingProcessor(Signal.TRACES, cfg, sink, ctx, clock=lambda: clock[0])
    for req in list(env.sink.received.traces):
        await proc.consume(Traces(raw=req.SerializeToString()))
    clock[0] += 5.0
    decided = await proc.tick()
    assert decided == len(trace_ids(env.sink.received.traces)) >= 5
    assert trace_ids(sink.batches) == {late_trace}
    kept_kinds = sorted(s.kind for b in sink.batches for rs in b.peek().resource_spans
                        for ss in rs.scope_spans for s in ss.spans)
    assert kept_kinds == [SERVER, CLIENT]
