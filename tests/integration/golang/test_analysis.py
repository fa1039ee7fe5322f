"""gotel.golang against real Go binaries: the fixtures built with Go 1.19 and 1.27, plain and stripped.

Every expected value comes from an independent source: `go version -m`, the fixture's own unsafe.Offsetof,
the ELF symbol table, the bytes of the file, readelf-style note contents defined in usdtapp's C source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import capstone
import pytest

import gotel.golang as golang
from gotel.golang.elf import ElfImage
from gotel.golang.symbols import FunctionTable
from tests.helpers import goapps

pytestmark = pytest.mark.slow

UNSTRIPPED = [(a, t) for a in goapps.APPS for t in goapps.TOOLCHAINS]


def go_version_m(toolchain: str, path: Path) -> dict[str, Any]:
    """`go version -m` parsed into the same shape gotel.golang exposes."""
    out = subprocess.run([str(goapps.go_tool(toolchain)), "version", "-m", str(path)], capture_output=True,
                         text=True, check=True).stdout
    lines = out.splitlines()
    res: dict[str, Any] = {"version": lines[0].rsplit(": ", 1)[1], "path": "", "mod": None, "deps": [],
                           "settings": {}}
    for line in lines[1:]:
        parts = line.strip("\n").split("\t")[1:]
        if not parts or not parts[0]:
            continue
        kind, rest = parts[0], parts[1:]
        if kind == "path":
            res["path"] = rest[0]
        elif kind == "mod":
            res["mod"] = (rest[0], rest[1])
        elif kind == "dep":
            res["deps"].append([rest[0], rest[1], None])
        elif kind == "=>":
            res["deps"][-1][2] = (rest[0], rest[1])
        elif kind == "build":
            key, _, value = rest[0].partition("=")
            res["settings"][key] = value.strip('"')
    return res


def ours(b: golang.GoBinary) -> dict[str, Any]:
    bi = b.buildinfo
    assert bi is not None
    return {
        "version": bi.go_version, "path": bi.path,
        "mod": (bi.main.path, bi.main.version) if bi.main else None,
        "deps": [[d.path, d.version, (d.replace.path, d.replace.version) if d.replace else None] for d in bi.deps],
        "settings": dict(bi.settings),
    }


@pytest.mark.parametrize(("app", "toolchain", "stripped"),
                         goapps.all_variants() + [("modapp", t, s) for t in goapps.TOOLCHAINS for s in (False, True)])
def test_build_info_agrees_with_go_version_m(app: str, toolchain: str, stripped: bool) -> None:
    path = goapps.build(app, toolchain, stripped)
    b = golang.analyze(path)
    assert ours(b) == go_version_m(toolchain, path)
    assert b.go_version == goapps.go_version(toolchain)
    assert b.stripped is stripped and b.has_dwarf is (not stripped)
    if app == "modapp":
        assert b.module_version("example.com/gotelfix/dep") == "(devel)"  # replaced by ./dep
        dep = b.buildinfo.dep("example.com/gotelfix/dep") if b.buildinfo else None
        assert dep is not None and dep.version == "v1.2.3" and dep.replace is not None
        assert dep.replace.path == "./dep"


def test_build_info_of_a_large_real_program() -> None:
    """Debian's Prometheus (50 MB, Go 1.19, -trimpath), a program nobody here built."""
    path = Path("/usr/bin/prometheus")
    assert ours(golang.analyze(path)) == go_version_m("go1.19", path)


