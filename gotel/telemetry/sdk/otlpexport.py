"""The OpenTelemetry SDK's OTLP exporters (gRPC or HTTP/protobuf) from one `otlp:` block of
`service::telemetry` (metric readers and log processors): endpoint, TLS, headers, compression, timeout."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from gotel.config.telemetry import OTLPPushExporter

_CLASSES = {
    ("grpc", "metrics"): ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "OTLPMetricExporter"),
    ("grpc", "logs"): ("opentelemetry.exporter.otlp.proto.grpc._log_exporter", "OTLPLogExporter"),
    ("http", "metrics"): ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "OTLPMetricExporter"),
    ("http", "logs"): ("opentelemetry.exporter.otlp.proto.http._log_exporter", "OTLPLogExporter"),
}


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


def otlp_exporter(c: OTLPPushExporter, signal: Literal["metrics", "logs"], **extra: Any) -> Any:
    """The SDK exporter of `signal` for this block (extra: e.g. the metric exporter's temporality)."""
    import importlib

    wire = "grpc" if c.protocol == "grpc" else "http"
    module, name = _CLASSES[(wire, signal)]
    cls = getattr(importlib.import_module(module), name)
    if wire == "grpc":
        import grpc

        insecure = c.insecure if c.insecure is not None else c.endpoint.startswith("http://")
        credentials = None if insecure else grpc.ssl_channel_credentials(
            _read(c.certificate), _read(c.client_key), _read(c.client_certificate))
        return cls(endpoint=c.endpoint, insecure=insecure, credentials=credentials, headers=dict(c.headers),
                   timeout=c.timeout, compression=grpc.Compression.Gzip if c.compression == "gzip" else None,
                   **extra)
    from opentelemetry.exporter.otlp.proto.http import Compression

    url = c.endpoint if "//" in c.endpoint else "http://" + c.endpoint
    if urlsplit(url).path in ("", "/"):  # as the collector's config: a bare URL gets the signal's path
        url = url.rstrip("/") + f"/v1/{signal}"
    return cls(endpoint=url, certificate_file=c.certificate or None, client_key_file=c.client_key or None,
               client_certificate_file=c.client_certificate or None, headers=dict(c.headers), timeout=c.timeout,
               compression=Compression.Gzip if c.compression == "gzip" else Compression.NoCompression, **extra)
