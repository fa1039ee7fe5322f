"""What exporters share: the sending queue with retries, one HTTP sender, client settings (TLS, auth, compression)."""
