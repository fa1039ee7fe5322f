"""Facts about one process from /proc: executable, command line, service name, container, listening ports.

Everything here is cheap and failure-tolerant: a process may exit between two reads, so every reader
returns None/empty instead of raising.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from gotel.host import cgroup

PROC = Path("/proc")

def read_exe(pid: int) -> str | None:
    try:
        return os.readlink(PROC / str(pid) / "exe")
    except OSError:
        return None


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def read_environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def is_alive(pid: int) -> bool:
    """True unless the process is gone, a zombie (exited, not yet reaped) or exiting: an exiting process
    releases its memory, and with it /proc/PID/exe, before its state turns Z (a `go build` step that
    ends while being analysed). A kernel thread has no exe either; it is never a process to trace."""
    proc = PROC / str(pid)
    try:
        stat = (proc / "stat").read_bytes()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    if state in (b"Z", b"X"):
        return False
    try:
        os.readlink(proc / "exe")
    except FileNotFoundError:
        return False
    except OSError:
        pass  # another user's process, unprivileged (EACCES): alive as far as can be told
    return True


def container_id(pid: int) -> str | None:
    """The container id from /proc/PID/cgroup, parsed by gotel.host.cgroup (every runtime and cgroup driver)."""
    info = cgroup.read_pid(pid, str(PROC))
    return (info.container_id or None) if info is not None else None


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets the process holds (its /proc/PID/fd links)."""
    out: set[int] = set()
    fd_dir = PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return out
    for n in names:
        try:
            target = os.readlink(fd_dir / n)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int


def listening_sockets(pid: int) -> list[Listener]:
    """TCP sockets in LISTEN state owned by pid, from its own network namespace's /proc/PID/net/tcp{,6}."""
    inodes = socket_inodes(pid)
    if not inodes:
        return []
    out: set[Listener] = set()
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = (PROC / str(pid) / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != "0A" or int(f[9]) not in inodes:  # 0A = LISTEN
                continue
            hexip, hexport = f[1].rsplit(":", 1)
            out.add(Listener(_decode_ip(hexip, v6), int(hexport, 16)))
    return sorted(out, key=lambda x: (x.port, x.ip))


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on."""
    return {lst.port for lst in listening_sockets(pid)}


def _decode_ip(hexip: str, v6: bool) -> str:
    raw = bytes.fromhex(hexip)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc prints each 32-bit word in host (little-endian) order
    words = struct.unpack("<4I", raw)
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))


def tcp_socket_inodes(local_port: int, *, listen_only: bool, remote_port: int | None = None,
                      netns_of: int | None = None) -> set[int]:
    """Inodes of the TCP sockets with that local port (and remote port), LISTEN ones only or any state,
    from /proc/net/tcp{,6} of our network namespace, or of process `netns_of`'s."""
    out: set[int] = set()
    base = PROC / "net" if netns_of is None else PROC / str(netns_of) / "net"
    for name in ("tcp", "tcp6"):
        try:
            lines = (base / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or (listen_only and f[3] != "0A"):
                continue
            if int(f[1].rsplit(":", 1)[1], 16) != local_port:
                continue
            if remote_port is not None and int(f[2].rsplit(":", 1)[1], 16) != remote_port:
                continue
            if f[9] != "0":
                out.add(int(f[9]))
    return out


def socket_owner(inodes: set[int]) -> int | None:
    """The pid of a process holding one of these sockets (a scan of /proc/*/fd), or None."""
    if not inodes:
        return None
    for pid in all_pids():
        if socket_inodes(pid) & inodes:
            return pid
    return None


def process_name(pid: int) -> str:
    """The process's command name (/proc/PID/comm), '' if gone."""
    try:
        return (PROC / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


# ---- is it a Go program? ------------------------------------------------------------------------------

_GO_SECTIONS = (b".go.buildinfo", b".gopclntab", b".note.go.buildid")


_GO_CACHE: dict[tuple[int, int, int], bool] = {}


def _is_go_file(path: str, dev: int, ino: int, mtime_ns: int) -> bool:
    """Cached by (device, inode, mtime): 200 processes of one binary cost one read."""
    key = (dev, ino, mtime_ns)
    hit = _GO_CACHE.get(key)
    if hit is not None:
        return hit
    try:
        with open(path, "rb") as f:
            res = _elf_has_go_section(f)
    except OSError:
        return False
    if len(_GO_CACHE) > 8192:
        _GO_CACHE.clear()
    _GO_CACHE[key] = res
    return res


def _elf_has_go_section(f: BinaryIO) -> bool:
    """Reads only the ELF header and section headers: microseconds, not a full analysis."""
    hdr = f.read(64)
    if len(hdr) < 64 or hdr[:4] != b"\x7fELF" or hdr[4] != 2:  # 64-bit ELF only
        return False
    endian = "<" if hdr[5] == 1 else ">"
    shoff, = struct.unpack_from(endian + "Q", hdr, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", hdr, 0x3A)
    if not shoff or not shnum or shentsize < 64 or shstrndx >= shnum:
        return False
    f.seek(shoff)
    table = f.read(shentsize * shnum)
    if len(table) < shentsize * shnum:
        return False
    str_off, str_size = struct.unpack_from(endian + "QQ", table, shstrndx * shentsize + 0x18)
    f.seek(str_off)
    names = f.read(min(str_size, 1 << 16))
    for i in range(shnum):
        name_off, = struct.unpack_from(endian + "I", table, i * shentsize)
        end = names.find(b"\0", name_off)
        if names[name_off:end] in _GO_SECTIONS:
            return True
    return False


def is_go_binary(path: str) -> bool:
    """True when the ELF file carries Go build info / pclntab sections (also when stripped with -s -w)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return _is_go_file(path, st.st_dev, st.st_ino, st.st_mtime_ns)


def exe_path_for_reading(pid: int) -> str:
    """A path that opens the process's executable even when it lives in another mount namespace."""
    return str(PROC / str(pid) / "exe")


@dataclass
class ProcessInfo:
    pid: int
    exe: str
    cmdline: list[str]
    is_go: bool
    service_name: str
    container_id: str | None = None
    dev: int = 0
    ino: int = 0
    ports: set[int] = field(default_factory=set)

    @property
    def exe_name(self) -> str:
        return os.path.basename(self.exe.removesuffix(" (deleted)"))


def service_name(pid: int, exe: str, env: dict[str, str] | None = None) -> str:
    env = read_environ(pid) if env is None else env
    name = env.get("OTEL_SERVICE_NAME", "").strip()
    return name or os.path.basename(exe.removesuffix(" (deleted)"))


def process_info(pid: int, *, with_ports: bool = False, go_only: bool = False) -> ProcessInfo | None:
    """None when the process is gone, a kernel thread, unreadable, or (go_only) not a Go program.

    go_only stops after the cached Go check, so a rescan of a host with thousands of non-Go processes
    reads one symlink and one stat per process, not their command lines and environments.
    """
    exe = read_exe(pid)
    if not exe:
        return None
    try:
        st = os.stat(PROC / str(pid) / "exe")
    except OSError:
        return None
    go = _is_go_file(exe_path_for_reading(pid), st.st_dev, st.st_ino, st.st_mtime_ns)
    if go_only and not go:
        return None
    return ProcessInfo(
        pid=pid,
        exe=exe,
        cmdline=read_cmdline(pid),
        is_go=go,
        service_name=service_name(pid, exe),
        container_id=container_id(pid),
        dev=st.st_dev,
        ino=st.st_ino,
        ports=listening_ports(pid) if with_ports else set(),
    )


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir(PROC) if n.isdigit()]
