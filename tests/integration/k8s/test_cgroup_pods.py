"""Real processes placed in real cgroups named as container runtimes name them, enriched with their pod.

This machine mounts cgroup v1 controllers and a v2 hierarchy at /sys/fs/cgroup/unified: a process
moved into ``cpu/kubepods/burstable/pod<uid>/<id>`` shows the cgroupfs shape in /proc/PID/cgroup,
one moved into ``unified/kubepods.slice/.../cri-containerd-<id>.scope`` the systemd/containerd v2 shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from gotel.component.contract import ComponentID, Context, Kind
from gotel.host.cgroup import read_pid
from gotel.pdata.batch import Signal
from gotel.processors.k8s_attributes import Config
from gotel.processors.k8s_attributes import factory as k8s_factory
from gotel.receivers.synthetic import Config as SynthConfig
from gotel.receivers.synthetic import factory as synth_factory
from gotel.telemetry.counters import Telemetry
from tests.helpers.kube_api import KubeAPIServer, make_pod
from tests.unit.k8s.conftest import Collect, make_ctx, resource_attrs

pytestmark = pytest.mark.root

CG = "/sys/fs/cgroup"


@contextlib.contextmanager
def process_in_cgroup(hierarchy: str, rel: str) -> Iterator[int]:
    """A `sleep` placed in CG/hierarchy/rel; moved back to the root cgroup, killed and the cgroup removed after."""
    root = os.path.join(CG, hierarchy)
    if not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.fail(f"{root} is not a mounted cgroup hierarchy (this test needs root and cgroup mounts)")
    path = os.path.join(root, rel)
    os.makedirs(path)
    proc = subprocess.Popen(["sleep", "300"])
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        yield proc.pid
    finally:
        with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(proc.pid))
        proc.kill()
        proc.wait()
        # remove our leaf, then parents that are left empty (other tests may share kubepods/)
        cur = path
        while cur != root:
            try:
                os.rmdir(cur)
            except OSError:
                break
            cur = os.path.dirname(cur)


def ids() -> tuple[str, str]:
    return str(uuid.uuid4()), secrets.token_hex(32)


async def enrich_via_synthetic(kubeconfig: str, pid: int, n: int = 40) -> list[dict]:
    """synthetic receiver (process_pid) -> k8s_attributes -> collector; returns the resources that came out."""
    sink = Collect()
    proc = k8s_factory.create(Signal.TRACES, Config.model_validate({
        "auth_type": "kubeConfig", "kube_config_path": kubeconfig, "filter": {"node": "node-a"},
        "wait_for_metadata": True, "wait_for_metadata_timeout": "15s"}), sink, make_ctx())
    await proc.start()
    rid = ComponentID("synthetic")
    rctx = Context(id=rid, kind=Kind.RECEIVER, logger=proc.log, telemetry=Telemetry().component(rid, Kind.RECEIVER))
    recv = synth_factory.create(SynthConfig(spans_per_second=2000, metrics_per_second=0, logs_per_second=0,
                                            profiles_per_second=0, batch_size=10, process_pid=pid, max_items=n),
                                {Signal.TRACES: proc}, rctx)
    try:
        await recv.start()
        for _ in range(300):
            if sum(b.item_count() for b in sink.batches) >= n:
                break
            await asyncio.sleep(0.05)
    finally:
        await recv.shutdown()
        await proc.shutdown()
    assert sum(b.item_count() for b in sink.batches) == n
    return [r for b in sink.batches for r in resource_attrs(b)]


async def test_cgroupfs_v1_containerd_process_gets_its_pod(kube: KubeAPIServer, kubeconfig: str) -> None:
    uid, cid = ids()
    kube.apply("pods", make_pod("checkout-7c9f8d6b5-abcde", namespace="shop", uid=uid, ip="10.4.0.2",
                                containers=[("checkout", "ghcr.io/acme/checkout:2.3.1", cid)],
                                owner=("ReplicaSet", "checkout-7c9f8d6b5")))
    with process_in_cgroup("cpu", f"kubepods/burstable/pod{uid}/{cid}") as pid:
        with open(f"/proc/{pid}/cgroup") as f:
            assert f":cpu:/kubepods/burstable/pod{uid}/{cid}" in f.read()
        assert read_pid(pid).container_id == cid
        out = await enrich_via_synthetic(kubeconfig, pid)
    for r in out:
        assert r["process.pid"] == pid
        assert r["k8s.pod.name"] == "checkout-7c9f8d6b5-abcde" and r["k8s.pod.uid"] == uid
        assert r["k8s.namespace.name"] == "shop" and r["k8s.container.name"] == "checkout"
        assert r["container.image.name"] == "ghcr.io/acme/checkout" and r["container.image.tag"] == "2.3.1"
        assert r["k8s.replicaset.name"] == "checkout-7c9f8d6b5"


async def test_systemd_v2_containerd_and_crio_processes(kube: KubeAPIServer, kubeconfig: str) -> None:
    uid1, cid1 = ids()
    uid2, cid2 = ids()
    kube.apply("pods", make_pod("api-0", namespace="prod", uid=uid1, containers=[("api", "api:1", cid1)],
                                owner=("StatefulSet", "api")))
    kube.apply("pods", make_pod("worker-x", namespace="prod", uid=uid2, containers=[("worker", "worker:5", cid2)],
                                runtime="cri-o", owner=("DaemonSet", "worker")))
    u1, u2 = uid1.replace("-", "_"), uid2.replace("-", "_")
    with process_in_cgroup("unified", f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u1}.slice/cri-containerd-{cid1}.scope") as pid1, \
         process_in_cgroup("pids", f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u2}.slice/crio-{cid2}.scope") as pid2:
        with open(f"/proc/{pid1}/cgroup") as f:
            assert f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u1}.slice/cri-containerd-{cid1}.scope" in f.read()
        out1 = await enrich_via_synthetic(kubeconfig, pid1, n=20)
        out2 = await enrich_via_synthetic(kubeconfig, pid2, n=20)
    assert {(r["k8s.pod.name"], r["k8s.statefulset.name"], r["k8s.container.name"]) for r in out1} == {("api-0", "api", "api")}
    assert {(r["k8s.pod.name"], r["k8s.daemonset.name"], r["k8s.container.name"]) for r in out2} == {("worker-x", "worker", "worker")}


async def test_pid_outside_any_pod_passes_untouched(kube: KubeAPIServer, kubeconfig: str) -> None:
    kube.apply("pods", make_pod("other", containers=[("c", "c:1", secrets.token_hex(32))]))
    out = await enrich_via_synthetic(kubeconfig, os.getpid(), n=20)
    for r in out:
        assert not any(k.startswith(("k8s.", "container.")) for k in r), r
        assert r["process.pid"] == os.getpid()


async def test_container_not_yet_in_status_still_finds_pod_by_cgroup_uid(kube: KubeAPIServer, kubeconfig: str) -> None:
    uid, cid = ids()
    kube.apply("pods", make_pod("starting", uid=uid, containers=[("app", "app:1", "")]))  # no containerID yet
    with process_in_cgroup("cpu", f"kubepods/besteffort/pod{uid}/{cid}") as pid:
        out = await enrich_via_synthetic(kubeconfig, pid, n=10)
    assert {r["k8s.pod.name"] for r in out} == {"starting"}
    assert not any("k8s.container.name" in r for r in out)


async def test_exited_process_is_forgotten(kube: KubeAPIServer, kubeconfig: str) -> None:
    uid, cid = ids()
    kube.apply("pods", make_pod("short", uid=uid, containers=[("app", "app:1", cid)]))
    sink = Collect()
    proc = k8s_factory.create(Signal.TRACES, Config.model_validate({
        "auth_type": "kubeConfig", "kube_config_path": kubeconfig, "filter": {"node": "node-a"},
        "wait_for_metadata": True}), sink, make_ctx())
    await proc.start()
    try:
        proc.pids.sweep_interval = 0.1
        proc.pids._next_sweep = 0.0
        from tests.unit.k8s.conftest import traces_with

        with process_in_cgroup("cpu", f"kubepods/pod{uid}/{cid}") as pid:
            await proc.consume(traces_with({"process.pid": pid}))
            assert resource_attrs(sink.batches[-1])[0]["k8s.pod.name"] == "short"
            assert len(proc.pids) == 1
        await asyncio.sleep(0.2)
        await proc.consume(traces_with({"process.pid": pid}))
        assert resource_attrs(sink.batches[-1])[0] == {"process.pid": pid}
        assert pid not in proc.pids._cache
    finally:
        await proc.shutdown()


async def test_resource_detection_service_name_from_pod_label_then_container(kube: KubeAPIServer, kubeconfig: str,
                                                                             monkeypatch) -> None:
    """resource_detection's k8s detector: app.kubernetes.io/name, else the container name; container.id from cgroup."""
    from gotel.processors.resource_detection import Config as RDConfig
    from gotel.processors.resource_detection import factory as rd_factory
    from tests.unit.k8s.conftest import traces_with

    monkeypatch.setenv("K8S_NODE_NAME", "node-a")
    uid1, cid1 = ids()
    uid2, cid2 = ids()
    kube.apply("pods", make_pod("cart-1", uid=uid1, containers=[("cart-server", "cart:1", cid1)],
                                labels={"app.kubernetes.io/name": "cart"}))
    kube.apply("pods", make_pod("misc-1", uid=uid2, containers=[("misc-worker", "misc:1", cid2)]))
    sink = Collect()
    p = rd_factory.create(Signal.TRACES, RDConfig.model_validate({
        "detectors": ["system", "process", "container", "k8s"],
        "k8s": {"auth_type": "kubeConfig", "kube_config_path": kubeconfig}}), sink, make_ctx("resource_detection"))
    await p.start()
    try:
        assert await asyncio.to_thread(p.store.wait_synced, 15)
        with process_in_cgroup("cpu", f"kubepods/burstable/pod{uid1}/{cid1}") as pid1, \
             process_in_cgroup("cpu", f"kubepods/burstable/pod{uid2}/{cid2}") as pid2:
            await p.consume(traces_with({"process.pid": pid1}, {"process.pid": pid2}))
        [a, b] = resource_attrs(sink.batches[0])
        assert a["service.name"] == "cart" and a["container.id"] == cid1
        assert b["service.name"] == "misc-worker" and b["container.id"] == cid2
        assert a["k8s.node.name"] == "node-a" and a["host.name"] == "node-a"
        assert a["process.executable.name"] == "sleep"
    finally:
        await p.shutdown()


