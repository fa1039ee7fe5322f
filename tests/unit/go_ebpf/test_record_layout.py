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


# ---- everything else the C and the Python both define (issue 16: one definition, checked here) ----

HEADERS = SRC.parent / "include"


def _all_defines(text: str) -> dict[str, int]:
    """Every `#define NAME EXPR` whose EXPR is integers, + - << and names defined before, evaluated."""
    out: dict[str, int] = {}
    for name, expr in re.findall(r"^#define (\w+) ([^/\n]+?)\s*(?:/\*.*)?$", text, re.M):
        expr = re.sub(r"(\d+)U?LL\b", r"\1", expr)
        if not re.fullmatch(r"[\w\s()+<\-]+", expr):
            continue
        names = re.findall(r"[A-Za-z_]\w*", expr)
        if all(n in out for n in names):
            out[name] = int(eval(expr, {}, dict(out)))
    return out


def _c_text() -> str:
    return (HEADERS / "gotel_go.h").read_text() + SRC.read_text() + (HEADERS / "go_ebpf_red.h").read_text()


def test_flags_and_types_match() -> None:
    from gotel.receivers.go_ebpf import flowcontrol, layout

    d = _all_defines(_c_text())
    for name, value in d.items():
        for mod in (events, flowcontrol):  # flow-control records and flags are decoded by flowcontrol.py
            if name.startswith(("E_", "T_")) and hasattr(mod, name):
                assert getattr(mod, name) == value, name
        for mod in (layout, flowcontrol):
            if name.startswith("F_") and hasattr(mod, name):
                assert getattr(mod, name) == value, name
    # every event flag and call type of the C is known to the decoder, and every process flag to layout.py
    assert {n for n in d if n.startswith(("E_", "T_"))} <= set(dir(events)) | set(dir(flowcontrol))
    # one bit, one meaning: no two event flags share a bit
    eflags = {n: v for n, v in d.items() if n.startswith("E_")}
    assert len(set(eflags.values())) == len(eflags), sorted(eflags.items(), key=lambda kv: kv[1])
    assert {n for n in d if n.startswith("F_")} <= set(dir(layout)) | set(dir(flowcontrol))


def test_offset_slots_match_layout() -> None:
    """Each O_/A_/H_/HA_/HX_ slot the C reads is one layout.py fills, and each one layout.py fills is read."""
    from gotel.receivers.go_ebpf import layout

    d = _all_defines(_c_text())
    assert d["H_BASE"] == layout.HTTP_SLOT
    slots = {v for n, v in d.items() if re.match(r"(O|A|H|HA|HX|FL)_[A-Z0-9_]+$", n) and n != "H_BASE"}
    filled = {i for i, spec in enumerate(layout.ALL_OFFSETS) if spec is not None}
    assert slots == filled, (sorted(slots - filled), sorted(filled - slots))
    learned = {v for n, v in d.items() if n.startswith("L_ITAB_")}
    assert learned == set(range(d["GOTEL_GO_MAX_OFFSETS"] - layout.LEARNED_SLOTS, d["GOTEL_GO_MAX_OFFSETS"]))
    assert not learned & filled


def _c_struct(text: str, name: str) -> list[tuple[str, str, int, int]]:
    return _c_fields(text.replace(f"struct {name} {{", "struct gev {", 1))


def test_red_structs_match_red_py() -> None:
    from gotel.receivers.go_ebpf import red

    text = SRC.read_text()
    hdr = (HEADERS / "go_ebpf_red.h").read_text()
    consts = {**_defines(text), **_defines(hdr)}
    hdr_pre = "".join(f"#define {k} {v}\n" for k, v in consts.items())
    for cname, py in (("red_key", red.RED_KEY), ("red_val", red.RED_VAL), ("go_cfg", red.GO_CFG)):
        body = re.search(rf"^struct {cname} \{{.*?^\}};", hdr, re.S | re.M)
        assert body, cname
        fields = _c_struct(hdr_pre + body[0], cname)
        c = [("s" if code in "Bs" and size > 1 and code != "Q" else code, off, size) for _, code, off, size in fields]
        # u64 arrays are items of one code in Python
        flat: list[tuple[str, int, int]] = []
        for code, off, size in c:
            if code in "Q" and size > 8:
                flat += [("Q", off + 8 * i, 8) for i in range(size // 8)]
            else:
                flat.append((code, off, size))
        assert flat == _py_fields(py.format, 0), cname
        assert -(-(fields[-1][2] + fields[-1][3]) // 8) * 8 == py.size, cname
    assert (consts["RED_NB"], consts["RED_BB"], consts["RED_M"]) == (red.RED_NB, red.RED_BB, red.RED_M)
    assert consts["RED_NB"] == len(events.DURATION_BOUNDS) + 1 and consts["RED_BB"] == len(events.BUDGET_BOUNDS) + 1
