"""Conversions between wire formats gotel speaks: Prometheus names and series, remote write, pprof, OTLP profiles."""
