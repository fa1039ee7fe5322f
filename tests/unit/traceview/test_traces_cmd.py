"""`gotel traces` against the real Jaeger v2 (tests/peers/jaeger): what `list`, `show`, `services` and
`operations` read from Jaeger's query service equals what the `jaeger` exporter sent, and equals what they
read from the file exporter's output; query errors are explained instead of dumped. The Jaeger test server
stays only for a slow answer, which the real Jaeger cannot be made to give."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.trace.v1 import trace_pb2

from gotel.cli.commands import traces
from gotel.cli.traceview.sources import JaegerSource, Query, SourceError
from gotel.exporters import file as file_exporter
from gotel.exporters import jaeger
from gotel.pdata.batch import Signal, Traces, attrs, get_attr
from tests.helpers.certs import make_certs
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.jaeger_real import RealJaeger, sent_view
from tests.helpers.jaeger_server import JaegerServer
from tests.helpers.tracedata import fixture_traces


def cli(*argv: str) -> tuple[int, str, str]:
    """`gotel traces ARGV` as the CLI runs it (the command module's own parser and run())."""
    p = argparse.ArgumentParser(prog="gotel traces")
    traces.add_arguments(p)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = traces.run(p.parse_args(list(argv)))
        except SystemExit as e:
            err.write(str(e.code))
            code = 2
    return code, out.getvalue(), " ".join(err.getvalue().split())  # messages are wrapped to the width


async def acli(*argv: str) -> tuple[int, str, str]:
    # The CLI blocks on HTTP; the test servers live on this event loop.
    return await asyncio.to_thread(cli, *argv)


async def _send(batch: Traces, endpoint: str, path: Path, ca: Path | None = None) -> None:
    cfg = jaeger.Config(endpoint=endpoint, tls={"ca_file": str(ca)} if ca else {})  # type: ignore[arg-type]
    exp = jaeger.create(Signal.TRACES, cfg, make_ctx("jaeger"))
    fexp = file_exporter.create(Signal.TRACES, file_exporter.Config(path=str(path)), make_ctx("file"))
    for e in (exp, fexp):
        await e.start()
        await e.consume(batch)
        await e.shutdown()


@pytest.fixture(scope="module")
def jaeger_and_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RealJaeger, Traces, str, dict[str, str]]]:
    """A Jaeger of this module's own (its services and operations are exactly the fixture's), the fixture
    traces sent once to it and to a file: (jaeger, batch, file path, trace ids)."""
    batch, ids = fixture_traces()
    path = tmp_path_factory.mktemp("traces") / "traces.json"
    with RealJaeger() as j:
        asyncio.run(_send(batch, j.otlp_grpc, path))
        for tid in ids.values():
            j.wait_spans(tid, sum(1 for t, _ in sent_view(batch) if t == tid))
        yield j, batch, str(path), ids


@pytest.fixture
def sources(jaeger_and_batch: tuple[RealJaeger, Traces, str, dict[str, str]]) -> tuple[str, str, dict[str, str]]:
    """(jaeger query URL, file path, trace ids): the same fixture traces sent to both."""
    j, _, path, ids = jaeger_and_batch
    return j.query_url, path, ids


async def test_list_is_identical_from_jaeger_and_file(sources: tuple[str, str, dict[str, str]]) -> None:
    url, path, ids = sources
    for args in (["--service", "checkout"], ["--service", "checkout", "--errors"],
                 ["--service", "checkout", "--min-duration", "1s"],
                 ["--service", "payments", "--operation", "/pay.Payments/Refund"]):
        c1, j, e1 = await acli("list", "--jaeger", url, "--json", *args)
        c2, f, e2 = await acli("list", "--file", path, "--json", *args)
        assert (c1, c2) == (0, 0), (e1, e2)
        assert json.loads(j) == json.loads(f), args
    _, out, _ = await acli("list", "--jaeger", url, "--json", "--service", "checkout")
    got = json.loads(out)
    assert [t["trace_id"] for t in got] == [ids["fast"], ids["slow"]]  # most recent first
    slow = got[1]
    assert slow["errors"] == 3 and slow["spans"] == 4 and slow["services"] == ["checkout", "payments"]
    assert slow["root_name"] == "/shop.Cart/Checkout" and slow["duration_ns"] == 1_200_000_000
    _, out, _ = await acli("list", "--jaeger", url, "--json", "--service", "checkout", "--errors")
    assert [t["trace_id"] for t in json.loads(out)] == [ids["slow"]]
    _, out, _ = await acli("list", "--file", path, "--json", "--service", "payments", "--operation",
                           "/pay.Payments/Refund")
    assert [t["trace_id"] for t in json.loads(out)] == [ids["other"]]


