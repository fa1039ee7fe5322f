"""Sockets created inside another network namespace, for reaching a pprof endpoint that listens only
on a target's own loopback (the secure habit) without exposing it on a pod IP.

Why this design: a socket belongs to the network namespace that was current when ``socket()`` ran,
for its whole life, whichever thread later connects, reads or writes it. ``setns(2)`` changes the
namespace of the calling *thread* only. So each namespace gets one small dedicated thread that
enters it once and then only creates sockets on request; connect, TLS and HTTP stay on the asyncio
event loop (aiohttp's ``socket_factory`` hook). The event loop's own thread never changes
namespace, so a failure can never leave the agent itself in the wrong namespace, and there is no
per-request fork. Entering a network namespace needs CAP_SYS_ADMIN; DNS names are resolved in the
agent's namespace, so use IP addresses (127.0.0.1) for namespaced targets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import queue
import socket
import threading
from concurrent.futures import Future
from typing import Any

CLONE_NEWNET = 0x40000000

_libc: Any = None


def _setns(fd: int, nstype: int) -> None:
    global _libc
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, nstype)
        return
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_id(path: str) -> tuple[int, int]:
    """(device, inode) of a namespace file: equal ids mean the same namespace."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def own_netns_id() -> tuple[int, int]:
    return netns_id(f"/proc/{os.getpid()}/ns/net")


class NetnsError(OSError):
    pass


class NetnsSocketFactory:
    """Callable for aiohttp.TCPConnector(socket_factory=...): sockets made in one namespace."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from None
        self._q: queue.SimpleQueue[tuple[tuple[int, int, int], Future[socket.socket]] | None] = queue.SimpleQueue()
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=f"netns:{path}", daemon=True)
        self._thread.start()
        self._ready.result(timeout=5)  # raises NetnsError when setns was refused

    def _run(self) -> None:
        try:
            _setns(self._fd, CLONE_NEWNET)
        except OSError as e:
            self._ready.set_exception(NetnsError(e.errno, f"cannot enter network namespace {self.path}: {e.strerror}"))
            return
        finally:
            os.close(self._fd)
        self._ready.set_result(None)
        while True:
            item = self._q.get()
            if item is None:
                return
            args, fut = item
            try:
                fut.set_result(socket.socket(*args))
            except OSError as e:
                fut.set_exception(e)

    def make_socket(self, family: int, type_: int, proto: int = 0) -> socket.socket:
        if not self._thread.is_alive():
            raise NetnsError(0, f"network namespace helper for {self.path} has stopped")
        fut: Future[socket.socket] = Future()
        self._q.put(((family, type_, proto), fut))
        return fut.result(timeout=5)

    def __call__(self, addr_info: Any) -> socket.socket:
        family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
        return self.make_socket(family, type_, proto)

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
