"""Probe spec evaluation: the reasons `gotel inspect` gives for every probe."""

from __future__ import annotations

from gotel.ebpf.probespecs import BinaryFacts, FieldRef, ProbeSpec, evaluate, version_at_least


def facts(**kw: object) -> BinaryFacts:
    syms = kw.pop("syms", {"net/http.serverHandler.ServeHTTP": 0x401000})
    offs = kw.pop("offs", {("net/http.Request", "Method"): 0})
    base: dict[str, object] = dict(
        go_version="go1.22.3",
        modules={"google.golang.org/grpc": "v1.60.1"},
        has_dwarf=True,
        function_address=lambda s: syms.get(s),  # type: ignore[attr-defined]
        ret_count=lambda s: 2,
        struct_offset=lambda t, f: offs.get((t, f)),  # type: ignore[attr-defined]
    )
    base.update(kw)
    return BinaryFacts(**base)  # type: ignore[arg-type]


SPEC = ProbeSpec(
    "t", ("net/http.serverHandler.ServeHTTP",), "go_ebpf",
    offsets=(FieldRef("net/http.Request", "Method", "http.request.method"), FieldRef("net/http.Request", "Host", "server.address")),
)


def test_versions() -> None:
    assert version_at_least("go1.19.8", "1.17")
    assert not version_at_least("go1.16", "1.17")
    assert version_at_least("v1.60.1", "1.60")


def test_degraded_names_lost_attributes() -> None:
    v = evaluate(SPEC, facts())
    assert v.status == "degraded"
    assert v.lost_attributes == ["server.address"]
    assert "net/http.Request.Host" in v.reasons[0]
    v = evaluate(SPEC, facts(has_dwarf=False, offs={}))
    assert v.status == "degraded" and "no DWARF" in v.reasons[0]
    assert v.lost_attributes == ["http.request.method", "server.address"]


def test_unavailable_reasons() -> None:
    assert "older than go1.17" in evaluate(SPEC, facts(go_version="go1.16.15")).reasons[0]
    assert "symbol missing" in evaluate(SPEC, facts(syms={})).reasons[0]
    grpc = ProbeSpec("g", ("google.golang.org/grpc.(*Server).handleStream",), "go_ebpf", module="google.golang.org/grpc",
                     min_module="v1.61.0")
    assert evaluate(grpc, facts()).status == "unavailable"
    assert evaluate(grpc, facts(modules={})).status == "not-present"
    # GOPATH builds carry no module list: the symbol decides
    gopath = evaluate(grpc, facts(modules={}, syms={"google.golang.org/grpc.(*Server).handleStream": 0x1}))
    assert gopath.status == "ok" and "version unknown" in gopath.reasons[0]
    ret = ProbeSpec("r", ("net/http.serverHandler.ServeHTTP",), "go_ebpf", returns=True)
    assert evaluate(ret, facts(ret_count=lambda s: 0)).status == "unavailable"
    ok = evaluate(ret, facts())
    assert (ok.status, ok.ret_count, ok.address) == ("ok", 2, 0x401000)
