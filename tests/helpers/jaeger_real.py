"""The real Jaeger v2 (tests/peers/jaeger, github.com/jaegertracing/jaeger v1.75.0) on loopback, in-memory.

The helper writes Jaeger's config itself (keys as in the module's cmd/jaeger/internal/all-in-one.yaml and
cmd/query/app/flags.go): only the OTLP receiver, the storage exporter, the memory backend and the query
extension, each on an ephemeral 127.0.0.1 port. Jaeger's defaults are overridden where they would
reach past the test: its own telemetry (a Prometheus reader on :8888) is off, and so is jaeger-query
tracing itself (which exports OTLP to localhost:4317, perhaps someone else's collector).

Receivers keep the client metadata and an attributes processor copies the request header ECHO_HEADER
into the span attribute ECHO_ATTRIBUTE, so a test can see through Jaeger's own API which headers
reached it; spans sent without that header are stored exactly as sent.

`real_jaeger` is a session fixture (one Jaeger for the run: tests use their own trace ids and service
names); `RealJaeger()` as a context manager gives a test module a Jaeger whose storage only it writes.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from gotel.pdata.batch import Traces
from tests.helpers.certs import Certs
from tests.helpers.peers import peer_binary

ECHO_HEADER = "x-gotel-echo"
ECHO_ATTRIBUTE = "test.echoed_header"


class JaegerStartError(RuntimeError):
    """Jaeger did not become ready; the message carries the end of its log."""


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tls_block(certs: Certs | None, indent: str) -> str:
    if certs is None:
        return ""
    return f"\n{indent}tls:\n{indent}  cert_file: {certs.cert}\n{indent}  key_file: {certs.key}"


def render_config(ports: dict[str, int], certs: Certs | None = None) -> str:
    """Jaeger's config for these ports; with certs, its OTLP receivers and query HTTP API take TLS only."""
    return f"""\
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [attributes/echo]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:{ports["query_http"]}{_tls_block(certs, "      ")}
    grpc:
      endpoint: 127.0.0.1:{ports["query_grpc"]}

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{ports["otlp_grpc"]}
        include_metadata: true{_tls_block(certs, "        ")}
      http:
        endpoint: 127.0.0.1:{ports["otlp_http"]}
        include_metadata: true{_tls_block(certs, "        ")}

processors:
  attributes/echo:
    actions:
      - key: {ECHO_ATTRIBUTE}
        from_context: metadata.{ECHO_HEADER}
        action: insert

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
"""


class RealJaeger:
    """One Jaeger v2 process: start() waits until its receivers and query API answer; stop() ends it by pid."""

    def __init__(self, certs: Certs | None = None, ready_timeout: float = 60.0) -> None:
        self.certs = certs
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="gotel-jaeger-"))
        self.log_path = self._dir / "jaeger.log"
        self.startup_s = 0.0

    # --- addresses ---------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        return "https" if self.certs else "http"

    @property
    def otlp_grpc(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['otlp_grpc']}"

    @property
    def otlp_http(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['otlp_http']}"

    @property
    def query_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports['query_http']}"

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> RealJaeger:
        binary = peer_binary("jaeger")
        err: JaegerStartError | None = None
        for _ in range(3):  # a free port picked here may be taken by someone else before Jaeger binds it
            self.ports = dict(zip(("otlp_grpc", "otlp_http", "query_http", "query_grpc"), _free_ports(4), strict=True))
            cfg = self._dir / "config.yaml"
            cfg.write_text(render_config(self.ports, self.certs))
            t0 = time.monotonic()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen([str(binary), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self._dir)
            try:
                self._wait_ready()
                self.startup_s = time.monotonic() - t0
                return self
            except JaegerStartError as e:
                err = e
                self._end()
                if "address already in use" not in str(e):
                    break
        self.stop()
        assert err is not None
        raise err

    def _listening(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise JaegerStartError(f"jaeger exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if all(self._listening(self.ports[k]) for k in ("otlp_grpc", "otlp_http", "query_http")):
                try:
                    self.get("/api/v3/services")
                    return
                except (OSError, urllib.error.URLError):
                    pass
            time.sleep(0.05)
        raise JaegerStartError(f"jaeger not ready after {self.ready_timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        """Ends Jaeger (by its pid) and removes its config and log."""
        self._end()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _end(self, grace: float = 10.0) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()  # by pid: SIGTERM, Jaeger shuts down its servers
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> RealJaeger:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Jaeger's own query API (read independently of gotel's traceview) ---------------------

    def get(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        url = self.query_url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        ctx = ssl.create_default_context(cafile=str(self.certs.ca)) if self.certs else None
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return json.loads(r.read())

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """api_v3 GetTrace's OTLP-JSON result for a hex trace id, or None while Jaeger has no such trace.

        Raw: Jaeger v1.75's display adjusters change the memory store's own copy of a trace (its
        GetTraces hands out the stored object), so an adjusted read would add `@jaeger@warnings`
        to what every later read sees.
        """
        try:
            return self.get(f"/api/v3/traces/{trace_id}", {"raw_traces": "true"})["result"]  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def spans(self, trace_id: str) -> list[dict[str, Any]]:
        """Every span of a trace as {"span", "resource", "scope"} (OTLP-JSON objects), as Jaeger returns them."""
        res = self.trace(trace_id) or {}
        return [{"span": sp, "resource": rs.get("resource") or {}, "scope": ss.get("scope") or {}}
                for rs in res.get("resourceSpans", []) for ss in rs.get("scopeSpans", []) for sp in ss.get("spans", [])]

    def wait_spans(self, trace_id: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The trace's spans once Jaeger has at least COUNT of them (ingest is asynchronous)."""
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = self.spans(trace_id)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"Jaeger has {len(got)} of {count} spans of trace {trace_id} after {timeout}s")


# --- an independent reading of both sides: protobuf as sent, OTLP-JSON as Jaeger answers -----
# (deliberately not gotel.pdata.otlpjson / gotel.cli.traceview: those are what the tests check)

def _pb_value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_pb_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {x.key: _pb_value(x.value) for x in v.kvlist_value.values}
    if which == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, which) if which else None


def _pb_attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _pb_value(kv.value) for kv in kvs}


def _json_value(v: dict[str, Any]) -> Any:
    if not v:
        return None
    ((which, x),) = v.items()
    if which == "intValue":
        return int(x)
    if which == "arrayValue":
        return [_json_value(e) for e in x.get("values", [])]
    if which == "kvlistValue":
        return {e["key"]: _json_value(e.get("value", {})) for e in x.get("values", [])}
    if which == "bytesValue":
        return base64.b64decode(x).hex()
    return x


def _json_attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: _json_value(kv.get("value", {})) for kv in kvs or []}


