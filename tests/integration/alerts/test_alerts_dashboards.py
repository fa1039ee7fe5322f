"""gotel's alert rules and Grafana dashboards against a real Prometheus that scrapes a real gotel agent
tracing real Go programs with faults in them.

One run (module fixture) serves both tests: the `gotel` agent (go_ebpf, go_runtime, sched, process, net,
pprof receivers; resource_detection; the `diagnosis` connector, whose `gotel.findings` go to the same
exporter; the `prometheus` exporter with resource attributes as labels, as docs/alerts-and-dashboards.md
says to run it), Debian's Prometheus scraping it every second with
config/prometheus/gotel-rules.yaml loaded (`for:` set to 0s by `gotel rules prometheus --for 0s`, the
expressions unchanged), and these programs:

* `front` (grpcapp server): per round 6 unary calls answered OK (4 of them call `back`, 2 with a 50 ms
  deadline on that call that `back` overruns), 4 answered UNAVAILABLE (the grpc_errors fault), and 2
  bidi streams;
* `back` (grpcapp server): 200 ms handlers behind a 50 ms deadline: the deadline fault;
* `hog` (runtime fixture) burning CPU in a fresh cpu cgroup limited to 10% of a CPU: the cpu_throttling
  fault;
* `rt` (runtime fixture): GC churn, mutex contention, slow syscalls, leaking goroutines, for the runtime
  dashboard's panels;
* `flow` (grpcapp flowserver, 1 stream per connection; tests/integration/go_ebpf/test_grpc_flow.py's modes),
  once when go_ebpf traces it: a raw HTTP/2 peer opening 3 streams at once (the server refuses 2), 5 calls
  its tap refuses before any handler, then one bidi stream left open for the whole run: the Drop Rate and
  Stream Age panels; the hog's throttling is also a `cpu_throttling` finding: the Findings panels.

Truth: the servers' own logs (one `handled` line per call with the code they returned; the flow server's
`tap_refused` lines; the raw peer's REFUSED_STREAM frames; the open stream's start) and the kernel's
cpu.stat of the cgroup the test made.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gotel.diagnose import promrules
from tests.e2e.agent import GOTEL, Agent
from tests.helpers import goapps
from tests.helpers.prometheus_server import Prometheus, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "config" / "grafana"
QUOTA = 0.10  # of one CPU, for the hog
ROUND = 1.0  # seconds between traffic rounds
SETTLE = 30.0  # seconds of rounds in the rate window before an alert's value is compared

# Dashboard variables as Grafana substitutes them: "All" jobs, a 5m rate window (the whole run).
VARIABLES = {"$__rate_interval": "5m", "$__range": "5m", "$__interval": "15s", "${job}": ".*", "$job": ".*"}


@contextlib.contextmanager
def cpu_cgroup(quota: float) -> Iterator[tuple[Path, str]]:
    """A fresh cpu cgroup limited to `quota` of one CPU (cgroup v2 cpu.max where the cpu controller is
    on v2, else v1 cpu.cfs_quota_us), removed afterwards; yields (dir, cpu.stat kind)."""
    name = f"gotel-alerts-{uuid.uuid4().hex[:8]}"
    v2_root = Path("/sys/fs/cgroup")
    controllers = v2_root / "cgroup.controllers"  # present when /sys/fs/cgroup is a cgroup2 mount
    if controllers.exists() and "cpu" in controllers.read_text().split():
        d = v2_root / name
        d.mkdir()
        (d / "cpu.max").write_text(f"{int(quota * 100000)} 100000")
        kind = "v2"
    else:
        d = Path("/sys/fs/cgroup/cpu") / name
        d.mkdir()
        (d / "cpu.cfs_period_us").write_text("100000")
        (d / "cpu.cfs_quota_us").write_text(str(int(quota * 100000)))
        kind = "v1"
    try:
        yield d, kind
    finally:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                d.rmdir()
                break
            except OSError:  # the hog's threads are still leaving
                time.sleep(0.1)


def cpu_stat(d: Path) -> tuple[int, int]:
    st = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
    return int(st["nr_periods"]), int(st["nr_throttled"])


@dataclass
class Run:
    prom: Prometheus
    agent: Agent
    front: goapps.RunningApp
    back: goapps.RunningApp
    hog_pid: int
    cgroup: Path
    cgroup_path: str
    kernel_start: tuple[int, int]
    flow: goapps.RunningApp
    refused: int = 0  # streams the flow server refused, as the raw peer logged the RST_STREAMs it got
    open_start_ns: int = 0  # when the stream left open began, as its client logged it
    limited: list[str] = field(default_factory=list)  # the codes the tap-refused calls ended with
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def handled(self, app: goapps.RunningApp, method: str = "/gotelfix.Echo/Unary") -> dict[int, int]:
        """The server's own count of a method's calls per status code it returned."""
        out: dict[int, int] = {}
        for r in app.records():
            if r.get("event") == "handled" and r.get("method") == method:
                out[r["code"]] = out.get(r["code"], 0) + 1
        return out


def _get(url: str) -> None:
    with contextlib.suppress(OSError):
        urllib.request.urlopen(url, timeout=30).read()


def _traffic(run: Run, rt: goapps.RunningApp) -> None:
    front = f"127.0.0.1:{run.front.ports['grpc']}"
    back = f"127.0.0.1:{run.back.ports['grpc']}"
    rounds: list[tuple[str, ...]] = [
        ("-n", "4", "-downstream", back),
        ("-n", "4", "-code", "14", "-message", "backend gone"),
        ("-n", "2", "-downstream", back, "-down-deadline", "50ms", "-down-delay", "200ms"),
        ("-n", "2", "-stream", "bidi", "-count", "3"),  # streams, for the stream panels once they have data
    ]
    while not run.stop.is_set():
        t0 = time.monotonic()
        try:
            for args in rounds:
                goapps.run("grpcapp", "client", "-target", front, "-quiet", *args, timeout=30)
        except Exception as e:
            run.errors.append(repr(e))
        for path in ("/gc?n=2", "/mutex?ms=20&n=4", "/syscall?ms=30&n=2", "/leak?n=2", "/goroutines?n=20"):
            _get(rt.url(path))
        run.stop.wait(max(0.0, ROUND - (time.monotonic() - t0)))


def _flow(run: Run, grpc_bin: str, start: Any) -> None:
    """Refused streams, calls dropped before a handler, and a stream left open, on the traced flow server."""
    target = f"127.0.0.1:{run.flow.ports['grpc']}"
    flow = [grpc_bin, "flow", "-target", target]

    def once(*args: str) -> list[dict[str, Any]]:
        app = goapps.RunningApp([*flow, *args])
        try:
            assert app.wait(60) == 0, app.stderr()
            return app.records()
        finally:
            app.stop()

    # go_ebpf has attached to the server once its calls reach Prometheus: what follows is counted whole
    end = time.monotonic() + 180
    while not run.prom.query('rpc_server_call_duration_seconds_count{job="flow"}'):
        assert time.monotonic() < end, "go_ebpf did not report the flow server's calls in 180s"
        once("-n", "1", "-delay", "10ms", "quota")
        time.sleep(2)
    raw = once("-streams", "3", "-delay", "300ms", "raw")
    run.refused = sum(1 for r in raw if "rst_stream" in r and r.get("code") == "REFUSED_STREAM")
    assert run.refused == 2, raw  # the fixture did what it says
    run.limited = [r["code"] for r in once("-n", "5", "limited") if "limited" in r]
    assert len(run.limited) == 5 and "OK" not in run.limited, run.limited
    opened = start([*flow, "-hold", "3600s", "open"], "flow-client")
    run.open_start_ns = opened.wait_for(lambda r: "open_start_ns" in r, 30)["open_start_ns"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    wd = tmp_path_factory.mktemp("alerts")
    rules = wd / "gotel-rules.yaml"
    with open(rules, "w") as f:
        subprocess.run([GOTEL, "rules", "prometheus", "--for", "0s"], stdout=f, check=True)
    apps: list[goapps.RunningApp] = []
    grpc_bin = str(goapps.build("grpcapp", "go1.27"))
    rt_bin = str(goapps.build("runtime", "go1.27"))

    def start(argv: list[str], service: str) -> goapps.RunningApp:
        app = goapps.RunningApp(argv, env=dict(os.environ, OTEL_SERVICE_NAME=service))
        apps.append(app)
        return app

    prom: Prometheus | None = None
    agent: Agent | None = None
    threads: list[threading.Thread] = []
    r: Run | None = None
    with cpu_cgroup(QUOTA) as (cg, _kind):
        try:
            back = start([grpc_bin, "server", "-log"], "back")
            front = start([grpc_bin, "server", "-log"], "front")
            rt = start([rt_bin, "-mutex-fraction", "1", "-alloc-rate", "30000000"], "rt")
            hog = start([rt_bin], "hog")
            flow = start([grpc_bin, "flowserver", "-max-streams", "1"], "flow")
            (cg / "cgroup.procs").write_text(str(hog.pid))
            kernel_start = cpu_stat(cg)
            burn = threading.Thread(target=_get, args=(hog.url("/burn?ms=600000"),), daemon=True)
            burn.start()
            pids = ", ".join(str(a.pid) for a in (back, front, rt, hog))
            port = free_port()
            cfg = f"""
