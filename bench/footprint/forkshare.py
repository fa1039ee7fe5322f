"""What a fork server would save: the default agent's four receiver processes exec'd fresh (as gotel
starts them) vs forked from one process that imported their modules first, PSS summed, same run.

    sudo .venv/bin/python bench/footprint/forkshare.py

Each receiver-like process imports what its receiver process imports (the receiver's plugin, the OTLP
exporter, the receiver command), caps its arenas, compiles its BPF program where it has one
(go_ebpf.c, go_runtime.c), collects and trims, then idles. "exec": four fresh interpreters (today's
receiver processes). "fork": one parent imports the union (and bcc), gc.freeze()s it and forks the
four, so import pages stay shared copy-on-write; its own PSS is counted in the sum. Idle processes:
a running receiver unshares some pages as it touches objects. Not a model of gotel's supervisor, a
measurement of the sharing it could get (docs/performance.md). Never fails on the figures.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.procmem import tree_mem

COMMON = ["gotel.receiverhelper.process", "gotel.exporters.otlp", "gotel.cli.commands.receiver", "gotel.host.memory"]
PLUGIN = {"go_ebpf": "gotel.receivers.go_ebpf", "go_runtime": "gotel.receivers.go_runtime",
          "process": "gotel.receivers.process", "pprof": "gotel.receivers.pprof"}
SETTLE = 8.0
_KEEP: list[object] = []  # a child's loaded program, alive until the child is killed


def become(name: str, ready_w: int) -> None:
    """One receiver-like process: its imports, its BPF compile, a trim; then it idles until killed."""
    for m in (*COMMON, PLUGIN[name]):
        importlib.import_module(m)
    from gotel.host import memory
    memory.limit_arenas()
    if name in ("go_ebpf", "go_runtime"):
        from gotel.ebpf.program import BpfProgram

        _KEEP.append(BpfProgram(f"{name}.c", defines={"RINGBUF_PAGES": 64} if name == "go_ebpf" else None))
    gc.collect()
    memory.trim()
    os.write(ready_w, b"x")
    while True:
        time.sleep(60)


def measure(mode: str) -> tuple[float, list[tuple[str, float]]]:
    """PSS (MiB) summed over a fresh measuring process's tree: exec'd or forked receiver-likes."""
    code = subprocess.run([sys.executable, __file__, "--measure", mode], capture_output=True, text=True, check=True)
    total, *rows = code.stdout.strip().splitlines()
    return float(total), [(row.rsplit(" ", 1)[0], float(row.rsplit(" ", 1)[1])) for row in rows]


def run_tree(mode: str) -> None:
    """Runs in its own process (so that its tree holds nothing else) and prints the figures."""
    r, w = os.pipe()
    pids: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    if mode == "fork":
        for m in (*COMMON, *PLUGIN.values()):
            importlib.import_module(m)
        import bcc  # noqa: F401  # libbcc's relocated LLVM: shared too

        gc.collect()
        gc.freeze()
    for name in PLUGIN:
        if mode == "fork":
            pid = os.fork()
            if pid == 0:
                os.close(r)
                become(name, w)
                os._exit(0)
            pids.append(pid)
        else:
            procs.append(subprocess.Popen([sys.executable, __file__, "--child", name, str(w)], pass_fds=(w,)))
    try:
        for _ in PLUGIN:
            os.read(r, 1)  # every child compiled and trimmed
        time.sleep(SETTLE)
        mems = tree_mem(os.getpid())
        print(sum(m.kib["Pss"] for m in mems) / 1024)
        names = {p: n for p, n in zip(pids or [p.pid for p in procs], PLUGIN, strict=True)}
        for m in mems:
            print(names.get(m.pid, "parent"), m.kib["Pss"] / 1024)
    finally:
        for pid in pids or [p.pid for p in procs]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        become(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--measure":
        run_tree(sys.argv[2])
        return
    if os.geteuid() != 0:
        raise SystemExit("bench/footprint/forkshare.py needs root: two of the processes compile BPF programs")
    (ex, ex_rows), (fk, fk_rows) = measure("exec"), measure("fork")
    print("PSS of four receiver-like processes after imports + BPF compile + trim, idle (MiB): exec | fork")
    fk_by = dict(fk_rows)
    for name, v in ex_rows:
        print(f"  {name:<12} {v:7.1f} | {fk_by.get(name, float('nan')):7.1f}")
    print(f"  {'total':<12} {ex:7.1f} | {fk:7.1f} | fork / exec {fk / ex:.2f}x  (the parent counts in both)")


if __name__ == "__main__":
    main()
