"""Selector semantics: every set criterion must match, lists match on any element, exclude wins."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gotel.discovery import Criteria, DiscoveryConfig, ProcessInfo, is_go_binary, process_info
from gotel.discovery.procfs import container_id, listening_ports, read_cmdline, service_name


def _p(**kw: object) -> ProcessInfo:
    base: dict[str, object] = dict(
        pid=100, exe="/srv/bin/grpcapp", cmdline=["/srv/bin/grpcapp", "--port", "8080"], is_go=True,
        service_name="grpcapp", container_id="ab" * 32,
    )
    base.update(kw)
    return ProcessInfo(**base)  # type: ignore[arg-type]


def test_empty_selects_every_go_process_and_no_other() -> None:
    sel = DiscoveryConfig()
    assert sel.selects(_p())
    assert not sel.selects(_p(is_go=False))
    assert DiscoveryConfig(go_only=False).selects(_p(is_go=False))


def test_criteria_are_anded_and_lists_ored() -> None:
    sel = DiscoveryConfig(exe_paths=["*/httpapp", "*/grpcapp"], cmdline=r"--port\s+80\d0")
    assert sel.selects(_p())
    assert not sel.selects(_p(cmdline=["/srv/bin/grpcapp", "--port", "9090"]))
    assert not sel.selects(_p(exe="/srv/bin/other"))
    assert DiscoveryConfig(exe_paths=["grpcapp"]).selects(_p())  # a bare name matches the base name
    assert DiscoveryConfig(pids=[100, 7]).selects(_p())
    assert not DiscoveryConfig(pids=[7]).selects(_p())


def test_container_ids_match_full_or_short() -> None:
    assert DiscoveryConfig(container_ids=["ab" * 6]).selects(_p())
    assert not DiscoveryConfig(container_ids=["cd" * 6]).selects(_p())
    assert not DiscoveryConfig(container_ids=["ab" * 6]).selects(_p(container_id=None))


def test_exclude_wins() -> None:
    sel = DiscoveryConfig(exe_paths=["*/grpcapp"], exclude=Criteria(cmdline="--debug"))
    assert sel.selects(_p())
    assert not sel.selects(_p(cmdline=["grpcapp", "--debug"]))


def test_bad_config_is_an_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        DiscoveryConfig(cmdline="(unclosed")
    with pytest.raises(ValidationError, match="out of range"):
        DiscoveryConfig(ports=[70000])
    with pytest.raises(ValidationError, match="exe_path"):
        DiscoveryConfig(exe_path=["x"])  # type: ignore[call-arg]


def test_procfs_facts_of_a_real_process(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        assert port in listening_ports(os.getpid())
        info = process_info(os.getpid())
        assert info is not None and not info.is_go
        assert info.exe == os.path.realpath(sys.executable) or info.exe.endswith("python3.11")
    finally:
        srv.close()
    env = dict(os.environ, OTEL_SERVICE_NAME="checkout")
    p = subprocess.Popen(["/bin/sleep", "5"], env=env)
    try:
        # Popen returns once exec has begun; the new argv/environ appear a moment later
        deadline = time.monotonic() + 5
        while read_cmdline(p.pid) != ["/bin/sleep", "5"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service_name(p.pid, "/bin/sleep") == "checkout"
        assert process_info(p.pid).service_name == "checkout"  # type: ignore[union-attr]
    finally:
        p.kill()
        p.wait()
    assert container_id(os.getpid()) is None or len(container_id(os.getpid()) or "") == 64


def test_go_check_reads_section_headers_only() -> None:
    assert not is_go_binary("/bin/sleep")
    assert not is_go_binary("/etc/hostname")
    assert not is_go_binary("/nonexistent")
    assert is_go_binary(os.path.realpath("/usr/bin/go"))  # Debian's Go toolchain is a Go program


def test_gotel_itself_is_never_a_target() -> None:
    from gotel.discovery.watcher import _is_self

    me = process_info(os.getpid())
    assert me is not None and _is_self(me)
    agent = _p(pid=1, exe=os.path.realpath(sys.executable), cmdline=[sys.executable, "-m", "gotel", "run"])
    assert _is_self(agent)
    assert not _is_self(_p(pid=1))


def test_container_id_skips_crio_conmon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery reads the id the way gotel.host.cgroup does: the CRI-O container, never its conmon monitor."""
    from gotel.discovery import procfs

    cid, conmon = "a1" * 32, "b2" * 32
    proc = tmp_path
    (proc / "4242").mkdir()
    (proc / "4242" / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-pod0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0.slice/crio-{cid}.scope/"
        f"crio-conmon-{conmon}.scope\n")
    monkeypatch.setattr(procfs, "PROC", proc)
    assert container_id(4242) == cid
    assert container_id(4243) is None  # gone
