"""The pipeline process: graph, fan-out, routing, telemetry endpoint, life cycle."""
