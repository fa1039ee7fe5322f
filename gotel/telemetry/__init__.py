"""gotel's own telemetry: per-component counters, their OTLP form, and logging."""
