"""Go build info (`go version -m`): toolchain version, main module, dependencies, build settings.

Read from `.go.buildinfo` (or, without section headers, the first writable segment): a 32-byte header
"\\xff Go buildinf:", pointer size, flags; then either the version and module strings inline as
varint-prefixed bytes (flags bit 1, Go >= 1.18) or two pointers to Go string headers (Go < 1.18).
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass, field

from gotel.golang.elf import ElfImage

MAGIC = b"\xff Go buildinf:"


@dataclass(frozen=True)
class Module:
    path: str
    version: str
    sum: str = ""
    replace: Module | None = None


@dataclass(frozen=True)
class BuildInfo:
    go_version: str  # e.g. "go1.27.3"
    path: str = ""  # main package path ("command-line-arguments" for GOPATH-mode builds)
    main: Module | None = None
    deps: tuple[Module, ...] = ()
    settings: dict[str, str] = field(default_factory=dict)

    def dep(self, path: str) -> Module | None:
        """The dependency with that module path (replacements are on `.replace`)."""
        return next((d for d in self.deps if d.path == path), None)

    def module_version(self, path: str) -> str | None:
        """Effective version of a module: the replacement's when replaced, else the required one."""
        m = self.main if self.main is not None and self.main.path == path else self.dep(path)
        if m is None:
            return None
        return m.replace.version if m.replace is not None and m.replace.version else m.version


def _uvarint(b: bytes | memoryview, pos: int) -> tuple[int, int]:
    x = shift = 0
    while True:
        c = b[pos]
        pos += 1
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, pos
        shift += 7


def _find_blob(img: ElfImage) -> tuple[int, bytes] | None:
    """(vaddr, bytes) of the build info header and what follows it."""
    sec = img.sections.get(".go.buildinfo")
    if sec is not None:
        raw = img.section_bytes(".go.buildinfo")
        if raw is not None and bytes(raw[:14]) == MAGIC:
            return sec.addr, bytes(raw)
    # No section headers: the blob is 16-byte aligned near the start of the first writable segment.
    for seg in img.segments:
        if not seg.flags & 2:  # PF_W
            continue
        chunk = bytes(img.data[seg.offset:seg.offset + min(seg.filesz, 1 << 16)])
        pos = chunk.find(MAGIC)
        while pos >= 0 and pos % 16:
            pos = chunk.find(MAGIC, pos + 1)
        if pos >= 0:
            return seg.vaddr + pos, chunk[pos:]
    return None


def _go_string(img: ElfImage, hdr_vaddr: int, ptrsize: int, fmt: str) -> str:
    """A Go string header {data, len} at hdr_vaddr; fmt is "<Q"-like (byte order + pointer)."""
    ptr, n = struct.unpack(fmt[0] + fmt[1] * 2, img.read_vaddr(hdr_vaddr, 2 * ptrsize))
    return img.read_vaddr(ptr, n).decode("utf-8", "replace") if n else ""


def read_buildinfo(img: ElfImage) -> BuildInfo | None:
    """The build info, or None when the binary has none (not Go, or Go < 1.13)."""
    found = _find_blob(img)
    if found is None:
        return None
    _vaddr, b = found
    ptrsize, flags = b[14], b[15]
    if flags & 2:  # inline strings (Go >= 1.18)
        n, pos = _uvarint(b, 32)
        version = b[pos:pos + n].decode("utf-8", "replace")
        pos += n
        n, pos = _uvarint(b, pos)
        modinfo = b[pos:pos + n].decode("utf-8", "replace")
    else:  # pointers to Go string headers (Go 1.13 .. 1.17)
        big = bool(flags & 1)
        fmt = (">" if big else "<") + ("Q" if ptrsize == 8 else "I")
        pfmt = fmt[0] + fmt[1] * 2
        vptr, mptr = struct.unpack_from(pfmt, b, 16)
        version = _go_string(img, vptr, ptrsize, fmt)
        modinfo = _go_string(img, mptr, ptrsize, fmt)
    if len(modinfo) >= 33 and modinfo[-17] == "\n":
        modinfo = modinfo[16:-16]  # 16-byte sentinels around the module info
    return parse_modinfo(version, modinfo)


def parse_modinfo(version: str, modinfo: str) -> BuildInfo:
    path = ""
    main: Module | None = None
    deps: list[Module] = []
    settings: dict[str, str] = {}
    for line in modinfo.splitlines():
        parts = line.split("\t")
        kind = parts[0]
        if kind == "path" and len(parts) >= 2:
            path = parts[1]
        elif kind == "mod" and len(parts) >= 3:
            main = Module(parts[1], parts[2], parts[3] if len(parts) > 3 else "")
        elif kind == "dep" and len(parts) >= 3:
            deps.append(Module(parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
        elif kind == "=>" and len(parts) >= 2:
            repl = Module(parts[1], parts[2] if len(parts) > 2 else "", parts[3] if len(parts) > 3 else "")
            if deps:
                d = deps[-1]
                deps[-1] = Module(d.path, d.version, d.sum, repl)
            elif main is not None:
                main = Module(main.path, main.version, main.sum, repl)
        elif kind == "build" and len(parts) >= 2:
            key, _, value = parts[1].partition("=")
            if value.startswith('"'):  # quoted when it holds spaces, tabs, quotes or '='
                with contextlib.suppress(ValueError):
                    value = json.loads(value)
            settings[key] = value
    return BuildInfo(version, path, main, tuple(deps), settings)
