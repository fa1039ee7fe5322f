"""The real collector's fixture (tests/helpers/otelcol.py) for every test in this folder."""

from tests.helpers.otelcol import otelcol  # noqa: F401  (a fixture, used by name)
