"""The node as the kernel shows it: /proc and cgroup readers, network namespaces, syscall names, giving memory back."""
