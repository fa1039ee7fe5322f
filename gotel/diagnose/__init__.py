"""Diagnosis: rules defined once, used by `gotel diagnose`, the agent, and as Prometheus alert rules."""
