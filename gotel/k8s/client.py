"""An ApiClient of the official ``kubernetes`` package for the collector's ``auth_type`` values."""

from __future__ import annotations

import os
from typing import Literal

from kubernetes import client as kclient
from kubernetes import config as kconfig

AuthType = Literal["serviceAccount", "kubeConfig", "none"]

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(Exception):
    """The API server cannot be reached with this auth_type (not in a cluster, no kubeconfig...)."""


def api_client(auth_type: AuthType, kube_config_path: str | None = None, context: str | None = None) -> kclient.ApiClient:
    """serviceAccount: the pod's token and CA; kubeConfig: a kubeconfig file (KUBECONFIG, ~/.kube/config);
    none: the in-cluster address without credentials (an authenticating proxy in front, or tests)."""
    cfg = kclient.Configuration()
    try:
        if auth_type == "serviceAccount":
            kconfig.load_incluster_config(client_configuration=cfg)
        elif auth_type == "kubeConfig":
            kconfig.load_kube_config(config_file=kube_config_path, context=context, client_configuration=cfg)
        elif auth_type == "none":
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise KubeConfigError("auth_type none: KUBERNETES_SERVICE_HOST is not set")
            if ":" in host:
                host = f"[{host}]"
            cfg.host = f"https://{host}:{port}"
            ca = os.path.join(SA_DIR, "ca.crt")
            if os.path.exists(ca):
                cfg.ssl_ca_cert = ca
        else:  # pragma: no cover - pydantic refuses other values first
            raise KubeConfigError(f"unknown auth_type {auth_type!r}")
    except kconfig.ConfigException as e:
        where = {
            "serviceAccount": "not running in a pod (KUBERNETES_SERVICE_HOST unset or no service-account token)",
            "kubeConfig": f"kubeconfig {kube_config_path or os.environ.get('KUBECONFIG') or '~/.kube/config'}",
        }.get(auth_type, auth_type)
        raise KubeConfigError(f"auth_type {auth_type}: {where}: {e}") from e
    return kclient.ApiClient(cfg)


def endpoint_of(api: kclient.ApiClient) -> str:
    return str(api.configuration.host)
