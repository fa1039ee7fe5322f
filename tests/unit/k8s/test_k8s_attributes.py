"""k8s_attributes end to end in-process: the official client against the API test server, real batches."""

from __future__ import annotations

import pydantic
import pytest

from gotel.component.contract import REQUEST_METADATA
from gotel.component.registry import Registry
from gotel.pdata.batch import Signal
from gotel.processors.k8s_attributes import Config, K8sAttributesProcessor, factory
from tests.helpers.kube_api import KubeAPIServer, make_namespace, make_node, make_pod, make_replicaset
from tests.helpers.waiting import wait_until
from tests.unit.k8s.conftest import Collect, make_ctx, resource_attrs, traces_with


def cid(n: int) -> str:
    return f"{n:064x}"


WEB_UID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def cluster(kube: KubeAPIServer) -> KubeAPIServer:
    kube.apply("namespaces", make_namespace("shop", labels={"team": "payments"}))
    kube.apply("nodes", make_node("node-a", labels={"topology.kubernetes.io/zone": "eu-1a"}))
    kube.apply("replicasets", make_replicaset("web-6d4cf56db6", "web", namespace="shop"))
    kube.apply("pods", make_pod(
        "web-6d4cf56db6-x7k2p", namespace="shop", uid=WEB_UID, ip="10.1.0.5",
        containers=[("app", "registry.example:5000/shop/web:1.4.2", cid(1)), ("istio-proxy", "istio/proxyv2:1.20", cid(2))],
        owner=("ReplicaSet", "web-6d4cf56db6"),
        labels={"app.kubernetes.io/name": "web", "app.kubernetes.io/version": "1.4.2", "pod-template-hash": "6d4cf56db6"},
        annotations={"owner": "team-a", "kubectl.kubernetes.io/last-applied-configuration": "{...big...}"}))
    kube.apply("pods", make_pod("db-0", namespace="shop", ip="10.1.0.6", containers=[("pg", "postgres:16", cid(3))],
                                owner=("StatefulSet", "db")))
    kube.apply("pods", make_pod("agent-abcde", namespace="kube-system", ip="10.1.0.7",
                                containers=[("agent", "gotel@sha256:" + "e" * 64, cid(4))], owner=("DaemonSet", "agent")))
    kube.apply("pods", make_pod("backup-28934520-zz9kq", namespace="shop", ip="10.1.0.8",
                                containers=[("backup", "backup", cid(5))], owner=("Job", "backup-28934520")))
    kube.apply("pods", make_pod("jaeger-agent-1", namespace="shop", ip="10.1.0.9", containers=[("j", "jaeger", cid(6))]))
    kube.apply("pods", make_pod("quiet", namespace="shop", ip="10.1.0.10", containers=[("q", "q", cid(7))],
                                annotations={"opentelemetry.io/k8s-processor/ignore": "true"}))
    kube.apply("pods", make_pod("elsewhere", namespace="shop", node="node-b", ip="10.1.9.9",
                                containers=[("e", "e", cid(9))]))
    kube.apply("pods", make_pod("hostnet", namespace="kube-system", ip="192.168.1.10", host_network=True,
                                containers=[("h", "h", cid(10))]))
    return kube


async def make_proc(kubeconfig: str, **cfg) -> tuple[K8sAttributesProcessor, Collect]:
    base = {"auth_type": "kubeConfig", "kube_config_path": kubeconfig, "filter": {"node": "node-a"},
            "wait_for_metadata": True, "wait_for_metadata_timeout": "15s"}
    base.update(cfg)
    sink = Collect()
    p = factory.create(Signal.TRACES, Config.model_validate(base), sink, make_ctx())
    await p.start()
    return p, sink


async def run(p, *resources: dict) -> list[dict]:
    sink = p.next
    await p.consume(traces_with(*resources))
    return resource_attrs(sink.batches[-1])


