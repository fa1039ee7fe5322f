"""go_ebpf.c's `struct gev` and events.py's record formats (GRPC_RECORD, HTTP_SERVER_RECORD,
HTTP_CLIENT_RECORD) describe the same bytes: a field added on one side only would shift every field after
it without any error. Fields a call type does not use share storage (unions), so each Python format is
checked against the C fields of its type."""

import re
import struct
from pathlib import Path

from gotel.receivers.go_ebpf import events

SRC = Path(__file__).resolve().parents[3] / "bpf" / "go_ebpf.c"
_C_TYPES = {"u8": ("B", 1), "char": ("s", 1), "u16": ("H", 2), "u32": ("I", 4), "s32": ("i", 4), "u64": ("Q", 8),
            "s64": ("q", 8)}


def _defines(text: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^#define (\w+) (\d+)\b", text, re.M)}


def _c_layout(text: str, name: str = "gev") -> tuple[dict[str, tuple[str, int, int]], int]:
    """{field: (struct code, offset, size)} of a C struct with C's natural alignment, anonymous unions and
    structs inside it flattened (every member of a union at the union's offset), and the struct's size."""
    body = re.search(rf"^struct {name} \{{(.*?)^\}};", text, re.S | re.M)
    assert body, f"{SRC}: struct {name} not found"
    consts = _defines(text)
    lines = [x.strip() for x in re.sub(r"/\*.*?\*/", "", body[1], flags=re.S).splitlines() if x.strip()]
    fields: dict[str, tuple[str, int, int]] = {}

    def block(i: int, off: int, union: bool) -> tuple[int, int, int]:
        """Lays out lines[i:] up to the closing brace: (next line, size, alignment)."""
        size = align = 0
        while i < len(lines) and not lines[i].startswith("}"):
            if lines[i] in ("union {", "struct {"):
                start = off if union else off + size
                i, n, a = block(i + 1, start, lines[i] == "union {")
                if not union:  # (an inner block's offset was taken before its own alignment: check it)
                    assert start % a == 0, f"struct {name}: a nested block at {start} needs alignment {a}"
                i += 1  # the closing "};"
            else:
                m = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\w+)\])?;", lines[i])
                assert m, f"{SRC}: struct {name}: cannot read {lines[i]!r}"
                code, a = _C_TYPES[m[1]]
                count = 1 if m[3] is None else int(m[3]) if m[3].isdigit() else consts[m[3]]
                n = a * count
                at = off if union else -(-(off + size) // a) * a
                fields[m[2]] = (code, at, n)
                if not union:
                    n += at - (off + size)  # padding before it
                i += 1
            align = max(align, a)
            size = max(size, n) if union else size + n
        return i, -(-size // align) * align, align

    _, size, _ = block(0, 0, False)
    return fields, size


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


_FIXED_FIELDS = ["start_ns", "end_ns", "pid", "type", "span_id", "parent_span_id", "trace_hi", "trace_lo", "dl_wall",
                 "dl_ext", "code", "flags", "stream_id", "lport", "rport", "lip", "rip", "liplen", "riplen", "obj",
                 "aux"]
# each Python format's items, in order, as C fields
RECORDS = {
    "GRPC_RECORD": [*_FIXED_FIELDS, "method", "msg", "tp"],
    "HTTP_SERVER_RECORD": [*_FIXED_FIELDS, "method", "path", "req_host", "in_tp", "peer"],
    "HTTP_CLIENT_RECORD": [*_FIXED_FIELDS, "method", "host", "scheme", "url_path"],
}


def test_struct_gev_matches_each_record_format() -> None:
    text = SRC.read_text()
    fields, size = _c_layout(text)
    assert set(fields) == {f for names in RECORDS.values() for f in names} | {"pad"}, "a C field no record decodes"
    for fmt_name, names in RECORDS.items():
        # u8 arrays are bytes (16s) in Python, chars too
        c = [("s" if code == "B" and n > 1 else code, off, n) for code, off, n in (fields[f] for f in names)]
        assert c == _py_fields(getattr(events, fmt_name).format, 0), fmt_name
    d = _defines(text)
    # the ring record sizes emit() reserves: gRPC records end where the HTTP-only part begins
    assert d["GEV_GRPC_SIZE"] == events.GRPC_RECORD.size == fields["in_tp"][1] == fields["url_path"][1]
    assert size == events.HTTP_RECORD_SIZE == events.HTTP_SERVER_RECORD.size == events.HTTP_CLIENT_RECORD.size
    assert (d["STR_LEN"], d["TP_LEN"], d["TS_LEN"], d["PEER_LEN"]) == (
        events.STR_LEN, events.TP_LEN, events.TS_LEN, events.PEER_LEN)
    # issue 20: every ring record fits pymalloc's small objects (512 bytes), a tracestate's aside
    assert size <= 512 and events.GRPC_RECORD.size < size


def test_strings_red_keys_on_are_in_every_record() -> None:
    """red_add (go_ebpf_red.h) builds the key from method and the two slots after it for every type, and the
    gRPC client's finish reserves only GEV_GRPC_SIZE bytes: those slots must lie inside a gRPC record."""
    fields, _ = _c_layout(SRC.read_text())
    for f in ("method", "msg", "path", "host", "tp", "req_host", "scheme"):
        assert fields[f][1] + fields[f][2] <= events.GRPC_RECORD.size, f
    assert fields["msg"][1:] == fields["path"][1:] == fields["host"][1:]
    assert fields["tp"][1:] == fields["req_host"][1:] == fields["scheme"][1:]
    red_add = re.search(r"red_add\(struct gev \*e.*?^}", (HEADERS / "go_ebpf_red.h").read_text(), re.S | re.M)
    assert red_add
    assert set(re.findall(r"e->(\w+)", red_add[0])) <= {"pid", "type", "code", "flags", "method", "msg", "path",
                                                        "host", "tp", "req_host", "scheme", "lport", "rport",
                                                        "liplen", "riplen", "lip", "rip"}


def test_peer_holds_any_tcp_address() -> None:
    """RemoteAddr gets PEER_LEN bytes: Go prints a TCP address as at most "[" IPv6 (39) "%" zone (an interface
    name, 15) "]:65535"."""
    longest = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%" + "e" * 15 + "]:65535"
    assert len(longest) < events.PEER_LEN


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
    """(name, struct code, offset, size) of each field of a flat C struct, in order."""
    fields, _ = _c_layout(text, name)
    return sorted(((f, *v) for f, v in fields.items()), key=lambda x: x[2])


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
