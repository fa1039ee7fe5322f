"""Diagnosis: rules defined once (rules.py) over signals observed of one process (signals.py), gathered by
`gotel diagnose` (gather.py) or by the agent's `diagnosis` connector; see docs/diagnose.md."""

from gotel.diagnose.rules import BY_ID, RULES, Finding, Location, Report, Rule, Threshold, evaluate
from gotel.diagnose.signals import Snapshot

__all__ = ["BY_ID", "RULES", "Finding", "Location", "Report", "Rule", "Snapshot", "Threshold", "evaluate"]
