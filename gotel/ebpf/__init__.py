"""The eBPF substrate (DESIGN.md section 6): start-up checks, one compiled BCC program per receiver,
uprobes per binary (Go entries and RETs, USDT sites with kernel-managed semaphores), ring buffers
drained in batches, and the registry of Go probes `gotel inspect` evaluates. See docs/ebpf.md."""