async def test_pod_discovery_finds_the_pods_process_for_its_network_namespace(kube: KubeAPIServer, kubeconfig: str) -> None:
    from gotel.k8s.client import api_client
    from gotel.k8s.discovery import PodTargetSource
    from gotel.k8s.store import MetadataStore, StoreKey

    uid, cid = ids()
    kube.apply("pods", make_pod("prof-1", uid=uid, ip="10.4.0.9", containers=[("app", "app:1", cid)],
                                annotations={"pyroscope.io/scrape": "true", "pyroscope.io/port": "6060"}))
    api = api_client("kubeConfig", kubeconfig)
    store = MetadataStore(api, StoreKey(api.configuration.host, "t", node="node-a"))
    store.require(PodTargetSource.needs())
    store.start()
    try:
        assert await asyncio.to_thread(store.wait_synced, 15)
        src = PodTargetSource(store, "pprof")
        [t] = await src.targets()
        assert (t.url, t.netns) == ("http://10.4.0.9:6060", None)  # no process of the pod on this node yet
        with process_in_cgroup("cpu", f"kubepods/besteffort/pod{uid}/{cid}") as pid:
            [t] = await src.targets()
            assert (t.url, t.netns, t.pid) == ("http://127.0.0.1:6060", f"/proc/{pid}/ns/net", pid)
            assert os.path.exists(t.netns)
    finally:
        store.stop()


