"""Shared pytest fixtures: `goapp` starts Go fixture programs and always stops them (tests/helpers/goapps.py)."""

from tests.helpers.goapps import goapp  # noqa: F401  (a fixture, used by name)
from tests.helpers.jaeger_real import real_jaeger  # noqa: F401  (a session fixture: the real Jaeger v2)
