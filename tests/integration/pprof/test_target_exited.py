"""A program that exits while gotel scrapes it is no warning: the failure is counted, said at debug."""

from __future__ import annotations

import logging
import socket
import subprocess

import pytest

from gotel.receivers.pprof.receiver import TargetRunner

from .conftest import Harness, Target


async def test_refused_scrape_of_an_exited_process_is_not_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "30"])
    h = Harness([{"endpoint": f"http://127.0.0.1:{port}", "service_name": "x"}])
    try:
        h.runners = [TargetRunner(h.rcv, Target(url=f"http://127.0.0.1:{port}", pid=gone.pid)),
                     TargetRunner(h.rcv, Target(url=f"http://127.0.0.1:{port}", pid=alive.pid))]
        caplog.set_level(logging.DEBUG, logger=h.ctx.logger.name)
        await h.scrape("heap", 0)
        await h.scrape("heap", 1)
        assert h.failures("heap", "refused", 0) == 1 and h.failures("heap", "refused", 1) == 1
        said = [(r.levelno, r.getMessage()) for r in caplog.records if "refused" in r.getMessage()]
        assert [lvl for lvl, m in said if f"pid {gone.pid})" in m] == [logging.DEBUG]
        assert [lvl for lvl, m in said if f"pid {alive.pid})" in m] == [logging.WARNING]  # alive: a real problem
    finally:
        alive.kill()
        alive.wait()
        await h.close()