receivers:
  go_ebpf: {{discovery: {{pids: [{front.pid}, {back.pid}, {flow.pid}]}}, export_interval: 2s}}
  go_runtime: {{discovery: {{pids: [{pids}]}}, collection_interval: 2s}}
  sched: {{discovery: {{pids: [{pids}]}}, collection_interval: 2s}}
  process: {{discovery: {{pids: [{pids}]}}, collection_interval: 2s}}
  net: {{discovery: {{pids: [{pids}]}}, collection_interval: 2s}}
  pprof:
    targets: [{{endpoint: "http://127.0.0.1:{rt.ports['pprof']}", service_name: rt}}]
    profiles: {{cpu: {{enabled: false}}, mutex: {{interval: 2s}}, goroutine_dump: {{interval: 2s}}}}
processors:
  resource_detection: {{detectors: [process]}}
connectors:
  diagnosis: {{}}  # default window (60s) and evaluation_interval (5s): the hog is judged within seconds
exporters:
  prometheus:
    endpoint: "127.0.0.1:{port}"
    resource_to_telemetry_conversion: {{enabled: true}}
service:
  telemetry: {{metrics: {{address: "@TELEMETRY@"}}}}
  pipelines:
    metrics: {{receivers: [go_ebpf, go_runtime, sched, process, net, pprof], processors: [resource_detection],
               exporters: [prometheus, diagnosis]}}
    metrics/findings: {{receivers: [diagnosis], exporters: [prometheus]}}
