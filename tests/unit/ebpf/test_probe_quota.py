"""BCC's own quota of open probes follows the fd limit: one go_ebpf receiver process traces every Go
process of a node, about 30 per-process uprobes each, and BCC's default of 1,000 refused the 35th process
("Number of open probes would exceed global quota")."""

from __future__ import annotations

import os
import resource

import pytest

from gotel.ebpf.program import lift_probe_quota


def test_quota_follows_the_fd_limit_and_bcc_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from bcc import BPF

    monkeypatch.delenv("BCC_PROBE_LIMIT", raising=False)
    limit = lift_probe_quota()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert soft == hard  # the soft limit was raised to the hard one
    assert limit == max(1000, soft - 1024)
    assert BPF.get_probe_limit() == limit  # what BCC itself will check against


def test_an_operators_limit_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BCC_PROBE_LIMIT", "77")
    assert lift_probe_quota() == 77
    assert os.environ["BCC_PROBE_LIMIT"] == "77"
