"""Readers for /proc and cgroup files (v1 and v2): the numbers the kernel itself keeps per task and cgroup.

Everything takes a ``root`` ("/" normally) so that tests can point it at recorded real file contents.
A process can exit between two reads: readers raise ProcessGone, never a bare OSError.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcessGone(Exception):
    """The process (or thread) exited while we read it."""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(path) from e


def _read_opt(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@dataclass
class TaskSched:
    """Per-thread scheduler figures, summed over a process's live threads."""

    cpu_ns: int = 0  # schedstat field 1: time on CPU
    run_delay_ns: int = 0  # schedstat field 2: time runnable but waiting for a CPU
    timeslices: int = 0  # schedstat field 3
    voluntary: int = 0  # status voluntary_ctxt_switches
    involuntary: int = 0  # status nonvoluntary_ctxt_switches
    threads: int = 0


@dataclass
class ProcStat:
    pid: int
    comm: str
    utime_s: float
    stime_s: float
    num_threads: int
    starttime_ticks: int


def proc_stat(pid: int, proc: str = "/proc") -> ProcStat:
    raw = _read(f"{proc}/{pid}/stat")
    # comm may contain spaces and parentheses: split at the last ')'.
    lp, rp = raw.index("("), raw.rindex(")")
    rest = raw[rp + 2 :].split()
    # rest[0] is field 3 (state); utime is field 14, stime 15, num_threads 20, starttime 22.
    return ProcStat(
        pid=pid,
        comm=raw[lp + 1 : rp],
        utime_s=int(rest[11]) / CLK_TCK,
        stime_s=int(rest[12]) / CLK_TCK,
        num_threads=int(rest[17]),
        starttime_ticks=int(rest[19]),
    )


def thread_ids(pid: int, proc: str = "/proc") -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"{proc}/{pid}/task")]
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(str(pid)) from e


def task_sched(pid: int, proc: str = "/proc") -> TaskSched:
    """Sums schedstat and context-switch counts over the live threads (exited threads are not kept)."""
    out = TaskSched()
    for tid in thread_ids(pid, proc):
        base = f"{proc}/{pid}/task/{tid}"
        ss = _read_opt(f"{base}/schedstat")
        st = _read_opt(f"{base}/status")
        if st is None:
            continue  # thread exited between listdir and read
        out.threads += 1
        if ss:
            parts = ss.split()
            out.cpu_ns += int(parts[0])
            out.run_delay_ns += int(parts[1])
            out.timeslices += int(parts[2])
        for line in st.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out.voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                out.involuntary += int(line.split()[1])
    if out.threads == 0:
        raise ProcessGone(str(pid))
    return out


# /proc/PID/sched fields worth exporting; present only with CONFIG_SCHED_DEBUG (and the *_sum ones
# only with schedstats enabled). name in the file -> (metric suffix, unit, scale to the unit)
SCHED_FIELDS: dict[str, tuple[str, str, float]] = {
    "se.nr_migrations": ("migrations", "{migration}", 1.0),
    "nr_migrations_cold": ("migrations.cold", "{migration}", 1.0),
    "se.statistics.wait_sum": ("wait.time", "s", 1e-3),
    "wait_sum": ("wait.time", "s", 1e-3),
    "se.statistics.iowait_sum": ("iowait.time", "s", 1e-3),
    "iowait_sum": ("iowait.time", "s", 1e-3),
    "sum_block_runtime": ("block.time", "s", 1e-3),
    "sum_sleep_runtime": ("sleep.time", "s", 1e-3),
    "nr_wakeups": ("wakeups", "{wakeup}", 1.0),
}


def proc_sched(pid: int, proc: str = "/proc") -> dict[str, float]:
    """Known fields of /proc/PID/sched (main thread), as {metric suffix: value in unit}; {} if absent."""
    raw = _read_opt(f"{proc}/{pid}/sched")
    out: dict[str, float] = {}
    if not raw:
        return out
    for line in raw.splitlines():
        name, sep, val = line.partition(":")
        if not sep:
            continue
        spec = SCHED_FIELDS.get(name.strip())
        if spec is None:
            continue
        try:
            out[spec[0]] = float(val.strip()) * spec[2]
        except ValueError:
            continue
    return out


