"""The registry of Go probes gotel knows: what each one attaches to and what it needs to be useful.

eBPF receivers (go_ebpf, go_runtime) register their probes here, and `gotel inspect` evaluates every
registered probe against one binary: attachable, attachable with fewer attributes (struct offsets
unknown because the binary has no DWARF — gotel never guesses them), or not attachable (symbol
missing, Go too old). The seed below lists the runtime, net/http and gRPC functions the field hooks
(reference/ebpf-go.md); receivers may replace a seed entry by registering the same id.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

MIN_GO = "1.17"  # register ABI (ABIInternal) on amd64; older Go passes arguments on the stack


@dataclass(frozen=True)
class FieldRef:
    """A struct field whose offset a probe reads, by DWARF type name ("net/http.Request") and field path.
    Alternatives (a type renamed between versions) are separated by "|" in `type`, and, when the field's name
    changed too, in `field` (paired in order); the offset is known when one alternative is."""

    type: str
    field: str
    attribute: str = ""  # the telemetry attribute lost when the offset is unknown

    def __str__(self) -> str:
        return f"{self.type}.{self.field}"


@dataclass(frozen=True)
class ProbeSpec:
    id: str
    symbols: tuple[str, ...]  # alternatives, first found wins (e.g. WriteStatus / writeStatus)
    receiver: str
    description: str = ""
    module: str = "std"  # module path providing the symbol, "std" for the standard library
    entry: bool = True
    returns: bool = False  # also a probe at every RET (never a uretprobe)
    offsets: tuple[FieldRef, ...] = ()
    min_go: str = MIN_GO
    min_module: str | None = None  # minimum version of `module`
    optional: bool = False  # absent in many binaries without anything being wrong (e.g. gRPC in an HTTP app)
    requires: tuple[str, ...] = ()  # other functions the probe's work needs linked in (all of them)
    offsets_required: bool = False  # without its offsets the probe is not attached at all (no degraded mode)


Status = Literal["ok", "degraded", "unavailable", "not-present"]


@dataclass
class Verdict:
    spec: ProbeSpec
    status: Status
    symbol: str | None = None
    address: int | None = None
    ret_count: int | None = None
    reasons: list[str] = field(default_factory=list)
    lost_attributes: list[str] = field(default_factory=list)


@dataclass
class BinaryFacts:
    """What evaluation needs from a binary's analysis (see gotel.ebpf.targets.facts_for)."""

    go_version: str | None
    modules: dict[str, str]  # module path -> version
    has_dwarf: bool
    function_address: Callable[[str], int | None]
    ret_count: Callable[[str], int | None]
    struct_offset: Callable[[str, str], int | None]


_REGISTRY: dict[str, ProbeSpec] = {}


def register(spec: ProbeSpec) -> ProbeSpec:
    _REGISTRY[spec.id] = spec
    return spec


_PLUGINS_LOADED = False