@pytest.mark.parametrize(("app", "toolchain"), UNSTRIPPED)
def test_struct_offsets_equal_the_programs_own_unsafe_offsetof(app: str, toolchain: str) -> None:
    truth = goapps.offsets(app, toolchain)
    b = golang.analyze(goapps.build(app, toolchain))
    got = {f: b.struct_offset(truth["type"], f) for f in truth["fields"]}
    assert got == truth["fields"]
    chains = {f: b.field_chain(truth["type"], f) for f in truth["deref"]}
    assert chains == {f: (truth["fields"]["Ptr"], off) for f, off in truth["deref"].items()}
    assert b.structs.size(truth["type"]) == truth["size"]
    assert b.structs.size(truth["inner"]["type"]) == truth["inner"]["size"]
    with pytest.raises(golang.FieldNotFound, match=r"Ptr.*pointer"):
        b.struct_offset(truth["type"], "Ptr.Label")
    with pytest.raises(golang.FieldNotFound, match=r"no field 'Nope'.*Kind, Inner"):
        b.struct_offset(truth["type"], "Nope")
    with pytest.raises(golang.TypeNotFound):
        b.struct_offset("main.noSuchType", "x")


@pytest.mark.parametrize("toolchain", goapps.TOOLCHAINS)
def test_library_struct_offsets_for_tracing(toolchain: str) -> None:
    """The fields gRPC/HTTP tracing reads exist, and agree with what the Go compiler itself says."""
    b = golang.analyze(goapps.build("grpcapp", toolchain))
    assert b.struct_offset("google.golang.org/grpc/internal/transport.Stream", "method.len") == \
        b.struct_offset("google.golang.org/grpc/internal/transport.Stream", "method") + 8
    assert b.field_chain("net/http.Request", "URL.Path") == (b.struct_offset("net/http.Request", "URL"),
                                                             b.struct_offset("net/url.URL", "Path"))
    assert b.struct_offset("runtime.g", "m") == 48  # stack{lo,hi}, stackguard0/1, _panic, _defer, m
    # m = {g0 *g; morebuf gobuf; divmod, _ uint32; procid uint64}: 72 on Go 1.19, 64 once gobuf lost `ret`
    # (a hard-coded 0x40 is wrong on 1.19 - the reason offsets come from each binary's DWARF).
    gobuf = b.structs.fields(b.structs.find_type("runtime.gobuf"))
    assert b.structs.size("runtime.gobuf") == 8 * len(gobuf)
    assert b.struct_offset("runtime.m", "procid") == 8 + 8 * len(gobuf) + 8
    assert b.struct_offset("runtime.m", "procid") == (72 if toolchain == "go1.19" else 64)


@pytest.mark.parametrize(("app", "toolchain"), UNSTRIPPED)
def test_stripped_binary_says_no_dwarf_and_still_finds_functions(app: str, toolchain: str) -> None:
    plain = golang.analyze(goapps.build(app, toolchain))
    stripped = golang.analyze(goapps.build(app, toolchain, stripped=True))
    with pytest.raises(golang.NoDWARF, match="no DWARF"):
        stripped.struct_offset("main.fixtureRecord", "Name")
    assert stripped.functions.source == "pclntab" and plain.functions.source == "symtab"
    wanted = [n for n in plain.functions.names() if n.startswith(("main.", "net/http.", "google.golang.org/grpc."))]
    assert len(wanted) > 20
    for name in wanted:
        f, g = plain.function(name), stripped.function(name)
        assert (f.entry, f.file_offset) == (g.entry, g.file_offset), name
    # the same file read both ways: pclntab agrees with the symbol table on (nearly) every function
    img = ElfImage(plain.path)
    sym, pcln = FunctionTable(img), FunctionTable(img, prefer="pclntab")
    assert pcln.pclntab_version == ("1.18" if toolchain == "go1.19" else "1.20")
    common = [n for n in pcln.names() if n in sym]
    agree = sum(sym.get(n).entry == pcln.get(n).entry for n in common)  # type: ignore[union-attr]
    assert len(common) > 0.95 * len(pcln) and agree >= len(common) - 10  # ABI0/wrapper twins share a name
    with pytest.raises(golang.FunctionNotFound):
        stripped.function("main.noSuchFunction")


RET_FUNCS = ["main.main", "main.printOffsets", "runtime.newproc1", "runtime.casgstatus", "runtime.gcStart",
             "net/http.serverHandler.ServeHTTP", "net/http.(*Transport).roundTrip", "net/http.(*conn).serve",
             "net.(*netFD).Read", "net.(*netFD).Write", "runtime.mallocgc", "runtime.chansend1",
             "runtime.chanrecv1", "encoding/json.(*Encoder).Encode", "fmt.Fprintln", "sync.(*Mutex).Lock",
             "sync.(*Mutex).Unlock", "os.(*File).Write", "time.Now", "net/http.(*ServeMux).ServeHTTP"]