async def test_show_is_identical_and_is_a_tree(sources: tuple[str, str, dict[str, str]]) -> None:
    url, path, ids = sources
    c1, j, _ = await acli("show", ids["slow"], "--jaeger", url, "--json")
    c2, f, _ = await acli("show", ids["slow"], "--file", path, "--json")
    assert c1 == c2 == 0
    assert json.loads(j) == json.loads(f)
    tree = json.loads(j)["tree"]
    assert [(s["depth"], s["service"], s["name"]) for s in tree] == [
        (0, "checkout", "/shop.Cart/Checkout"), (1, "checkout", "/pay.Payments/Charge"),
        (2, "payments", "/pay.Payments/Charge"), (3, "payments", "SELECT payments")]
    assert tree[0]["status"] == "error" and tree[0]["status_message"] == "context deadline exceeded"
    assert tree[0]["events"][0]["name"] == "exception"
    assert tree[1]["start_offset_ns"] == 5_000_000 and tree[1]["duration_ns"] == 1_190_000_000
    _, fast, _ = await acli("show", ids["fast"], "--file", path, "--json")
    assert json.loads(fast)["tree"][0]["links"][0]["span_id"] == "0000000000000001"


async def test_show_from_jaeger_equals_what_was_sent(jaeger_and_batch: tuple[RealJaeger, Traces, str, dict[str, str]]) -> None:
    """Every span `show --json` reads from Jaeger against the batch the exporter sent: ids, parents,
    services, names, kinds, timing to the nanosecond, status, attributes, events and links."""
    j, batch, _, ids = jaeger_and_batch
    sent = sent_view(batch)
    services = {s.span_id.hex(): get_attr(rs.resource.attributes, "service.name")
                for rs in batch.msg.resource_spans for ss in rs.scope_spans for s in ss.spans}
    kinds = {v: trace_pb2.Span.SpanKind.Name(v).removeprefix("SPAN_KIND_").lower() for v in trace_pb2.Span.SpanKind.values()}
    codes = {v: trace_pb2.Status.StatusCode.Name(v).removeprefix("STATUS_CODE_").lower()
             for v in trace_pb2.Status.StatusCode.values()}
    for tid in ids.values():
        code, out, err = await acli("show", tid, "--jaeger", j.query_url, "--json")
        assert code == 0, err
        shown = json.loads(out)
        want = {sid: v for (t, sid), v in sent.items() if t == tid}
        t0 = min(v["start"] for v in want.values())
        assert shown["trace_id"] == tid and shown["start_unix_nano"] == t0
        assert {s["span_id"] for s in shown["tree"]} == set(want)
        for s in shown["tree"]:
            w = want[s["span_id"]]
            assert (s["parent_span_id"], s["service"], s["name"], s["kind"]) == (
                w["parent"], services[s["span_id"]], w["name"], kinds[w["kind"]])
            assert (s["start_offset_ns"], s["duration_ns"]) == (w["start"] - t0, w["end"] - w["start"])
            assert (s["status"], s["status_message"]) == (codes[w["status"][0]], w["status"][1])
            assert s["attributes"] == w["attributes"]
            assert [(e["offset_ns"] + t0, e["name"], e["attributes"]) for e in s["events"]] == w["events"]
            assert [(lk["trace_id"], lk["span_id"], lk["attributes"]) for lk in s["links"]] == w["links"]


