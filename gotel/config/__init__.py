"""Loading and validating gotel's collector-shaped YAML config (DESIGN.md section 5)."""