@pytest.mark.parametrize(("toolchain", "stripped"), [(t, s) for t in goapps.TOOLCHAINS for s in (False, True)])
def test_ret_offsets_are_ret_instructions(toolchain: str, stripped: bool) -> None:
    b = golang.analyze(goapps.build("httpapp", toolchain, stripped))
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    for name in RET_FUNCS:
        f = b.function(name)
        rets = b.ret_offsets(name)
        assert rets, name
        body = bytes(b.image.data[f.file_offset:f.file_offset + f.size])
        for off in rets:
            insn = next(cs.disasm(body[off:off + 15], f.entry + off))
            assert insn.mnemonic in ("ret", "retq", "repz ret"), (name, off, insn.mnemonic)
            assert body[off] in (0xC3, 0xC2, 0xF3)
        assert max(rets) < len(body.rstrip(b"\xcc"))
        # and no RET was missed: count C3 bytes that start an instruction in a fresh linear decode
        independent = [i.address - f.entry for i in cs.disasm(body.rstrip(b"\xcc"), f.entry) if i.bytes in (b"\xc3",)]
        assert set(independent) <= set(rets), name


@pytest.mark.parametrize(("toolchain", "stripped"), [(t, s) for t in goapps.TOOLCHAINS for s in (False, True)])
def test_usdt_notes_match_the_probes_defined(toolchain: str, stripped: bool) -> None:
    b = golang.analyze(goapps.build("usdtapp", toolchain, stripped))
    probes = {p.name: p for p in b.usdt_probes()}
    assert set(probes) == {"req_start", "req_end", "tick", "message", "guarded"}
    assert {p.provider for p in probes.values()} == {"gotelfix"}
    shape = {name: [(a.size, a.signed, a.kind) for a in p.args] for name, p in probes.items()}
    assert shape == {
        "req_start": [(8, True, "reg"), (8, False, "reg")],  # int64 id, const char *name
        "req_end": [(8, True, "reg"), (4, True, "reg")],  # int64 id, int32 status
        "tick": [(8, False, "reg"), (4, True, "reg"), (1, False, "reg"), (2, True, "reg")],
        "message": [(8, False, "reg"), (8, False, "reg")],
        "guarded": [(8, True, "reg")],
    }
    for p in probes.values():
        assert b.image.data[p.file_offset] == 0x90  # the probe site is a NOP
        assert b.image.vaddr_to_offset(p.pc) == p.file_offset
    assert all(p.semaphore == 0 for n, p in probes.items() if n != "guarded")
    g = probes["guarded"]
    sec = b.image.sections[".probes"]
    assert sec.addr <= g.semaphore < sec.addr + sec.size
    assert g.semaphore_offset == g.semaphore - sec.addr + sec.offset
    assert b.image.data[g.semaphore_offset:g.semaphore_offset + 2] == b"\0\0"
    assert golang.analyze(goapps.build("grpcapp", toolchain, stripped)).usdt_probes() == ()


def test_cache_by_identity_and_build_id(tmp_path: Path) -> None:
    src = goapps.build("runtime", "go1.27")
    golang.cache_clear()
    first = golang.analyze(src)
    assert golang.analyze(src) is first
    copy = tmp_path / "copy"
    shutil.copy(src, copy)  # another inode, same build: a container layer holding the same image
    assert golang.analyze(copy) is first
    other = golang.analyze(goapps.build("runtime", "go1.19"))
    assert other is not first and other.build_id != first.build_id
    # the file changes in place (same inode, new content): a new analysis, never a stale one
    shutil.copy(goapps.build("httpapp", "go1.27"), copy)
    os.utime(copy, ns=(1, 1))
    changed = golang.analyze(copy)
    assert changed is not first and changed.function("main.runServer")