async def test_orphans_and_skewed_clocks_are_shown_as_sent(real_jaeger: RealJaeger, tmp_path: Path) -> None:
    """A server span whose caller was not traced (an orphan) and a child on another host that starts
    before its parent (clock skew): what eBPF tracing gives every day. `show` reads them from Jaeger
    exactly as sent, the same as from the file, without Jaeger's display adjustments."""
    now = time.time_ns()
    tid, orphan_tid = os.urandom(16), os.urandom(16)
    b = Traces()
    front = b.msg.resource_spans.add()
    front.resource.attributes.extend(attrs({"service.name": "skew-front"}))
    fs = front.scope_spans.add()
    fs.spans.add(trace_id=tid, span_id=b"\x01" * 8, name="GET /", kind=trace_pb2.Span.SPAN_KIND_SERVER,
                 start_time_unix_nano=now - 50 * 10**6, end_time_unix_nano=now - 10 * 10**6)
    back = b.msg.resource_spans.add()
    back.resource.attributes.extend(attrs({"service.name": "skew-back"}))
    bs = back.scope_spans.add()
    bs.spans.add(trace_id=tid, span_id=b"\x02" * 8, parent_span_id=b"\x01" * 8, name="/b.B/Get",
                 kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=now - 80 * 10**6,  # 30 ms early
                 end_time_unix_nano=now - 60 * 10**6)
    bs.spans.add(trace_id=orphan_tid, span_id=b"\x03" * 8, parent_span_id=b"\x09" * 8, name="/b.B/Put",
                 kind=trace_pb2.Span.SPAN_KIND_SERVER, start_time_unix_nano=now - 5 * 10**6, end_time_unix_nano=now)
    path = tmp_path / "t.json"
    await _send(b, real_jaeger.otlp_grpc, path)
    await asyncio.to_thread(real_jaeger.wait_spans, tid.hex(), 2)
    await asyncio.to_thread(real_jaeger.wait_spans, orphan_tid.hex(), 1)
    sent = sent_view(b)
    for t in (tid.hex(), orphan_tid.hex()):
        c1, j, e1 = await acli("show", t, "--jaeger", real_jaeger.query_url, "--json")
        c2, f, e2 = await acli("show", t, "--file", str(path), "--json")
        assert (c1, c2) == (0, 0), (e1, e2)
        assert json.loads(j) == json.loads(f)
        tree = json.loads(j)["tree"]
        t0 = json.loads(j)["start_unix_nano"]
        for s in tree:
            w = sent[(t, s["span_id"])]
            assert (s["start_offset_ns"] + t0, s["duration_ns"], s["attributes"]) == (
                w["start"], w["end"] - w["start"], w["attributes"])
    code, out, _ = await acli("list", "--jaeger", real_jaeger.query_url, "--service", "skew-back", "--json")
    assert code == 0 and {x["trace_id"] for x in json.loads(out)} == {tid.hex(), orphan_tid.hex()}


async def test_waterfall_shows_what_matters(sources: tuple[str, str, dict[str, str]]) -> None:
    url, path, ids = sources
    code, out, _ = await acli("show", ids["slow"], "--jaeger", url, "--no-color")
    assert code == 0
    for needle in ("/shop.Cart/Checkout", "ERROR context deadline exceeded", "rpc.method=/pay.Payments/Charge",
                   "rpc.grpc.status_code=4", "rpc.grpc.deadline_ms=1200", "server.address=payments",
                   "network.peer.address=10.0.0.9", "1.200s", "1.19", "↳ exception", "4 spans", "3 errors"):
        assert needle in out, (needle, out)
    lines = out.splitlines()
    assert any("└" in ln and "SELECT payments" in ln for ln in lines)
    code, out, _ = await acli("list", "--file", path, "--service", "checkout", "--no-color")
    assert all(len(ln) <= 80 for ln in out.splitlines())  # fits a narrow terminal: two lines per trace
    assert f"{ids['slow']}" in out and "checkout: /shop.Cart/Checkout" in out and "3 errors" in out
    os.environ["COLUMNS"] = "140"
    try:
        code, out, _ = await acli("list", "--file", path, "--service", "checkout", "--no-color")
    finally:
        del os.environ["COLUMNS"]
    assert ids["slow"] in out and "checkout: /shop.Cart/Checkout" in out and "1.200s" in out


async def test_services_and_operations(jaeger_and_batch: tuple[RealJaeger, Traces, str, dict[str, str]]) -> None:
    j, batch, path, _ = jaeger_and_batch
    ops: dict[str, set[tuple[str, str]]] = {}
    for rs in batch.msg.resource_spans:
        for s in (s for ss in rs.scope_spans for s in ss.spans):
            kind = trace_pb2.Span.SpanKind.Name(s.kind).removeprefix("SPAN_KIND_").lower()
            ops.setdefault(str(get_attr(rs.resource.attributes, "service.name")), set()).add((s.name, kind))
    for src in (["--jaeger", j.query_url], ["--file", path]):
        _, out, _ = await acli("services", *src, "--json")
        assert json.loads(out) == sorted(ops) == ["checkout", "payments"]
        for svc, want in ops.items():
            _, out, _ = await acli("operations", "--service", svc, *src, "--json")
            assert {(o["name"], o["span_kind"]) for o in json.loads(out)} == want, (src, svc)
    _, out, _ = await acli("operations", "--service", "nope", "--jaeger", j.query_url, "--json")
    assert json.loads(out) == []


