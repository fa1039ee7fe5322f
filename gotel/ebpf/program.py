"""One compiled BCC program per receiver, with uprobes attached per binary or per process and detached cleanly.

Uprobes are created through perf_event_open (BCC's default when the kernel has the uprobe PMU, as every
kernel >= 4.17 does), so they live exactly as long as their file descriptor: closing the program, or the
process dying for any reason including SIGKILL, removes them. Nothing is written to uprobe_events.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import struct
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gotel.ebpf.checks import require_bpf
from gotel.host.memory import drop_code, trim
from gotel.host.memory import enabled as memory_enabled

log = logging.getLogger(__name__)


def bpf_source_dir() -> Path:
    return Path(str(resources.files("gotel.bpf")))


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def inline_includes(text: str, include_dir: Path, seen: set[str] | None = None) -> str:
    """Pastes gotel's own headers into the program text.

    BCC rewrites map method calls (map.lookup(), ringbuf_reserve(), ...) only in the main file, so
    helpers in bpf/include/*.h that touch maps must become part of it. Each header is pasted once.
    """
    seen = set() if seen is None else seen

    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        path = include_dir / name
        if not path.is_file():
            return m.group(0)
        if name in seen:
            return ""
        seen.add(name)
        return f"/* ---- {name} ---- */\n" + inline_includes(path.read_text(), include_dir, seen)

    return _INCLUDE.sub(repl, text)


@dataclass(frozen=True)
class BinaryKey:
    """A traced binary by device and inode: the same file under two paths (containers) is one binary."""

    dev: int
    ino: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> BinaryKey:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino)


@dataclass
class _Attached:
    path: str
    events: list[bytes] = field(default_factory=list)  # BCC-managed uprobes, by event name
    fds: list[int] = field(default_factory=list)  # uprobes opened here (with a USDT semaphore)


_UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5: every field used here, and known to every kernel >= 4.18


def _file_offset(path: str, vaddr: int) -> int:
    """File offset of a virtual address, through the PT_LOAD segment that maps it."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return int(vaddr - seg["p_vaddr"] + seg["p_offset"])
    raise ProbeAttachError(f"{vaddr:#x} is not in a loaded segment of {path}")


class ProbeAttachError(RuntimeError):
    pass


def _close_perf_fds(fds: list[int]) -> None:
    """Closes uprobe perf events concurrently.

    Unregistering a uprobe waits for an RCU grace period (~0.1 s each on this kernel); the waits
    overlap when the closes run in parallel (ctypes releases the GIL), so detaching 200 probes takes
    a fraction of a second instead of 20 s.
    """
    from concurrent.futures import ThreadPoolExecutor

    from bcc.libbcc import lib

    if len(fds) <= 1:
        for fd in fds:
            lib.bpf_close_perf_event_fd(fd)
        return
    with ThreadPoolExecutor(max_workers=min(64, len(fds)), thread_name_prefix="gotel-detach") as ex:
        list(ex.map(lib.bpf_close_perf_event_fd, fds))


# libbcc's C API builds every module with its "rw engine" on: then the module keeps the LLVM context
# and the JIT engine it compiled with for as long as the program lives, to offer sscanf/snprintf of
# table keys and values (Table.key_sprintf & co.), which gotel never calls. Built with the engine off,
# BCC copies the compiled sections and frees LLVM's memory at the end of the compile (BPFModule::finalize):
# go_ebpf.c keeps 12 MB less C heap (tests/e2e/test_footprint, bench/footprint). The module is built
# through libbcc's exported C++ BPFModule(flags, ts, rw_engine_enabled, maps_ns, allow_rlimit, dev)
# and load_string(text, cflags, n): the same two calls bpf_module_create_c_from_string makes, with the
# one argument changed. Symbols missing (another libbcc) or GOTEL_BCC_RW_ENGINE=1: BCC's own path.
_BPFMODULE_CTOR = ("_ZN4ebpf9BPFModuleC1EjPNS_12TableStorageEbRKNSt7__cxx1112basic_stringIcSt11char_traits"
                   "IcESaIcEEEbPKc")
_BPFMODULE_LOAD = "_ZN4ebpf9BPFModule11load_stringERKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEEPPKci"
_BPFMODULE_ALLOC = 16384  # bytes for one BPFModule object (it is well under 2 KiB on x86-64)
_lean_installed = False


class _StdString(ctypes.Structure):
    """libstdc++'s std::string (C++11 ABI), as read by a const std::string& parameter."""

    _fields_ = [("p", ctypes.c_void_p), ("n", ctypes.c_size_t), ("local", ctypes.c_char * 16)]


