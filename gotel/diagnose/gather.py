"""Observes one process for a bounded window and fills a Snapshot for the rules.

Sources, each optional (a missing one is named in ``Snapshot.missing`` with its reason): /proc and
the process's cgroup (always, through gotel.host.procfs), its net/http/pprof endpoint (found on its
listening ports like the pprof receiver's local discovery, or given): the CPU profile over the
window, mutex/block/allocs deltas (receivers/pprof/delta), the heap in use, goroutine dumps every
``interval`` (receivers/pprof/goroutines), and runtime.MemStats from the heap profile's debug=1
trailer (every program that serves pprof serves it; no expvar needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gotel.diagnose.signals import GoroutineDump, ProcSample, Snapshot, parse_memstats
from gotel.formats import pprof
from gotel.host import procfs
from gotel.proto import pprof_profile_pb2 as pb
from gotel.receiverhelper.targets import LocalProcessSource, Target
from gotel.receivers.pprof.delta import DeltaState
from gotel.receivers.pprof.fetch import Fetcher, ScrapeError
from gotel.receivers.pprof.goroutines import parse_dump

log = logging.getLogger(__name__)

NO_PPROF = "no pprof endpoint"
RPC_NOT_GATHERED = ("gRPC call outcomes come from the go_ebpf receiver's spans: eBPF is off (--ebpf off, or "
                    "not root)")
RETRANS_NOT_GATHERED = ("per-peer TCP retransmits come from the net receiver: eBPF is off (--ebpf off, or "
                        "not root)")


class TargetError(Exception):
    """The target cannot be diagnosed at all (no such process); the message says why."""


# --- readers of facts no other module reads ------------------------------------------------------


def node_busy_seconds(proc: str = "/proc") -> float | None:
    """Non-idle CPU time of the whole node (first line of /proc/stat), in seconds."""
    try:
        with open(f"{proc}/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    vals = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(vals) - vals[3] - vals[4]) / procfs.CLK_TCK


def fd_limit(pid: int, proc: str = "/proc") -> int | None:
    """Soft RLIMIT_NOFILE of the process (/proc/PID/limits)."""
    try:
        with open(f"{proc}/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line.split()[3]
                    return int(soft) if soft.isdigit() else None
    except OSError:
        return None
    return None


def go_version(pid: int) -> str | None:
    from gotel.discovery.procfs import exe_path_for_reading
    from gotel.golang.buildinfo import read_buildinfo
    from gotel.golang.elf import ElfImage

    try:
        bi = read_buildinfo(ElfImage(exe_path_for_reading(pid)))
    except Exception as e:  # not ELF, unreadable: the version is then unknown, never a crash
        log.debug("build info of pid %d: %s", pid, e)
        return None
    return bi.go_version if bi is not None else None


def _go_minor(version: str | None) -> tuple[int, int] | None:
    m = re.match(r"go(\d+)\.(\d+)", version or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def gomaxprocs(pid: int, version: str | None, quota: float | None, cpus: int) -> tuple[int | None, str]:
    """GOMAXPROCS as the runtime sets it at start: the environment variable, else the Go version's default
    (Go >= 1.25 follows the cgroup CPU limit, rounded up, at least 2; older ones take the CPU count). A
    program that calls runtime.GOMAXPROCS itself is not seen."""
    from gotel.discovery.procfs import read_environ

    env = read_environ(pid)
    raw = env.get("GOMAXPROCS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw), "GOMAXPROCS environment variable"
    ver = _go_minor(version)
    if ver is None:
        return None, "unknown Go version"
    godebug = env.get("GODEBUG", "")
    if ver >= (1, 25) and quota is not None and "updatemaxprocs=0" not in godebug and "containermaxprocs=0" not in godebug:
        return min(cpus, max(2, math.ceil(quota - 1e-9))), f"{version} default: the cgroup CPU limit"
    return cpus, f"{version} default: CPUs the process may run on"


def read_sample(pid: int, t: float, mounts: procfs.CgroupMounts | None, cg_paths: dict[str, str] | None,
                fds: bool = True) -> ProcSample:
    st = procfs.proc_stat(pid)
    ts = procfs.task_sched(pid)
    s = ProcSample(t=t, cpu_s=st.utime_s + st.stime_s, threads=st.num_threads, run_delay_ns=ts.run_delay_ns,
                   on_cpu_ns=ts.cpu_ns, timeslices=ts.timeslices, node_busy_s=node_busy_seconds())
    if fds:
        with contextlib.suppress(PermissionError):
            s.fds = procfs.fd_kinds(pid)
    if mounts is not None and cg_paths is not None:
        s.cgroup = procfs.cgroup_stats(cg_paths, mounts)
    return s


# --- the gatherer -------------------------------------------------------------------------------


@dataclass
class Options:
    duration: float = 30.0
    interval: float = 1.0  # /proc samples and goroutine dumps
    pprof_url: str | None = None  # e.g. http://127.0.0.1:6060 (path prefix /debug/pprof)
    cpu_profile: bool = True
    ebpf: bool = False  # attach go_ebpf to the target for gRPC call outcomes (needs root / CAP_BPF)


async def find_pprof(pid: int, fetcher: Fetcher) -> Target | None:
    from gotel.discovery import DiscoveryConfig

    src = LocalProcessSource(DiscoveryConfig(pids=[pid], go_only=False), fetcher=fetcher)
    found = await src.targets()
    return found[0] if found else None


class _Pprof:
    def __init__(self, fetcher: Fetcher, target: Target) -> None:
        self.f = fetcher
        self.t = target
        self.prefix = target.path_prefix.rstrip("/")

    async def profile(self, name: str, params: dict[str, str] | None = None, timeout: float | None = None) -> pb.Profile:
        r = await self.f.get(self.t, f"{self.prefix}/{name}", params=params, timeout=timeout)
        return pprof.decode(r.body)

    async def text(self, name: str, params: dict[str, str]) -> str:
        r = await self.f.get(self.t, f"{self.prefix}/{name}", params=params, expect="text")
        return r.body.decode(errors="replace")


async def gather(pid: int, opts: Options) -> Snapshot:
    """Watches pid for opts.duration seconds; raises TargetError when there is no such process."""
    from gotel.discovery.procfs import process_info

    info = process_info(pid)
    if info is None:
        raise TargetError(f"no process with pid {pid} (or it cannot be read: gotel diagnose needs the same user or root)")
    snap = Snapshot(pid=pid)
    snap.target = {"pid": pid, "comm": procfs.proc_stat(pid).comm, "exe": info.exe, "service.name": info.service_name,
                   "container.id": info.container_id}
    snap.process_start_unix_ns = start_unix_ns(pid)
    snap.fd_limit = fd_limit(pid)
    try:
        snap.cpus = len(os.sched_getaffinity(pid))
    except OSError:
        snap.cpus = os.cpu_count() or 1
    snap.go_version = go_version(pid)
    snap.target["go_version"] = snap.go_version
    mounts: procfs.CgroupMounts | None
    cg_paths: dict[str, str] | None
    try:
        mounts, cg_paths = procfs.CgroupMounts.load(), procfs.proc_cgroups(pid)
    except (procfs.ProcessGone, OSError) as e:
        mounts = cg_paths = None
        snap.missing["cgroup"] = f"cgroup of pid {pid} unreadable: {e}"
    snap.missing["retransmits"] = RETRANS_NOT_GATHERED
    spans = None
    if opts.ebpf:
        from gotel.diagnose.spans import EbpfSpans

        spans = EbpfSpans(pid)
        try:
            await spans.start()
        except Exception as e:  # no BPF permission, BCC missing, not traceable: the rule says why
            snap.missing["rpcs"] = f"eBPF (go_ebpf) unavailable for pid {pid}: {e}"
            with contextlib.suppress(Exception):
                await spans.stop()
            spans = None
    else:
        snap.missing["rpcs"] = RPC_NOT_GATHERED
    sys_ = None
    if opts.ebpf:
        from gotel.diagnose.syscalls import EbpfSlowSyscalls

        sys_ = EbpfSlowSyscalls(pid)
        try:
            await sys_.start()
        except Exception as e:  # the dumps still give slow_syscall its answer
            snap.missing["slow_syscalls"] = f"eBPF (sched) unavailable for pid {pid}: {e}"
            with contextlib.suppress(Exception):
                await sys_.stop()
            sys_ = None
    net = None
    if opts.ebpf:
        from gotel.diagnose.retrans import EbpfRetransmits

        net = EbpfRetransmits(pid)
        try:
            await net.start()
        except Exception as e:
            snap.missing["retransmits"] = f"eBPF (net) unavailable for pid {pid}: {e}"
            with contextlib.suppress(Exception):
                await net.stop()
            net = None
        else:
            snap.missing.pop("retransmits", None)

    async def window_starts() -> None:
        for src in (sys_, net):
            if src is not None:
                await src.mark()

    fetcher = Fetcher(timeout=10.0)
    try:
        await _run(snap, pid, opts, fetcher, mounts, cg_paths, window_starts)
    finally:
        if sys_ is not None:  # first: their counts must end with the window
            snap.slow_syscalls = await sys_.stop()
        if net is not None:
            snap.retransmits = await net.stop()
        await fetcher.close()
        if spans is not None:
            snap.rpcs = await spans.stop()
    quota = next((x.cgroup.quota_cores for x in reversed(snap.samples) if x.cgroup is not None), None)
    snap.gomaxprocs, snap.gomaxprocs_source = gomaxprocs(pid, snap.go_version, quota, snap.cpus)
    return snap


def start_unix_ns(pid: int) -> int | None:
    try:
        ticks = procfs.proc_stat(pid).starttime_ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (procfs.ProcessGone, OSError, ValueError):
        return None
    boot = time.time() - uptime
    return int((boot + ticks / procfs.CLK_TCK) * 1e9)


async def _run(snap: Snapshot, pid: int, opts: Options, fetcher: Fetcher, mounts: procfs.CgroupMounts | None,  # noqa: C901 (one gather step per signal source, in order)
               cg_paths: dict[str, str] | None, at_start: Callable[[], Awaitable[None]] | None = None) -> None:
    target = Target(url=opts.pprof_url.rstrip("/"), pid=pid) if opts.pprof_url else await find_pprof(pid, fetcher)
    pp = _Pprof(fetcher, target) if target is not None else None
    if pp is None:
        why = (f"{NO_PPROF}: none of pid {pid}'s listening ports serves /debug/pprof/ "
               "(import _ \"net/http/pprof\", or pass --pprof URL)")
        for sig in ("memstats", "goroutine_dumps", "contention", "cpu_profile", "allocs", "heap"):
            snap.missing[sig] = why
    else:
        snap.target["pprof"] = target.url if target is not None else None
    deltas = {k: DeltaState(k) for k in ("allocs", "mutex", "block")}
    ident = (pid, snap.process_start_unix_ns)

    async def baseline_or_delta(kind: str) -> pb.Profile | None:
        assert pp is not None
        try:
            p = await pp.profile(kind)
        except (ScrapeError, pprof.PprofError) as e:
            snap.missing.setdefault("contention" if kind != "allocs" else "allocs", f"{kind} profile: {e}")
            return None
        return deltas[kind].apply(p, ident).profile

    async def memstats(t: float) -> None:
        assert pp is not None
        try:
            m = parse_memstats(await pp.text("heap", {"debug": "1"}), t)
        except ScrapeError as e:
            snap.missing.setdefault("memstats", f"heap?debug=1: {e}")
            return
        if m is None:
            snap.missing.setdefault("memstats", "heap?debug=1 has no runtime.MemStats trailer")
        else:
            snap.memstats.append(m)

    async def dump(t: float) -> None:
        assert pp is not None
        try:
            gs = parse_dump(await pp.text("goroutine", {"debug": "2"}))
        except ScrapeError as e:
            snap.missing.setdefault("goroutine_dumps", f"goroutine?debug=2: {e}")
            return
        snap.goroutine_dumps.append(GoroutineDump(t, gs))

    def sample(t: float) -> None:
        try:
            snap.samples.append(read_sample(pid, t, mounts, cg_paths))
        except procfs.ProcessGone:
            snap.missing.setdefault("proc", f"pid {pid} exited during the window")

    if at_start is not None:
        await at_start()
    t0 = time.monotonic()
    snap.start_unix = time.time()
    sample(t0)
    cpu_task: asyncio.Task[pb.Profile] | None = None
    prof_t0 = t0
    if pp is not None:
        await asyncio.gather(memstats(t0), dump(t0), *(baseline_or_delta(k) for k in deltas))
        prof_t0 = time.monotonic()
        secs = max(1, round(opts.duration))
        if opts.cpu_profile:
            cpu_task = asyncio.ensure_future(pp.profile("profile", {"seconds": str(secs)}, timeout=secs + 15.0))
    end = t0 + opts.duration
    while True:
        now = time.monotonic()
        if now >= end:
            break
        await asyncio.sleep(min(opts.interval, end - now))
        t = time.monotonic()
        sample(t)
        if pp is not None and t < end - opts.interval / 2:
            await dump(t)
    if pp is not None:
        t1 = time.monotonic()
        results = await asyncio.gather(memstats(t1), dump(t1), *(baseline_or_delta(k) for k in deltas))
        snap.allocs, snap.mutex, snap.block = results[2], results[3], results[4]
        snap.profile_seconds = time.monotonic() - prof_t0
        try:
            snap.heap = await pp.profile("heap")
        except (ScrapeError, pprof.PprofError) as e:
            snap.missing.setdefault("heap", f"heap profile: {e}")
        if cpu_task is not None:
            try:
                snap.cpu_profile = await cpu_task
            except (ScrapeError, pprof.PprofError) as e:
                snap.missing.setdefault("cpu_profile", f"CPU profile: {e}")
    sample(time.monotonic())
    snap.end_unix = time.time()
    snap.duration_s = snap.end_unix - snap.start_unix
