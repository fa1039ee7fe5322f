"""Mapped into the gotel namespace by setup.py."""