def fd_links(pid: int, proc: str = "/proc") -> dict[int, str]:
    """fd number -> what it points at (the readlink of /proc/PID/fd/N); fds closed meanwhile are left out."""
    d = f"{proc}/{pid}/fd"
    try:
        names = os.listdir(d)
    except (FileNotFoundError, ProcessLookupError) as e:
        raise ProcessGone(str(pid)) from e
    out = {}
    for n in names:
        try:
            out[int(n)] = os.readlink(f"{d}/{n}")
        except OSError:
            continue  # closed meanwhile
    return out


FD_KINDS = ("socket", "pipe", "eventfd", "anon", "file", "other")


def fd_kind(link: str) -> str:
    """The kind of one fd from its link: eventfd apart from the other anonymous inodes (epoll, timerfd…)
    because a leaked eventfd is a common Go/cgo leak of its own."""
    if link.startswith("socket:"):
        return "socket"
    if link.startswith("pipe:"):
        return "pipe"
    if link == "anon_inode:[eventfd]":
        return "eventfd"
    if link.startswith("anon_inode:"):
        return "anon"
    if link.startswith("/"):
        return "file"
    return "other"


def fd_kinds(pid: int, proc: str = "/proc") -> dict[str, int]:
    """Open file descriptors by kind: socket, pipe, eventfd, anon (other anon_inode:*), file, other."""
    out = dict.fromkeys(FD_KINDS, 0)
    for link in fd_links(pid, proc).values():
        out[fd_kind(link)] += 1
    return out


# --- cgroups ---


@dataclass
class CgroupMounts:
    """Where each v1 controller and the v2 hierarchy are mounted (mount point, root inside the fs)."""

    v1: dict[str, tuple[str, str]] = field(default_factory=dict)
    v2: tuple[str, str] | None = None

    @classmethod
    def from_mountinfo(cls, text: str) -> CgroupMounts:
        out = cls()
        for line in text.splitlines():
            left, sep, right = line.partition(" - ")
            if not sep:
                continue
            lf = left.split()
            rf = right.split()
            if len(lf) < 5 or len(rf) < 3:
                continue
            root, mnt, fstype = lf[3], lf[4], rf[0]
            if fstype == "cgroup2":
                out.v2 = (mnt, root)
            elif fstype == "cgroup":
                for opt in rf[2].split(","):
                    if opt in ("cpu", "cpuacct", "memory", "cpuset", "pids", "blkio") and opt not in out.v1:
                        out.v1[opt] = (mnt, root)
        return out

    @classmethod
    def load(cls, proc: str = "/proc") -> CgroupMounts:
        return cls.from_mountinfo(_read(f"{proc}/self/mountinfo"))


def proc_cgroups(pid: int, proc: str = "/proc") -> dict[str, str]:
    """Controller -> path from /proc/PID/cgroup; the v2 entry is under key ''."""
    out: dict[str, str] = {}
    for line in _read(f"{proc}/{pid}/cgroup").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ctrls, path = parts[1], parts[2]
        if ctrls == "":
            out[""] = path
        for c in ctrls.split(","):
            if c:
                out[c] = path
    return out


def process_start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): tells a pid's reuse from the original."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = data[data.rfind(b")") + 2 :].split()
    try:
        return int(rest[19])
    except (IndexError, ValueError):
        return None


def _join(mount: tuple[str, str], path: str) -> str:
    mnt, root = mount
    rel = path
    if root != "/" and rel.startswith(root):
        rel = rel[len(root) :]
    return os.path.join(mnt, rel.lstrip("/"))