async def test_default_attributes_by_container_id(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig)
    try:
        [web, proxy, db, ds, job] = await run(
            p, {"container.id": cid(1), "service.name": "web"}, {"container.id": cid(2)}, {"container.id": cid(3)},
            {"container.id": cid(4)}, {"container.id": cid(5)})
        assert web == {
            "container.id": cid(1), "service.name": "web",
            "k8s.namespace.name": "shop", "k8s.pod.name": "web-6d4cf56db6-x7k2p", "k8s.pod.uid": WEB_UID,
            "k8s.pod.start_time": "2026-11-22T10:00:01Z", "k8s.node.name": "node-a",
            "k8s.deployment.name": "web", "k8s.replicaset.name": "web-6d4cf56db6",
            "k8s.container.name": "app", "container.image.name": "registry.example:5000/shop/web",
            "container.image.tag": "1.4.2",
        }
        assert proxy["k8s.container.name"] == "istio-proxy" and proxy["container.image.tag"] == "1.20"
        assert db["k8s.statefulset.name"] == "db" and "k8s.deployment.name" not in db
        assert ds["k8s.daemonset.name"] == "agent" and ds["container.image.name"] == "gotel" and "container.image.tag" not in ds
        assert job["k8s.job.name"] == "backup-28934520" and job["k8s.cronjob.name"] == "backup"
    finally:
        await p.shutdown()


async def test_rules_in_order_and_existing_attributes_kept(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig)
    try:
        [by_uid, by_ip, existing, unknown, nothing, other_node, hostnet] = await run(
            p,
            {"k8s.pod.uid": WEB_UID},
            {"k8s.pod.ip": "10.1.0.6"},
            {"k8s.pod.ip": "10.1.0.5", "k8s.namespace.name": "custom", "k8s.deployment.name": "mine"},
            {"container.id": cid(99), "k8s.pod.uid": WEB_UID},  # first present rule decides: no match
            {"service.name": "plain"},
            {"k8s.pod.ip": "10.1.9.9"},
            {"k8s.pod.ip": "192.168.1.10"},
        )
        assert by_uid["k8s.pod.name"] == "web-6d4cf56db6-x7k2p" and "k8s.container.name" not in by_uid
        assert by_ip["k8s.pod.name"] == "db-0"
        assert existing["k8s.namespace.name"] == "custom" and existing["k8s.deployment.name"] == "mine"
        assert existing["k8s.pod.name"] == "web-6d4cf56db6-x7k2p"
        assert unknown == {"container.id": cid(99), "k8s.pod.uid": WEB_UID}
        assert nothing == {"service.name": "plain"}
        assert other_node == {"k8s.pod.ip": "10.1.9.9"}  # only this node's pods are watched
        assert hostnet == {"k8s.pod.ip": "192.168.1.10"}  # host-network pods are never matched by IP
    finally:
        await p.shutdown()


async def test_connection_address_and_passthrough(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig, pod_association=[{"sources": [{"from": "connection"}]}])
    tok = REQUEST_METADATA.set({"gotel-peer": "ipv4:10.1.0.6:51234", "x-forwarded-for": "10.1.0.5"})
    try:
        [r] = await run(p, {"service.name": "db"})
        assert r["k8s.pod.name"] == "db-0"
    finally:
        REQUEST_METADATA.reset(tok)
        await p.shutdown()
    p2, _ = await make_proc(kubeconfig, passthrough=True)
    tok = REQUEST_METADATA.set({"gotel-peer": "ipv6:[fd00::5]:4317"})
    try:
        [r] = await run(p2, {"service.name": "x"})
        assert r == {"service.name": "x", "k8s.pod.ip": "fd00::5"}
    finally:
        REQUEST_METADATA.reset(tok)
        await p2.shutdown()


async def test_labels_annotations_namespace_node_and_exclusions(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig, extract={
        "metadata": ["k8s.pod.name", "k8s.deployment.name", "k8s.node.uid"],
        "labels": [
            {"tag_name": "app.name", "key": "app.kubernetes.io/name"},
            {"tag_name": "k8s.app.$1", "key_regex": "app\\.kubernetes\\.io/(.*)"},
            {"key": "team", "from": "namespace"},
            {"tag_name": "zone", "key": "topology.kubernetes.io/zone", "from": "node"},
        ],
        "annotations": [{"tag_name": "owner.short", "key": "owner", "regex": "team-(?P<value>.*)"}],
    })
    try:
        [web, jaeger, quiet] = await run(p, {"container.id": cid(1)}, {"container.id": cid(6)}, {"container.id": cid(7)})
        assert web["app.name"] == "web"
        assert web["k8s.app.name"] == "web" and web["k8s.app.version"] == "1.4.2"
        assert web["k8s.namespace.labels.team"] == "payments"
        assert web["zone"] == "eu-1a"
        assert web["owner.short"] == "a"
        assert web["k8s.node.uid"] and web["k8s.deployment.name"] == "web"
        assert not any("last-applied" in k for k in web)
        assert jaeger == {"container.id": cid(6)}  # excluded by the default jaeger-agent rule
        assert quiet == {"container.id": cid(7)}  # opentelemetry.io/k8s-processor/ignore
        # only the label and annotation keys asked for are kept in memory
        pod = p.store.pods[WEB_UID]
        assert pod.annotations == {"owner": "team-a"}
        assert set(pod.labels) == {"app.kubernetes.io/name", "app.kubernetes.io/version"}
    finally:
        await p.shutdown()


