"""Receiver processes forked from one process that imported their modules first: shared import pages.

Every receiver process exec'd fresh imports pydantic, gRPC, protobuf, its plugin (and BCC's LLVM)
into private memory: ~35 MB before it does anything. The fork server imports them once, freezes
them out of the garbage collector's way (gc.freeze: a collection would write every object's header
and unshare its page) and forks each receiver process from there, so those pages stay shared
copy-on-write (bench/footprint/forkshare.py: 243 -> 135 MiB for the default agent's four).

It never runs an event loop and starts no thread, so a fork copies no lock held by another thread;
gRPC is imported but not initialised. The supervisor talks to it over a SOCK_SEQPACKET socket: a
request is the child's argv with its stdin and stderr as passed fds; the answer is its pid with a
pidfd (signals reach that process and no other, even after it exited and its pid was reused).

Each receiver process is forked twice (the middle process exits at once), so that it becomes the
supervisor's own child (the supervisor is a child subreaper, PR_SET_CHILD_SUBREAPER): the
supervisor reaps it and reads its exit status, and the receiver dies with the supervisor
(PR_SET_PDEATHSIG, set once it is the supervisor's child). The server itself is then needed only
to fork: once every receiver process started, the supervisor retires it (its ~10 MB of private
memory, which it held only for restarts; docs/performance.md), and a restart starts a fresh
interpreter. GOTEL_KEEP_FORKSERVER=1 keeps it for restarts. The server dies with the supervisor
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

MAX_MSG = 1 << 16
PR_SET_PDEATHSIG, PR_SET_NAME, PR_SET_CHILD_SUBREAPER = 1, 15, 36
SERVER_NAME = "gotel-fork"  # its /proc/PID/comm
SPAWN_TIMEOUT = 10.0
PRELOAD = ("gotel.cli.commands.receiver", "gotel.receiverhelper.process", "gotel.exporters.otlp", "gotel.host.memory")


def send(sock: socket.socket, msg: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(msg).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def recv(sock: socket.socket, maxfds: int = 4) -> tuple[dict[str, Any] | None, list[int]]:
    """(message, fds); (None, []) at end of stream."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MSG, maxfds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(data), list(fds)


def preload(receiver_types: Sequence[str]) -> None:
    """What the receiver processes will import; a failure is theirs to report, not the server's."""
    from gotel.component.contract import Kind
    from gotel.receiverhelper.process import load_one

    for mod in PRELOAD:
        with contextlib.suppress(Exception):
            importlib.import_module(mod)
    needs_bpf = False
    for typ in receiver_types:
        with contextlib.suppress(Exception):
            factory, _ = load_one(Kind.RECEIVER, typ)
            needs_bpf = needs_bpf or bool(getattr(factory, "needs_bpf", False))
    with contextlib.suppress(Exception):
        load_one(Kind.EXPORTER, "otlp")
    if needs_bpf:
        with contextlib.suppress(Exception):
            importlib.import_module("bcc")  # libbcc's relocated LLVM: 12 MB written at load, shared
            importlib.import_module("capstone")  # Go binaries' disassembly, imported on first use
            from gotel.host.memory import drop_code

            drop_code()  # what LLVM's constructors ran at load: the receivers' compiles fault in their own


