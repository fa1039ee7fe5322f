"""gotel's `filter` and the real collector's (v0.161.0), given the same configs and the same input, keep
the same resources, scopes, items, span events and data points, in the same order.

One collector runs every case as a pipeline of its own (`<signal>/cN`: the shared otlp receiver, the
case's `filter/cN`, a file exporter `file/cN`); each signal's input is sent once, and every pipeline's
output is compared with gotel's for the same case and with the case's expected summary."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest
import yaml

from gotel.component.contract import Kind
from gotel.config.loader import load_config
from gotel.config.model import ConfigError
from gotel.exporters import otlp as otlp_exp
from gotel.pdata.batch import Batch, Signal
from gotel.processors.filter import Config, FilterProcessor
from gotel.telemetry.counters import Telemetry
from tests.helpers import filter_inputs as inputs
from tests.helpers.exporter_ctx import make_ctx
from tests.helpers.otelcol import Collector, validate
from tests.helpers.prometheus_server import free_port
from tests.unit.core.conftest import Tel
from tests.unit.processors.filter_cases import CASES

pytestmark = pytest.mark.slow

INPUT = {Signal.TRACES: inputs.traces, Signal.METRICS: inputs.metrics, Signal.LOGS: inputs.logs}


class _Sink:
    mutates = False

    def __init__(self) -> None:
        self.got: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.got.append(batch)


async def _gotel(cfg: dict[str, object], signal: Signal) -> list[object]:
    sink = _Sink()
    tel = Tel()
    tel.telemetry = Telemetry()
    p = FilterProcessor(signal, Config.model_validate(cfg), sink, tel.ctx("filter", Kind.PROCESSOR))
    await p.consume(INPUT[signal]())
    return inputs.summary([b.peek() for b in sink.got])


async def test_filter_matches_the_collector_case_by_case(otelcol: Callable[..., Collector]) -> None:
    port = free_port()
    processors = {f"filter/c{i}": cfg for i, (_, cfg, _, _) in enumerate(CASES)}
    exporters = {f"file/c{i}": {"path": f"c{i}.json", "flush_interval": "100ms"} for i in range(len(CASES))}
    pipelines = {f"{sig.value}/c{i}": {"receivers": ["otlp"], "processors": [f"filter/c{i}"],
                                       "exporters": [f"file/c{i}"]} for i, (_, _, sig, _) in enumerate(CASES)}
    col = otelcol({"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{port}"}}}},
                   "processors": processors, "exporters": exporters, "service": {"pipelines": pipelines}},
                  feature_gates=())
    for sig in (Signal.TRACES, Signal.METRICS, Signal.LOGS):
        exp = otlp_exp.factory.create(sig, otlp_exp.Config.model_validate({"endpoint": f"http://127.0.0.1:{port}"}),
                                      make_ctx("otlp"))
        await exp.start()
        try:
            await exp.consume(INPUT[sig]())
        finally:
            await exp.shutdown()

    nonempty = [i for i, c in enumerate(CASES) if c[3]]
    end = time.monotonic() + 30
    while time.monotonic() < end and not all(col.requests(CASES[i][2], f"c{i}") for i in nonempty):
        time.sleep(0.1)
    time.sleep(0.5)  # a case that keeps nothing writes nothing: give it the same time
    mismatches = []
    for i, (name, cfg, sig, want) in enumerate(CASES):
        theirs = inputs.summary(col.requests(sig, f"c{i}"))
        ours = await _gotel(cfg, sig)
        if not (theirs == ours == want):
            mismatches.append(f"{name}:\n  collector: {theirs}\n  gotel:     {ours}\n  expected:  {want}")
    assert not mismatches, "\n".join(mismatches) + "\n" + col.log()


BAD = [  # conditions gotel rejects at validation because they are wrong, not because gotel lacks something
    {"traces": {"span": ['attributes["k"] = "v"']}},
    {"traces": {"spanevent": ['span.nme == "x"']}},
    {"traces": {"span": ["kind == SPAN_KIND_SERVR"]}},
    {"traces": {"span": ['IsMatch(name, "(")']}},
    {"traces": {"span": ['spanevent.name == "x"']}},
    {"trace_conditions": ['span.name == "a"'], "traces": {"span": ['name == "b"']}},
    {"trace_conditions": [{"context": "spn", "conditions": ['name == "b"']}]},
    {"metrics": {"datapoint": ['HasAttrKeyOnDatapoint("k")']}},
]


def _write(cfg: dict[str, object], tmp_path: pathlib.Path) -> pathlib.Path:
    doc = {"receivers": {"otlp": {"protocols": {"grpc": {"endpoint": "127.0.0.1:4317"}}}},
           "processors": {"filter": cfg}, "exporters": {"debug": {}},
           "service": {"pipelines": {"traces": {"receivers": ["otlp"], "processors": ["filter"], "exporters": ["debug"]},
                                     "metrics": {"receivers": ["otlp"], "processors": ["filter"],
                                                 "exporters": ["debug"]}}}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("cfg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_the_collector_rejects_what_gotel_rejects(cfg: dict[str, object], tmp_path: pathlib.Path) -> None:
    path = _write(cfg, tmp_path)
    with pytest.raises(ConfigError):
        load_config(str(path))
    r = validate(path, feature_gates=())
    assert r.returncode != 0, r.stdout + r.stderr


def test_the_collector_accepts_every_case_config(tmp_path: pathlib.Path) -> None:
    """The counterpart: the same document shape with each case's (valid) filter passes both."""
    for _, cfg, _, _ in CASES:
        path = _write(cfg, tmp_path)
        load_config(str(path))
        r = validate(path, feature_gates=())
        assert r.returncode == 0, f"{cfg}\n{r.stdout}{r.stderr}"
