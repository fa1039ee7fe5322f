"""No probe or program outlives its loader: not after a clean stop, not after SIGKILL of the loader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gotel.ebpf.usdt import read_probes
from gotel.golang.elf import ElfImage
from tests.integration.ebpf.conftest import (
    gotel_uprobe_events,
    own_prog_ids,
    prog_exists,
    read_text_byte,
    wait_until,
)

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
from gotel.ebpf.goprobes import GoTargets
from gotel.ebpf.targets import function_sites
go = BpfProgram("gocount.c")
sites = function_sites(f"/proc/{pid}/exe", ["main.request"], "gotel_gocount")
GoTargets(go).add_process(pid, f"/proc/{pid}/exe", sites)
print(json.dumps({"probes": prog.probe_count(), "go_sites": [s.vaddr for s in sites]}), flush=True)
time.sleep(600)
"""


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
        up = json.loads(line)
        assert up["probes"] == 2, f"loader did not come up: {line!r}"
        go_sites = up["go_sites"]
        assert len(go_sites) >= 2  # entry (past the prologue) and the RETs of main.request
        go_before = [read_text_byte(app.pid, a) for a in go_sites]  # int3 already: record the file's bytes
        ids = own_prog_ids(loader.pid)
        assert len(ids) >= 4  # usdt, gocount and the two tracepoint programs
        assert [read_text_byte(app.pid, a) for a in sites] == [0xCC] * len(sites)
        assert go_before == [0xCC] * len(go_sites)
        assert app.get_json("/semaphore") == {"guarded": 1}
        os.kill(loader.pid, signal.SIGKILL)
        loader.wait(timeout=10)
    finally:
        if loader.poll() is None:
            loader.kill()
            loader.wait()
    assert wait_until(lambda: [read_text_byte(app.pid, a) for a in sites] == before), "int3 left in the target"
    img = ElfImage(str(app.binary))  # the Go sites hold their original instructions again
    original = [img.data[img.vaddr_to_offset(a)] for a in go_sites]
    img.close()
    assert wait_until(lambda: [read_text_byte(app.pid, a) for a in go_sites] == original)
    assert 0xCC not in original
    assert wait_until(lambda: not any(prog_exists(i) for i in ids)), "BPF programs outlived their loader"
    assert app.get_json("/semaphore") == {"guarded": 0}  # the kernel dropped the semaphore with the probe
    assert gotel_uprobe_events() == []
    assert app.alive()
    # the target keeps working untraced
    assert len(app.get_json("/fire?probe=tick&n=3")) == 3
