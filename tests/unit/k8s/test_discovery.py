"""Pod discovery: annotation schemes -> targets of the pprof and go_metrics receivers."""

from __future__ import annotations

import pytest

from gotel.k8s.client import api_client
from gotel.k8s.discovery import PodTargetSource, metrics_endpoints, profile_endpoints
from gotel.k8s.model import KeyFilter, parse_pod
from gotel.k8s.store import MetadataStore, StoreKey
from gotel.receiverhelper.targets import Target, TargetSource
from tests.helpers.kube_api import KubeAPIServer, make_pod, make_replicaset
from tests.helpers.waiting import wait_until

ANN = KeyFilter(prefixes=["profiles.grafana.com/", "pyroscope.io/", "prometheus.io/"])


def cid(n: int) -> str:
    return f"{n:064x}"


def pod(annotations: dict[str, str], **kw):
    kw.setdefault("containers", [("app", "app:1", cid(1)), ("sidecar", "envoy:1", cid(2))])
    kw.setdefault("ports", {"app": [("http", 8080), ("pprof", 6060)], "sidecar": [("admin", 15000)]})
    return parse_pod(make_pod("p", ip="10.0.0.7", annotations=annotations, **kw), KeyFilter(), ANN)


def test_grafana_scheme_per_profile_type() -> None:
    p = pod({
        "profiles.grafana.com/cpu.scrape": "true", "profiles.grafana.com/cpu.port_name": "pprof",
        "profiles.grafana.com/memory.scrape": "true", "profiles.grafana.com/memory.port": "6060",
        "profiles.grafana.com/memory.path": "/debug/pprof/heap",
        "profiles.grafana.com/goroutine.scrape": "false", "profiles.grafana.com/goroutine.port": "6060",
        "profiles.grafana.com/mutex.scrape": "true", "profiles.grafana.com/mutex.port_name": "admin",
        "profiles.grafana.com/mutex.scheme": "https",
        "profiles.grafana.com/block.scrape": "true",  # no port: not scrapeable
    })
    eps = sorted(profile_endpoints(p))
    assert eps == [
        ("http", 6060, "app", {"cpu": "/debug/pprof/profile", "memory": "/debug/pprof/heap"}),
        ("https", 15000, "sidecar", {"mutex": "/debug/pprof/mutex"}),
    ]


def test_pyroscope_scheme_defaults_and_disables() -> None:
    p = pod({"pyroscope.io/scrape": "true", "pyroscope.io/port": "6060",
             "pyroscope.io/profile-block-enabled": "false", "pyroscope.io/profile-cpu-path": "/custom/profile",
             "pyroscope.io/profile-fgprof-enabled": "true"})
    [(scheme, port, container, paths)] = profile_endpoints(p)
    assert (scheme, port, container) == ("http", 6060, "app")
    assert paths == {"cpu": "/custom/profile", "memory": "/debug/pprof/allocs", "goroutine": "/debug/pprof/goroutine",
                     "mutex": "/debug/pprof/mutex", "fgprof": "/debug/fgprof"}
    assert profile_endpoints(pod({"pyroscope.io/scrape": "false", "pyroscope.io/port": "6060"})) == []
    assert profile_endpoints(pod({})) == []


def test_target_prefix_covers_every_selected_path() -> None:
    from gotel.k8s.discovery import PodTarget

    t = PodTarget("pprof", "http", 6060, "127.0.0.1", None, None,
                  {"cpu": "/debug/pprof/profile", "memory": "/custom/heap", "fgprof": "/debug/fgprof"}).to_target()
    assert t is not None and t.path_prefix == "/" and t.profile_paths == {"cpu": "/debug/pprof/profile",
                                                                         "memory": "/custom/heap"}
    assert PodTarget("pprof", "http", 6060, "h", None, None, {"fgprof": "/debug/fgprof"}).to_target() is None


def test_prometheus_scheme() -> None:
    assert metrics_endpoints(pod({"prometheus.io/scrape": "true", "prometheus.io/port": "8080"})) == [
        ("http", 8080, "app", {"metrics": "/metrics"})]
    assert metrics_endpoints(pod({"prometheus.io/scrape": "true", "prometheus.io/port": "9999",
                                  "prometheus.io/path": "/m", "prometheus.io/scheme": "https"})) == [
        ("https", 9999, "app", {"metrics": "/m"})]  # a port no container declares: the first container
    assert metrics_endpoints(pod({"prometheus.io/scrape": "true"})) == []


