"""Shared pytest fixtures: `goapp` starts Go fixture programs and always stops them (tests/helpers/goapps.py)."""

from tests.helpers.goapps import goapp  # noqa: F401  (a fixture, used by name)
