"""What a binary loses is said only of what it has: no gRPC loss for a net/http-only program."""

from __future__ import annotations

from gotel.receivers.go_ebpf.layout import traced_losses

MISSING = ["rpc.response.status_code (client)", "rpc.method", "http.route (Go >= 1.23)", "url.path"]


def test_http_only_binary_loses_no_grpc_attribute() -> None:
    ids = ["runtime.newproc1", "http.server.serve", "http.client.roundtrip"]
    assert traced_losses(MISSING, ids) == ["http.route (Go >= 1.23)", "url.path"]


def test_grpc_only_binary_loses_no_http_attribute() -> None:
    ids = ["runtime.newproc1", "grpc.server.handle_stream", "grpc.client.new_stream"]
    assert traced_losses(MISSING, ids) == ["rpc.response.status_code (client)", "rpc.method"]


def test_both() -> None:
    assert traced_losses(MISSING, ["grpc.client.finish", "http.server.serve"]) == MISSING
