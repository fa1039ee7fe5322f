"""inject_traceparent: whether this kernel lets a uprobe write into a traced program's memory at all."""

from __future__ import annotations

# go_ebpf.c inj_counts, by index
INJECT_RESULTS = ("injected", "no_room", "header_present", "write_refused", "writer_unknown")

_PROBE = b"""
int gotel_write_user_check(struct pt_regs *ctx) {
    char c = 0;
    bpf_probe_write_user((void *)0, &c, 1);
    return 0;
}
"""


def write_user_refused() -> str | None:
    """Why the verifier refuses bpf_probe_write_user in a uprobe program (kernel lockdown 'integrity' or
    stronger, no CAP_SYS_ADMIN), or None when it is allowed: loading one tiny program is the only sure test
    (/sys/kernel/security/lockdown is not mounted everywhere)."""
    from bcc import BPF  # type: ignore[import-not-found,unused-ignore]

    b = BPF(text=_PROBE)
    try:
        b.load_func(b"gotel_write_user_check", BPF.KPROBE)
    except Exception:
        why = lockdown() or ("kernel lockdown" if _has_sys_admin() else "no CAP_SYS_ADMIN")
        return f"the kernel refuses bpf_probe_write_user to uprobe programs ({why})"
    finally:
        b.cleanup()
    return None


def lockdown() -> str | None:
    """The kernel's lockdown mode, e.g. 'lockdown: integrity' (None when securityfs does not say)."""
    try:
        with open("/sys/kernel/security/lockdown") as f:
            mode = f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None
    return None if mode == "none" else f"lockdown: {mode}"


def _has_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return bool(eff >> 21 & 1)  # CAP_SYS_ADMIN
