"""`gotel traces`: read traces from Jaeger (api_v3) or the file exporter, and show them in a terminal."""
