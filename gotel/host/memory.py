"""Gives memory back to the node: the C heap after BPF compiles, fewer malloc arenas per receiver process.

BCC compiles with clang/LLVM inside the process: a compile leaves tens of MB of freed but unreturned
glibc heap (a bare compile of bpf/go_runtime.c: 47 MB private, 21 MB after malloc_trim). glibc only
returns the top of the heap by itself; malloc_trim(0) also releases the free pages inside it.
Each thread that allocates may get its own arena (up to 8 per core), and every arena keeps its own
free pages; a receiver process has a few busy threads (gRPC, the executor), so two arenas suffice.

GOTEL_NO_TRIM=1 turns all of it off (bench/footprint measures the agent with and without). Sharing
import pages between receiver processes is gotel.service.forkserver's (GOTEL_NO_FORKSERVER=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

# How often a long-running gotel process returns its C heap's free pages: binaries analysed and
# programs compiled after start-up (new processes to trace), and batches, leave freed heap behind
# too. A trim takes about a millisecond.
TRIM_INTERVAL = 10.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
RECEIVER_ARENAS = 2

_libc: ctypes.CDLL | None = None


def enabled() -> bool:
    return os.environ.get("GOTEL_NO_TRIM", "") in ("", "0")


def _c() -> ctypes.CDLL | None:
    """glibc, or None on a libc without malloc_trim (musl): then there is nothing to do."""
    global _libc
    if _libc is None:
        try:
            # not ctypes.util.find_library: it forks `ldconfig -p`, and gRPC's threads may be running
            lib = ctypes.CDLL("libc.so.6")
            lib.malloc_trim  # noqa: B018  # raises AttributeError when absent
            lib.mallopt  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def trim() -> None:
    """Returns the C heap's free pages to the kernel (after a BPF compile, a binary analysed, start-up)."""
    lib = _c() if enabled() else None
    if lib is not None:
        lib.malloc_trim(0)


# Libraries whose code only a BPF compile runs: clang and LLVM (loaded with libbcc).
COMPILER_LIBS = ("libLLVM", "libclang")
_MADV_DONTNEED = 4


def drop_code(libs: tuple[str, ...] = COMPILER_LIBS) -> int:
    """Unmaps the pages of these libraries' code (read-only executable mappings) from this process;
    returns the bytes of address space covered.

    A BCC compile runs through tens of MB of clang/LLVM code (41 MB of PSS over the default agent's
    processes); once compiled, nothing runs it until the next compile. Executable file pages are never
    written, so dropping them loses nothing: they stay in the page cache (reclaimable, in no process's
    PSS) and a later compile faults them back in. Never applied to writable or relocated (RELRO)
    mappings, whose private copies would be lost."""
    lib = _c() if enabled() else None
    if lib is None:
        return 0
    covered = 0
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "r-xp" or not any(n in os.path.basename(parts[5]) for n in libs):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        if lib.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0:
            covered += end - start
    return covered


def limit_arenas(n: int = RECEIVER_ARENAS) -> None:
    """Caps glibc's malloc arenas for this process; call before threads start allocating."""
    lib = _c() if enabled() else None
    if lib is not None and "MALLOC_ARENA_MAX" not in os.environ:  # the user's own setting wins
        lib.mallopt(_M_ARENA_MAX, n)


def settle() -> None:
    """After start-up: free Python's garbage (cycles left by imports and config validation), then trim.

    No gc.freeze(): it saves collector time, not memory, and a frozen cycle that later becomes garbage
    (an analysed binary's cache entry) would never be freed."""
    if not enabled():
        return
    gc.collect()
    trim()


# Python's cyclic collector in a receiver process: a young collection every 700 net container
# allocations by default, and every object that lives through two of them (a pending span waits the
# stitch window; a client span stays in the stitching index for 100,000 calls) is visited again by the
# older generations' collections. Young collections every 50,000: most pending spans are exported and
# freed before one runs. Cycles are still collected, later: memory stays bounded (no gc.freeze(), see
# settle()). GOTEL_GC_DEFAULT=1 keeps Python's defaults (for an A/B).
RECEIVER_GC_THRESHOLDS = (50_000, 20, 10)


def receiver_gc() -> None:
    """Sets a receiver process's collector thresholds (RECEIVER_GC_THRESHOLDS)."""
    if os.environ.get("GOTEL_GC_DEFAULT", "") in ("", "0"):
        gc.set_threshold(*RECEIVER_GC_THRESHOLDS)


# What a process can rebuild on demand and drops when idle (the Go binary analyses' struct indexes),
# asked before each periodic trim.
_RELEASERS: list[Callable[[], object]] = []


def on_trim(release: Callable[[], object]) -> None:
    """Registers a function that frees what went unused and returns whether it freed anything; run
    before each periodic trim, off the event loop."""
    if release not in _RELEASERS:
        _RELEASERS.append(release)


def release_and_trim() -> None:
    released = False
    for release in list(_RELEASERS):
        try:
            released = bool(release()) or released
        except Exception:  # freeing memory must never take the process down
            log.warning("releasing idle memory failed", exc_info=True)
    if released:
        gc.collect()  # what was dropped holds reference cycles (pyelftools' DWARF objects)
    trim()


async def trim_until(stop: asyncio.Event, interval: float = TRIM_INTERVAL) -> None:
    """Waits for stop: settle() at once (start-up is over), then, every interval and off the loop,
    release_and_trim(): what registered with on_trim() frees what went unused, then trim()."""
    settle()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not stop.is_set() and enabled():
            await asyncio.to_thread(release_and_trim)
