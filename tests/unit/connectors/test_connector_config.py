"""Connectors in a config: the collector's rules (used on both sides, a signal pair the connector
supports on each side, no cycles), each broken rule one error at its place, and nothing else."""

from __future__ import annotations

import textwrap

import pytest

from gotel.config.loader import load_config
from gotel.config.model import ConfigError

HEAD = """\
receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
exporters: {debug: {}}
"""


def errors(body: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=HEAD + textwrap.dedent(body), env={})
    return [str(i) for i in e.value.issues]


def test_forward_and_span_metrics_validate() -> None:
    cfg = load_config("c.yaml", text=HEAD + textwrap.dedent("""\
        connectors:
          forward: {}
          spanmetrics:
            histogram: {explicit: {buckets: [100us, 1ms, 2ms]}}
            dimensions: [{name: http.method, default: GET}]
            metrics_flush_interval: 1s
        service:
          pipelines:
            traces/in: {receivers: [otlp], exporters: [forward]}
            traces/out: {receivers: [forward], exporters: [debug, spanmetrics]}
            metrics: {receivers: [spanmetrics], exporters: [debug]}
        """), env={})
    assert sorted(str(c) for c in cfg.connectors) == ["forward", "spanmetrics"]
    assert cfg.connectors[next(c for c in cfg.connectors if c.type == "spanmetrics")].factory.type == "span_metrics"
    assert not cfg.warnings


def test_connector_only_exported_to() -> None:
    assert errors("""\
        connectors: {forward: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [debug, forward]}
        """) == ["c.yaml:3 connectors::forward: connector forward is an exporter of pipeline traces but no "
                 "pipeline receives from it: list it under some pipeline's receivers too"]


def test_connector_only_received_from() -> None:
    assert errors("""\
        connectors: {forward: {}}
        service:
          pipelines:
            traces: {receivers: [otlp, forward], exporters: [debug]}
        """) == ["c.yaml:3 connectors::forward: connector forward is a receiver of pipeline traces but no "
                 "pipeline exports to it: list it under some pipeline's exporters too"]


def test_a_signal_the_connector_cannot_emit_or_take() -> None:
    assert errors("""\
        connectors: {span_metrics: {}}
        service:
          pipelines:
            logs: {receivers: [otlp], exporters: [span_metrics]}
            traces: {receivers: [otlp], exporters: [span_metrics]}
            metrics: {receivers: [span_metrics], exporters: [debug]}
        """) == ['c.yaml:6 service::pipelines::logs::exporters: connector "span_metrics" cannot be the exporter '
                 "of a logs pipeline (type span_metrics as exporter: traces)"]


def test_an_unsupported_pair_is_reported_on_both_sides() -> None:
    assert errors("""\
        connectors: {forward: {}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [forward]}
            metrics:
              receivers: [forward]
              exporters: [debug]
        """) == [
        "c.yaml:6 service::pipelines::traces::exporters: connector forward exports from traces pipeline traces but "
        "none of the pipelines receiving from it (metrics) is of a signal it makes from traces "
        "(type forward supports traces->traces)",
        "c.yaml:8 service::pipelines::metrics::receivers: connector forward is a receiver of metrics pipeline "
        "metrics but none of the pipelines exporting to it (traces) is of a signal it turns into metrics "
        "(type forward supports metrics->metrics)",
    ]


def test_a_cycle_is_one_error_naming_the_loop() -> None:
    assert errors("""\
        connectors: {forward/a: {}, forward/b: {}}
        service:
          pipelines:
            traces/a:
              receivers: [otlp, forward/b]
              exporters: [forward/a]
            traces/b:
              receivers: [forward/a]
              exporters: [debug, forward/b]
        """) == [
        "c.yaml:11 service::pipelines::traces/b::exporters: cycle in the pipeline graph: traces/a -> forward/a -> "
        "traces/b -> forward/b -> traces/a; data would flow in a circle"]


def test_an_unknown_connector_type_lists_the_installed_ones() -> None:
    text = """\
        receivers: {otlp: {protocols: {grpc: {endpoint: "127.0.0.1:0"}}}}
        exporters: {debug: {}}
        connectors: {otlp: {}}
        service: {pipelines: {traces: {receivers: [otlp], exporters: [debug]}}}
        """
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=textwrap.dedent(text), env={})
    assert [str(i) for i in e.value.issues] == [
        'c.yaml:3 connectors::otlp: unknown connector type "otlp" (valid: diagnosis, forward, service_graph, span_metrics)']


def test_bad_span_metrics_keys_are_errors_with_their_place() -> None:
    assert errors("""\
        connectors:
          span_metrics:
            histogram: {explicit: {buckets: [1ms]}, exponential: {max_size: 10}}
            aggregation_temporality: SOMETIMES
            metrics_flush_intervall: 1s
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [span_metrics]}
            metrics: {receivers: [span_metrics], exporters: [debug]}
        """) == [
        "c.yaml:5 connectors::span_metrics::histogram: use either explicit or exponential buckets, not both",
        "c.yaml:6 connectors::span_metrics::aggregation_temporality: expected AGGREGATION_TEMPORALITY_CUMULATIVE "
        "or AGGREGATION_TEMPORALITY_DELTA (got 'SOMETIMES')",
        'c.yaml:7 connectors::span_metrics::metrics_flush_intervall: unknown key "metrics_flush_intervall" '
        '(did you mean "metrics_flush_interval"?)',
    ]
    assert errors("""\
        connectors:
          span_metrics:
            dimensions: [{name: span.name}]
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [span_metrics]}
            metrics: {receivers: [span_metrics], exporters: [debug]}
        """) == ['c.yaml:4 connectors::span_metrics: dimensions: "span.name" is a default dimension already']


def test_a_connector_that_failed_is_not_also_not_configured() -> None:
    assert errors("""\
        connectors: {forward: {bogus: 1}}
        service:
          pipelines:
            traces: {receivers: [otlp], exporters: [forward]}
            traces/2: {receivers: [forward], exporters: [debug]}
        """) == ['c.yaml:3 connectors::forward::bogus: unknown key "bogus"']


def test_an_id_that_is_both_a_receiver_and_a_connector_is_ambiguous() -> None:
    from gotel.component.contract import ALL_SIGNALS, ConnectorFactory, ExporterFactory, ReceiverFactory
    from gotel.component.registry import Registry
    from gotel.connectors import forward
    from tests.unit.core.test_graph import Cfg, RecExporter, RecReceiver

    r = Registry()
    r.add(ReceiverFactory(type="dual", config=Cfg, signals=ALL_SIGNALS, create=RecReceiver, in_process=True))
    r.add(ExporterFactory(type="ee", config=Cfg, signals=ALL_SIGNALS, create=RecExporter))
    r.add(ConnectorFactory(type="dual", config=forward.Config, signals=ALL_SIGNALS,
                           pairs=forward.factory.pairs, create=forward.factory.create))
    with pytest.raises(ConfigError) as e:
        load_config("c.yaml", text=textwrap.dedent("""\
            receivers: {dual: }
            exporters: {ee: }
            connectors: {dual: }
            service:
              pipelines:
                traces: {receivers: [dual], exporters: [ee]}
            """), env={}, reg=r)
    assert [str(i) for i in e.value.issues] == [
        "c.yaml:3 connectors::dual: ambiguous id dual: both a receiver and a connector have it; rename one (type/name)"]
