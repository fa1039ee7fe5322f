from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.kube_api import KubeAPIServer


@pytest.fixture
def kube() -> Iterator[KubeAPIServer]:
    with KubeAPIServer(bookmark_interval=0.5) as srv:
        yield srv


@pytest.fixture
def kubeconfig(kube: KubeAPIServer, tmp_path) -> str:
    return kube.kubeconfig(str(tmp_path / "kubeconfig"))
