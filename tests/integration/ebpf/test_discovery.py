"""Discovery with the exec/exit tracepoints: a Go process started later is found within 1 s, its exit is
noticed within 1 s, a non-Go process is ignored, and port / cmdline / pid selectors pick the right one."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from gotel.discovery import Criteria, DiscoveryConfig, ProcessAdded, ProcessRemoved, ProcessWatcher
from tests.helpers import goapps
from tests.integration.ebpf.conftest import TOOLCHAINS


async def _next(w: ProcessWatcher, kind: type, pid: int, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        ev = await w.next_event(max(0.01, deadline - time.monotonic()))
        if isinstance(ev, kind) and ev.pid == pid:
            return ev


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
async def test_new_and_exited_go_process_within_one_second(toolchain: str) -> None:
    binary = goapps.build("runtime", toolchain)
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    async with ProcessWatcher(DiscoveryConfig(), use_bpf=True) as w:  # every Go process on the host
        assert w.bpf_active
        assert sleeper.pid not in w.selected  # not Go: ignored by the initial scan
        proc = subprocess.Popen([str(binary), "-pprof", "127.0.0.1:0"], stdout=subprocess.DEVNULL,
                                env=dict(os.environ, OTEL_SERVICE_NAME="runtime-fixture"))
        try:
            t0 = time.monotonic()
            ev = await _next(w, ProcessAdded, proc.pid, 5)
            found = time.monotonic() - t0
            assert ev.info.is_go and ev.info.exe == str(binary)
            assert ev.info.service_name == "runtime-fixture"
            late_sleeper = subprocess.Popen(["/bin/sleep", "30"])
            await asyncio.sleep(0.5)
            assert late_sleeper.pid not in w.selected
            os.kill(proc.pid, signal.SIGKILL)
            t1 = time.monotonic()
            await _next(w, ProcessRemoved, proc.pid, 5)
            gone = time.monotonic() - t1
        finally:
            proc.kill()
            proc.wait()
            for s in (sleeper, locals().get("late_sleeper")):
                if s is not None:
                    s.kill()
                    s.wait()
    assert found < 1.0, f"found after {found:.2f}s"
    assert gone < 1.0, f"exit noticed after {gone:.2f}s"


async def test_selectors_by_port_cmdline_and_exclude(goapp: Callable[..., Any]) -> None:
    a = goapp("runtime", toolchain="go1.27")
    b = goapp("httpapp", "server", toolchain="go1.27")
    port = a.port("pprof")
    async with ProcessWatcher(DiscoveryConfig(ports=[port]), use_bpf=True) as w:
        assert set(w.selected) == {a.pid}
    # other test sessions on this host run the same fixtures: select by our own build paths
    async with ProcessWatcher(DiscoveryConfig(cmdline=re.escape(str(b.binary)) + " server"), use_bpf=True) as w:
        assert set(w.selected) == {b.pid}
    sel = DiscoveryConfig(exe_paths=[str(a.binary), str(b.binary)], exclude=Criteria(pids=[a.pid]))
    async with ProcessWatcher(sel, use_bpf=False) as w:  # the /proc-only mode pull receivers use
        assert set(w.selected) == {b.pid}
        assert not w.bpf_active


async def test_proc_only_mode_delivers_events() -> None:
    """Without BPF (unprivileged pull receivers) the 1 s rescan finds and loses processes, and its
    events reach a waiting consumer (found on a worker thread, published on the loop)."""
    binary = goapps.build("runtime", "go1.27")
    async with ProcessWatcher(DiscoveryConfig(exe_paths=[str(binary)]), use_bpf=False) as w:
        assert not w.bpf_active
        waiter = asyncio.create_task(w.next_event(10))
        await asyncio.sleep(0.2)  # the consumer is already waiting when the process appears
        proc = subprocess.Popen([str(binary), "-pprof", "127.0.0.1:0"], stdout=subprocess.DEVNULL)
        try:
            t0 = time.monotonic()
            ev = await waiter
            assert isinstance(ev, ProcessAdded) and ev.pid == proc.pid
            assert time.monotonic() - t0 < 3
            proc.kill()
            proc.wait()
            await _next(w, ProcessRemoved, proc.pid, 3)
        finally:
            proc.kill()
            proc.wait()