def _load_plugins() -> None:
    """Receivers declare their probe specs under the `gotel.probespecs` entry-point group, so that
    `gotel inspect` reports every probe without importing (and compiling) the receivers themselves."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="gotel.probespecs"):
        try:
            ep.load()
        except Exception as e:  # a broken plugin must not hide the others
            import logging

            logging.getLogger(__name__).warning("probe specs %s cannot be loaded: %s", ep.value, e)


def all_specs() -> list[ProbeSpec]:
    _load_plugins()
    return list(_REGISTRY.values())


def get(spec_id: str) -> ProbeSpec:
    _load_plugins()
    return _REGISTRY[spec_id]


def _vtuple(v: str) -> tuple[int, ...]:
    nums = re.findall(r"\d+", v.removeprefix("go").split("-")[0])
    return tuple(int(n) for n in nums[:3])


def version_at_least(have: str, want: str) -> bool:
    return _vtuple(have) >= _vtuple(want)


def _field_known(b: BinaryFacts, f: FieldRef) -> bool:
    """Alternatives: types and fields paired in order when both list the same number (a type renamed
    together with its field); otherwise every field name is tried on every type (a field renamed in place)."""
    types, fields = f.type.split("|"), f.field.split("|")
    if len(types) == len(fields) > 1:
        pairs = list(zip(types, fields, strict=True))
    else:
        pairs = [(t, fl) for t in types for fl in fields]
    return any(b.struct_offset(t, fl) is not None for t, fl in pairs)


def evaluate(spec: ProbeSpec, b: BinaryFacts) -> Verdict:
    v = Verdict(spec, "ok")
    if b.go_version is None:
        v.status = "unavailable"
        v.reasons.append("not a Go binary (no build info)")
        return v
    if not version_at_least(b.go_version, spec.min_go):
        v.status = "unavailable"
        v.reasons.append(f"{b.go_version} is older than go{spec.min_go}" + (" (stack ABI)" if spec.min_go == MIN_GO else ""))
        return v
    module_unknown = False
    if spec.module != "std":
        mv = b.modules.get(spec.module)
        if mv is None:
            # GOPATH-mode builds record no modules: the symbols decide whether the library is there
            module_unknown = True
        elif spec.min_module and not version_at_least(mv, spec.min_module):
            v.status = "unavailable"
            v.reasons.append(f"{spec.module} {mv} is older than {spec.min_module}")
            return v
    for sym in spec.symbols:
        addr = b.function_address(sym)
        if addr is not None:
            v.symbol, v.address = sym, addr
            break
    if v.symbol is None:
        if module_unknown:
            v.status = "not-present"
            v.reasons.append(f"module {spec.module} not linked in")
            return v
        v.status = "not-present" if spec.optional else "unavailable"
        v.reasons.append("symbol missing: " + " / ".join(spec.symbols) + " (not linked, or inlined)")
        return v
    gone = [f for f in spec.requires if b.function_address(f) is None]
    if gone:
        v.status = "not-present" if spec.optional else "unavailable"
        v.reasons.append("needs " + ", ".join(gone) + " (not linked, or inlined)")
        return v
    if module_unknown and spec.min_module:
        v.reasons.append(f"{spec.module} version unknown (no module info in the build): assuming >= {spec.min_module}")
    if spec.returns:
        v.ret_count = b.ret_count(v.symbol)
        if not v.ret_count:
            v.status = "unavailable"
            v.reasons.append(f"no RET instruction found in {v.symbol}")
            return v
    missing = [f for f in spec.offsets if not _field_known(b, f)]
    if missing and spec.offsets_required:
        v.status = "unavailable"
        why = "no DWARF in the binary" if not b.has_dwarf else "field not found in DWARF"
        v.reasons.append(f"offsets unknown ({why}), and this probe needs them: " + ", ".join(str(f) for f in missing))
        return v
    if missing:
        v.status = "degraded"
        why = "no DWARF in the binary" if not b.has_dwarf else "field not found in DWARF"
        v.reasons.append(f"offsets unknown ({why}): " + ", ".join(str(f) for f in missing))
        v.lost_attributes = sorted({f.attribute for f in missing if f.attribute})
    return v


def evaluate_all(b: BinaryFacts, specs: Iterable[ProbeSpec] | None = None) -> list[Verdict]:
    return [evaluate(s, b) for s in (all_specs() if specs is None else specs)]


# ---- seed: what reference/ebpf-go.md lists; go_ebpf / go_runtime refine these -------------------------
# Ids are the names the receivers' logs use (go_ebpf: receivers/go_ebpf/layout.PROBES).

_RT = "go_runtime"
_EB = "go_ebpf"
_GRPC = "google.golang.org/grpc"

for _spec in (
    ProbeSpec("runtime.newproc1", ("runtime.newproc1",), _RT,
              "goroutine creation (entry; go_ebpf reads the new g at the runqput call that follows)"),
    ProbeSpec("runtime.goexit1", ("runtime.goexit0", "runtime.goexit1"), _RT, "goroutine exit (on g0)"),
    ProbeSpec("runtime.startTheWorldWithSema", ("runtime.startTheWorldWithSema",), _RT,
              "stop-the-world pause end (entry + every RET)", returns=True),
    ProbeSpec("runtime.casgstatus", ("runtime.casgstatus",), _RT, "goroutine state changes (hot: gated)"),
    ProbeSpec("runtime.gcStart", ("runtime.gcStart",), _RT, "GC cycle start"),
    ProbeSpec("runtime.gcMarkDone", ("runtime.gcMarkDone",), _RT, "GC mark phase done"),
    ProbeSpec("runtime.gcMarkTermination", ("runtime.gcMarkTermination",), _RT, "GC mark termination (STW end)"),
    ProbeSpec("runtime.mstart1", ("runtime.mstart1",), _RT, "OS thread (M) start"),
    ProbeSpec("runtime.mexit", ("runtime.mexit",), _RT, "OS thread (M) exit"),
    ProbeSpec("runtime.chansend1", ("runtime.chansend1",), _RT, "channel send (span links)", optional=True),
    ProbeSpec("runtime.chanrecv1", ("runtime.chanrecv1",), _RT, "channel receive (span links)", optional=True),
    ProbeSpec(
        "http.server.serve",
        ("net/http.serverHandler.ServeHTTP",),
        _EB,
        "HTTP server request start",
        optional=True,
        offsets=(
            FieldRef("net/http.Request", "Method", "http.request.method"),
            FieldRef("net/http.Request", "URL", "url.path"),
            FieldRef("net/url.URL", "Path", "url.path"),
            FieldRef("net/http.Request", "RemoteAddr", "client.address"),
            FieldRef("net/http.Request", "Host", "server.address"),
            FieldRef("net/http.Request", "ContentLength", "http.request.body.size"),
        ),
    ),
    ProbeSpec(
        "http.server.finish",
        ("net/http.(*response).finishRequest",),
        _EB,
        "HTTP server request end (entry probe marks the end)",
        optional=True,
        offsets=(FieldRef("net/http.response", "status", "http.response.status_code"),),
    ),
    ProbeSpec(
        "http.client.roundtrip",
        ("net/http.(*Transport).roundTrip",),
        _EB,
        "HTTP client request",
        optional=True,
        returns=True,
        offsets=(
            FieldRef("net/http.Request", "Method", "http.request.method"),
            FieldRef("net/http.Request", "URL", "url.full"),
            FieldRef("net/http.Response", "StatusCode", "http.response.status_code"),
        ),
    ),
    ProbeSpec(
        "grpc.server.handle_stream",
        ("google.golang.org/grpc.(*Server).handleStream",),
        _EB,
        "gRPC server call start (the span ends at WriteStatus)",
        module=_GRPC,
        offsets=(FieldRef("google.golang.org/grpc/internal/transport.Stream", "method", "rpc.method"),),
    ),
    ProbeSpec(
        "grpc.server.write_status",
        (
            "google.golang.org/grpc/internal/transport.(*http2Server).WriteStatus",
            "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus",
        ),
        _EB,
        "gRPC server status code",
        module=_GRPC,
        offsets=(
            FieldRef("google.golang.org/grpc/internal/status.Status", "s", "rpc.response.status_code"),
            FieldRef("google.golang.org/genproto/googleapis/rpc/status.Status", "Code", "rpc.response.status_code"),
        ),
    ),
    ProbeSpec(
        "grpc.server.operate_headers",
        ("google.golang.org/grpc/internal/transport.(*http2Server).operateHeaders",),
        _EB,
        "gRPC incoming headers (traceparent, grpc-timeout)",
        module=_GRPC,
        optional=True,
    ),
    ProbeSpec(
        "grpc.client.new_stream",
        ("google.golang.org/grpc.newClientStream",),
        _EB,
        "gRPC client call start, unary and streaming",
        module=_GRPC,
        optional=True,
    ),
):
    register(_spec)
