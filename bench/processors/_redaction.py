"""Benchmark: spans/s through the `redaction` processor on one core, as a ratio to a pass-through
pipeline measured in the same run.

Each round takes wire-format OTLP requests of 512 spans (shaped like gotel's eBPF HTTP spans: ~10
attributes, a URL with a query string, an auth header on one span in eight), turns them into a batch,
runs the step and serializes the result, as the otlp receiver and exporter do around a processor. The
pass-through baseline is the same round with a step that reads every span but changes nothing (the
pipeline's cost once any processor looks inside the data); "bytes untouched" is the round with no
step at all (the receiver's bytes go straight to the exporter). Prints spans/s and the ratios.

    .venv/bin/python bench/processors/_redaction.py [--spans N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

SPANS_PER_REQUEST = 512

CONFIGS: dict[str, dict[str, Any]] = {
    "preset: credentials": {"preset": "credentials"},
    "README example 1 (md5, debug)": {
        "allowed_keys": ["http.request.method", "http.route", "url.full", "server.address", "http.response.status_code",
                         "user_agent.original", "client.address", "network.protocol.version"],
        "ignored_keys": ["safe_attribute"], "blocked_key_patterns": [".*token.*", ".*api_key.*"],
        "blocked_values": ["4[0-9]{12}(?:[0-9]{3})?", "(5[1-5][0-9]{14})"], "allowed_values": [".+@mycompany.com"],
        "hash_function": "md5", "summary": "debug"},
    "allow_all_keys + 2 blocked_values": {"allow_all_keys": True,
                                          "blocked_values": ["4[0-9]{12}(?:[0-9]{3})?", "(5[1-5][0-9]{14})"]},
}


def build_requests(n: int) -> list[bytes]:
    from gotel.pdata.batch import Traces, attrs

    out = []
    for r in range(n):
        b = Traces()
        rs = b.msg.resource_spans.add()
        rs.resource.attributes.extend(attrs({"service.name": "checkout", "process.pid": 4242 + r,
                                             "k8s.pod.name": f"checkout-7d9f-{r}"}))
        ss = rs.scope_spans.add()
        ss.scope.name = "gotel.go_ebpf"
        for i in range(SPANS_PER_REQUEST):
            s = ss.spans.add(name="GET /items/{id}", trace_id=os.urandom(16), span_id=os.urandom(8), kind=2,
                             start_time_unix_nano=1_700_000_000_000_000_000 + i,
                             end_time_unix_nano=1_700_000_000_000_250_000 + i)
            a = {"http.request.method": "GET", "http.route": "/items/{id}",
                 "url.full": f"https://shop.example.com/items/{i}?page=2&session=abc{i}",
                 "server.address": "shop.example.com", "http.response.status_code": 200,
                 "user_agent.original": "Go-http-client/1.1", "client.address": f"10.0.{r % 250}.{i % 250}",
                 "network.protocol.version": "1.1", "thread.id": i, "go.goroutine.id": 1000 + i}
            if i % 8 == 0:
                a["http.request.header.authorization"] = "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x"
            s.attributes.extend(attrs(a))
        out.append(b.to_bytes())
    return out


def _pin() -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})


def measure(reqs: list[bytes], step: Callable[[Any], None] | None, rounds: int) -> float:
    """Spans per CPU-second of: bytes -> batch -> step -> bytes."""
    from gotel.pdata.batch import Traces

    n = 0
    t0 = time.process_time()
    for _ in range(rounds):
        for raw in reqs:
            b = Traces.from_bytes(raw)
            if step is not None:
                step(b)
            b.to_bytes()
            n += SPANS_PER_REQUEST
    return n / (time.process_time() - t0)


def read_only(b: Any) -> None:
    """Touches every span's attributes, changes nothing: a processor's unavoidable cost."""
    for rs in b.msg.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                for kv in s.attributes:
                    _ = kv.key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spans", type=int, default=100_000, help="spans per measurement (default 100000)")
    args = ap.parse_args()
    _pin()
    from gotel.pdata.batch import Signal
    from gotel.processors.redaction import Config, Redactor

    n_req = max(1, args.spans // SPANS_PER_REQUEST)
    reqs = build_requests(min(n_req, 20))
    rounds = max(1, n_req // len(reqs))
    measure(reqs, read_only, 1)  # warm-up
    untouched = measure(reqs, None, rounds)
    base = measure(reqs, read_only, rounds)
    print(f"spans per measurement: {rounds * len(reqs) * SPANS_PER_REQUEST}, one core")
    print(f"{'pass-through (parse, read, serialize)':40s} {base:12,.0f} spans/s  1.00x")
    print(f"{'bytes untouched (no processor at all)':40s} {untouched:12,.0f} spans/s  {untouched / base:.2f}x")
    for name, cfg in CONFIGS.items():
        red = Redactor(Config.model_validate(cfg))
        rate = measure(reqs, lambda b, red=red: red.batch(Signal.TRACES, b), rounds)
        print(f"{'redaction, ' + name:40s} {rate:12,.0f} spans/s  {rate / base:.2f}x  (goal >= 0.7x)")


if __name__ == "__main__":
    main()
