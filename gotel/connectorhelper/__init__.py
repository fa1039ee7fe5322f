"""What metrics-deriving connectors share at a flush."""
