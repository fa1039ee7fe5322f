"""Container id and pod uid from /proc/PID/cgroup lines of each runtime, cgroup driver and version."""

from __future__ import annotations

import os

import pytest

from gotel.host.cgroup import PidCgroupCache, container_id, parse_cgroup_file
from gotel.host.procfs import process_start_time

CID = "4c1cd4a2f9c8a1f0d3b58f2e6a7b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b"
UID = "4d9a5c8e-1f2b-4c3d-9e8f-0a1b2c3d4e5f"
UID_ = UID.replace("-", "_")

# containerd, systemd driver, cgroup v1: one line per controller (as a kubelet node on v1 shows)
CONTAINERD_SYSTEMD_V1 = "\n".join(
    f"{n}:{c}:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
    for n, c in [(12, "perf_event"), (11, "memory"), (10, "cpu,cpuacct"), (9, "pids"), (1, "name=systemd")]
) + "\n0::/\n"

CASES = {
    "containerd systemd v2": (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope\n", CID, UID),
    "containerd systemd v1 hybrid": (CONTAINERD_SYSTEMD_V1, CID, UID),
    "containerd systemd v1 colon form": (f"11:memory:/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}\n", CID, UID),
    "cri-o systemd v2": (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n", CID, UID),
    "cri-o conmon is not the container": (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{CID}.scope\n", "", UID),
    "docker systemd (cri-dockerd) v1": (f"7:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope\n", CID, UID),
    "cgroupfs burstable v1": (f"11:memory:/kubepods/burstable/pod{UID}/{CID}\n10:cpu,cpuacct:/kubepods/burstable/pod{UID}/{CID}\n", CID, UID),
    "cgroupfs guaranteed v1": (f"4:pids:/kubepods/pod{UID}/{CID}\n", CID, UID),
    "cgroupfs besteffort v2": (f"0::/kubepods/besteffort/pod{UID}/{CID}\n", CID, UID),
    "plain docker v1": (f"12:cpuset:/docker/{CID}\n11:memory:/docker/{CID}\n", CID, ""),
    "plain docker v2 systemd": (f"0::/system.slice/docker-{CID}.scope\n", CID, ""),
    "podman rootless v2, process in a child cgroup": (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container\n", CID, ""),
    "cgroup namespace relative path": (f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n", CID, UID),
    "pod sandbox slice only (pause not yet placed)": (f"0::/kubepods.slice/kubepods-pod{UID_}.slice\n", "", UID),
    "login session": ("0::/user.slice/user-1000.slice/session-3.scope\n", "", ""),
    "containerd daemon itself": ("0::/system.slice/containerd.service\n", "", ""),
    "root": ("0::/\n", "", ""),
    "32 hex characters is not an id (this machine)": ("4:memory:/process_api/a2bf03d2fffe197c9a5c60fde36567e3\n0::/\n", "", ""),
    "upper-case hex is not a runtime id": (f"0::/docker/{CID.upper()}\n", "", ""),
    "63 characters": (f"0::/docker/{CID[:63]}\n", "", ""),
    "garbage": ("not a cgroup file\n\n::\n", "", ""),
}


@pytest.mark.parametrize("name", list(CASES))
def test_container_id_and_pod_uid(name: str) -> None:
    text, cid, uid = CASES[name]
    info = parse_cgroup_file(text)
    assert info.container_id == cid
    assert info.pod_uid == uid
    assert container_id(text) == cid


def test_this_process_is_not_in_a_container() -> None:
    cache = PidCgroupCache()
    info = cache.get(os.getpid())
    assert info is not None and info.container_id == ""


def test_cache_forgets_exited_process_and_reused_pid(tmp_path) -> None:
    # a fake /proc: pid 4242 in a container, then "exits" and the pid is reused outside any container
    d = tmp_path / "4242"
    d.mkdir()
    (d / "cgroup").write_text(f"0::/kubepods/pod{UID}/{CID}\n")
    (d / "stat").write_text("4242 (my (odd) app) S " + " ".join(["0"] * 18) + " 777 0 0\n")
    assert process_start_time(4242, str(tmp_path)) == 777
    cache = PidCgroupCache(str(tmp_path), sweep_interval=3600)
    assert cache.get(4242).container_id == CID
    (d / "cgroup").write_text("0::/user.slice\n")
    assert cache.get(4242).container_id == CID  # cached: no file read per lookup
    assert cache.misses == 1
    (d / "stat").write_text("4242 (sh) S " + " ".join(["0"] * 18) + " 999 0 0\n")
    assert cache.sweep() == 1  # start time changed: the pid was reused
    assert cache.get(4242).container_id == ""
    (d / "cgroup").unlink()
    (d / "stat").unlink()
    cache.sweep()
    assert cache.get(4242) is None
    assert len(cache) == 0
