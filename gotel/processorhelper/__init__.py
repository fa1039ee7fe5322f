"""What processors share: the collector's attribute actions and legacy include/exclude matching."""