def _child(argv: list[str], fds: list[int], closing: Sequence[int], middle: int) -> None:
    """In the forked receiver process: the supervisor's child once `middle` exited, its own session,
    stdio from the supervisor, then `gotel argv` (which sets PR_SET_PDEATHSIG naming the supervisor)."""
    code = 1
    try:
        for fd in closing:
            os.close(fd)
        deadline = time.monotonic() + SPAWN_TIMEOUT
        while os.getppid() == middle and time.monotonic() < deadline:  # it exits right after forking us
            time.sleep(0.001)
        os.setsid()
        # the command line is the server's; name the process (ps -o comm, top) after its receiver
        name = argv[argv.index("receiver") + 1] if "receiver" in argv[:-1] else "gotel"
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        stdin_fd, stderr_fd = fds
        devnull = os.open(os.devnull, os.O_WRONLY)
        for src, dst in ((stdin_fd, 0), (devnull, 1), (stderr_fd, 2)):
            os.dup2(src, dst)
        for fd in (stdin_fd, stderr_fd, devnull):
            os.close(fd)
        from gotel.cli.main import main

        code = main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _fork_receiver(argv: list[str], fds: list[int], closing: Sequence[int]) -> int:
    """Forks `gotel argv` through a middle process that exits at once: the receiver's pid. Its new
    parent is the nearest child subreaper above us, the supervisor."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(r)
            me = os.getpid()  # before the fork: once we exited, the child's getppid() is the supervisor
            pid = os.fork()
            if pid == 0:
                os.close(w)
                _child(argv, fds, closing, me)
            os.write(w, pid.to_bytes(4, "little"))
        finally:
            os._exit(0)
    os.close(w)
    try:
        data = os.read(r, 4)
    finally:
        os.close(r)
        os.waitpid(middle, 0)
    if len(data) != 4:
        raise OSError("the fork server's middle process did not fork")
    return int.from_bytes(data, "little")


def serve(sock: socket.socket) -> None:
    """Forks a receiver process per request until the supervisor closes the socket."""
    while True:
        msg, fds = recv(sock)
        if msg is None:
            return  # the supervisor is done with us (or gone); the receivers are its children, not ours
        try:
            pid = _fork_receiver([str(a) for a in msg["argv"]], fds, (sock.fileno(),))
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            send(sock, {"failed": str(e)})
        else:
            send(sock, {"spawned": pid}, [pidfd])
            os.close(pidfd)
        finally:
            for fd in fds:
                os.close(fd)


def _become_server(sock: socket.socket, parent: int, types: Sequence[str]) -> int:
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.prctl(PR_SET_NAME, SERVER_NAME.encode(), 0, 0, 0)
    if os.getppid() != parent:
        return 1
    preload(types)
    gc.collect()
    gc.freeze()
    serve(sock)
    return 0


def main(argv: Sequence[str]) -> int:
    """`python -m gotel.service.forkserver FD PARENT TYPE...`: FD is the socket, PARENT the supervisor's pid."""
    fd, parent, *types = argv
    return _become_server(socket.socket(fileno=int(fd)), int(parent), types)


# A server forked by `gotel run` itself before its event loop starts (prefork): (pid, our socket end).
_preforked: tuple[int, socket.socket] | None = None


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def prefork(receiver_types: Sequence[str]) -> bool:
    """Forks the fork server from the supervisor itself, before its event loop and threads start, so
    that the supervisor's imports (pydantic, gRPC, protobuf, gotel's core and every plugin the config
    names) are shared copy-on-write with the fork server and every receiver process, not imported
    again by an exec'd server. Both sides freeze what exists now out of the collector's way (a
    collection writes each object's header and would unshare its page). False, and nothing done,
    when it is turned off, when there is no receiver process to fork, or when a thread runs already
    (a fork would copy its locks), or with GOTEL_NO_PREFORK=1 (bench/footprint's baseline): the
    supervisor then execs the server as before."""
    global _preforked
    if (not enabled() or os.environ.get("GOTEL_NO_PREFORK", "") not in ("", "0") or not receiver_types
            or _preforked is not None or _threads() != 1):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))  # OSError before Linux 5.3: receivers are exec'd then
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return False
    parent = os.getpid()
    gc.collect()
    gc.freeze()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            os.setsid()  # as start_new_session gives the exec'd one: a terminal's Ctrl-C reaches the supervisor
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, 0)
            os.dup2(devnull, 1)
            os.close(devnull)
            code = _become_server(theirs, parent, receiver_types)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    theirs.close()
    _preforked = (pid, ours)
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


# ---- the supervisor's side ------------------------------------------------------------------------


def enabled() -> bool:
    """GOTEL_NO_FORKSERVER=1: every receiver process exec'd fresh (bench/footprint's baseline)."""
    return os.environ.get("GOTEL_NO_FORKSERVER", "") in ("", "0")


