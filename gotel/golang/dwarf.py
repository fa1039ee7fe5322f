"""Struct field offsets from the binary's own DWARF (pyelftools), without walking every DIE.

Go's linker names every type DIE with an inline string (DW_FORM_string) as its first attribute, so a type
is found by searching the decompressed .debug_info for its abbreviation code followed by the NUL-terminated
name; the hit is confirmed by parsing the DIE there. Only the struct DIEs on a requested path are parsed
(a full walk of a gRPC binary's DWARF takes seconds; this takes milliseconds). The search is exhaustive:
every type DIE whose abbreviation starts with an inline name is found this way. Only DWARF that does not
follow that scheme (not written by the Go linker) falls back to a walk of the top-level DIEs.

Go layouts in DWARF: `string` is a struct {str, len}; a slice `[]T` is {array, len, cap}; `interface{}`
is a typedef of runtime.eface {_type, data} and other interfaces of runtime.iface {tab, data}; named types
are typedefs or structs named "pkg/path.Name".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.elf.elffile import ELFFile

from gotel.golang.errors import FieldNotFound, NoDWARF, TypeNotFound

_TYPE_TAGS = ("DW_TAG_structure_type", "DW_TAG_typedef")
_FUNC_TAGS = ("DW_TAG_subprogram",)


# The sections type lookups read. pyelftools would otherwise decompress and keep every debug section
# (line tables, location lists, frames: most of the DWARF's size) for as long as the binary stays cached.
_NEEDED = frozenset({"debug_info", "debug_abbrev", "debug_str", "debug_addr", "debug_str_offsets",
                     "debug_line_str"})


class _TypesOnlyELF(ELFFile):
    """An ELFFile whose get_dwarf_info() loads only the sections in _NEEDED."""

    def get_section_by_name(self, name: str) -> Any:
        bare = name.lstrip(".").removeprefix("z")
        if bare.startswith("debug_") and bare not in _NEEDED:
            return None
        return super().get_section_by_name(name)


def load_dwarf(stream: Any) -> DWARFInfo:
    """DWARF of an ELF stream with only what struct lookups need."""
    return _TypesOnlyELF(stream).get_dwarf_info(relocate_dwarf_sections=False)


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    type_name: str
    size: int | None


class StructIndex:
    """Looks up struct types and fields by name; results are memoised per binary."""

    def __init__(self, dwarf: DWARFInfo | None, path: str) -> None:
        self.path = path
        self.dwarf = dwarf
        self._types: dict[str, DIE | None] = {}
        self._fields: dict[int, dict[str, tuple[int, DIE]]] = {}
        self._prefixes: list[bytes] = []
        self._fn_prefixes: list[bytes] = []
        self._params: dict[str, tuple[str, ...] | None] = {}
        self._info = b""
        if dwarf is not None:
            self._info = dwarf.debug_info_sec.stream.getvalue()  # type: ignore[union-attr]  # pyelftools: an in-memory stream here
            # Every abbreviation table in use (with cgo, C units from the external linker have their own).
            tables = {cu["debug_abbrev_offset"] for cu in dwarf.iter_CUs()}
            prefixes: set[bytes] = set()
            fn_prefixes: set[bytes] = set()
            for table_off in sorted(tables):
                table = dwarf.get_abbrev_table(table_off)
                code = 1
                while True:
                    try:
                        ab = table.get_abbrev(code)
                    except (KeyError, IndexError):
                        break
                    specs = ab["attr_spec"]
                    if specs and specs[0].name == "DW_AT_name" and specs[0].form == "DW_FORM_string":
                        if ab["tag"] in _TYPE_TAGS:
                            prefixes.add(_uleb(code))
                        elif ab["tag"] in _FUNC_TAGS:
                            fn_prefixes.add(_uleb(code))
                    code += 1
            self._prefixes = sorted(prefixes)
            self._fn_prefixes = sorted(fn_prefixes)

    def _require(self) -> DWARFInfo:
        if self.dwarf is None:
            raise NoDWARF(f"{self.path}: no DWARF (built with -ldflags=-w or stripped); struct offsets unknown")
        return self.dwarf

    def find_type(self, name: str) -> DIE:
        """The struct DIE of a type name, following typedefs."""
        dwarf = self._require()
        if name not in self._types:
            self._types[name] = self._search(dwarf, name)
        die = self._types[name]
        if die is None:
            raise TypeNotFound(f"{self.path}: no type {name!r} in DWARF")
        return die

    def func_params(self, name: str) -> tuple[str, ...] | None:
        """Names of a function's parameters (receiver first, results left out) as DWARF declares them, or
        None when the function is not there: signatures that changed across versions of a library are told
        apart by what the binary says, not by its version number."""
        dwarf = self._require()
        if name not in self._params:
            self._params[name] = self._func_search(dwarf, name)
        return self._params[name]

    def _func_search(self, dwarf: DWARFInfo, name: str) -> tuple[str, ...] | None:
        needle = name.encode() + b"\0"
        info = self._info
        pos = info.find(needle)
        while pos > 0:
            for prefix in self._fn_prefixes:
                start = pos - len(prefix)
                if info[start:pos] == prefix:
                    die = self._die_at(dwarf, start)
                    if die is not None and die.tag in _FUNC_TAGS and _name(die) == name:
                        return tuple(_name(c) for c in die.iter_children()
                                     if c.tag == "DW_TAG_formal_parameter"
                                     and not _attr(c, "DW_AT_variable_parameter"))
            pos = info.find(needle, pos + 1)
        return None

    def _search(self, dwarf: DWARFInfo, name: str) -> DIE | None:
        needle = name.encode() + b"\0"
        info = self._info
        pos = info.find(needle)
        while pos > 0:  # one scan of the section per type name; the abbreviation code is checked per hit
            for prefix in self._prefixes:
                start = pos - len(prefix)
                if info[start:pos] == prefix:
                    die = self._die_at(dwarf, start)
                    if die is not None and die.tag in _TYPE_TAGS and _name(die) == name:
                        return self._resolve(die)
            pos = info.find(needle, pos + 1)
        if self._prefixes:
            return None  # every named type DIE starts with one of these byte strings: the type is not there
        return self._walk(dwarf, name)

    @staticmethod
    def _die_at(dwarf: DWARFInfo, offset: int) -> DIE | None:
        try:
            return dwarf.get_DIE_from_refaddr(offset)
        except Exception:  # a false hit in the middle of another DIE: not ours
            return None

    def _walk(self, dwarf: DWARFInfo, name: str) -> DIE | None:
        """Slow path for DWARF the Go linker did not write: the top-level DIEs of every unit."""
        for cu in dwarf.iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                if die.tag in _TYPE_TAGS and _name(die) == name:
                    return self._resolve(die)
        return None

    def _resolve(self, die: DIE) -> DIE:
        seen = 0
        while die.tag == "DW_TAG_typedef" and "DW_AT_type" in die.attributes and seen < 16:
            die = die.get_DIE_from_attribute("DW_AT_type")
            seen += 1
        return die

    def fields(self, die: DIE) -> dict[str, tuple[int, DIE]]:
        """member name -> (offset, member DIE) of a struct DIE (member types are resolved only on demand)."""
        got = self._fields.get(die.offset)
        if got is None:
            got = {}
            for child in die.iter_children():
                if child.tag != "DW_TAG_member":
                    continue
                loc = child.attributes.get("DW_AT_data_member_location")
                off = loc.value if loc is not None and isinstance(loc.value, int) else 0
                got[_name(child)] = (off, child)
            self._fields[die.offset] = got
        return got

    def chain(self, type_name: str, path: str) -> tuple[int, ...]:
        """Offsets along a dotted field path: the first is from the start of `type_name`; each further one is
        inside the struct a pointer member points to (one dereference per element)."""
        die = self.find_type(type_name)
        offsets = [0]
        walked: list[str] = []
        for part in path.split("."):
            if die.tag == "DW_TAG_pointer_type":  # the previous field was a pointer: dereference it
                target = die.get_DIE_from_attribute("DW_AT_type") if "DW_AT_type" in die.attributes else None
                if target is None:
                    raise FieldNotFound(f"{self.path}: {type_name}.{'.'.join(walked)} is an untyped pointer")
                die = self._resolve(target)
                offsets.append(0)
            die = self._resolve(die)
            if die.tag != "DW_TAG_structure_type":
                raise FieldNotFound(f"{self.path}: {type_name}.{'.'.join(walked)} is {_name(die) or die.tag}, "
                                    f"not a struct; no field {part!r}")
            members = self.fields(die)
            if part not in members:
                raise FieldNotFound(f"{self.path}: {_name(die)} has no field {part!r} (fields: "
                                    f"{', '.join(members) or 'none'})")
            off, member = members[part]
            offsets[-1] += off
            walked.append(part)
            if "DW_AT_type" not in member.attributes:
                break
            die = member.get_DIE_from_attribute("DW_AT_type")
        return tuple(offsets)

    def offset(self, type_name: str, path: str) -> int:
        """Offset of a field (dotted path through embedded structs, strings, slices, interfaces)."""
        c = self.chain(type_name, path)
        if len(c) > 1:
            raise FieldNotFound(f"{self.path}: {type_name}.{path} goes through a pointer; use field_chain() "
                                f"(offsets {list(c)}, one dereference between each)")
        return c[0]

    def size(self, type_name: str) -> int:
        die = self.find_type(type_name)
        return _attr(die, "DW_AT_byte_size") or 0

    def has_type(self, type_name: str) -> bool:
        try:
            self.find_type(type_name)
        except TypeNotFound:
            return False
        return True


def _name(die: DIE) -> str:
    a = die.attributes.get("DW_AT_name")
    if a is None:
        return ""
    v: Any = a.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _attr(die: DIE, name: str) -> Any:
    a = die.attributes.get(name)
    return a.value if a is not None else None
