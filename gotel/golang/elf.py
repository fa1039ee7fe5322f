"""The few ELF facts the analysis needs, read from an mmap of the file (no copy of the big sections)."""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from gotel.golang.errors import NotELF


@dataclass(frozen=True)
class Section:
    name: str
    addr: int
    offset: int
    size: int
    type: str
    flags: int


@dataclass(frozen=True)
class Segment:
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


class ElfImage:
    """A mapped ELF file: sections by name, PT_LOAD segments, vaddr -> file offset, notes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size < 64:
                raise NotELF(f"{self.path}: not an ELF file ({st.st_size} bytes)")
            self.data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        if self.data[:4] != b"\x7fELF":
            raise NotELF(f"{self.path}: not an ELF file")
        try:
            self.elf = ELFFile(self.data)  # type: ignore[arg-type]  # an mmap is a readable, seekable stream
        except ELFError as e:
            raise NotELF(f"{self.path}: unreadable ELF: {e}") from e
        if self.elf.elfclass != 64 or not self.elf.little_endian or self.elf["e_machine"] != "EM_X86_64":
            raise NotELF(f"{self.path}: {self.elf['e_machine']} ELF{self.elf.elfclass}; only x86-64 is supported")
        self.sections: dict[str, Section] = {}
        for s in self.elf.iter_sections():
            h = s.header
            self.sections.setdefault(s.name, Section(s.name, h.sh_addr, h.sh_offset, h.sh_size, h.sh_type, h.sh_flags))
        self.segments = [
            Segment(p.header.p_vaddr, p.header.p_offset, p.header.p_filesz, p.header.p_memsz, p.header.p_flags)
            for p in self.elf.iter_segments() if p.header.p_type == "PT_LOAD"
        ]
        self.elf_type: str = self.elf["e_type"]

    def drop_pages(self) -> None:
        """Unmaps the file's pages from this process (they stay in the page cache, and the next read
        faults them back in): the traced binary's pages read at analysis count in our PSS otherwise
        (4 MB of a small gRPC program in go_ebpf)."""
        with contextlib.suppress(OSError, ValueError):  # ValueError: closed
            self.data.madvise(mmap.MADV_DONTNEED)

    def section_bytes(self, name: str) -> memoryview | None:
        s = self.sections.get(name)
        if s is None or s.type == "SHT_NOBITS":
            return None
        return memoryview(self.data)[s.offset:s.offset + s.size]

    def vaddr_to_offset(self, vaddr: int) -> int:
        """File offset of a virtual address (what uprobes attach by)."""
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return vaddr - seg.vaddr + seg.offset
        raise ValueError(f"{self.path}: address {vaddr:#x} is in no loaded segment")

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        off = self.vaddr_to_offset(vaddr)
        return bytes(self.data[off:off + size])

    def notes(self, section: str) -> Iterator[tuple[str, int, bytes]]:
        """(owner, type, desc) of every note in a SHT_NOTE section."""
        raw = self.section_bytes(section)
        if raw is None:
            return
        pos = 0
        while pos + 12 <= len(raw):
            namesz, descsz, ntype = struct.unpack_from("<III", raw, pos)
            pos += 12
            name = bytes(raw[pos:pos + namesz]).rstrip(b"\0").decode("ascii", "replace")
            pos += (namesz + 3) & ~3
            desc = bytes(raw[pos:pos + descsz])
            pos += (descsz + 3) & ~3
            yield name, ntype, desc

    def build_ids(self) -> tuple[str | None, str | None]:
        """(Go build id from .note.go.buildid, GNU build id hex) — either may be missing."""
        go_id = gnu_id = None
        for name, ntype, desc in self.notes(".note.go.buildid"):
            if name == "Go" and ntype == 4:
                go_id = desc.decode("ascii", "replace")
        for name, ntype, desc in self.notes(".note.gnu.build-id"):
            if name == "GNU" and ntype == 3:
                gnu_id = desc.hex()
        return go_id, gnu_id

    def close(self) -> None:
        self.data.close()