def _kv(text: str | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    t = text.strip()
    if not t or t == "max":
        return None
    try:
        return int(t)
    except ValueError:
        return None


@dataclass
class CgroupStats:
    """A cgroup's CPU and memory figures in common units; None where the kernel gave nothing."""

    version: int
    path: str
    cpu_usage_s: float | None = None
    cpu_user_s: float | None = None
    cpu_system_s: float | None = None
    periods: int | None = None
    throttled_periods: int | None = None
    throttled_s: float | None = None
    quota_cores: float | None = None  # cpu.max / cfs quota divided by period; None = unlimited
    memory_usage: int | None = None
    memory_limit: int | None = None  # None = unlimited
    pressure_some_s: float | None = None
    pressure_full_s: float | None = None


# v1 reports "no limit" for memory as a huge page-rounded number.
_V1_MEM_UNLIMITED = 1 << 62


def cgroup_stats(paths: dict[str, str], mounts: CgroupMounts) -> CgroupStats | None:
    """Reads the cpu/memory figures for a process's cgroups: v1 controllers where mounted, else v2."""
    v1 = mounts.v1
    if "cpu" in v1 and "cpu" in paths:
        cpu_dir = _join(v1["cpu"], paths["cpu"])
        st = CgroupStats(version=1, path=paths["cpu"])
        stat = _kv(_read_opt(f"{cpu_dir}/cpu.stat"))
        st.periods = stat.get("nr_periods")
        st.throttled_periods = stat.get("nr_throttled")
        if "throttled_time" in stat:
            st.throttled_s = stat["throttled_time"] / 1e9
        quota = _read_opt(f"{cpu_dir}/cpu.cfs_quota_us")
        period = _int(_read_opt(f"{cpu_dir}/cpu.cfs_period_us"))
        q = int(quota.strip()) if quota and quota.strip().lstrip("-").isdigit() else -1
        if q > 0 and period:
            st.quota_cores = q / period
        acct_mount = v1.get("cpuacct")
        if acct_mount and "cpuacct" in paths:
            acct = _int(_read_opt(f"{_join(acct_mount, paths['cpuacct'])}/cpuacct.usage"))
            if acct is not None:
                st.cpu_usage_s = acct / 1e9
        if "memory" in v1 and "memory" in paths:
            mem_dir = _join(v1["memory"], paths["memory"])
            st.memory_usage = _int(_read_opt(f"{mem_dir}/memory.usage_in_bytes"))
            lim = _int(_read_opt(f"{mem_dir}/memory.limit_in_bytes"))
            st.memory_limit = lim if lim is not None and lim < _V1_MEM_UNLIMITED else None
        return st
    if mounts.v2 is not None and "" in paths:
        return cgroup_v2_stats(_join(mounts.v2, paths[""]), paths[""])
    return None


def parse_pressure(text: str | None) -> tuple[float | None, float | None]:
    """cpu.pressure -> (some total, full total) in seconds."""
    some = full = None
    for line in (text or "").splitlines():
        parts = line.split()
        if not parts:
            continue
        tot = next((p.split("=", 1)[1] for p in parts[1:] if p.startswith("total=")), None)
        if tot is None:
            continue
        if parts[0] == "some":
            some = int(tot) / 1e6
        elif parts[0] == "full":
            full = int(tot) / 1e6
    return some, full


def cgroup_v2_stats(d: str, path: str) -> CgroupStats:
    st = CgroupStats(version=2, path=path)
    stat = _kv(_read_opt(f"{d}/cpu.stat"))
    if "usage_usec" in stat:
        st.cpu_usage_s = stat["usage_usec"] / 1e6
    if "user_usec" in stat:
        st.cpu_user_s = stat["user_usec"] / 1e6
    if "system_usec" in stat:
        st.cpu_system_s = stat["system_usec"] / 1e6
    st.periods = stat.get("nr_periods")
    st.throttled_periods = stat.get("nr_throttled")
    if "throttled_usec" in stat:
        st.throttled_s = stat["throttled_usec"] / 1e6
    cmax = _read_opt(f"{d}/cpu.max")
    if cmax:
        parts = cmax.split()
        if len(parts) == 2 and parts[0] != "max":
            st.quota_cores = int(parts[0]) / int(parts[1])
    st.memory_usage = _int(_read_opt(f"{d}/memory.current"))
    st.memory_limit = _int(_read_opt(f"{d}/memory.max"))
    st.pressure_some_s, st.pressure_full_s = parse_pressure(_read_opt(f"{d}/cpu.pressure"))
    return st
