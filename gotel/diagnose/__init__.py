"""Diagnosis: rules defined once (rules.py) over signals observed of one process (signals.py), gathered by
`gotel diagnose` (gather.py) or by the agent's `diagnosis` connector; their PromQL form (promrules.py); see
docs/diagnose.md."""