def _std_string(data: bytes, keep: list[Any]) -> _StdString:
    buf = ctypes.create_string_buffer(data, len(data) + 1)
    s = _StdString(ctypes.addressof(buf), len(data))
    keep += [buf, s]
    return s


def _compile_lean() -> None:
    """Makes BCC build its modules without the rw engine in this process (see above); once."""
    global _lean_installed
    if _lean_installed or os.environ.get("GOTEL_BCC_RW_ENGINE", "") not in ("", "0") or not memory_enabled():
        return
    from bcc.libbcc import lib

    try:
        stdcxx = ctypes.CDLL("libstdc++.so.6")
        new = stdcxx._Znwm  # operator new: the module is freed with delete by bpf_module_destroy
        ctor, load = getattr(lib, _BPFMODULE_CTOR), getattr(lib, _BPFMODULE_LOAD)
    except (OSError, AttributeError):
        _lean_installed = True
        return
    new.restype, new.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    ctor.restype = None
    ctor.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p,
                     ctypes.c_bool, ctypes.c_char_p]
    load.restype, load.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]

    def create(text: bytes, flags: int, cflags: Any, ncflags: int, allow_rlimit: bool = True,
               device: bytes | None = None) -> int | None:
        keep: list[Any] = []
        mod = new(_BPFMODULE_ALLOC)
        ctypes.memset(mod, 0, _BPFMODULE_ALLOC)
        ctor(mod, flags, None, False, ctypes.byref(_std_string(b"", keep)), allow_rlimit, device)
        if load(mod, ctypes.byref(_std_string(text, keep)), cflags, ncflags) != 0:
            lib.bpf_module_destroy(mod)
            return None
        return int(mod)

    lib.bpf_module_create_c_from_string = create
    _lean_installed = True