async def test_no_match_is_not_an_error(sources: tuple[str, str, dict[str, str]]) -> None:
    url, _, _ = sources
    code, out, err = await acli("list", "--jaeger", url, "--service", "nope")
    assert code == 0 and "No traces match" in err
    code, out, _ = await acli("list", "--jaeger", url, "--service", "nope", "--json")
    assert json.loads(out) == []


async def test_query_errors_are_explained(sources: tuple[str, str, dict[str, str]], tmp_path: Path) -> None:
    url, _path, _ = sources
    code, _, err = await acli("show", "ab" * 16, "--jaeger", url)
    assert code == 1 and "was not found in Jaeger" in err and "Traceback" not in err
    code, _, err = await acli("show", "not-an-id", "--jaeger", url)
    assert code == 1 and "is not a trace id" in err
    code, _, err = await acli("list", "--jaeger", "http://127.0.0.1:9", "--service", "x")
    assert code == 1 and "cannot reach Jaeger's query service" in err and "connection refused" in err
    code, _, err = await acli("list", "--jaeger", url)
    assert code == 1 and "needs a service" in err
    code, _, err = await acli("list", "--file", str(tmp_path / "missing.json"))
    assert code == 1 and "no such file" in err


async def test_jaeger_5xx_is_explained(sources: tuple[str, str, dict[str, str]]) -> None:
    """The real Jaeger answers 500 when asked to search deeper than its memory store holds (max_traces)."""
    url, _, _ = sources
    code, _, err = await acli("list", "--jaeger", url, "--service", "checkout", "--limit", "200000")
    assert code == 1 and "Jaeger answered 500 for /api/v3/traces" in err and "search depth" in err, err
    assert "Traceback" not in err


async def test_https_jaeger_with_ca_file(tmp_path: Path) -> None:
    """A Jaeger whose query API (and OTLP receivers) take TLS only: read with --ca-file; without it the
    untrusted certificate is explained."""
    certs = make_certs(tmp_path)
    batch, ids = fixture_traces()
    with RealJaeger(certs=certs) as j:
        await _send(batch, j.otlp_grpc, tmp_path / "t.json", ca=certs.ca)
        assert j.query_url.startswith("https://")
        await asyncio.to_thread(j.wait_spans, ids["slow"], 4)
        code, out, err = await acli("services", "--jaeger", j.query_url, "--ca-file", str(certs.ca), "--json")
        assert code == 0 and json.loads(out) == ["checkout", "payments"], err
        code, out, err = await acli("show", ids["slow"], "--jaeger", j.query_url, "--ca-file", str(certs.ca), "--json")
        assert code == 0 and len(json.loads(out)["tree"]) == 4, err
        code, _, err = await acli("services", "--jaeger", j.query_url)
        assert code == 1 and "TLS certificate not trusted" in err and "--ca-file" in err, err
        code, _, err = await acli("services", "--jaeger", j.query_url.replace("https", "http"))
        assert code == 1 and "takes TLS: use https://" in err, err
    code, _, err = await acli("services", "--jaeger", "http://127.0.0.1:9", "--ca-file", str(certs.ca))
    assert code == 1 and "--ca-file is for https://" in err


async def test_slow_jaeger_is_explained() -> None:
    """A query service that does not answer in time (fault: a slow answer, which the real Jaeger's
    in-memory store cannot be made to give, so the Jaeger test server delays on purpose)."""
    server = await JaegerServer(delay=2.0).start()
    try:
        src = JaegerSource(server.query_url, timeout=0.3)
        with pytest.raises(SourceError, match=r"did not answer within 0.3s"):
            await asyncio.to_thread(src.find, Query(service="x", start_min_ns=0, start_max_ns=1))
    finally:
        await server.stop()


async def test_html_instead_of_json_is_explained() -> None:
    async def html(_: Any) -> web.Response:
        return web.Response(text="<html><body>Grafana</body></html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{tail:.*}", html)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        code, _, err = await acli("list", "--jaeger", f"http://127.0.0.1:{port}", "--service", "x")
        assert code == 1 and "did not answer JSON" in err and "text/html" in err and "16686" in err
    finally:
        await runner.cleanup()


async def test_file_with_other_signals_and_garbage(tmp_path: Path) -> None:
    batch, _ids = fixture_traces()
    from gotel.pdata.otlpjson import to_json

    p = tmp_path / "mixed.json"
    p.write_text('{"resourceMetrics": []}\nnot json\n' + to_json(batch.peek()) + "\n")
    code, out, err = await acli("list", "--file", str(p), "--json")
    assert code == 0 and len(json.loads(out)) == 3
    assert "skipped 1 lines" in err
