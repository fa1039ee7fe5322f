"""Container id and pod uid of a process, read from /proc/PID/cgroup.

Shared by the k8s_attributes and resource_detection processors and by process discovery: a
process on a Kubernetes node belongs to a pod only through its cgroup path, which each container
runtime and cgroup driver spells differently (reference: protocols.md section 2.3):

* containerd, systemd driver: ``.../kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope``
* containerd, systemd driver on cgroup v1 (some distributions): ``...slice:cri-containerd:<id>``
* CRI-O, systemd driver: ``.../crio-<id>.scope`` (``crio-conmon-<id>.scope`` is the monitor, not the
  container)
* Docker / cri-dockerd, systemd driver: ``.../docker-<id>.scope``; plain Docker: ``/docker/<id>``
* cgroupfs driver (any runtime): ``/kubepods/burstable/pod<uid>/<id>``
* podman: ``libpod-<id>.scope``

Lines are ``hierarchy-id:controllers:path``; cgroup v1 has one line per controller, v2 a single
``0::/path``. An id is 64 lower-case hex characters; anything shorter (this machine's
``/process_api/<32 hex>``) is not a container.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gotel.host.procfs import process_start_time

_ID = r"[0-9a-f]{64}"
# One path segment that names a container, tried from the leaf up (a process may sit in a child
# cgroup of its container, e.g. systemd inside the container).
_SEGMENT_RES = (
    re.compile(rf"^(?:cri-containerd|crio|docker|libpod|containerd)-({_ID})\.scope$"),
    re.compile(rf"^.*:(?:cri-containerd|crio|docker|containerd):({_ID})$"),
    re.compile(rf"^({_ID})$"),
)
_NOT_CONTAINER = re.compile(r"^crio-conmon-|^conmon-")
# kubepods-burstable-pod1b2c..._...slice (systemd) or pod1b2c...-... (cgroupfs)
_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$")


@dataclass(frozen=True, slots=True)
class CgroupInfo:
    """What a process's cgroup says about it: container id and pod uid, either may be empty."""

    container_id: str = ""
    pod_uid: str = ""

    def __bool__(self) -> bool:
        return bool(self.container_id or self.pod_uid)


NO_CONTAINER = CgroupInfo()


def parse_path(path: str) -> CgroupInfo:
    """Container id and pod uid from one cgroup path."""
    cid = ""
    uid = ""
    segments = path.rstrip("/").split("/")
    for seg in reversed(segments):
        if not cid and not _NOT_CONTAINER.match(seg):
            for rx in _SEGMENT_RES:
                m = rx.match(seg)
                if m:
                    cid = m.group(1)
                    break
        if not uid:
            # the systemd driver's ":cri-containerd:<id>" suffix hangs off the pod slice's name
            m = _POD_UID.search(seg.split(":", 1)[0])
            if m:
                uid = m.group(1).replace("_", "-")
        if cid and uid:
            break
    return CgroupInfo(cid, uid)


def parse_cgroup_file(text: str) -> CgroupInfo:
    """Parses the contents of /proc/PID/cgroup (v1, v2 or hybrid); the first line naming a container wins."""
    best = NO_CONTAINER
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        info = parse_path(parts[2])
        if info.container_id:
            return info if info.pod_uid or not best.pod_uid else CgroupInfo(info.container_id, best.pod_uid)
        if info.pod_uid and not best.pod_uid:
            best = info
    return best


def container_id(text: str) -> str:
    """The container id in a /proc/PID/cgroup text, or ''."""
    return parse_cgroup_file(text).container_id


def container_id_in_paths(paths: Mapping[str, str]) -> str | None:
    """The container id in cgroup paths already split by controller (host.procfs.proc_cgroups)."""
    for path in paths.values():
        cid = parse_path(path).container_id
        if cid:
            return cid
    return None


def read_pid(pid: int, proc_root: str = "/proc") -> CgroupInfo | None:
    """CgroupInfo of a live process; None when it is gone or unreadable."""
    try:
        with open(f"{proc_root}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            return parse_cgroup_file(f.read())
    except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
        return None
    except OSError:
        return None


class PidCgroupCache:
    """pid -> CgroupInfo with invalidation when the process exits (or its pid is reused).

    Lookups are a dict access; a sweep, at most every ``sweep_interval`` seconds and run by the
    caller's lookups, drops entries whose process is gone or restarted under the same pid. Results
    for processes outside any container are kept for ``negative_ttl`` seconds only, since a
    process may still be moved into its container's cgroup just after it started.
    """

    def __init__(
        self,
        proc_root: str = "/proc",
        *,
        sweep_interval: float = 5.0,
        negative_ttl: float = 5.0,
        max_entries: int = 65536,
    ) -> None:
        self.proc_root = proc_root
        self.sweep_interval = sweep_interval
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        # pid -> (info, start ticks, expiry monotonic time or 0.0 for no expiry)
        self._cache: dict[int, tuple[CgroupInfo, int | None, float]] = {}
        self._next_sweep = time.monotonic() + sweep_interval
        self._lock = threading.Lock()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._cache)

    def get(self, pid: int) -> CgroupInfo | None:
        """CgroupInfo (possibly NO_CONTAINER) or None when the process does not exist."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self.sweep(now)
        hit = self._cache.get(pid)
        if hit is not None and (hit[2] == 0.0 or hit[2] > now):
            return hit[0]
        self.misses += 1
        start = process_start_time(pid, self.proc_root)
        info = read_pid(pid, self.proc_root)
        if info is None or start is None:
            self._cache.pop(pid, None)
            return None
        if len(self._cache) >= self.max_entries:
            self.sweep(now)
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        self._cache[pid] = (info, start, 0.0 if info.container_id else now + self.negative_ttl)
        return info

    def entry(self, pid: int) -> tuple[CgroupInfo, int | None, float] | None:
        """The cached entry itself (no file access): callers that memoise on it compare identity."""
        return self._cache.get(pid)

    def maybe_sweep(self, now: float) -> None:
        if now >= self._next_sweep:
            self.sweep(now)

    def invalidate(self, pid: int) -> None:
        """Forget one pid (a process-exit event from discovery, when there is one)."""
        self._cache.pop(pid, None)

    def sweep(self, now: float | None = None) -> int:
        """Drops entries of exited processes; returns how many went."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._next_sweep = now + self.sweep_interval
            gone = [
                pid
                for pid, (_, start, exp) in list(self._cache.items())
                if (exp and exp <= now) or process_start_time(pid, self.proc_root) != start
            ]
            for pid in gone:
                self._cache.pop(pid, None)
        return len(gone)


def pids_in_cgroup_dir(path: str) -> list[int]:
    """Pids listed in a cgroup directory's cgroup.procs (tests and discovery use it)."""
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []
