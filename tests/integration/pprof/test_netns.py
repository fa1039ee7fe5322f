"""A pprof endpoint listening only on the loopback of another network namespace is scraped through it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from gotel.discovery import DiscoveryConfig
from gotel.receiverhelper.targets import LocalProcessSource
from gotel.receivers.pprof.fetch import Fetcher
from tests.helpers import goapps
from tests.helpers.pprofkit import metric_points, profiles_of

from .conftest import Harness, aget

pytestmark = [pytest.mark.slow, pytest.mark.root]


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"gotel-pprof-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def app_in_ns(netns: str) -> Iterator[goapps.RunningApp]:
    binary = goapps.build("runtime", "go1.27")
    # `ip netns exec` enters the namespace and execs the program: the pid is the program's own
    app = goapps.RunningApp(["ip", "netns", "exec", netns, str(binary), "-pprof=127.0.0.1:0"])
    try:
        yield app
    finally:
        app.stop()


async def test_static_target_through_named_netns(netns: str, app_in_ns: goapps.RunningApp) -> None:
    port = app_in_ns.port()
    outside = Harness([{"endpoint": f"http://127.0.0.1:{port}", "service_name": "ns-app"}])
    inside = Harness([{"endpoint": f"http://127.0.0.1:{port}", "service_name": "ns-app", "netns": f"/var/run/netns/{netns}"}])
    try:
        await outside.scrape("goroutine")
        assert outside.failures("goroutine", "refused") == 1  # not reachable from the agent's namespace
        await inside.scrape("goroutine")
        await inside.scrape("heap")
        await inside.scrape("goroutine_dump")
        assert profiles_of(inside.sinks["profiles"], "goroutine")
        assert metric_points(inside.sinks["metrics"], "gotel.goroutines")
        up = [dp.as_int for _r, dp in metric_points(inside.sinks["metrics"], "pprof.scrape.up")]
        assert up == [1, 1, 1]
    finally:
        await outside.close()
        await inside.close()


async def test_discovered_process_scraped_through_its_netns(app_in_ns: goapps.RunningApp) -> None:
    fetcher = Fetcher(timeout=5)
    try:
        src = LocalProcessSource(DiscoveryConfig(pids=[app_in_ns.pid]), fetcher=fetcher)
        targets = await src.targets()
        assert len(targets) == 1
        t = targets[0]
        assert t.netns == f"/proc/{app_in_ns.pid}/ns/net" and t.pid == app_in_ns.pid
        assert t.url == f"http://127.0.0.1:{app_in_ns.port()}"
        assert t.attributes["process.pid"] == app_in_ns.pid
        h = Harness([{"endpoint": t.url, "netns_pid": app_in_ns.pid, "service_name": "discovered"}])
        try:
            await h.scrape("heap")
            await h.scrape("goroutine")
            assert profiles_of(h.sinks["profiles"], "goroutine")
        finally:
            await h.close()
    finally:
        await fetcher.close()


async def test_process_outside_namespace_not_entered(goapp) -> None:
    app = goapp("runtime")
    fetcher = Fetcher(timeout=5)
    try:
        targets = await LocalProcessSource(DiscoveryConfig(pids=[app.pid]), fetcher=fetcher).targets()
        assert [t.netns for t in targets] == [None]
        assert targets[0].attributes["service.name"].startswith("runtime")
        await aget(app.url("/truth"))
    finally:
        await fetcher.close()
