"""go_ebpf.c's `struct gev` and events.py's RECORD + HOPS describe the same bytes: a field added on one side
only (two branches each appending to the record) would shift every field after it without any error."""

import re
import struct
from pathlib import Path

from gotel.receivers.go_ebpf import events

SRC = Path(__file__).resolve().parents[3] / "bpf" / "go_ebpf.c"
_C_TYPES = {"u8": ("B", 1), "char": ("s", 1), "u16": ("H", 2), "u32": ("I", 4), "s32": ("i", 4), "u64": ("Q", 8),
            "s64": ("q", 8)}


def _defines(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define (\w+) (\d+)\b", text, re.M)}


def _c_fields(text: str) -> list[tuple[str, str, int, int]]:
    """(name, struct code, offset, size) of each field of struct gev, laid out with C's natural alignment."""
    body = re.search(r"^struct gev \{(.*?)^\};", text, re.S | re.M)
    assert body, f"{SRC}: struct gev not found"
    consts = _defines(text)
    out, off = [], 0
    for line in re.sub(r"/\*.*?\*/", "", body[1], flags=re.S).splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\w+)(?:\[(\w+)\])?;\s*", line)
        if not m:
            assert not line.strip(), f"{SRC}: struct gev: cannot read {line!r}"
            continue
        code, align = _C_TYPES[m[1]]
        n = 1 if m[3] is None else int(m[3]) if m[3].isdigit() else consts[m[3]]
        off = (off + align - 1) // align * align
        out.append((m[2], code, off, align * n))
        off += align * n
    return out


def _py_fields(fmt: str, base: int) -> list[tuple[str, int, int]]:
    """(struct code, offset, size) of each item of a little-endian struct format, padding left out."""
    out, off = [], base
    for count, code in re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<")):
        size = struct.calcsize(f"<{count}{code}")
        if code != "x":
            if code == "s" or not count:
                out.append((code, off, size))
            else:
                out += [(code, off + i * (size // int(count)), size // int(count)) for i in range(int(count))]
        off += size
    return out


def test_struct_gev_matches_record_and_hops() -> None:
    text = SRC.read_text()
    c = [(code, off, size) for name, code, off, size in _c_fields(text) if name != "pad"]
    # u8 arrays are bytes (16s) in Python, chars too
    c = [("s" if code == "B" and size > 1 else code, off, size) for code, off, size in c]
    py = _py_fields(events.RECORD.format, 0) + _py_fields(events.HOPS.format, events.RECORD.size)
    assert c == py
    last = _c_fields(text)[-1]
    c_size = -(-(last[2] + last[3]) // 8) * 8  # the struct's size: a multiple of its 8-byte alignment
    assert c_size == events.RECORD_SIZE
    d = _defines(text)
    assert (d["STR_LEN"], d["TP_LEN"], d["TS_LEN"]) == (events.STR_LEN, events.TP_LEN, events.TS_LEN)