async def test_pprof_receiver_scrapes_an_annotated_pod_with_its_attributes(kube: KubeAPIServer, kubeconfig: str,
                                                                          monkeypatch) -> None:
    """The pprof receiver's kubernetes block: a real Go program in a pod's cgroup, only the annotated profile type."""
    from gotel.receivers.pprof import factory as pprof_factory
    from gotel.receivers.pprof.config import Config as PprofConfig
    from tests.helpers import goapps

    monkeypatch.setenv("K8S_NODE_NAME", "node-a")
    uid, cid = ids()
    app = goapps.start("httpapp", "server")
    try:
        root = os.path.join(CG, "cpu")
        path = os.path.join(root, f"kubepods/burstable/pod{uid}/{cid}")
        os.makedirs(path)
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(app.pid))
            kube.apply("pods", make_pod("web-1", uid=uid, ip="10.9.9.9", containers=[("app", "httpapp:1", cid)],
                                        labels={"app.kubernetes.io/name": "web"},
                                        annotations={"profiles.grafana.com/memory.scrape": "true",
                                                     "profiles.grafana.com/memory.port": str(app.ports["pprof"])}))
            sink, logs = Collect(), Collect()
            cfg = PprofConfig.model_validate({
                "kubernetes": {"auth_type": "kubeConfig", "kube_config_path": kubeconfig}, "jitter": False,
                "profiles": {"heap": {"interval": "1s"}, "cpu": {"interval": "2s"}, "goroutine": {"interval": "1s"}}})
            rid = ComponentID("pprof")
            recv = pprof_factory.create(cfg, {Signal.PROFILES: sink, Signal.LOGS: logs},
                                        Context(id=rid, kind=Kind.RECEIVER, logger=make_ctx().logger,
                                                telemetry=Telemetry().component(rid, Kind.RECEIVER)))
            await recv.start()
            try:
                for _ in range(120):
                    if len(sink.batches) >= 2:
                        break
                    await asyncio.sleep(0.25)
            finally:
                await recv.shutdown()
        finally:
            with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(str(app.pid))
            cur = path
            while cur != root:
                try:
                    os.rmdir(cur)
                except OSError:
                    break
                cur = os.path.dirname(cur)
    finally:
        app.stop()
    assert len(sink.batches) >= 2
    from gotel.pdata.batch import attr_dict

    resources = [attr_dict(rp.resource.attributes) for b in sink.batches for rp in b.peek_resources()]
    for r in resources:
        assert r["service.name"] == "web" and r["k8s.pod.name"] == "web-1" and r["k8s.pod.uid"] == uid
        assert r["k8s.container.name"] == "app" and r["container.id"] == cid and r["process.pid"] == app.pid
    # only the annotated type (memory = heap) was scraped, though cpu and goroutine are on in the config
    types = set()
    for b in sink.batches:
        msg = b.peek()
        strings = msg.dictionary.string_table
        for rp in msg.resource_profiles:
            for sp in rp.scope_profiles:
                for prof in sp.profiles:
                    types.add(strings[prof.sample_type.type_strindex])
    assert types and types <= {"alloc_objects", "alloc_space", "inuse_objects", "inuse_space"}, types