"""
            agent = Agent(cfg, wd).start()
            agent.wait_ready(120)
            prom = Prometheus(scrape_targets=[f"127.0.0.1:{port}"], rule_files=[str(rules)]).start()
            r = Run(prom, agent, front, back, hog.pid, cg, "/" + cg.name, kernel_start, flow)
            t = threading.Thread(target=_traffic, args=(r, rt), daemon=True)
            t.start()
            threads.append(t)
            _flow(r, grpc_bin, start)
            yield r
        finally:
            if r is not None:
                r.stop.set()
            for t in threads:
                t.join(60)
            for app in reversed(apps):
                app.stop()
            if agent is not None:
                agent.stop()
            if prom is not None:
                prom.stop()


def _firing(run: Run, alertname: str, timeout: float, **labels: str) -> dict[str, Any]:
    end = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < end:
        seen = run.prom.alerts()
        for a in seen:
            if (a["labels"].get("alertname") == alertname and a["state"] == "firing"
                    and all(a["labels"].get(k) == v for k, v in labels.items())):
                return a
        assert run.agent.proc is not None and run.agent.proc.poll() is None, run.agent.output()[-3000:]
        time.sleep(1)
    raise AssertionError(f"{alertname} {labels} did not fire within {timeout}s; alerts: "
                         f"{[(a['labels'], a['state']) for a in seen]}\ntraffic errors: {run.errors[-3:]}\n"
                         f"{run.agent.output()[-3000:]}")


def test_alerts_fire_on_the_faults(run: Run) -> None:
    grpc = {"severity": "critical", "job": "front", "rpc_response_status_code": "UNAVAILABLE"}
    deadline = {"severity": "critical", "job": "back"}
    throttling = {"severity": "critical", "gotel_cgroup_path": run.cgroup_path}
    _firing(run, "GotelGRPCErrors", 240, **grpc)
    _firing(run, "GotelDeadlineMissed", 120, **deadline)
    _firing(run, "GotelCPUThrottling", 120, **throttling)
    # Values are compared once the 5m rate windows hold SETTLE seconds of rounds: the first evaluations
    # see a few samples, and which part of a round they hold sways a ratio.
    time.sleep(SETTLE)

    # gRPC errors: front answers 4 of every 10 calls UNAVAILABLE
    a = _firing(run, "GotelGRPCErrors", 10, **grpc)
    codes = run.handled(run.front)
    truth = codes.get(14, 0) / sum(codes.values())
    assert abs(truth - 0.4) < 0.05, codes
    assert abs(float(a["value"]) - truth) < 0.1, (a["value"], codes)
    assert a["labels"]["rule"] == "grpc_errors" and a["labels"]["rpc_method"] == "Unary", a["labels"]
    assert a["labels"]["process_pid"] == str(run.front.pid), a["labels"]  # resource attributes as labels
    assert "front gotelfix.Echo/Unary" in a["annotations"]["summary"], a["annotations"]
    assert "UNAVAILABLE" in a["annotations"]["summary"] and a["annotations"]["fix"], a["annotations"]
    assert a["annotations"]["runbook"] == "docs/alerts-and-dashboards.md#grpc_errors"
    assert not [x for x in run.prom.alerts() if x["labels"].get("alertname") == "GotelGRPCErrors"
                and x["labels"].get("rpc_response_status_code") == "OK"]

    # deadline: back overruns the 50 ms deadline of 2 of every 6 calls it gets
    a = _firing(run, "GotelDeadlineMissed", 10, **deadline)
    codes = run.handled(run.back)
    # the handler returns when the caller's deadline passes: DEADLINE_EXCEEDED, or CANCELLED when the
    # caller's cancellation arrived first; only the 50 ms calls end either way
    truth = (codes.get(4, 0) + codes.get(1, 0)) / sum(codes.values())
    assert abs(truth - 1 / 3) < 0.05, codes
    assert abs(float(a["value"]) - truth) < 0.1, (a["value"], codes)
    assert not [x for x in run.prom.alerts() if x["labels"].get("alertname") == "GotelDeadlineMissed"
                and x["labels"].get("job") == "front"], "front's calls end in time (its downstream call missed)"

    # CPU throttling: the hog's cgroup against the kernel's cpu.stat
    a = _firing(run, "GotelCPUThrottling", 10, **throttling)
    periods, throttled = cpu_stat(run.cgroup)
    kernel = (throttled - run.kernel_start[1]) / max(1, periods - run.kernel_start[0])
    assert kernel > 0.5, (periods, throttled, run.kernel_start)
    assert abs(float(a["value"]) - kernel) < 0.15, (a["value"], kernel)
    assert run.cgroup_path in a["annotations"]["summary"], a["annotations"]
    # nothing else in the run is throttled
    others = [x["labels"] for x in run.prom.alerts() if x["labels"].get("alertname") == "GotelCPUThrottling"
              and x["labels"].get("gotel_cgroup_path") != run.cgroup_path]
    assert not others, others


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("*.json"))}


def _substitute(expr: str) -> str:
    for k, v in VARIABLES.items():
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def _finite(res: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in res)


def test_every_panel_query_returns_data(run: Run) -> None:
    # the alerts the findings dashboard lists are firing (and the run has lasted long enough for rates)
    _firing(run, "GotelGRPCErrors", 240, severity="critical", job="front")
    _firing(run, "GotelCPUThrottling", 120, severity="critical", gotel_cgroup_path=run.cgroup_path)
    time.sleep(10)
    jobs = {s["metric"]["job"] for s in run.prom.query("group by (job) (target_info)")}
    assert {"front", "back", "rt", "hog"} <= jobs, jobs  # the `job` variable's choices

    empty: list[str] = []
    checked = 0
    for name, dash in _dashboards().items():
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for tok in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", re.sub(r'"[^"]*"', '""', expr)):
                    assert tok in promrules.BY_PROM or tok == "ALERTS" or any(
                        tok.endswith(s) and tok.removesuffix(s) in promrules.BY_PROM for s in ("_bucket", "_count", "_sum")
                    ), f"{name} {panel['title']!r}: {tok} is not a metric gotel exports (promrules.METRICS)"
                res: list[dict[str, Any]] = []
                end = time.monotonic() + 30  # slow receivers (pprof dumps every 2s) may need a moment
                while time.monotonic() < end:
                    res = run.prom.query(_substitute(expr))
                    if _finite(res):
                        break
                    time.sleep(1)
                checked += 1
                if not _finite(res):
                    empty.append(f"{name} {panel['title']!r} {target['refId']}: {_substitute(expr)} -> {res}")
    assert not empty, "\n".join(empty)
    assert checked >= 25, checked



def _value(run: Run, expr: str) -> float:
    res = run.prom.query(expr)
    assert len(res) == 1, (expr, res)
    return float(res[0]["value"][1])


def test_flow_and_finding_panels_match_the_truth(run: Run) -> None:
    # Drop Rate's series: the streams the server refused (the raw peer's log) and the calls that never
    # reached a handler: those refused streams and the tap's refusals (the server's log; grpc 1.33 refuses
    # the stream and the client retries it once, so 5 calls may be 10 refusals, each a dropped call)
    tapped = sum(1 for r in run.flow.records() if r.get("event") == "tap_refused")
    assert tapped >= 5 and not any(r.get("event") == "limited_handler" for r in run.flow.records()), tapped
    job = 'job="flow"'
    refused = f'sum(gotel_grpc_streams_refused_total{{{job}, gotel_grpc_direction="sent"}})'
    dropped = f'sum(gotel_grpc_calls_dropped_total{{{job}, gotel_grpc_side="server"}})'
    run.prom.wait_query(dropped, lambda r: r and float(r[0]["value"][1]) >= run.refused + tapped, 30)
    assert _value(run, dropped) == run.refused + tapped
    # grpc 1.33's tap refuses the stream (REFUSED_STREAM: the client sees UNAVAILABLE); later versions answer
    # with the tap's status and reset before a handler (RESOURCE_EXHAUSTED): refused streams are the raw ones
    by_stream = run.limited == ["Unavailable"] * 5
    assert by_stream or run.limited == ["ResourceExhausted"] * 5, run.limited
    assert _value(run, refused) == run.refused + (tapped if by_stream else 0)
    # Stream Age's open series: the stream left open, as old as its client says (export 2s + scrape 1s)
    age = _value(run, f'sum(gotel_grpc_stream_age_seconds_sum{{{job}, gotel_grpc_stream_state="open", '
                      'rpc_method="Open"})')
    truth = (time.time_ns() - run.open_start_ns) / 1e9
    assert truth - 5 < age <= truth + 0.5, (age, truth)
    # Findings: the hog's throttling (the kernel says over half its periods) is a critical cpu_throttling
    # finding from the connector, for the hog and no other process of the run
    found = run.prom.wait_query('gotel_findings_total{gotel_finding_rule="cpu_throttling"}', bool, 60)
    assert {(s["metric"]["job"], s["metric"]["gotel_finding_severity"]) for s in found} == {("hog", "critical")}, found
    assert all(float(s["value"][1]) >= 1 for s in found), found
