"""The diagnosis rules that PromQL can express, as a Prometheus alerting rule file.

The rule ids, severities and threshold defaults are the diagnosis rules' own (``gotel.diagnose.rules``,
docs/diagnose.md): an alert here is the same judgement made continuously over the series gotel's
``prometheus`` (or ``prometheus_remote_write``) exporter serves, so a page from Prometheus and a
finding from ``gotel diagnose`` agree. Metric names are derived with ``gotel.formats.promnames`` from the OTLP
name, unit and kind of each source metric (``METRICS``), the way the exporters name them.

Aggregations use ``without (...)`` rather than ``by (...)``: with
``resource_to_telemetry_conversion`` on, every resource attribute (pid, pod, namespace, container)
stays a label of the alert. ``config/prometheus/gotel-rules.yaml`` is this module's output
(``gotel rules prometheus``); a test keeps the two equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml

from gotel.formats.promnames import metric_name

GROUP = "gotel-diagnosis"
RUNBOOK = "docs/alerts-and-dashboards.md"  # in the gotel repository; one section per rule id
WINDOW = "5m"  # rate window: at least 4 scrapes at the default 1m interval


@dataclass(frozen=True)
class Metric:
    """An OTLP metric gotel exports, with the receiver (or connector) that makes it."""

    otel: str
    unit: str
    kind: str  # counter | gauge | histogram (promnames.metric_name's kinds; an up-down sum is a gauge)
    receiver: str

    @property
    def prom(self) -> str:
        return metric_name(self.otel, self.unit, self.kind)


METRICS: dict[str, Metric] = {m.otel: m for m in (
    # process: /proc and cgroup files
    Metric("process.cpu.time", "s", "counter", "process"),
    Metric("process.schedstat.run_delay", "s", "counter", "process"),
    Metric("process.schedstat.timeslices", "{timeslice}", "counter", "process"),
    Metric("process.unix.file_descriptor.count", "{file_descriptor}", "gauge", "process"),
    Metric("process.thread.count", "{thread}", "gauge", "process"),
    Metric("container.cpu.time", "s", "counter", "process"),
    Metric("container.cpu.periods", "{period}", "counter", "process"),
    Metric("container.cpu.throttled.periods", "{period}", "counter", "process"),
    Metric("container.cpu.throttled.time", "s", "counter", "process"),
    Metric("container.cpu.limit", "{cpu}", "gauge", "process"),
    # sched: scheduler tracepoints
    Metric("process.sched.runqueue.latency", "s", "histogram", "sched"),
    Metric("process.sched.offcpu.time", "s", "counter", "sched"),
    Metric("process.syscall.slow.time", "s", "counter", "sched"),
    Metric("process.syscall.slow.count", "{syscall}", "counter", "sched"),
    # go_runtime: uprobes on the Go runtime
    Metric("go.gc.cycles", "{gc_cycle}", "counter", "go_runtime"),
    Metric("go.gc.pause.duration", "s", "histogram", "go_runtime"),
    Metric("go.stw.pause.duration", "s", "histogram", "go_runtime"),
    Metric("go.goroutine.count", "{goroutine}", "gauge", "go_runtime"),
    Metric("go.goroutine.created.by_function", "{goroutine}", "counter", "go_runtime"),
    # pprof: profiles and goroutine dumps
    Metric("gotel.lock.contention.delay", "s", "counter", "pprof"),
    Metric("gotel.goroutines", "{goroutine}", "gauge", "pprof"),
    Metric("gotel.goroutine.leaked", "{goroutine}", "gauge", "pprof"),
    # net: TCP tracepoints
    Metric("process.network.tcp.retransmits", "{segment}", "counter", "net"),
    # go_ebpf: gRPC uprobes
    Metric("rpc.server.call.duration", "s", "histogram", "go_ebpf"),
    Metric("rpc.client.call.duration", "s", "histogram", "go_ebpf"),
    Metric("gotel.rpc.server.deadline_exceeded", "{call}", "counter", "go_ebpf"),
    Metric("gotel.rpc.client.deadline_exceeded", "{call}", "counter", "go_ebpf"),
    Metric("gotel.rpc.server.deadline.budget_used", "1", "histogram", "go_ebpf"),
    # go_ebpf: gRPC flow control and stream limits (flow_control, docs/go_ebpf.md)
    Metric("gotel.grpc.stream.age", "s", "histogram", "go_ebpf"),
    Metric("gotel.grpc.streams.refused", "{stream}", "counter", "go_ebpf"),
    Metric("gotel.grpc.stream.resets", "{frame}", "counter", "go_ebpf"),
    Metric("gotel.grpc.calls.dropped", "{call}", "counter", "go_ebpf"),
    # diagnosis connector: findings (episodes started), by rule and severity
    Metric("gotel.findings", "{finding}", "counter", "diagnosis"),
)}
BY_PROM: dict[str, Metric] = {m.prom: m for m in METRICS.values()}
# The finding metric's attributes (`gotel.findings` by rule and severity), as labels.
FINDING_RULE_LABEL = "gotel_finding_rule"
FINDING_SEVERITY_LABEL = "gotel_finding_severity"

_SUFFIXES = ("_bucket", "_count", "_sum")
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def m(otel: str, suffix: str = "") -> str:
    """The Prometheus name of a source metric (``suffix``: ``_bucket``, ``_count``, ``_sum``)."""
    return METRICS[otel].prom + suffix


def metrics_in(expr: str) -> set[str]:
    """The source metrics (Prometheus names, without histogram suffixes) a PromQL expression reads."""
    out: set[str] = set()
    for tok in _NAME.findall(re.sub(r'"[^"]*"', '""', expr)):
        base = next((tok.removesuffix(s) for s in _SUFFIXES if tok.endswith(s) and tok.removesuffix(s) in BY_PROM), tok)
        if base in BY_PROM:
            out.add(base)
    return out


# --- thresholds: the diagnosis rules' defaults ------------------------------------------------------

# The defaults documented for the diagnosis rules (docs/diagnose.md). When the rules module is
# installed its values win, so a changed default changes the generated file (and the test comparing
# it with config/prometheus/gotel-rules.yaml fails until it is regenerated).
DEFAULTS: dict[str, dict[str, float]] = {
    "cpu_throttling": {"throttled_ratio_warning": 0.10, "throttled_ratio_critical": 0.50},
    "run_queue_latency": {"wait_share_warning": 0.20, "wait_share_critical": 0.50, "min_wait_per_second": 0.05,
                          "min_avg_wait_ms": 1.0},
    "gc": {"stw_pause_warning_s": 0.10, "gc_per_second_info": 10.0},
    "slow_syscall": {"blocked_goroutines_warning": 0.5, "blocked_goroutines_critical": 8.0},
    "lock_contention": {"delay_per_second_warning": 0.10, "delay_per_second_critical": 1.0},
    "goroutine_leak": {"min_growth": 20, "critical_count": 10000},
    "deadline": {"min_calls": 10, "miss_ratio_warning": 0.05, "miss_ratio_critical": 0.25},
    "grpc_errors": {"min_calls": 10, "error_ratio_warning": 0.05, "error_ratio_critical": 0.25},
    "fd_leak": {"min_growth": 20},
    "tcp_retransmits": {"per_second_warning": 1.0, "per_second_critical": 20.0},
}
RULE_IDS = tuple(DEFAULTS)


def thresholds(rule: str) -> dict[str, float]:
    """The rule's threshold defaults: the diagnosis rules' when installed, else ``DEFAULTS``."""
    out = dict(DEFAULTS[rule])
    try:
        from gotel.diagnose.rules import BY_ID  # type: ignore[import-not-found,unused-ignore]  # rules.py may be absent in a partial install
    except ImportError:
        return out
    params: dict[str, float] = BY_ID[rule].params()
    out.update({k: v for k, v in params.items() if k in out})
    return out


def _num(v: float) -> str:
    return f"{v:g}"


# --- the alerts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    rule: str  # the diagnosis rule id (also the `rule` label)
    name: str
    severity: str  # critical | warning | info
    expr: str
    for_: str
    summary: str
    description: str
    fix: str

    def as_rule(self, for_override: str | None = None) -> dict[str, Any]:
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": for_override if for_override is not None else self.for_,
            "labels": {"severity": self.severity, "rule": self.rule, "source": "gotel"},
            "annotations": {"summary": self.summary, "description": self.description, "fix": self.fix,
                            "runbook": f"{RUNBOOK}#{self.rule}"},
        }


def _two(rule: str, name: str, key: str, expr: str, for_: str, summary: str, description: str,
         fix: str) -> list[Alert]:
    """A warning and a critical alert from one expression template (``{t}`` = the threshold)."""
    t = thresholds(rule)
    return [Alert(rule, name, sev, expr.format(t=_num(t[f"{key}_{sev}"])), for_, summary, description, fix)
            for sev in ("warning", "critical")]


W = WINDOW
_RPC_KEEP = "rpc_response_status_code, server_address, server_port"  # per method, over codes and peers
# Any code but OK; a series without a code (a binary without DWARF) is not an error.
_GRPC_SERVER_ERRORS = 'rpc_system="grpc", rpc_response_status_code!~"OK|"'


def alerts() -> list[Alert]:
    """Every alert, in rule order."""
    out: list[Alert] = []
    thr, per = m("container.cpu.throttled.periods"), m("container.cpu.periods")
    out += _two("cpu_throttling", "GotelCPUThrottling", "throttled_ratio",
                f"rate({thr}[{W}]) / rate({per}[{W}]) > {{t}}", "10m",
                "{{ with $labels.container_id }}container {{ . }}{{ else }}cgroup {{ $labels.gotel_cgroup_path }}"
                "{{ end }}: {{ $value | humanizePercentage }} of CFS periods throttled",
                "The cgroup used up its CPU quota in this share of its scheduling periods (cpu.stat nr_throttled / "
                "nr_periods); its threads wait for the next period, which shows as latency at low average CPU.",
                "Raise the CPU limit or cut CPU work; keep GOMAXPROCS at most the limit (Go < 1.25 does not "
                "follow the cgroup limit: set GOMAXPROCS or use automaxprocs).")

    t = thresholds("run_queue_latency")
    delay, cpu, slices = m("process.schedstat.run_delay"), m("process.cpu.time"), m("process.schedstat.timeslices")
    share = f"rate({delay}[{W}]) / (rate({delay}[{W}]) + sum without (cpu_mode) (rate({cpu}[{W}])))"
    for sev in ("warning", "critical"):
        out.append(Alert(
            "run_queue_latency", "GotelRunQueueLatency", sev,
            f"({share} > {_num(t[f'wait_share_{sev}'])}) and rate({delay}[{W}]) > {_num(t['min_wait_per_second'])}"
            f" and rate({delay}[{W}]) / rate({slices}[{W}]) >= {_num(t['min_avg_wait_ms'] / 1e3)}",
            "10m",
            "{{ $labels.job }}: threads wait for a CPU {{ $value | humanizePercentage }} of the time they want one",
            "Run-queue wait / (wait + on-CPU time) of the process's threads (/proc/PID/task/*/schedstat): they "
            "are runnable but not running, at least 1 ms per time slice on average. With throttling (GotelCPUThrottling) the quota is the cause; "
            "otherwise other processes on the node hold the CPUs.",
            "Give the process its CPUs (requests, a cpuset, fewer neighbours) or move the neighbour; "
            "`gotel diagnose --pid PID` names the busiest neighbours."))

    t = thresholds("gc")
    pause = m("go.gc.pause.duration", "_bucket")
    out.append(Alert(
        "gc", "GotelGCPause", "warning",
        f"histogram_quantile(0.99, sum without (go_gc_pause_phase) (rate({pause}[{W}]))) > "
        f"{_num(t['stw_pause_warning_s'])}",
        "5m",
        "{{ $labels.job }}: GC stop-the-world pauses p99 {{ $value | humanizeDuration }}",
        "The 99th percentile of the GC's stop-the-world pauses (both phases; power-of-two buckets, so the "
        "value is within a factor of two) is over the threshold: every goroutine stands still this long.",
        "Allocate less at the top allocation sites (`gotel diagnose` lists them); tune GOGC/GOMEMLIMIT; "
        "look for huge pointer-rich heaps and long non-preemptible loops."))
    out.append(Alert(
        "gc", "GotelGCFrequency", "info",
        f"rate({m('go.gc.cycles')}[{W}]) > {_num(t['gc_per_second_info'])}",
        "10m",
        "{{ $labels.job }}: {{ $value | humanize }} GC cycles per second",
        "The program collects garbage very often: a small live heap with a high allocation rate.",
        "Allocate less at the top allocation sites; raise GOGC or set GOMEMLIMIT."))

    slow = m("process.syscall.slow.time")
    out += _two("slow_syscall", "GotelSlowSyscalls", "blocked_goroutines",
                f"rate({slow}[{W}]) > {{t}}", "10m",
                "{{ $labels.job }}: on average {{ $value | humanize }} threads blocked in slow "
                "{{ $labels.gotel_syscall_name }} calls",
                "Seconds per second spent in syscalls of at least the sched receiver's threshold (10 ms): the "
                "average number of threads (and Ps handed off by sysmon) blocked. The slow-syscall log records "
                "name the Go function that made them.",
                "Bound, batch or move the blocking call off the request path; check the disk or the peer it waits "
                "on.")

    lock = m("gotel.lock.contention.delay")
    out += _two("lock_contention", "GotelLockContention", "delay_per_second",
                f"rate({lock}[{W}]) > {{t}}", "10m",
                "{{ $labels.job }}: goroutines wait {{ $value | humanize }}s per second at "
                "{{ $labels.code_function_name }}",
                "Goroutine-seconds of waiting per second at one lock site (mutex or block profile deltas, "
                "pprof receiver), with the site in code_function_name and code_location.",
                "Shorten or shard the critical section; do not hold the lock across I/O.")

    t = thresholds("goroutine_leak")
    gcount, leaked = m("go.goroutine.count"), m("gotel.goroutine.leaked")
    grow = (f"(delta({gcount}[1h]) >= {_num(t['min_growth'])}) and "
            f"(min_over_time(deriv({gcount}[10m])[1h:10m]) >= 0)")
    out.append(Alert(
        "goroutine_leak", "GotelGoroutineLeak", "warning", grow, "15m",
        "{{ $labels.job }}: {{ $value | humanize }} more goroutines than an hour ago, never going down",
        "The live goroutine count grew by at least the threshold over an hour and did not fall in any 10-minute "
        "step: goroutines are started and never end. The pprof receiver's gotel.goroutine.growth log records "
        "name the stack and creator of the growing group.",
        "Give blocked goroutines a way out (context cancellation, a closed channel, a timeout)."))
    out.append(Alert(
        "goroutine_leak", "GotelGoroutineLeak", "critical",
        f"({grow} and {gcount} >= {_num(t['critical_count'])}) or {leaked} > 0", "5m",
        "{{ $labels.job }}: goroutine leak ({{ $value | humanize }})",
        "Either a growing goroutine count past the critical size, or goroutines the Go runtime's own leak "
        "detector (goroutineleak profile, Go >= 1.26) found blocked forever.",
        "Give blocked goroutines a way out (context cancellation, a closed channel, a timeout)."))

    t = thresholds("deadline")
    calls = m("rpc.server.call.duration", "_count")
    missed = m("gotel.rpc.server.deadline_exceeded")
    total = f"sum without ({_RPC_KEEP}) (rate({calls}[{W}]))"
    enough = f"sum without ({_RPC_KEEP}) (increase({calls}[{W}])) >= {_num(t['min_calls'])}"
    for sev in ("warning", "critical"):
        out.append(Alert(
            "deadline", "GotelDeadlineMissed", sev,
            f"(rate({missed}[{W}]) / {total} > {_num(t[f'miss_ratio_{sev}'])}) and {enough}",
            "5m",
            "{{ $labels.job }} {{ $labels.rpc_service }}/{{ $labels.rpc_method }}: {{ $value | humanizePercentage }} "
            "of calls end after the caller's deadline",
            "Server calls that ended after their own (the caller's) deadline, not DEADLINE_EXCEEDED passed "
            "through from a downstream call; per method. The trace of such a call shows which downstream call "
            "used up the budget.",
            "Give the downstream call a shorter deadline than the caller's, or make it faster; stop work when "
            "ctx.Done() fires."))

    t = thresholds("grpc_errors")
    keep = "server_address, server_port"
    errs = f"sum without ({keep}) (rate({calls}{{{_GRPC_SERVER_ERRORS}}}[{W}]))"
    every = f"sum without ({_RPC_KEEP}) (rate({calls}[{W}]))"
    enough = f"sum without ({_RPC_KEEP}) (increase({calls}[{W}])) >= {_num(t['min_calls'])}"
    for sev in ("warning", "critical"):
        out.append(Alert(
            "grpc_errors", "GotelGRPCErrors", sev,
            f"(({errs} / ignoring(rpc_response_status_code) group_left {every}) > {_num(t[f'error_ratio_{sev}'])})"
            f" and ignoring(rpc_response_status_code) {enough}",
            "5m",
            "{{ $labels.job }} {{ $labels.rpc_service }}/{{ $labels.rpc_method }}: {{ $value | humanizePercentage }}"
            " of calls answered {{ $labels.rpc_response_status_code }}",
            "The share of a gRPC method's server calls that ended with this status code (any code but OK), "
            "from the status the server actually wrote.",
            "Look at the failing calls (traces with this status, the server's logs next to them in Loki)."))

    t = thresholds("fd_leak")
    fds = m("process.unix.file_descriptor.count")
    out.append(Alert(
        "fd_leak", "GotelFDLeak", "warning",
        f"(delta({fds}[1h]) >= {_num(t['min_growth'])}) and (min_over_time(deriv({fds}[10m])[1h:10m]) >= 0)",
        "15m",
        "{{ $labels.job }}: {{ $value | humanize }} more {{ $labels.gotel_fd_kind }} fds than an hour ago",
        "Open file descriptors of one kind (socket, pipe, anon, file) grew by at least the threshold over an "
        "hour and did not fall in any 10-minute step.",
        "Close what is opened: response bodies, connections, files (defer Close right after the error check)."))

    retr = m("process.network.tcp.retransmits")
    out += _two("tcp_retransmits", "GotelTCPRetransmits", "per_second",
                f"sum without (network_local_port, network_peer_port) (rate({retr}[{W}])) > {{t}}", "10m",
                "{{ $labels.job }}: {{ $value | humanize }} TCP retransmits per second to "
                "{{ $labels.network_peer_address }}",
                "Segments retransmitted per second to one peer (the kernel's tcp_retransmit_skb): packet loss or "
                "an overloaded peer on that path.",
                "Look at the path to the peer: its load, drops on the node (gotel.network.packet.drops), the MTU.")
    return out


def render(for_override: str | None = None) -> str:
    """The rule file (YAML), as committed in config/prometheus/gotel-rules.yaml."""
    doc = {"groups": [{"name": GROUP, "rules": [a.as_rule(for_override) for a in alerts()]}]}
    head = ("# Generated by `gotel rules prometheus` from gotel/diagnose/promrules.py: do not edit by hand.\n"
            "# Alerts for the diagnosis rules that PromQL can express; see docs/alerts-and-dashboards.md.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=100000, allow_unicode=True)

