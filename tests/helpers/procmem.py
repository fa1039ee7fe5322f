"""Memory of a process tree, read from /proc: PSS and its parts per process, and each one's peak RSS.

The agent is a supervisor plus one process per receiver; its cost to the node is the PSS summed over
that tree (shared pages split between the processes that map them, so the sum never counts them twice).
The tree is found by pid (parent links in /proc/PID/stat), never by name: other gotels may run here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

ROLLUP_FIELDS = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem", "Private_Clean", "Private_Dirty", "Swap")


@dataclass(frozen=True)
class ProcMem:
    """One process's memory in KiB (smaps_rollup), its peak RSS (VmHWM) and a short name from argv."""

    pid: int
    name: str
    kib: dict[str, int]
    hwm_kib: int

    @property
    def pss_mib(self) -> float:
        return self.kib.get("Pss", 0) / 1024

    @property
    def private_mib(self) -> float:
        return (self.kib.get("Private_Clean", 0) + self.kib.get("Private_Dirty", 0)) / 1024


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def tree(root: int) -> list[int]:
    """root and every descendant alive now, parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            pp = _ppid(int(entry))
            if pp is not None:
                children.setdefault(pp, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def _comm(pid: int | None) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _argv(pid: int | None) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _name(pid: int) -> str:
    """'gotel run' for the supervisor, 'receiver go_ebpf' for a receiver process, 'forkserver' for the
    process the receiver processes are forked from, else the command."""
    from gotel.service.forkserver import SERVER_NAME

    comm = _comm(pid)
    if comm == SERVER_NAME:  # forked by `gotel run` (its command line) or exec'd (python -m gotel.service.forkserver)
        return "forkserver"
    argv = _argv(pid)
    # A receiver process forked by the fork server keeps the server's command line (`gotel run`'s, or
    # the exec'd server's) and is named after its receivers; forked twice, its parent is `gotel run`.
    if "gotel.service.forkserver" in argv or (argv and argv == _argv(_ppid(pid)) and "receiver" not in argv):
        return f"receiver {comm}"
    if "receiver" in argv and argv.index("receiver") + 1 < len(argv):
        return "receiver " + argv[argv.index("receiver") + 1]
    if "run" in argv:
        return "gotel run"
    return os.path.basename(argv[0]) if argv else "?"


def proc_mem(pid: int) -> ProcMem | None:
    """None when the process is gone."""
    kib: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ROLLUP_FIELDS:
                    kib[key] = int(rest.split()[0])
        hwm = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return ProcMem(pid, _name(pid), kib, hwm)


def tree_mem(root: int) -> list[ProcMem]:
    """Memory of every process in root's tree (those that exited meanwhile are left out)."""
    return [m for m in (proc_mem(p) for p in tree(root)) if m is not None]


def total_pss_mib(mems: list[ProcMem]) -> float:
    return sum(m.pss_mib for m in mems)


def default_config(telemetry_port: int, prometheus_port: int, pid: int | None = None) -> str:
    """The embedded default config (config/default.yaml) with its two fixed ports replaced by free ones,
    so that a test or benchmark never collides with another agent on this host. With a pid, each
    receiver's discovery selects that process only: on a shared host, Go processes that come and go
    (other builds, other tests) would make the figure theirs."""
    from gotel.config.loader import default_config_text

    text = default_config_text()
    subs = [("127.0.0.1:8888", f"127.0.0.1:{telemetry_port}"), ("127.0.0.1:8889", f"127.0.0.1:{prometheus_port}")]
    if pid is not None:
        for r in ("go_ebpf", "go_runtime", "process", "pprof"):
            if f"  {r}: {{}}" in text:
                subs.append((f"  {r}: {{}}", f"  {r}: {{discovery: {{pids: [{pid}]}}}}"))
            else:  # a block of its own settings: the selection goes first in it
                line = re.search(rf"^  {r}:[ ]*(#.*)?$", text, re.MULTILINE)
                if line is None:
                    raise ValueError(f"config/default.yaml has no receiver {r!r}; update tests/helpers/procmem.py")
                subs.append((line.group(0), f"{line.group(0)}\n    discovery: {{pids: [{pid}]}}"))
    for fixed, repl in subs:
        if fixed not in text:
            raise ValueError(f"config/default.yaml no longer has {fixed!r}; update tests/helpers/procmem.py")
        text = text.replace(fixed, repl)
    return text