async def test_deployment_name_follows_the_replicaset_owner(cluster: KubeAPIServer, kubeconfig: str) -> None:
    cluster.apply("replicasets", make_replicaset("web-6d4cf56db6", "storefront", namespace="shop"))
    p, _ = await make_proc(kubeconfig)
    try:
        wait_until(lambda: p.store.replicasets[("shop", "web-6d4cf56db6")].owner_name == "storefront")
        [r] = await run(p, {"container.id": cid(1)})
        assert r["k8s.deployment.name"] == "storefront"  # not the name pattern
        cluster.apply("replicasets", make_replicaset("web-6d4cf56db6", "renamed", namespace="shop"))
        wait_until(lambda: p.store.replicasets[("shop", "web-6d4cf56db6")].owner_name == "renamed")
        [r] = await run(p, {"container.id": cid(1)})
        assert r["k8s.deployment.name"] == "renamed"  # cached attributes follow the change
    finally:
        await p.shutdown()


async def test_pod_changes_reach_enrichment(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig)
    try:
        [r] = await run(p, {"container.id": cid(3)})
        assert r["container.image.tag"] == "16"
        cluster.apply("pods", make_pod("db-0", namespace="shop", uid=p.store.by_name[("shop", "db-0")].uid,
                                       ip="10.1.0.6", containers=[("pg", "postgres:17", cid(33))], owner=("StatefulSet", "db")))
        wait_until(lambda: cid(33) in p.store.by_container)
        [old, new] = await run(p, {"container.id": cid(3)}, {"container.id": cid(33)})
        assert old == {"container.id": cid(3)}
        assert new["container.image.tag"] == "17"
    finally:
        await p.shutdown()


