"""Function symbols and RET offsets of an ELF executable (symbol table; capstone for RETs).

Interim for the go_runtime and sched receivers until the substrate's Go binary analysis (with
.gopclntab for stripped binaries) is merged; cached by (device, inode).
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile


@dataclass(frozen=True)
class Func:
    name: str
    addr: int  # virtual address
    size: int


@dataclass
class ElfInfo:
    path: str
    is_pie: bool
    funcs: dict[str, Func]
    go_version: str | None
    _text: tuple[int, int, bytes] | None = field(default=None, repr=False)  # (vaddr, offset, bytes)

    def rets(self, name: str) -> list[int]:
        """Virtual addresses of every RET in the function (never a uretprobe on Go code)."""
        import capstone

        f = self.funcs[name]
        code = self._code(f)
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.skipdata = True
        out = []
        for ins in md.disasm(code, f.addr):
            if ins.mnemonic in ("ret", "retq"):
                out.append(ins.address)
        return out

    def _code(self, f: Func) -> bytes:
        with open(self.path, "rb") as fh:
            elf = ELFFile(fh)
            for seg in elf.iter_segments():
                if seg["p_type"] != "PT_LOAD":
                    continue
                lo = seg["p_vaddr"]
                if lo <= f.addr < lo + seg["p_filesz"]:
                    fh.seek(seg["p_offset"] + (f.addr - lo))
                    return fh.read(f.size)
        raise ValueError(f"{f.name} is not in a loaded segment of {self.path}")


_CACHE: dict[tuple[int, int], ElfInfo] = {}
_LOCK = threading.Lock()
_VERSION = re.compile(rb"go1\.\d+(?:\.\d+)?(?:rc\d+|beta\d+)?")


def go_version_of(elf: ELFFile) -> str | None:
    """The Go version from .go.buildinfo (Go >= 1.18 inline layout), else None."""
    sec = elf.get_section_by_name(".go.buildinfo")
    if sec is None:
        return None
    data = sec.data()[:4096]
    if data[:14] != b"\xff Go buildinf:":
        return None
    flags = data[15]
    if flags & 2:
        n, i = 0, 32
        shift = 0
        while True:
            b = data[i]
            n |= (b & 0x7F) << shift
            i += 1
            shift += 7
            if not b & 0x80:
                break
        return data[i : i + n].decode(errors="replace")
    m = _VERSION.search(data)
    return m.group(0).decode() if m else None


def load(path: str) -> ElfInfo:
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    with _LOCK:
        if key in _CACHE:
            # the cached path may be another (gone) process's /proc/PID/exe: read through this one
            return dataclasses.replace(_CACHE[key], path=path)
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        funcs: dict[str, Func] = {}
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for s in symtab.iter_symbols():
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]:
                    funcs[s.name] = Func(s.name, s["st_value"], s["st_size"])
        info = ElfInfo(path=path, is_pie=elf["e_type"] == "ET_DYN", funcs=funcs, go_version=go_version_of(elf))
    with _LOCK:
        _CACHE[key] = info
    return info


def go_minor(version: str | None) -> int | None:
    """go1.21.3 -> 21."""
    if not version:
        return None
    m = re.match(r"go1\.(\d+)", version)
    return int(m.group(1)) if m else None


def load_bias(pid: int, path: str) -> int:
    """Where a PIE executable is mapped in the process (0 for a fixed-address executable)."""
    info = load(path)
    if not info.is_pie:
        return 0
    real = os.path.realpath(f"/proc/{pid}/exe")
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real and parts[2] == "00000000":
                return int(parts[0].split("-")[0], 16)
    return 0
