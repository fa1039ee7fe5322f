"""`gotel traces` lists and renders the same traces from a Jaeger (test server, api_v3) and from the
file exporter's output, and explains query errors instead of dumping them."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gotel.commands import traces
from gotel.exporters import file as file_exporter
from gotel.exporters import jaeger
from gotel.pdata import Signal
from tests.helpers.exporter_ctx import make_ctx
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


@pytest.fixture
async def sources(tmp_path: Path) -> AsyncIterator[tuple[str, str, dict[str, str]]]:
    """(jaeger query URL, file path, trace ids): the same fixture traces sent to both."""
    batch, ids = fixture_traces()
    server = await JaegerServer().start()
    exp = jaeger.create(Signal.TRACES, jaeger.Config(endpoint=server.otlp_grpc), make_ctx("jaeger"))
    await exp.start()
    await exp.consume(batch)
    await exp.shutdown()
    assert await asyncio.to_thread(server.grpc.wait_for, lambda r: r.span_count() == 6)
    path = tmp_path / "traces.json"
    fexp = file_exporter.create(Signal.TRACES, file_exporter.Config(path=str(path)), make_ctx("file"))
    await fexp.start()
    await fexp.consume(batch)
    await fexp.shutdown()
    yield server.query_url, str(path), ids
    await server.stop()


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


async def test_services_and_operations(sources: tuple[str, str, dict[str, str]]) -> None:
    url, path, _ = sources
    for src in (["--jaeger", url], ["--file", path]):
        _, out, _ = await acli("services", *src, "--json")
        assert json.loads(out) == ["checkout", "payments"]
        _, out, _ = await acli("operations", "--service", "payments", *src, "--json")
        assert {o["name"] for o in json.loads(out)} == {"/pay.Payments/Charge", "/pay.Payments/Refund", "SELECT payments"}


async def test_no_match_is_not_an_error(sources: tuple[str, str, dict[str, str]]) -> None:
    url, _, _ = sources
    code, out, err = await acli("list", "--jaeger", url, "--service", "nope")
    assert code == 0 and "No traces match" in err
    code, out, _ = await acli("list", "--jaeger", url, "--service", "nope", "--json")
    assert json.loads(out) == []


async def test_query_errors_are_explained(sources: tuple[str, str, dict[str, str]], tmp_path: Path) -> None:
    url, path, _ = sources
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
    batch, ids = fixture_traces()
    from gotel.otlpjson import to_json

    p = tmp_path / "mixed.json"
    p.write_text('{"resourceMetrics": []}\nnot json\n' + to_json(batch.peek()) + "\n")
    code, out, err = await acli("list", "--file", str(p), "--json")
    assert code == 0 and len(json.loads(out)) == 3
    assert "skipped 1 lines" in err
