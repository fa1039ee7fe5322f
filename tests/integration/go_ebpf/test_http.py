"""go_ebpf's net/http spans against the httpapp fixture (Go 1.19 and 1.27), exported to a real OTLP server."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import pytest

from gotel.pdata.batch import attr_dict
from tests.helpers import goapps
from tests.integration.go_ebpf.test_grpc import CLIENT, SERVER, Env, until


@pytest.fixture(params=goapps.TOOLCHAINS)
async def env(request: pytest.FixtureRequest) -> AsyncIterator[Env]:
    e = Env(request.param, stripped=False)
    e.binary = goapps.build("httpapp", request.param)
    await e.start()
    try:
        yield e
    finally:
        await e.close()


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


async def test_http_server_and_client_spans(env: Env) -> None:
    app = await asyncio.to_thread(goapps.start, "httpapp", "server", toolchain=env.toolchain)
    env.apps.append(app)
    await until(lambda: app.pid in env.r.attached_pids, 30)
    port = app.ports["http"]
    assert await asyncio.to_thread(get, app.url("/users/42?status=404", "http")) == 404
    assert await asyncio.to_thread(get, app.url("/items/book/7?status=503", "http")) == 503
    # the downstream URL carries credentials and a query secret: neither may reach the span
    down = f"http://user:hunter2@127.0.0.1:{port}/users/1%3Ftoken%3Dsecret"
    assert await asyncio.to_thread(get, app.url(f"/echo?downstream={down}", "http")) == 200
    await until(lambda: len(env.spans(app.pid, SERVER)) >= 4 and env.spans(app.pid, CLIENT), 10)
    servers = {(attr_dict(s.attributes).get("http.route") or attr_dict(s.attributes).get("url.path"),
                attr_dict(s.attributes)["http.response.status_code"]): s for _, s in env.spans(app.pid, SERVER)}
    new_mux = env.toolchain != "go1.19"  # Request.Pattern exists from Go 1.23: the route, else the path
    users = servers[("/users/{id}" if new_mux else "/users/42", 404)]
    a = attr_dict(users.attributes)
    assert a["http.request.method"] == "GET" and a["http.response.status_code"] == 404
    assert a["client.address"] == "127.0.0.1" and a["server.port"] == port
    assert users.status.code == 0  # 4xx is no server error
    items = servers[("/items/{kind}/{id}" if new_mux else "/items/book/7", 503)]
    assert attr_dict(items.attributes)["http.response.status_code"] == 503 and items.status.code == 2
    downstream = servers[("/users/{id}" if new_mux else "/users/1", 200)]  # the downstream request, served
    echo = servers[("/echo", 200)]
    (_, c), = env.spans(app.pid, CLIENT)
    ca = attr_dict(c.attributes)
    assert ca["url.full"] == f"http://127.0.0.1:{port}/users/1" and "hunter2" not in str(ca) and "secret" not in str(ca)
    assert ca["http.response.status_code"] == 200 and ca["server.port"] == port
    assert c.parent_span_id == echo.span_id and c.trace_id == echo.trace_id
    # one process, both ends of the connection: the served downstream request is the client call's child
    assert downstream.parent_span_id == c.span_id and downstream.trace_id == echo.trace_id
