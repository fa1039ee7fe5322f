"""gotel's own telemetry the collector's way (`service::telemetry`), built on the OpenTelemetry SDK."""