_KIND_NAMES = {trace_pb2.Span.SpanKind.Name(v): v for v in trace_pb2.Span.SpanKind.values()}
_STATUS_NAMES = {trace_pb2.Status.StatusCode.Name(v): v for v in trace_pb2.Status.StatusCode.values()}


def _enum(v: Any, names: dict[str, int]) -> int:
    return names[v] if isinstance(v, str) and v in names else int(v or 0)


def sent_view(batch: Traces) -> dict[tuple[str, str], dict[str, Any]]:
    """{(trace id, span id): every field a user reads} of a batch, from the protobuf."""
    out = {}
    for rs in batch.msg.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                out[(s.trace_id.hex(), s.span_id.hex())] = {
                    "parent": s.parent_span_id.hex(), "name": s.name, "kind": s.kind,
                    "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                    "status": (s.status.code, s.status.message), "attributes": _pb_attrs(s.attributes),
                    "events": [(e.time_unix_nano, e.name, _pb_attrs(e.attributes)) for e in s.events],
                    "links": [(lk.trace_id.hex(), lk.span_id.hex(), _pb_attrs(lk.attributes)) for lk in s.links],
                    "resource": _pb_attrs(rs.resource.attributes), "scope": ss.scope.name}
    return out


def jaeger_view(found: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The same view of spans as Jaeger's api_v3 returned them (RealJaeger.spans)."""
    out = {}
    for f in found:
        s = f["span"]
        st = s.get("status") or {}
        out[(s["traceId"].lower(), s["spanId"].lower())] = {
            "parent": (s.get("parentSpanId") or "").lower(), "name": s.get("name", ""),
            "kind": _enum(s.get("kind"), _KIND_NAMES),
            "start": int(s.get("startTimeUnixNano", 0)), "end": int(s.get("endTimeUnixNano", 0)),
            "status": (_enum(st.get("code"), _STATUS_NAMES), st.get("message", "")),
            "attributes": _json_attrs(s.get("attributes")),
            "events": [(int(e.get("timeUnixNano", 0)), e.get("name", ""), _json_attrs(e.get("attributes")))
                       for e in s.get("events", [])],
            "links": [(lk["traceId"].lower(), lk["spanId"].lower(), _json_attrs(lk.get("attributes")))
                      for lk in s.get("links", [])],
            "resource": _json_attrs(f["resource"].get("attributes")), "scope": f["scope"].get("name", "")}
    return out



@pytest.fixture(scope="session")
def real_jaeger() -> Iterator[RealJaeger]:
    """One real Jaeger for the session; tests keep to their own trace ids and service names."""
    j = RealJaeger()
    j.start()
    try:
        yield j
    finally:
        j.stop()

