"""What receivers share: handing batches on, timers, pull targets, bounded inflation, the receiver process."""
