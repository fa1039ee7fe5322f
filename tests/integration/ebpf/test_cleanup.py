"""No probe or program outlives its loader: not after a clean stop, not after SIGKILL of the loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gotel.ebpf.usdt import read_probes
from tests.integration.ebpf.conftest import gotel_uprobe_events, own_prog_ids, prog_exists, read_text_byte

REPO = Path(__file__).resolve().parents[3]

LOADER = r"""
import json, sys, time
from gotel.ebpf.program import BpfProgram
from gotel.ebpf.usdt_attach import UsdtAttacher, WantedProbe
pid = int(sys.argv[1])
prog = BpfProgram("usdt.c")
att = UsdtAttacher(prog, [WantedProbe(0, "gotelfix:tick"), WantedProbe(1, "gotelfix:guarded")])
res = att.add_process(pid, f"/proc/{pid}/exe")
assert not res.errors, res.errors
watch = BpfProgram("procwatch.c")
print(json.dumps({"probes": prog.probe_count()}), flush=True)
time.sleep(600)
"""


def _wait_until(pred: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_sigkill_of_the_loader_leaves_nothing_behind(goapp: Callable[..., Any]) -> None:
    app = goapp("usdtapp", "-quiet", toolchain="go1.27")
    probes, _ = read_probes(f"/proc/{app.pid}/exe")
    sites = [p.pc for p in probes if p.name in ("tick", "guarded")]
    before = [read_text_byte(app.pid, a) for a in sites]
    assert before == [0x90] * len(sites)
    loader = subprocess.Popen([sys.executable, "-c", LOADER, str(app.pid)], stdout=subprocess.PIPE, text=True,
                              cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        line = loader.stdout.readline() if loader.stdout else ""
        assert json.loads(line)["probes"] == 2, f"loader did not come up: {line!r}"
        ids = own_prog_ids(loader.pid)
        assert len(ids) >= 3  # usdt + two tracepoint programs
        assert [read_text_byte(app.pid, a) for a in sites] == [0xCC] * len(sites)
        assert app.get_json("/semaphore") == {"guarded": 1}
        os.kill(loader.pid, signal.SIGKILL)
        loader.wait(timeout=10)
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    assert _wait_until(lambda: [read_text_byte(app.pid, a) for a in sites] == before), "int3 left in the target"
    assert _wait_until(lambda: not any(prog_exists(i) for i in ids)), "BPF programs outlived their loader"
    assert app.get_json("/semaphore") == {"guarded": 0}  # the kernel dropped the semaphore with the probe
    assert gotel_uprobe_events() == []
    assert app.alive()
    # the target keeps working untraced
    assert len(app.get_json("/fire?probe=tick&n=3")) == 3
