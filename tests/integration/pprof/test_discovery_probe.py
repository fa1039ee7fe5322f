"""Local pprof discovery takes only ports that answer as pprof, not every port that answers 200."""

from __future__ import annotations

import json
import urllib.request

import pytest

from gotel.discovery import DiscoveryConfig
from gotel.receiverhelper.targets import LocalProcessSource
from gotel.receivers.pprof.fetch import Fetcher
from tests.helpers import goapps

from .conftest import goapp  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("toolchain", goapps.TOOLCHAINS)
async def test_catch_all_port_is_not_taken_for_pprof(goapp, toolchain: str) -> None:  # noqa: F811
    app = goapp("httpapp", "server", toolchain=toolchain)
    # the trap: the app's API port answers 200 to /debug/pprof/, echoing the path in its body
    with urllib.request.urlopen(app.url("/debug/pprof/", "http"), timeout=10) as r:
        assert r.status == 200 and json.loads(r.read())["path"] == "/debug/pprof/"
    fetcher = Fetcher()
    try:
        src = LocalProcessSource(DiscoveryConfig(exe_paths=[str(app.binary)]), fetcher=fetcher)
        found = await src.targets()
    finally:
        await fetcher.close()
    mine = sorted(t.url for t in found if t.pid == app.pid)
    assert mine == [f"http://127.0.0.1:{app.port('pprof')}"]