@pytest.fixture
def fake_proc(tmp_path):
    """A /proc with one process in container cid(1) (pid 4321) and one outside any container."""
    root = tmp_path / "proc"
    for pid, cg in ((4321, f"0::/kubepods/burstable/pod0000/{cid(1)}\n"), (99, "0::/user.slice\n")):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(cg)
        (root / str(pid) / "stat").write_text(f"{pid} (x) S " + "0 " * 18 + "55 0\n")
    return str(root)


async def test_source_over_the_store(kube: KubeAPIServer, kubeconfig: str, fake_proc: str) -> None:
    kube.apply("replicasets", make_replicaset("shop-5d8f7c9b7d", "shop"))
    ann = {"profiles.grafana.com/cpu.scrape": "true", "profiles.grafana.com/cpu.port": "6060",
           "profiles.grafana.com/memory.scrape": "true", "profiles.grafana.com/memory.port": "6060",
           "prometheus.io/scrape": "true", "prometheus.io/port": "8080",
           "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    kube.apply("pods", make_pod("shop-5d8f7c9b7d-a", ip="10.0.0.7", annotations=ann, owner=("ReplicaSet", "shop-5d8f7c9b7d"),
                                labels={"app.kubernetes.io/name": "shop"},
                                containers=[("app", "shop:1", cid(1))], ports={"app": [("pprof", 6060)]}))
    kube.apply("pods", make_pod("remote", ip="10.0.0.8", containers=[("app", "x:1", cid(3))],
                                annotations={"pyroscope.io/scrape": "true", "pyroscope.io/port": "6060",
                                             "pyroscope.io/service_name": "billing"}))
    kube.apply("pods", make_pod("other-node", node="node-b", ip="10.0.9.9", containers=[("app", "x:1", cid(4))],
                                annotations={"pyroscope.io/scrape": "true", "pyroscope.io/port": "6060"}))
    kube.apply("pods", make_pod("plain", ip="10.0.0.9", containers=[("app", "x:1", cid(5))]))
    api = api_client("kubeConfig", kubeconfig)
    store = MetadataStore(api, StoreKey(api.configuration.host, "t", node="node-a"))
    store.require(PodTargetSource.needs())
    store.start()
    try:
        assert store.wait_synced(15)
        src = PodTargetSource(store, "pprof", proc_root=fake_proc)
        assert isinstance(src, TargetSource)
        wait_until(lambda: ("default", "shop-5d8f7c9b7d") in store.replicasets)
        targets = sorted(await src.targets(), key=lambda t: t.url)
        assert [(t.url, t.netns, t.pid, t.path_prefix) for t in targets] == [
            ("http://10.0.0.8:6060", None, None, "/debug/pprof"),  # no process of it here: the pod IP
            ("http://127.0.0.1:6060", f"{fake_proc}/4321/ns/net", 4321, "/debug/pprof"),  # inside the pod's netns
        ]
        remote, local = targets
        assert isinstance(local, Target) and local.source == "kubernetes"
        assert local.profile_paths == {"cpu": "/debug/pprof/profile", "memory": "/debug/pprof/allocs"}
        assert set(remote.profile_paths) == {"cpu", "memory", "goroutine", "block", "mutex"}
        assert local.attributes == {
            "service.name": "shop", "k8s.namespace.name": "default", "k8s.pod.name": "shop-5d8f7c9b7d-a",
            "k8s.pod.uid": store.by_name[("default", "shop-5d8f7c9b7d-a")].uid, "k8s.node.name": "node-a",
            "k8s.container.name": "app", "container.id": cid(1), "k8s.replicaset.name": "shop-5d8f7c9b7d",
            "k8s.deployment.name": "shop"}
        assert remote.attributes["service.name"] == "billing"
        metrics = await PodTargetSource(store, "metrics", proc_root=fake_proc).targets()
        assert [(t.url, t.path_prefix) for t in metrics] == [("http://127.0.0.1:8080", "/metrics")]
        # only the scrape annotations are kept in memory
        assert "kubectl.kubernetes.io/last-applied-configuration" not in (store.by_name[("default", "shop-5d8f7c9b7d-a")].annotations or {})
        # a pod that goes away stops being a target
        kube.delete("pods", "remote", "default")
        wait_until(lambda: "remote" not in {p.name for p in store.live_pods()})
        assert [t.url for t in await src.targets()] == ["http://127.0.0.1:6060"]
    finally:
        store.stop()
