"""One compiled BCC program per receiver, with uprobes attached per binary and detached cleanly.

Uprobes are created through perf_event_open (BCC's default when the kernel has the uprobe PMU, as every
kernel >= 4.17 does), so they live exactly as long as their file descriptor: closing the program, or the
process dying for any reason including SIGKILL, removes them. Nothing is written to uprobe_events.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gotel.ebpf.checks import require_bpf

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
    events: list[bytes] = field(default_factory=list)


class ProbeAttachError(RuntimeError):
    pass


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

        src_dir = bpf_source_dir()
        text = source if "\n" in source else (src_dir / source).read_text()
        text = inline_includes(text, src_dir / "include")
        flags = [f"-I{src_dir / 'include'}", "-Wno-macro-redefined", "-Wno-unused-function", *cflags]
        for k, v in (defines or {}).items():
            flags.append(f"-D{k}={v}")
        self._lock = threading.Lock()
        self.bpf = BPF(text=text, cflags=flags)
        self._binaries: dict[BinaryKey, _Attached] = {}
        self._closed = False

    # ---- uprobes -------------------------------------------------------------------------------

    def attach_uprobe(self, path: str, vaddr: int, fn_name: str, key: BinaryKey | None = None) -> None:
        """A uprobe at a virtual address of the binary (symbol value or RET address), for every process.

        Attached with pid=-1 so one probe serves every process running the binary, including ones
        started later; the BPF side filters by its pid map.
        """
        key = key or BinaryKey.of(path)
        before = set(self.bpf.uprobe_fds)
        try:
            self.bpf.attach_uprobe(name=path, addr=vaddr, fn_name=fn_name, pid=-1)
        except Exception as e:
            raise ProbeAttachError(f"cannot attach {fn_name} at {vaddr:#x} in {path}: {e}") from e
        new = [ev for ev in self.bpf.uprobe_fds if ev not in before]
        with self._lock:
            self._binaries.setdefault(key, _Attached(path)).events.extend(new)

    def attached(self, key: BinaryKey) -> bool:
        return key in self._binaries

    def probe_count(self, key: BinaryKey | None = None) -> int:
        if key is not None:
            a = self._binaries.get(key)
            return len(a.events) if a else 0
        return sum(len(a.events) for a in self._binaries.values())

    def detach_binary(self, key: BinaryKey) -> int:
        """Closes every uprobe on the binary (when its last traced process is gone); returns how many."""
        with self._lock:
            a = self._binaries.pop(key, None)
        if a is None:
            return 0
        n = 0
        for ev in a.events:
            try:
                self.bpf.detach_uprobe_event(ev)
                n += 1
            except Exception as e:  # already gone: the fd was closed another way
                log.debug("detaching %s: %s", ev, e)
        return n

    # ---- tracepoints and ring buffers -------------------------------------------------------------

    def attach_tracepoint(self, tp: str, fn_name: str) -> None:
        self.bpf.attach_tracepoint(tp=tp, fn_name=fn_name)

    def open_ring_buffer(self, name: str, callback: Callable[[int, int], None]) -> None:
        """callback(data_address, size) for every record; decode with a ctypes layout."""

        def _cb(_ctx: Any, data: Any, size: int) -> int:
            try:
                callback(ctypes.cast(data, ctypes.c_void_p).value or 0, size)
            except Exception:  # never let a decode bug unwind through libbpf
                log.exception("ring buffer %s callback failed", name)
            return 0

        self.bpf[name].open_ring_buffer(_cb)

    def consume(self) -> None:
        """Drains every open ring buffer without waiting (the caller's timer sets the pace)."""
        if not self._closed:
            self.bpf.ring_buffer_consume()

    def lost_counts(self) -> tuple[int, int]:
        """(ring buffer full, user-memory read failed) since load, summed over CPUs (gotel_ringbuf.h)."""
        try:
            t = self.bpf["gotel_lost"]
        except KeyError:
            return (0, 0)
        out = []
        for i in (0, 1):
            out.append(int(sum(t[ctypes.c_int(i)])))
        return out[0], out[1]

    def table(self, name: str) -> Any:
        return self.bpf[name]

    def close(self) -> None:
        """Detaches every probe and tracepoint and frees the program; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._binaries.clear()
        self.bpf.cleanup()


class LostCounter:
    """Turns the kernel's cumulative lost counts into self-telemetry increments."""

    def __init__(self, program: BpfProgram, telemetry: Any, what: str) -> None:
        self.program = program
        self._last = (0, 0)
        self._c = telemetry.counter(
            "ebpf_lost_events", "Events the BPF side could not deliver (ring buffer full) or read.", ("program", "reason")
        )
        self.what = what

    def update(self) -> tuple[int, int]:
        full, unreadable = self.program.lost_counts()
        d_full, d_read = full - self._last[0], unreadable - self._last[1]
        self._last = (full, unreadable)
        if d_full:
            self._c.labels(self.what, "ringbuf_full").inc(d_full)
        if d_read:
            self._c.labels(self.what, "unreadable").inc(d_read)
        return d_full, d_read
