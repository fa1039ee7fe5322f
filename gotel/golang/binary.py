"""`analyze(path) -> GoBinary`: everything gotel needs to know about one Go executable, cached.

Cheap facts (ELF layout, build ids, build info) are read at once; the function table, DWARF and USDT notes
on first use. Results are cached in memory by file identity (device, inode, size, mtime) and by build id,
so twenty processes of one binary cost one analysis.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gotel.golang import disasm
from gotel.golang.buildinfo import BuildInfo, Module, read_buildinfo
from gotel.golang.dwarf import StructIndex, load_dwarf
from gotel.golang.elf import ElfImage
from gotel.golang.errors import FunctionNotFound, NotGo
from gotel.golang.symbols import Function, FunctionTable
from gotel.golang.usdt import USDTProbe, read_probes
from gotel.host.memory import on_trim


@dataclass(frozen=True)
class FileIdentity:
    dev: int
    ino: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class GoBinary:
    """One analysed Go executable (see module docstring). Safe to query from several threads."""

    def __init__(self, path: str | os.PathLike[str], identity: FileIdentity | None = None) -> None:
        self.path = Path(path)
        self.identity = identity or FileIdentity.of(path)
        self.image = ElfImage(path)
        self.go_build_id, self.gnu_build_id = self.image.build_ids()
        self.buildinfo: BuildInfo | None = read_buildinfo(self.image)
        if self.buildinfo is None and ".gopclntab" not in self.image.sections:
            raise NotGo(f"{self.path}: no Go build info and no .gopclntab: not a Go program")
        self.has_symtab = ".symtab" in self.image.sections
        self.has_dwarf = ".debug_info" in self.image.sections or ".zdebug_info" in self.image.sections
        self.stripped = not self.has_symtab
        # pyelftools reads through one shared stream position and capstone's handle is shared: one query at
        # a time per binary.
        self._lock = threading.RLock()
        self._functions: FunctionTable | None = None
        self._structs: StructIndex | None = None
        self._structs_used = 0.0  # time.monotonic() of the last struct lookup
        self._probes: tuple[USDTProbe, ...] | None = None
        self._rets: dict[str, tuple[int, ...]] = {}

    # -- identity -----------------------------------------------------------------------------------------
    @property
    def build_id(self) -> str:
        """The GNU build id, else the Go build id, else the file identity: what caches key on."""
        if self.gnu_build_id:
            return "gnu:" + self.gnu_build_id
        if self.go_build_id:
            return "go:" + self.go_build_id
        i = self.identity
        return f"file:{i.dev}:{i.ino}:{i.size}:{i.mtime_ns}"

    # -- build info ---------------------------------------------------------------------------------------
    @property
    def go_version(self) -> str | None:
        """e.g. "go1.27.3"; None when the build info is missing (Go < 1.13)."""
        return self.buildinfo.go_version if self.buildinfo else None

    @property
    def version_tuple(self) -> tuple[int, int, int] | None:
        """(1, 27, 3) for "go1.27.3", (1, 22, 0) for "go1.22rc1"; None when unknown."""
        m = re.match(r"go(\d+)\.(\d+)(?:\.(\d+))?", self.go_version or "")
        return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None

    @property
    def modules(self) -> tuple[Module, ...]:
        """The main module (when built in module mode) followed by the dependencies."""
        if self.buildinfo is None:
            return ()
        main = (self.buildinfo.main,) if self.buildinfo.main else ()
        return main + self.buildinfo.deps

    def module_version(self, path: str) -> str | None:
        return self.buildinfo.module_version(path) if self.buildinfo else None

    # -- functions ----------------------------------------------------------------------------------------
    @property
    def functions(self) -> FunctionTable:
        if self._functions is None:
            with self._lock:
                if self._functions is None:
                    self._functions = FunctionTable(self.image)
        return self._functions

    def function(self, name: str) -> Function:
        f = self.functions.get(name)
        if f is None:
            raise FunctionNotFound(f"{self.path}: no function {name!r} in {self.functions.source or 'symbols'}")
        return f

    def ret_offsets(self, name: str) -> tuple[int, ...]:
        """Offsets from the function's entry of every RET in it."""
        got = self._rets.get(name)
        if got is None:
            f = self.function(name)
            off = f.file_offset
            with self._lock:
                got = disasm.ret_offsets(bytes(self.image.data[off:off + f.size]))
            self._rets[name] = got
        return got

    # -- DWARF --------------------------------------------------------------------------------------------
    @property
    def structs(self) -> StructIndex:
        self._structs_used = time.monotonic()
        structs = self._structs
        if structs is None:
            with self._lock:
                structs = self._structs
                if structs is None:
                    dw = load_dwarf(self.image.data) if self.has_dwarf else None
                    structs = self._structs = StructIndex(dw, str(self.path))
        return structs

    def release_idle_structs(self, idle: float) -> bool:
        """Drops the struct index (the decompressed .debug_info: 4.5 MB for a small gRPC program) when no
        lookup used it for `idle` seconds; the next lookup rebuilds it (~40 ms). Lookups happen when a
        process of the binary is first attached; a long-running agent holds one index per binary otherwise."""
        with self._lock:
            if time.monotonic() - self._structs_used < idle:
                return False
            self.image.drop_pages()  # idle too: what attaching read of the file, until the next read
            if self._structs is None:
                return False
            self._structs = None
            return True

    def struct_offset(self, type_name: str, field: str) -> int:
        """Offset of a (dotted) field; raises NoDWARF, TypeNotFound or FieldNotFound, never guesses."""
        structs = self.structs
        with self._lock:
            return structs.offset(type_name, field)

    def field_chain(self, type_name: str, field: str) -> tuple[int, ...]:
        """Offsets along a path that crosses pointers: read at [0], dereference, read at [1], ..."""
        structs = self.structs
        with self._lock:
            return structs.chain(type_name, field)

    def func_params(self, name: str) -> tuple[str, ...] | None:
        """Parameter names of a function from DWARF (None: not in DWARF); raises NoDWARF without it."""
        structs = self.structs
        with self._lock:
            return structs.func_params(name)

    # -- USDT ---------------------------------------------------------------------------------------------
    def usdt_probes(self) -> tuple[USDTProbe, ...]:
        if self._probes is None:
            with self._lock:
                self._probes = read_probes(self.image)
        return self._probes

    def __repr__(self) -> str:
        return (f"GoBinary({str(self.path)!r}, {self.go_version}, dwarf={self.has_dwarf}, "
                f"stripped={self.stripped}, {self.build_id})")