def test_non_go_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(golang.NotGo, match="not a Go program"):
        golang.analyze("/bin/sleep")
    text = tmp_path / "script.sh"
    text.write_text("#!/bin/sh\necho hi\n" * 10)
    with pytest.raises(golang.NotELF):
        golang.analyze(text)


def test_running_process_via_proc_exe(goapp: Any) -> None:
    """What the agent does: analyse /proc/PID/exe of a discovered process; same analysis as the file."""
    app = goapp("runtime", toolchain="go1.19")
    via_proc = golang.analyze(f"/proc/{app.pid}/exe")
    assert via_proc is golang.analyze(goapps.build("runtime", "go1.19"))
    assert via_proc.function("main.blockingSyscall").entry > 0


def test_concurrent_queries_agree() -> None:
    import concurrent.futures

    b = golang.GoBinary(goapps.build("grpcapp", "go1.27"))  # fresh: nothing memoised yet
    fields = ["Kind", "Inner.Label.len", "Tags.cap", "Nested.B", "Err.data", "Last"] * 4
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda f: b.struct_offset("main.fixtureRecord", f), fields))
    truth = goapps.offsets("grpcapp", "go1.27")["fields"]
    assert got == [truth[f] for f in fields]


def test_an_idle_struct_index_is_dropped_at_a_trim_and_rebuilt_with_the_same_offsets() -> None:
    """The decompressed .debug_info behind struct lookups leaves with the periodic trim once no lookup
    used it for STRUCTS_IDLE_S (gotel.host.memory.release_and_trim), and comes back on the next lookup,
    answering as before. The figure is this process's own private memory, read from /proc."""
    import gc
    import time

    from gotel.golang import binary
    from gotel.host import memory

    b = golang.analyze(goapps.build("grpcapp", "go1.27"))
    fields = ("m", "goid", "atomicstatus", "startpc")
    before = {f: b.struct_offset("runtime.g", f) for f in fields}
    used = b.structs
    assert not b.release_idle_structs(binary.STRUCTS_IDLE_S)  # just used: kept
    del used
    gc.collect()
    memory.trim()

    def private_kib() -> int:
        with open("/proc/self/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Dirty:", "Private_Clean:")))

    held = private_kib()
    b._structs_used = time.monotonic() - binary.STRUCTS_IDLE_S - 0.1  # idle that long
    memory.release_and_trim()  # what the receivers' periodic trim runs
    assert b._structs is None
    freed = held - private_kib()
    assert freed > 3 * 1024, freed  # grpcapp's .debug_info: 4.5 MB decompressed
    assert {f: b.struct_offset("runtime.g", f) for f in fields} == before  # rebuilt on demand
    assert b._structs is not None


def _mapped_pss_kib(path: str) -> int:
    """This process's PSS of the mappings of one file (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                inside = len(head) > 5 and head[5] == path
            elif inside and head[0] == "Pss:":
                total += int(head[1])
    return total


def test_an_idle_binary_s_mapped_pages_leave_our_pss(tmp_path: Path) -> None:
    """The file pages the analysis read stay in the page cache, not in the agent's PSS, once idle; a
    later read faults them back in with the same bytes."""
    import time

    from gotel.golang import binary
    from gotel.host import memory

    # a copy of its own: other tests of this process may hold analyses (and mappings) of the shared build
    path = str(shutil.copy(goapps.build("grpcapp", "go1.27"), tmp_path / "grpcapp"))
    binary.cache_clear()  # else the cache answers the copy with the build it knows (same build id)
    b = golang.analyze(path)
    b.struct_offset("runtime.g", "goid")  # reads .debug_info and more
    text = b.image.section_bytes(".gopclntab")
    assert text is not None
    first = bytes(text[:4096])
    assert _mapped_pss_kib(path) > 1024
    b._structs_used = time.monotonic() - binary.STRUCTS_IDLE_S - 0.1
    memory.release_and_trim()
    assert _mapped_pss_kib(path) < 64
    assert bytes(text[:4096]) == first
