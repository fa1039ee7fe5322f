"""Program runs the kernel skips because they would nest on one CPU are events a receiver never sees:
BpfProgram reads the kernel's count of them and LostCounter exports it, so the loss is visible."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from gotel.component.contract import Kind
from gotel.ebpf.program import BpfProgram, LostCounter
from gotel.telemetry.counters import Telemetry

# Every getppid() of this process prints once from a syscall tracepoint; the raw-tracepoint program on
# bpf_trace_printk runs for that print and prints again itself, and that nested print's run is skipped.
SRC = r"""
TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    bpf_trace_printk("gotel test: outer\n");
    return 0;
}
RAW_TRACEPOINT_PROBE(bpf_trace_printk) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET)
        return 0;
    bpf_trace_printk("gotel test: nested\n");
    return 0;
}
"""


def _kernel_at_least(major: int, minor: int) -> bool:
    k = platform.release().split("-")[0].split(".")
    return (int(k[0]), int(k[1])) >= (major, minor)


@pytest.mark.skipif(not _kernel_at_least(6, 3), reason="before 6.3, bpf_trace_printk held a lock across its "
                    "tracepoint: the nested print would deadlock instead of being skipped")
def test_nested_runs_the_kernel_skips_are_counted_and_exported() -> None:
    prog = BpfProgram(SRC, defines={"TARGET": os.getpid()})
    try:
        t = Telemetry()
        lost = LostCounter(prog, t.component("net", Kind.RECEIVER), "net")
        assert lost.update() == (0, 0, 0)
        for _ in range(7):
            os.getppid()
        assert prog.skipped_runs() == 7
        # the kernel's own figure, as bpftool reports it for the program
        out = json.loads(subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                                        check=True).stdout)
        ids = {int(line.split()[1]) for fn in prog.bpf.funcs.values()
               for line in Path(f"/proc/self/fdinfo/{fn.fd}").read_text().splitlines() if line.startswith("prog_id:")}
        assert sum(p.get("recursion_misses", 0) for p in out if p["id"] in ids) == 7
        assert lost.update() == (0, 0, 7)
        assert t.registry.get_sample_value("gotel_ebpf_lost_events_total", {
            "component": "net", "kind": "receiver", "program": "net", "reason": "skipped_nested"}) == 7
    finally:
        prog.close()