def lift_probe_quota() -> int:
    """BCC refuses a process's 1,001st open probe (a counter of its own, ``BCC_PROBE_LIMIT``), while the
    kernel's limit is the fd table: per-process Go uprobes (~30 a process) on 35 traced processes pass
    1,000. Raise the soft fd limit to the hard one and let BCC open probes up to it, leaving 1,024 fds for
    everything else; a limit the operator set in the environment is kept. Returns the limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if os.environ.get("BCC_PROBE_LIMIT", "").isdigit():
        return int(os.environ["BCC_PROBE_LIMIT"])
    limit = max(1000, (soft if soft != resource.RLIM_INFINITY else 1 << 20) - 1024)
    os.environ["BCC_PROBE_LIMIT"] = str(limit)
    return limit


class BpfProgram:
    """A BCC program compiled once; attach/detach per binary; tracepoints; ring buffers."""

    def __init__(
        self,
        source: str,
        *,
        cflags: Iterable[str] = (),
        defines: dict[str, Any] | None = None,
        check: bool = True,
    ) -> None:
        """source: a file name under gotel.bpf (e.g. "usdt.c") or C text containing a newline."""
        if check:
            require_bpf()
        from bcc import BPF

        lift_probe_quota()
        src_dir = bpf_source_dir()
        text = source if "\n" in source else (src_dir / source).read_text()
        text = inline_includes(text, src_dir / "include")
        flags = [f"-I{src_dir / 'include'}", "-Wno-macro-redefined", "-Wno-unused-function", *cflags]
        for k, v in (defines or {}).items():
            flags.append(f"-D{k}={v}")
        self._lock = threading.Lock()
        # libbpf's ring_buffer__consume loses records when two threads call it at once.
        self._consume_lock = threading.Lock()
        self._rings: list[tuple[Any, list[bytes]]] = []  # (gotel.ebpf.ringbuf.RingReader, records)
        _compile_lean()
        self.bpf = BPF(text=text.encode(), cflags=flags)
        trim()  # clang/LLVM's freed heap: tens of MB per compile otherwise stay with the process
        drop_code()  # and the compiler's code pages the compile touched (left to the page cache)
        self._binaries: dict[Hashable, _Attached] = {}  # by BinaryKey, or (BinaryKey, pid)
        self._closed = False

    # ---- uprobes -------------------------------------------------------------------------------

    def attach_uprobe(
        self,
        path: str,
        vaddr: int,
        fn_name: str,
        key: Hashable | None = None,
        semaphore: int = 0,
        pid: int = -1,
    ) -> None:
        """A uprobe at a virtual address of the binary (symbol value or RET address).

        pid=-1: one probe serves every process running the binary, including ones started later; the
        BPF side filters by its pid map. A pid: the kernel writes the breakpoint only into that
        process's memory, so other processes of the binary never trap. `key` groups probes for
        detach() (default: the binary). `semaphore` (a USDT semaphore's virtual address, pid=-1 only)
        makes the kernel itself raise the semaphore in every process mapping the binary while the probe
        exists, and drop it when the fd closes — also when gotel is killed.
        """
        key = key or BinaryKey.of(path)
        if semaphore:
            fd = self._open_uprobe_with_semaphore(path, vaddr, fn_name, semaphore)
            with self._lock:
                self._binaries.setdefault(key, _Attached(path)).fds.append(fd)
            return
        before = set(self.bpf.uprobe_fds)
        try:
            self.bpf.attach_uprobe(name=path.encode(), addr=vaddr, fn_name=fn_name.encode(), pid=pid)
        except Exception as e:
            who = "" if pid == -1 else f" for pid {pid}"
            raise ProbeAttachError(f"cannot attach {fn_name} at {vaddr:#x} in {path}{who}: {e}") from e
        new = [ev for ev in self.bpf.uprobe_fds if ev not in before]
        with self._lock:
            self._binaries.setdefault(key, _Attached(path)).events.extend(new)

    def _open_uprobe_with_semaphore(self, path: str, vaddr: int, fn_name: str, semaphore: int) -> int:
        """perf_event_open on the uprobe PMU with ref_ctr_offset (kernel >= 4.20); BCC 0.26 has no such option."""
        from bcc import BPF
        from bcc.libbcc import lib

        try:
            pmu = int(_UPROBE_PMU.read_text())
        except OSError as e:
            raise ProbeAttachError(f"no uprobe PMU ({_UPROBE_PMU}): cannot honour USDT semaphores") from e
        offset = _file_offset(path, vaddr)
        ref_ctr = _file_offset(path, semaphore)
        fn = self.bpf.load_func(fn_name.encode(), BPF.KPROBE)
        cpath = ctypes.create_string_buffer(os.fsencode(path))
        attr = (ctypes.c_ubyte * 128)()
        struct.pack_into("<IIQQ", attr, 0, pmu, _PERF_ATTR_SIZE, ref_ctr << 32, 1)  # type, size, config, period
        struct.pack_into("<I", attr, 48, 1)  # wakeup_events
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(cpath), offset)  # uprobe_path, probe_offset
        fd = lib.bpf_attach_perf_event_raw(fn.fd, ctypes.byref(attr), -1, 0, -1, 0)
        if fd < 0:
            raise ProbeAttachError(
                f"cannot attach {fn_name} at {vaddr:#x} in {path} with semaphore {semaphore:#x}: "
                f"{os.strerror(ctypes.get_errno() or -fd)}"
            )
        return int(fd)

    def attached(self, key: Hashable) -> bool:
        return key in self._binaries

    def probe_count(self, key: Hashable | None = None) -> int:
        if key is not None:
            a = self._binaries.get(key)
            return len(a.events) + len(a.fds) if a else 0
        return sum(len(a.events) + len(a.fds) for a in self._binaries.values())

    def detach_binary(self, key: Hashable) -> int:
        """Closes every uprobe attached under key (a binary whose last traced process is gone, or one
        process's own probes); returns how many."""
        return self.detach_many([key])

    def detach_many(self, keys: Iterable[Hashable], wait: bool = True) -> int:
        """detach_binary for several keys, their probes closed together (one RCU wait, not one per key).

        wait=False: the probes are forgotten here at once and closed on a thread of their own (the
        kernel removes the breakpoints at the start of a close; the rest is waiting for a grace period,
        ~0.1 s, seconds on a loaded machine)."""
        with self._lock:
            found = [a for a in (self._binaries.pop(k, None) for k in keys) if a is not None]
        if not found:
            return 0
        from bcc.libbcc import lib

        fds = [fd for a in found for fd in a.fds]
        events = [ev for a in found for ev in a.events]
        for ev in events:
            fd = self.bpf.uprobe_fds.get(ev)
            if fd is not None:
                fds.append(fd)
        if not wait:
            for ev in events:  # BCC's table, on the caller's thread (it is not thread-safe)
                if ev in self.bpf.uprobe_fds:
                    self.bpf._del_uprobe_fd(ev)

            def close() -> None:
                _close_perf_fds(fds)
                for ev in events:
                    lib.bpf_detach_uprobe(ev)

            threading.Thread(target=close, name="gotel-detach", daemon=True).start()
            return len(fds)
        _close_perf_fds(fds)
        for ev in events:
            lib.bpf_detach_uprobe(ev)  # a no-op for perf_event_open uprobes; removes a tracefs one
            if ev in self.bpf.uprobe_fds:
                self.bpf._del_uprobe_fd(ev)
        return len(fds)

    # ---- tracepoints and ring buffers -------------------------------------------------------------

    def attach_tracepoint(self, tp: str, fn_name: str) -> None:
        self.bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn_name.encode())

    def open_ring_buffer(self, name: str, callback: Callable[[int, int], None]) -> None:
        """callback(data_address, size) for every record; decode with a ctypes layout."""

        def _cb(_ctx: Any, data: Any, size: int) -> int:
            try:
                callback(ctypes.cast(data, ctypes.c_void_p).value or 0, size)
            except Exception:  # never let a decode bug unwind through libbpf
                log.exception("ring buffer %s callback failed", name)
            return 0

        self.bpf[name.encode()].open_ring_buffer(_cb)

    def collect_ring_buffer(self, name: str, into: list[bytes]) -> None:
        """Appends every record's bytes to `into` on consume(), read straight from the mapped ring (no
        callback per record: gotel.ebpf.ringbuf); decode in batches."""
        from gotel.ebpf.ringbuf import RingReader

        t = self.bpf[name.encode()]
        self._rings.append((RingReader(t.map_fd, t.max_entries), into))

    def consume(self) -> None:
        """Drains every open ring buffer without waiting (the caller's timer sets the pace)."""
        with self._consume_lock:
            if not self._closed:
                for reader, into in self._rings:
                    reader.drain(into)
                if self.bpf._ringbuf_manager:
                    self.bpf.ring_buffer_consume()

    def lost_counts(self) -> tuple[int, int]:
        """(ring buffer full, user-memory read failed) since load, summed over CPUs (gotel_ringbuf.h)."""
        try:
            t = self.bpf[b"gotel_lost"]
        except KeyError:
            return (0, 0)
        out = []
        for i in (0, 1):
            out.append(int(sum(t[ctypes.c_int(i)])))
        return out[0], out[1]

    def skipped_runs(self) -> int:
        """Runs of this program's functions the kernel skipped since load, because they would have nested
        on one CPU (a tracepoint hit inside another BPF program, a softirq on top of a probe): their events
        were neither counted nor delivered. The kernel keeps it per function as fdinfo `recursion_misses`."""
        n = 0
        for fn in list(self.bpf.funcs.values()):  # read once a second per receiver: raw reads, half the cost
            try:
                fd = os.open(f"/proc/self/fdinfo/{fn.fd}", os.O_RDONLY)
                try:
                    text = os.read(fd, 4096)
                finally:
                    os.close(fd)
                at = text.find(b"\nrecursion_misses:")
                if at >= 0:  # absent before Linux 5.12
                    n += int(text[at + 18 : text.index(b"\n", at + 1)])
            except (OSError, ValueError):
                continue  # closed meanwhile
        return n

    def table(self, name: str) -> Any:
        return self.bpf[name.encode()]

    def ring_fd(self, name: str) -> int:
        """A ring buffer map's fd: readable while the ring holds records (gotel.ebpf.wakeup)."""
        return int(self.table(name).map_fd)

    def close(self) -> None:
        """Detaches every probe and tracepoint and frees the program; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for key in list(self._binaries):
            self.detach_binary(key)
        with self._consume_lock:  # never free the ring buffers under a running consume()
            for reader, _into in self._rings:
                reader.close()
            self._rings.clear()
            self.bpf.cleanup()


class LostCounter:
    """Turns the kernel's cumulative lost counts into self-telemetry increments."""

    def __init__(self, program: BpfProgram, telemetry: Any, what: str) -> None:
        self.program = program
        self._last = (0, 0, 0)
        self._c = telemetry.counter(
            "ebpf_lost_events",
            "Events the BPF side could not deliver (ring buffer full), read, or see (a nested run the kernel skipped).",
            ("program", "reason")
        )
        self.what = what

    def update(self) -> tuple[int, int, int]:
        """(ring buffer full, unreadable, skipped nested runs) since the last update."""
        full, unreadable = self.program.lost_counts()
        skipped = self.program.skipped_runs()
        d = (full - self._last[0], unreadable - self._last[1], skipped - self._last[2])
        self._last = (full, unreadable, skipped)
        for reason, n in zip(("ringbuf_full", "unreadable", "skipped_nested"), d, strict=True):
            if n:
                self._c.labels(self.what, reason).inc(n)
        return d
