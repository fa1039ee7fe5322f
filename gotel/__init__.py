"""gotel: a Go-aware telemetry agent (eBPF and pprof receivers, OTLP pipelines, exporters)."""

__version__ = "0.1.0"
