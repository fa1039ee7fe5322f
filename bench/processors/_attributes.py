"""Benchmark: spans/s through the `attributes` (and `resource`) processor on one core, as a ratio to a
pass-through pipeline measured in the same run.

Each request is 512 spans shaped like gotel's eBPF HTTP server spans (8 attributes each). Steps, all in
this one process pinned to one core, timed with the CPU clock:

* pass-through (bytes): what gotel's pipeline does when no processor mutates: the request's wire bytes
  go to the exporter untouched (Batch.from_bytes -> to_bytes);
* pass-through (decode+encode): the same request parsed and serialized again, the cost every processor
  that looks inside a batch pays before doing anything;
* attributes / resource: decode, the processor's actions, encode.

The ratios printed are against the decode+encode pass-through (the issue's goal: >= 0.7x); the ratio to
the bytes pass-through is printed too. A last run acts on keys no span has: the processor finds that in
the request's bytes and passes them on without parsing.

    .venv/bin/python bench/processors/_attributes.py [--requests N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SPANS_PER_REQUEST = 512

ATTRIBUTES = {"actions": [
    {"key": "deployment.environment", "value": "production", "action": "upsert"},
    {"key": "url.path", "action": "delete"},
    {"key": "client.address", "action": "hash"},
    {"key": "http.response.status_code", "action": "convert", "converted_type": "string"},
]}
ATTRIBUTES_INCLUDE = {**ATTRIBUTES, "include": {"match_type": "strict", "services": ["checkout"],
                                                "span_kinds": ["SPAN_KIND_SERVER"]}}
# a common guard: delete/hash secrets that are rarely there. When the request's bytes hold none of the keys,
# the processor leaves them untouched (no parse), as a pass-through pipeline does.
ATTRIBUTES_ABSENT = {"actions": [{"key": "password", "action": "delete"}, {"key": "user.email", "action": "hash"}]}
RESOURCE = {"attributes": [{"key": "k8s.cluster.name", "value": "prod-eu", "action": "upsert"},
                           {"key": "process.pid", "action": "delete"}]}


def build_requests(n_distinct: int) -> list[bytes]:
    from gotel.pdata.batch import Traces, attrs

    out = []
    for r in range(n_distinct):
        b = Traces()
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs({
            "service.name": "checkout", "process.pid": 4242 + r, "k8s.pod.name": f"checkout-7d9f-{r}",
            "k8s.namespace.name": "shop", "host.name": "node-1", "process.runtime.version": "go1.22.5"}))
        ss = rs.scope_spans.add()
        ss.scope.name = "gotel.go_ebpf"
        for i in range(SPANS_PER_REQUEST):
            s = ss.spans.add()
            s.trace_id = struct.pack(">QQ", r + 1, i + 1)
            s.span_id = struct.pack(">Q", (r << 20) + i + 1)
            s.name = "GET /api/cart/{id}"
            s.kind = 2
            s.start_time_unix_nano = 1_700_000_000_000_000_000 + i * 1000
            s.end_time_unix_nano = s.start_time_unix_nano + 1_250_000
            s.attributes.extend(attrs({
                "http.request.method": "GET", "http.route": "/api/cart/{id}", "url.path": f"/api/cart/{i}",
                "http.response.status_code": 200, "server.address": "checkout", "server.port": 8080,
                "network.protocol.version": "1.1", "client.address": f"10.0.3.{i % 250}"}))
        out.append(b.to_bytes())
    return out


def measure(reqs: list[bytes], step: Callable[[bytes], Any], rounds: int) -> float:
    """spans per CPU-second of `step` over every request, best of three passes."""
    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(rounds):
            for raw in reqs:
                step(raw)
        dt = time.process_time() - t0
        best = max(best, rounds * len(reqs) * SPANS_PER_REQUEST / dt)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=40, help="requests of 512 spans per pass")
    args = ap.parse_args()
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    from gotel.pdata.batch import Signal, Traces
    from gotel.processors import attributes, resource
    from tests.helpers.exporter_ctx import make_ctx

    def proc(factory: Any, cfg: dict[str, Any]) -> Any:
        return factory.create(Signal.TRACES, factory.config.model_validate(cfg), None, make_ctx("bench"))

    attrs_p = proc(attributes.factory, ATTRIBUTES)
    attrs_inc = proc(attributes.factory, ATTRIBUTES_INCLUDE)
    res_p = proc(resource.factory, RESOURCE)
    attrs_absent = proc(attributes.factory, ATTRIBUTES_ABSENT)

    def through(p: Any) -> Callable[[bytes], bytes]:
        def step(raw: bytes) -> bytes:
            b = Traces.from_bytes(raw)
            p.process(b)
            return b.to_bytes()
        return step

    def decode_encode(raw: bytes) -> bytes:
        b = Traces.from_bytes(raw)
        b.msg  # noqa: B018 - touching it parses and drops the cached bytes, as a mutating processor does
        return b.to_bytes()

    reqs = build_requests(args.requests)
    raw_bytes = measure(reqs, lambda raw: Traces.from_bytes(raw).to_bytes(), 20)
    base = measure(reqs, decode_encode, 2)
    print(f"pass-through (bytes)          {raw_bytes:>12,.0f} spans/s")
    print(f"pass-through (decode+encode)  {base:>12,.0f} spans/s   (baseline)")
    for name, p in (("attributes, 4 actions", attrs_p), ("attributes + include", attrs_inc),
                    ("resource, 2 actions", res_p), ("attributes, keys absent", attrs_absent)):
        v = measure(reqs, through(p), 2)
        print(f"{name:<29} {v:>12,.0f} spans/s   {v / base:.2f}x baseline   {v / raw_bytes:.3f}x bytes")


if __name__ == "__main__":
    main()
