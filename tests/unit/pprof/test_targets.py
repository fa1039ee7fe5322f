from __future__ import annotations

import os
import socket

from gotel.config.types import parse_duration
from gotel.discovery.procfs import _decode_ip, listening_sockets
from gotel.receiverhelper.targets import Target


def test_proc_net_addresses() -> None:
    assert _decode_ip("0100007F", False) == "127.0.0.1"
    assert _decode_ip("00000000000000000000000001000000", True) == "::1"
    assert _decode_ip("0000000000000000FFFF00000100007F", True) == "::ffff:127.0.0.1"


def test_own_listening_socket_found() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        port = s.getsockname()[1]
        assert any(ln.port == port and ln.ip == "127.0.0.1" for ln in listening_sockets(os.getpid()))
    finally:
        s.close()


def test_target_identity_and_resource() -> None:
    t = Target(url="http://127.0.0.1:6060", attributes={"service.name": "a"}, pid=42)
    assert t.key == "http://127.0.0.1:6060"
    assert Target(url="http://127.0.0.1:6060", netns="/proc/42/ns/net").key != t.key
    r = t.resource()
    assert r == {"service.name": "a", "service.instance.id": "127.0.0.1:6060/42", "process.pid": 42}


def test_durations() -> None:
    assert parse_duration("1m30s") == 90 and parse_duration("250ms") == 0.25 and parse_duration(15) == 15
    import pytest

    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration("15 seconds")
