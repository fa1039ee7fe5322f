"""Function addresses: the ELF symbol table when present, else the Go pclntab (kept by stripped binaries).

pclntab layouts by magic (header: magic u32, 2 pad bytes, min instruction size, pointer size):
  0xfffffffb Go 1.2-1.15: nfunc, then functab {pc, funcoff} pairs of uintptr, names relative to the table;
  0xfffffffa Go 1.16-1.17: nfunc, nfiles, then offsets of funcname/cu/file/pc tables and functab;
  0xfffffff0 Go 1.18-1.19, 0xfffffff1 Go 1.20+: as 1.16 plus textStart; functab entries are u32 offsets
  from textStart (0 in the file for recent linkers: then it is the start of .text, runtime.text). In every layout each _func record starts with its entry and a name offset (int32).
"""

from __future__ import annotations

import bisect
import struct
from dataclasses import dataclass

from gotel.golang.elf import ElfImage

MAGIC_12, MAGIC_116, MAGIC_118, MAGIC_120 = 0xFFFFFFFB, 0xFFFFFFFA, 0xFFFFFFF0, 0xFFFFFFF1
_SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
_SIZE_MASK = 0xFFFFFFFF


@dataclass(frozen=True)
class Function:
    name: str
    entry: int  # virtual address
    size: int  # bytes up to the next function (pclntab) or st_size (symtab)
    file_offset: int  # where uprobes attach
    source: str  # "symtab" or "pclntab"


class FunctionTable:
    """name -> (entry, size). Built once per binary from whichever source exists.

    Each value is one int, entry << 32 | size: a big binary has 250,000 functions, and an (entry, size)
    tuple of two ints costs ~75 bytes more per function than one int (19 MB for jaeger), in every
    receiver process that analysed the binary, for as long as the analysis stays cached."""

    def __init__(self, img: ElfImage, prefer: str = "symtab") -> None:
        self.img = img
        self._by_name: dict[str, int] = {}
        self.source = ""
        self.pclntab_version = ""
        if prefer == "symtab" and ".symtab" in img.sections:
            self._load_symtab()
            self.source = "symtab"
        if not self._by_name:
            self._load_pclntab()
            self.source = "pclntab"
        self._sorted: list[tuple[int, str]] | None = None

    def _load_symtab(self) -> None:
        sec = self.img.sections[".symtab"]
        raw = self.img.section_bytes(".symtab")
        strs = self.img.section_bytes(".strtab")
        if raw is None or strs is None:
            return
        strtab = bytes(strs)
        text = self.img.sections.get(".text")
        for name_off, info, _other, shndx, value, size in _SYM.iter_unpack(raw[: sec.size - sec.size % 24]):
            if info & 0xF != 2 or shndx == 0:  # STT_FUNC, defined
                continue
            if text is not None and not text.addr <= value < text.addr + text.size:
                continue
            end = strtab.index(b"\0", name_off)
            self._by_name[strtab[name_off:end].decode("utf-8", "replace")] = value << 32 | min(size, _SIZE_MASK)

    def _load_pclntab(self) -> None:
        raw = self.img.section_bytes(".gopclntab")
        if raw is None:
            return
        tab = bytes(raw)
        magic = struct.unpack_from("<I", tab, 0)[0]
        ptrsize = tab[7]
        if ptrsize != 8:
            return
        if magic in (MAGIC_118, MAGIC_120):
            self.pclntab_version = "1.18" if magic == MAGIC_118 else "1.20"
            nfunc, _nfiles, text_start, funcname_off, _cu, _file, _pc, pcln_off = struct.unpack_from("<8Q", tab, 8)
            ft = struct.unpack_from(f"<{2 * (nfunc + 1)}I", tab, pcln_off)
            if text_start == 0:  # recent linkers leave it for run-time relocation: it is runtime.text
                text_start = self._runtime_text(funcname_off, ft[0])
            entries = [text_start + ft[2 * i] for i in range(nfunc + 1)]
            for i in range(nfunc):
                foff = pcln_off + ft[2 * i + 1]
                nameoff = struct.unpack_from("<i", tab, foff + 4)[0]
                self._add(tab, funcname_off + nameoff, entries[i], entries[i + 1])
        elif magic == MAGIC_116:
            self.pclntab_version = "1.16"
            nfunc, _nfiles, funcname_off, _cu, _file, _pc, pcln_off = struct.unpack_from("<7Q", tab, 8)
            ft = struct.unpack_from(f"<{2 * (nfunc + 1)}Q", tab, pcln_off)
            for i in range(nfunc):
                foff = pcln_off + ft[2 * i + 1]
                nameoff = struct.unpack_from("<i", tab, foff + 8)[0]
                self._add(tab, funcname_off + nameoff, ft[2 * i], ft[2 * i + 2])
        elif magic == MAGIC_12:
            self.pclntab_version = "1.2"
            nfunc = struct.unpack_from("<Q", tab, 8)[0]
            ft = struct.unpack_from(f"<{2 * (nfunc + 1)}Q", tab, 16)
            for i in range(nfunc):
                foff = ft[2 * i + 1]
                nameoff = struct.unpack_from("<i", tab, foff + 8)[0]
                self._add(tab, nameoff, ft[2 * i], ft[2 * i + 2])

    def _runtime_text(self, funcname_off: int, first_entry_off: int) -> int:
        """runtime.text from runtime.firstmoduledata, found by its first two fields (pcHeader, funcnametab)
        pointing into the pclntab. With cgo the external linker puts C code first, so .text's start is not it."""
        sec = self.img.sections[".gopclntab"]
        want = struct.pack("<QQ", sec.addr, sec.addr + funcname_off)
        for seg in self.img.segments:
            if not seg.flags & 2:  # PF_W: moduledata is data
                continue
            blob = self.img.data[seg.offset:seg.offset + seg.filesz]
            pos = blob.find(want)
            while pos >= 0:
                if pos % 8 == 0 and pos + 184 <= len(blob):
                    # pcHeader, 6 slices (funcnametab .. ftab), findfunctab, minpc, maxpc, text
                    minpc, _maxpc, text = struct.unpack_from("<3Q", blob, pos + 160)
                    if text and minpc - text == first_entry_off:
                        return int(text)
                pos = blob.find(want, pos + 1)
        text_sec = self.img.sections.get(".text")
        return text_sec.addr if text_sec is not None else 0

    def _add(self, tab: bytes, name_at: int, entry: int, end: int) -> None:
        name = tab[name_at:tab.index(b"\0", name_at)].decode("utf-8", "replace")
        self._by_name.setdefault(name, entry << 32 | min(end - entry, _SIZE_MASK))

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Function | None:
        hit = self._by_name.get(name)
        if hit is None:  # assembly functions: "x.abi0" in the symbol table, plain "x" in the pclntab
            alt = name[:-5] if name.endswith(".abi0") else name + ".abi0"
            hit = self._by_name.get(alt)
            if hit is None:
                return None
        entry, size = hit >> 32, hit & _SIZE_MASK
        return Function(name, entry, size, self.img.vaddr_to_offset(entry), self.source)

    def at(self, pc: int) -> Function | None:
        """The function containing a virtual address."""
        if self._sorted is None:
            self._sorted = sorted((v >> 32, n) for n, v in self._by_name.items())
        i = bisect.bisect_right(self._sorted, (pc, "\uffff")) - 1
        if i < 0:
            return None
        f = self.get(self._sorted[i][1])
        return f if f is not None and f.entry <= pc < f.entry + max(f.size, 1) else None
