"""The metadata store against the Kubernetes API test server, driven by the official client."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client as kclient
from kubernetes import watch as kwatch

from gotel.k8s.client import api_client
from gotel.k8s.store import MetadataStore, Needs, StoreKey
from tests.helpers.kube_api import KubeAPIServer, make_node, make_pod, make_replicaset
from tests.helpers.waiting import wait_until


def cid(n: int) -> str:
    return f"{n:064x}"


def names(store: MetadataStore) -> list[str]:
    return sorted(p.name for p in store.live_pods())


@pytest.fixture
def store_for(kubeconfig: str) -> Iterator:
    made: list[MetadataStore] = []

    def make(node: str = "node-a", grace: float = 60.0, page_size: int = 2, needs: Needs | None = None) -> MetadataStore:
        api = api_client("kubeConfig", kubeconfig)
        s = MetadataStore(api, StoreKey(api.configuration.host, "test", node=node), delete_grace=grace,
                          page_size=page_size, watch_timeout=30)
        if needs:
            s.require(needs)
        s.start()
        made.append(s)
        assert s.wait_synced(15), s.last_error()
        return s

    yield make
    for s in made:
        s.stop()


def test_server_json_deserialises_into_client_models(kube: KubeAPIServer, kubeconfig: str) -> None:
    """The test server's lists and watch events are what the official client's models accept."""
    kube.apply("pods", make_pod("web-1", ip="10.1.0.5", containers=[("app", "nginx:1.25", cid(1))],
                                owner=("ReplicaSet", "web-6d4cf56db6"), labels={"app": "web"}))
    kube.apply("replicasets", make_replicaset("web-6d4cf56db6", "web"))
    kube.apply("nodes", make_node("node-a"))
    api = api_client("kubeConfig", kubeconfig)
    core = kclient.CoreV1Api(api)
    pods = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-a")
    assert isinstance(pods, kclient.V1PodList)
    p = pods.items[0]
    assert p.metadata.name == "web-1" and p.status.pod_ip == "10.1.0.5"
    assert p.status.container_statuses[0].container_id == "containerd://" + cid(1)
    assert p.metadata.owner_references[0].kind == "ReplicaSet"
    rs = kclient.AppsV1Api(api).list_replica_set_for_all_namespaces()
    assert rs.items[0].metadata.owner_references[0].name == "web"
    assert core.list_node().items[0].metadata.name == "node-a"
    w = kwatch.Watch()
    events = []
    for ev in w.stream(core.list_pod_for_all_namespaces, resource_version=pods.metadata.resource_version,
                       allow_watch_bookmarks=True, timeout_seconds=5):
        events.append(ev)
        if ev["type"] == "BOOKMARK":
            kube.apply("pods", make_pod("web-2", containers=[("app", "nginx:1.25", cid(2))]))
        if ev["type"] == "ADDED":
            w.stop()
    added = [e for e in events if e["type"] == "ADDED"]
    assert isinstance(added[0]["object"], kclient.V1Pod) and added[0]["object"].metadata.name == "web-2"


def test_bad_token_and_bad_selector_are_refused(kube: KubeAPIServer, tmp_path) -> None:
    api = api_client("kubeConfig", kube.kubeconfig(str(tmp_path / "kc"), token="wrong"))
    with pytest.raises(kclient.ApiException) as e:
        kclient.CoreV1Api(api).list_pod_for_all_namespaces()
    assert e.value.status == 401
    api = api_client("kubeConfig", kube.kubeconfig(str(tmp_path / "kc2")))
    with pytest.raises(kclient.ApiException) as e:
        kclient.CoreV1Api(api).list_pod_for_all_namespaces(field_selector="spec.nodeNam=x")
    assert e.value.status == 400 and "field label not supported" in e.value.body


def test_added_changed_deleted_and_only_this_node(kube: KubeAPIServer, store_for) -> None:
    for i in range(5):
        kube.apply("pods", make_pod(f"a{i}", node="node-a", ip=f"10.0.0.{i}", containers=[("app", "img:1", cid(i))]))
        kube.apply("pods", make_pod(f"b{i}", node="node-b", ip=f"10.0.1.{i}", containers=[("app", "img:1", cid(100 + i))]))
    s = store_for(node="node-a", page_size=2)  # 3 pages
    assert names(s) == ["a0", "a1", "a2", "a3", "a4"]
    assert set(s.by_container) == {cid(i) for i in range(5)}
    assert all("spec.nodeName=node-a" in q.get("fieldSelector", "") for path, q in kube.requests if path == "/api/v1/pods")

    # added
    kube.apply("pods", make_pod("a5", node="node-a", containers=[("app", "img:1", cid(5))]))
    kube.apply("pods", make_pod("b5", node="node-b", containers=[("app", "img:1", cid(105))]))
    wait_until(lambda: "a5" in names(s), what="a5 added")
    # changed: a container restarts with a new id, the pod gets an IP
    kube.apply("pods", make_pod("a0", node="node-a", uid=s.by_name[("default", "a0")].uid, ip="10.0.0.100",
                                containers=[("app", "img:2", cid(50))]))
    wait_until(lambda: cid(50) in s.by_container, what="a0 changed")
    assert cid(0) not in s.by_container
    assert s.by_ip["10.0.0.100"].name == "a0" and "10.0.0.0" not in s.by_ip
    assert s.by_container[cid(50)][1].image_tag == "2"
    # deleted
    kube.delete("pods", "a1", "default")
    wait_until(lambda: "a1" not in names(s), what="a1 deleted")
    # a pod scheduled onto this node later enters the node's watch as ADDED
    pending = make_pod("late", node="", containers=[("app", "img:1", "")])
    stored = kube.apply("pods", pending)
    time.sleep(0.3)
    assert "late" not in names(s)
    kube.apply("pods", make_pod("late", node="node-a", uid=stored["metadata"]["uid"], containers=[("app", "img:1", cid(77))]))
    wait_until(lambda: cid(77) in s.by_container, what="late scheduled")
    assert names(s) == ["a0", "a2", "a3", "a4", "a5", "late"]
    assert not any(p.node != "node-a" for p in s.pods.values())


def test_deleted_pod_resolves_during_grace_then_goes(kube: KubeAPIServer, store_for) -> None:
    kube.apply("pods", make_pod("gone", node="node-a", ip="10.0.0.9", containers=[("app", "img:1", cid(9))]))
    s = store_for(grace=1.0)
    kube.delete("pods", "gone", "default")
    wait_until(lambda: "gone" not in names(s), what="deleted")
    assert s.by_container[cid(9)][0].name == "gone"  # late data still resolves
    wait_until(lambda: cid(9) not in s.by_container and not s.pods and not s.by_ip and not s.by_name,
               timeout=10, what="purged after grace")


def test_relist_after_410_loses_nothing(kube: KubeAPIServer, store_for) -> None:
    for i in range(6):
        kube.apply("pods", make_pod(f"p{i}", node="node-a", containers=[("app", "img:1", cid(i))]))
    s = store_for(page_size=4)
    inf = s.informers["pods"]
    wait_until(lambda: inf.stats.bookmarks >= 1, what="a bookmark")
    # the connection drops and the watch cannot come back for a while; meanwhile pods come and go and the
    # server compacts its history, so the resumed watch gets 410 Gone and only a relist can catch up
    kube.hold_watches()
    kube.drop_watches()
    kube.delete("pods", "p0", "default")
    kube.apply("pods", make_pod("p1", node="node-a", uid=s.by_name[("default", "p1")].uid,
                                containers=[("app", "img:9", cid(11))]))
    for i in range(6, 9):
        kube.apply("pods", make_pod(f"p{i}", node="node-a", containers=[("app", "img:1", cid(i))]))
    kube.compact()
    time.sleep(0.3)
    assert names(s) == ["p0", "p1", "p2", "p3", "p4", "p5"]  # nothing arrived through the watch
    kube.release_watches()
    wait_until(lambda: inf.stats.relists.get("expired", 0) >= 1, what="a relist after 410")
    wait_until(lambda: names(s) == ["p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"], what="state after relist")
    assert s.by_container[cid(11)][0].name == "p1" and cid(1) not in s.by_container
    assert s.pods[next(p.uid for p in s.pods.values() if p.name == "p0")].deleted_at  # kept for the grace period
    # and the watch resumed: later changes still arrive
    kube.apply("pods", make_pod("p9", node="node-a", containers=[("app", "img:1", cid(99))]))
    wait_until(lambda: "p9" in names(s), what="p9 after relist")


def test_dropped_connection_resumes_from_resource_version(kube: KubeAPIServer, store_for) -> None:
    kube.apply("pods", make_pod("x", node="node-a", containers=[("app", "img:1", cid(1))]))
    s = store_for()
    inf = s.informers["pods"]
    wait_until(lambda: kube.watch_count() >= 1, what="watching")
    for k in range(3):
        kube.drop_watches()
        kube.apply("pods", make_pod(f"y{k}", node="node-a", containers=[("app", "img:1", cid(10 + k))]))
    wait_until(lambda: names(s) == ["x", "y0", "y1", "y2"], what="events across dropped connections")
    assert inf.stats.lists == 1  # resumed from the last resourceVersion, no relist needed
    assert inf.stats.relists == {}


def test_expired_continue_token_restarts_the_list(kube: KubeAPIServer, kubeconfig: str) -> None:
    for i in range(6):
        kube.apply("pods", make_pod(f"p{i}", node="node-a", containers=[("app", "img:1", cid(i))]))
    api = api_client("kubeConfig", kubeconfig)
    core = kclient.CoreV1Api(api)
    first = core.list_pod_for_all_namespaces(limit=2)
    assert first.metadata._continue
    kube.expire_continue_tokens()
    with pytest.raises(kclient.ApiException) as e:
        core.list_pod_for_all_namespaces(limit=2, _continue=first.metadata._continue)
    assert e.value.status == 410


def test_replicasets_nodes_and_memory_stays_flat(kube: KubeAPIServer, store_for) -> None:
    kube.apply("replicasets", make_replicaset("web-6d4cf56db6", "web"))
    kube.apply("nodes", make_node("node-a", labels={"zone": "z1"}))
    kube.apply("nodes", make_node("node-b"))
    from gotel.k8s.model import KeyFilter

    s = store_for(grace=0.3, needs=Needs(replicasets=True, nodes=True, node_labels=KeyFilter(keys=["zone"])))
    assert s.replicasets[("default", "web-6d4cf56db6")].owner_name == "web"
    assert list(s.nodes) == ["node-a"] and s.nodes["node-a"].labels == {"zone": "z1"}
    # pods come and go: every index returns to empty
    for round_ in range(3):
        for i in range(50):
            kube.apply("pods", make_pod(f"r{round_}-{i}", node="node-a", ip=f"10.2.{round_}.{i}",
                                        containers=[("app", "img:1", cid(1000 * round_ + i))]))
        wait_until(lambda: len(s.by_container) == 50, what="50 pods")
        for i in range(50):
            kube.delete("pods", f"r{round_}-{i}", "default")
        wait_until(lambda: not s.pods and not s.by_container and not s.by_ip and not s.by_name,
                   timeout=15, what="all purged")
    assert len(s._deleted) == 0


def test_reused_pod_ip_goes_to_the_newer_pod(kube: KubeAPIServer, store_for) -> None:
    kube.apply("pods", make_pod("old", ip="10.9.0.1", start_time="2026-11-22T09:00:00Z", containers=[("a", "a:1", cid(1))]))
    s = store_for(grace=1.0)
    assert s.by_ip["10.9.0.1"].name == "old"
    kube.delete("pods", "old", "default")
    kube.apply("pods", make_pod("new", ip="10.9.0.1", start_time="2026-11-22T11:00:00Z", containers=[("a", "a:1", cid(2))]))
    wait_until(lambda: s.by_ip.get("10.9.0.1") is not None and s.by_ip["10.9.0.1"].name == "new", what="new owns the IP")
    # a late update of an older pod with that IP does not take it back
    kube.apply("pods", make_pod("older", ip="10.9.0.1", start_time="2026-11-22T08:00:00Z", containers=[("a", "a:1", cid(3))]))
    wait_until(lambda: cid(3) in s.by_container, what="older seen")
    assert s.by_ip["10.9.0.1"].name == "new"
    # purging the deleted pod after its grace period leaves the new owner in place
    wait_until(lambda: "old" not in {p.name for p in s.pods.values()}, what="old purged")
    assert s.by_ip["10.9.0.1"].name == "new"


def test_no_tight_relist_loop_when_the_server_refuses_its_own_version(kube: KubeAPIServer, store_for) -> None:
    kube.apply("pods", make_pod("x", containers=[("a", "a:1", cid(1))]))
    s = store_for()
    inf = s.informers["pods"]
    kube.refuse_current_version()
    kube.end_watches()
    time.sleep(3)
    relists = inf.stats.relists.get("expired", 0)
    assert 1 <= relists <= 8, relists  # backing off (0.1 s doubling), not hundreds of relists
    assert "410 Gone for the resourceVersion" in inf.last_error
    assert names(s) == ["x"]  # what was listed stays usable
