"""Start-up checks say what is wrong and what to do; the real host passes them (CI is root with BPF)."""

from __future__ import annotations

import pytest

from gotel.ebpf.checks import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    BpfUnavailableError,
    CheckResult,
    check_capabilities,
    check_headers,
    check_kernel,
    run_checks,
)


def test_kernel_version() -> None:
    assert check_kernel("6.18.44-fc-v669").ok
    assert check_kernel("5.8.0").ok
    old = check_kernel("5.4.0-150-generic")
    assert not old.ok and "older than 5.8" in old.detail and "5.8" in old.fix


def test_capabilities() -> None:
    assert check_capabilities(1 << CAP_SYS_ADMIN).ok
    assert check_capabilities(1 << CAP_BPF | 1 << CAP_PERFMON).ok
    r = check_capabilities(1 << CAP_BPF)
    assert not r.ok and r.detail == "missing CAP_PERFMON" and "securityContext" in r.fix


def test_missing_headers_say_make_bootstrap() -> None:
    r = check_headers("0.0.0-nonexistent")
    assert not r.ok
    assert "/lib/modules/0.0.0-nonexistent/build" in r.detail
    assert "make bootstrap" in r.fix and "linux-headers-cloud-amd64" in r.fix


def test_every_failure_is_reported_at_once() -> None:
    err = BpfUnavailableError([CheckResult("kernel", False, "kernel 5.4 is older", "upgrade"),
                               CheckResult("headers", False, "none", "make bootstrap")])
    assert "kernel: kernel 5.4 is older. Fix: upgrade" in str(err)
    assert "headers: none. Fix: make bootstrap" in str(err)


@pytest.mark.root
def test_this_host_passes() -> None:
    failed = [r for r in run_checks() if not r.ok]
    assert failed == []
