"""Start-up checks for BCC programs: each failure says what is wrong and what to do about it.

BCC compiles at start-up, so a missing header set or tracefs shows up as a wall of clang or libbpf
output; these checks run first and turn the common causes into one actionable line each.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

MIN_KERNEL = (5, 8)
TRACEFS = Path("/sys/kernel/tracing")

# Capability bit numbers (linux/capability.h).
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


class BpfUnavailableError(RuntimeError):
    """BPF programs cannot be loaded here; the message lists every failed check with its fix."""

    def __init__(self, failures: list[CheckResult]) -> None:
        self.failures = failures
        lines = [f"{f.name}: {f.detail}. Fix: {f.fix}" for f in failures]
        super().__init__("eBPF is not usable on this host:\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_kernel(release: str | None = None) -> CheckResult:
    release = release or platform.release()
    ver = _kernel_version(release)
    ok = ver >= MIN_KERNEL
    return CheckResult(
        "kernel",
        ok,
        f"kernel {release}" + ("" if ok else f" is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} (ring buffers, bpf_probe_read_user)"),
        "" if ok else "run gotel on a kernel >= 5.8",
    )


def check_tracefs(mount: bool = True) -> CheckResult:
    """tracefs holds tracepoint formats that BCC reads; mounted here if missing and we may."""
    if (TRACEFS / "events").is_dir():
        return CheckResult("tracefs", True, f"tracefs mounted at {TRACEFS}")
    if mount and os.geteuid() == 0:
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True, text=True)
        if r.returncode == 0 and (TRACEFS / "events").is_dir():
            return CheckResult("tracefs", True, f"tracefs was not mounted; mounted it at {TRACEFS}")
    return CheckResult(
        "tracefs",
        False,
        f"tracefs is not mounted at {TRACEFS}",
        f"mount -t tracefs nodev {TRACEFS} (in Kubernetes: mount the host's {TRACEFS} read-only into the pod)",
    )


def _effective_caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def check_capabilities(caps: int | None = None) -> CheckResult:
    caps = _effective_caps() if caps is None else caps

    def has(bit: int) -> bool:
        return bool(caps >> bit & 1)

    admin = has(CAP_SYS_ADMIN)
    bpf = has(CAP_BPF) or admin
    perfmon = has(CAP_PERFMON) or admin
    missing = [n for n, ok in (("CAP_BPF", bpf), ("CAP_PERFMON", perfmon)) if not ok]
    if not missing:
        return CheckResult("capabilities", True, "CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) present")
    return CheckResult(
        "capabilities",
        False,
        "missing " + ", ".join(missing),
        "run as root, or grant CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH "
        "(and CAP_SYS_ADMIN while BCC needs it) — in Kubernetes via securityContext.capabilities.add",
    )


def header_dir(release: str | None = None) -> Path:
    return Path("/lib/modules") / (release or platform.release()) / "build"


def check_headers(release: str | None = None) -> CheckResult:
    """gotel's programs are header-light, so any recent header set works; BCC looks in .../build."""
    d = header_dir(release)
    src = d.parent / "source"  # Debian splits arch-specific (build) and common (source) headers
    needed = [d / "include" / "generated" / "autoconf.h"]
    if not (d / "include" / "linux" / "kconfig.h").exists():
        needed.append(src / "include" / "linux" / "kconfig.h")
    kheaders = Path("/sys/kernel/kheaders.tar.xz")
    missing = [p for p in needed if not p.exists()]
    if not missing:
        return CheckResult("headers", True, f"kernel headers at {d.resolve()}")
    if kheaders.exists():
        return CheckResult("headers", True, f"no header set at {d}; BCC will unpack {kheaders}")
    return CheckResult(
        "headers",
        False,
        f"no usable kernel header set at {d} (missing {missing[0]})",
        "run `make bootstrap` (or scripts/bootstrap.sh), which installs linux-headers-cloud-amd64 and links "
        f"/usr/src/linux-headers-*-cloud-amd64 to {d} and the matching -common to .../source; "
        "any recent header set works because gotel's BPF code dereferences no kernel struct",
    )


def check_bcc() -> CheckResult:
    try:
        import bcc  # noqa: F401
    except Exception as e:  # ImportError, or libbcc failing to load
        return CheckResult(
            "bcc",
            False,
            f"cannot import bcc ({e})",
            "install python3-bpfcc and libbpfcc (Debian) and run scripts/bootstrap.sh to link them into the venv",
        )
    return CheckResult("bcc", True, "BCC bindings importable")


def run_checks(mount_tracefs: bool = True) -> list[CheckResult]:
    return [check_kernel(), check_capabilities(), check_tracefs(mount_tracefs), check_headers(), check_bcc()]


def require_bpf(mount_tracefs: bool = True) -> list[CheckResult]:
    """Raises BpfUnavailableError listing every failed check; returns the results otherwise."""
    results = run_checks(mount_tracefs)
    failed = [r for r in results if not r.ok]
    if failed:
        raise BpfUnavailableError(failed)
    return results