def kept() -> bool:
    """GOTEL_KEEP_FORKSERVER=1: the server stays after the receivers started, to fork their restarts."""
    return os.environ.get("GOTEL_KEEP_FORKSERVER", "") not in ("", "0")


class ForkedProcess:
    """A receiver process the server forked, now our child (we are its subreaper), with the part of
    asyncio.subprocess.Process the supervisor uses. Its exit is seen through its pidfd, then reaped."""

    def __init__(self, pid: int, pidfd: int, stderr: asyncio.StreamReader) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.stderr = stderr
        self.returncode: int | None = None
        self._exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not ours after all (no subreaper): its status is lost
            pid, status = self.pid, -1
        if pid == 0:
            return
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = os.waitstatus_to_exitcode(status) if status != -1 else -signal.SIGKILL
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, sig)  # this process, never a later one with its pid

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _PreforkedServer:
    """The part of asyncio.subprocess.Process the client uses, for a server `gotel run` forked itself
    (asyncio's child watcher does not know it: this reaps it)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._pidfd = os.pidfd_open(pid)
        self.returncode: int | None = None

    async def wait(self) -> int:
        if self.returncode is None:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(self._pidfd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(self._pidfd)
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
            os.close(self._pidfd)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)


class ForkServerClient:
    """Starts the fork server, asks it for receiver processes, and learns how they ended."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | _PreforkedServer | None = None
        self.sock: socket.socket | None = None
        self._pending: list[asyncio.Future[tuple[int, int]]] = []

    @property
    def alive(self) -> bool:
        return self.sock is not None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, receiver_types: Sequence[str]) -> None:
        """Takes the server `gotel run` preforked when there is one, else execs one. Makes this process
        a child subreaper: the receiver processes become our children (OSError where it cannot)."""
        global _preforked
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
        if _preforked is not None:
            pid, ours = _preforked
            _preforked = None
            self.proc = _PreforkedServer(pid)
            ours.setblocking(False)
            self.sock = ours
            asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message)
            return
        os.close(os.pidfd_open(os.getpid()))  # OSError before Linux 5.3: then receivers are exec'd
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gotel.service.forkserver", str(theirs.fileno()), str(os.getpid()), *receiver_types,
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._on_message)

    def _on_message(self) -> None:
        assert self.sock is not None
        try:
            msg, fds = recv(self.sock, 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            msg, fds = None, []
        if msg is None:
            self._gone()
            return
        fut = self._pending.pop(0) if self._pending else None
        if "spawned" in msg and fut is not None and not fut.done():
            fut.set_result((int(msg["spawned"]), fds[0]))
            return
        for fd in fds:
            os.close(fd)
        if fut is not None and not fut.done():
            fut.set_exception(OSError(str(msg.get("failed", "the fork server did not fork"))))

    def _gone(self) -> None:
        """The server exited (retired, or died): receiver processes it forked are ours and live on."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(OSError("the fork server exited"))
        self._pending.clear()

    async def spawn(self, argv: Sequence[str], spec: bytes, limit: int) -> ForkedProcess:
        """A receiver process running `gotel argv`, with spec on its stdin and its stderr to read."""
        if self.sock is None:
            raise OSError("the fork server is not running")
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        try:
            send(self.sock, {"argv": list(argv)}, [in_r, err_w])
            self._pending.append(fut)
        finally:
            os.close(in_r)
            os.close(err_w)
        try:
            pid, pidfd = await asyncio.wait_for(fut, SPAWN_TIMEOUT)
        except TimeoutError:
            os.close(in_w)  # if it comes after all, the child reads no spec and exits
            os.close(err_r)
            raise OSError(f"the fork server did not fork within {SPAWN_TIMEOUT:.0f}s") from None
        except BaseException:
            os.close(in_w)
            os.close(err_r)
            raise
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(err_r, "rb", 0))
        proc = ForkedProcess(pid, pidfd, reader)
        with open(in_w, "wb", closefd=True) as f, contextlib.suppress(BrokenPipeError):
            f.write(spec)
        return proc

    async def stop(self, timeout: float = 5.0) -> None:
        """Closes the socket (the server returns) and waits for it; SIGKILL by pid after the timeout."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None and self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