class _Cache:
    """LRU of GoBinary by file identity and by build id."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._by_identity: OrderedDict[FileIdentity, GoBinary] = OrderedDict()
        self._by_build_id: dict[str, GoBinary] = {}
        # pyelftools reads through one shared stream position and capstone's handle is shared: one query at
        # a time per binary.
        self._lock = threading.RLock()
        self.hits = self.misses = 0

    def get(self, path: str | os.PathLike[str]) -> GoBinary:
        ident = FileIdentity.of(path)
        with self._lock:
            hit = self._by_identity.get(ident)
            if hit is not None:
                self._by_identity.move_to_end(ident)
                self.hits += 1
                return _live_path(hit, path)
        ids = ElfImage(path)  # a copy of the same build elsewhere (another container layer): match by build id
        try:
            go_id, gnu_id = ids.build_ids()
        finally:
            ids.close()
        key = "gnu:" + gnu_id if gnu_id else ("go:" + go_id if go_id else None)
        with self._lock:
            if key is not None and key in self._by_build_id:
                hit = self._by_build_id[key]
                self._remember(ident, hit)
                self.hits += 1
                return _live_path(hit, path)
        gb = GoBinary(path, ident)
        with self._lock:
            self.misses += 1
            self._remember(ident, gb)
            self._by_build_id[gb.build_id] = gb
        return gb

    def _remember(self, ident: FileIdentity, gb: GoBinary) -> None:
        self._by_identity[ident] = gb
        self._by_identity.move_to_end(ident)
        while len(self._by_identity) > self.size:
            _, old = self._by_identity.popitem(last=False)
            if old not in self._by_identity.values():
                self._by_build_id.pop(old.build_id, None)

    def release_idle_structs(self, idle: float) -> int:
        with self._lock:
            binaries = list(self._by_build_id.values())
        return sum(gb.release_idle_structs(idle) for gb in binaries)

    def clear(self) -> None:
        with self._lock:
            self._by_identity.clear()
            self._by_build_id.clear()


def _live_path(gb: GoBinary, path: str | os.PathLike[str]) -> GoBinary:
    """A cached analysis keeps its mapped image, but the path it was first read through may be gone
    (/proc/PID/exe of a process that exited): whoever opens gb.path again gets one that exists."""
    if not os.path.exists(gb.path):
        gb.path = Path(path)
    return gb


_CACHE = _Cache()


def analyze(path: str | os.PathLike[str]) -> GoBinary:
    """Analyse a Go executable (cached). Raises NotELF / NotGo for other files."""
    return _CACHE.get(path)


# Struct indexes unused this long are dropped at the next periodic trim (gotel.host.memory.on_trim).
STRUCTS_IDLE_S = 2.0


def release_idle_structs(idle: float = STRUCTS_IDLE_S) -> int:
    """Drops the struct indexes of cached binaries that no lookup used for `idle` seconds; how many."""
    return _CACHE.release_idle_structs(idle)


on_trim(release_idle_structs)


def cache_clear() -> None:
    _CACHE.clear()