async def test_shared_store_across_pipelines(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p1, _ = await make_proc(kubeconfig)
    p2, _ = await make_proc(kubeconfig, extract={"labels": [{"key": "app.kubernetes.io/name"}]})
    try:
        assert p1.store is p2.store
        assert cluster.watch_count() >= 1
        [r] = await run(p2, {"container.id": cid(1)})
        assert r["k8s.pod.labels.app.kubernetes.io/name"] == "web"  # relisted with the new need
    finally:
        await p1.shutdown()
        await p2.shutdown()
    assert p1.store is None


async def test_wait_for_metadata_times_out_with_the_reason(kube: KubeAPIServer, tmp_path) -> None:
    kc = kube.kubeconfig(str(tmp_path / "kc"), token="expired-token")
    with pytest.raises(RuntimeError, match=r"not synced within 1s .*401"):
        _p, _ = await make_proc(kc, wait_for_metadata_timeout="1s")


async def test_without_waiting_data_passes_until_synced(tmp_path) -> None:
    # nothing listens on this port: data flows through untouched, counted as not_synced
    kc = KubeAPIServer().kubeconfig(str(tmp_path / "kc"))
    p, _sink = await make_proc(kc, wait_for_metadata=False)
    try:
        [r] = await run(p, {"container.id": cid(1)})
        assert r == {"container.id": cid(1)}
        reg = p.ctx.telemetry.t.registry
        assert reg.get_sample_value("gotel_k8s_attributes_resources_total",
                                    {"component": "k8s_attributes", "kind": "processor", "result": "not_synced"}) == 1
    finally:
        await p.shutdown()


def test_config_errors_are_clear() -> None:
    with pytest.raises(pydantic.ValidationError, match="exactly one of key and key_regex"):
        Config.model_validate({"extract": {"labels": [{"key": "a", "key_regex": "b"}]}})
    with pytest.raises(pydantic.ValidationError, match=r"named group \(\?P<value>"):
        Config.model_validate({"extract": {"annotations": [{"key": "a", "regex": "x(.*)"}]}})
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Config.model_validate({"filter": {"node_from_env": "X"}})
    with pytest.raises(pydantic.ValidationError, match="at most 4"):
        Config.model_validate({"pod_association": [{"sources": [{"from": "connection"}] * 5}]})
    with pytest.raises(pydantic.ValidationError, match="apply only to auth_type: kubeConfig"):
        Config.model_validate({"kube_config_path": "/x"})


def test_node_from_env_and_alias(monkeypatch) -> None:
    monkeypatch.setenv("MY_NODE", "node-7")
    cfg = Config.model_validate({"filter": {"node_from_env_var": "MY_NODE",
                                            "labels": [{"key": "a", "op": "exists"}, {"key": "b", "value": "1", "op": "not-equals"}],
                                            "fields": [{"key": "status.phase", "value": "Running"}]}})
    assert cfg.filter.resolved_node() == "node-7"
    assert cfg.filter.label_selector() == "a,b!=1"
    assert cfg.filter.field_selector() == "status.phase=Running"
    reg = Registry()
    reg.add(factory)
    from gotel.component.contract import Kind

    assert reg.get(Kind.PROCESSOR, "k8sattributes") is factory


async def test_self_metrics_count_relists_and_pods(cluster: KubeAPIServer, kubeconfig: str) -> None:
    p, _ = await make_proc(kubeconfig)
    reg = p.ctx.telemetry.t.registry
    labels = {"component": "k8s_attributes", "kind": "processor"}
    try:
        assert reg.get_sample_value("gotel_k8s_metadata_pods", labels) == 7  # node-a's pods (elsewhere runs on node-b)
        assert reg.get_sample_value("gotel_k8s_metadata_synced", labels) == 1
        # the watch is cut and cannot come back before a change and a compaction: it resumes into 410 Gone
        cluster.hold_watches()
        cluster.drop_watches()
        cluster.apply("pods", make_pod("new-1", namespace="shop", containers=[("c", "c:1", cid(42))]))
        cluster.compact()
        cluster.release_watches()
        wait_until(lambda: reg.get_sample_value("gotel_k8s_metadata_pods", labels) == 8)
        wait_until(lambda: reg.get_sample_value("gotel_k8s_metadata_relists_total",
                                                {**labels, "resource": "pods", "reason": "expired"}) == 1)
    finally:
        await p.shutdown()


async def test_auth_problems_fail_start_with_a_clear_reason(monkeypatch, tmp_path) -> None:
    from gotel.k8s.client import KubeConfigError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    p = factory.create(Signal.TRACES, Config.model_validate({"auth_type": "serviceAccount"}), Collect(), make_ctx())
    with pytest.raises(KubeConfigError, match="serviceAccount: not running in a pod"):
        await p.start()
    await p.shutdown()
    p = factory.create(Signal.TRACES, Config.model_validate(
        {"auth_type": "kubeConfig", "kube_config_path": str(tmp_path / "missing")}), Collect(), make_ctx())
    with pytest.raises(KubeConfigError, match="missing"):
        await p.start()
    p = factory.create(Signal.TRACES, Config.model_validate({"auth_type": "none"}), Collect(), make_ctx())
    with pytest.raises(KubeConfigError, match="KUBERNETES_SERVICE_HOST is not set"):
        await p.start()


@pytest.mark.parametrize("signal", [Signal.METRICS, Signal.LOGS, Signal.PROFILES])
async def test_every_signal_is_enriched(cluster: KubeAPIServer, kubeconfig: str, signal: Signal) -> None:
    from gotel.pdata.batch import attr_dict, attrs, batch_type

    sink = Collect()
    p = factory.create(signal, Config.model_validate({
        "auth_type": "kubeConfig", "kube_config_path": kubeconfig, "filter": {"node": "node-a"},
        "wait_for_metadata": True}), sink, make_ctx())
    await p.start()
    try:
        b = batch_type(signal)()
        b.resources().add().resource.attributes.extend(attrs({"container.id": cid(3)}))
        await p.consume(b)
        [res] = sink.batches[0].peek_resources()
        assert attr_dict(res.resource.attributes)["k8s.statefulset.name"] == "db"
    finally:
        await p.shutdown()
