"""What the net receiver reads from tracepoint formats and /proc, on recorded text."""

from __future__ import annotations

from gotel.receivers import net

# tcp_send_reset's print format on Linux 6.18 (shortened): a state table before the reason table
SEND_RESET = (
    'print fmt: "skbaddr=%p state=%s reason=%s", REC->skbaddr, REC->state ? __print_symbolic(REC->state, '
    '{ TCP_ESTABLISHED, "TCP_ESTABLISHED" }, { TCP_CLOSE, "TCP_CLOSE" }) : "UNKNOWN", '
    '__print_symbolic(REC->reason, { 0, "NOT_SPECIFIED" }, { 1, "NO_SOCKET" }, { 14, "TCP_STATE" }, '
    '{ 15, "TCP_KEEPALIVE_TIMEOUT" }, { 25, "MAX" })\n'
)


def test_reset_reasons_from_the_format() -> None:
    assert net.reset_reasons(SEND_RESET) == {0: "NOT_SPECIFIED", 1: "NO_SOCKET", 14: "TCP_STATE",
                                             15: "TCP_KEEPALIVE_TIMEOUT", 25: "MAX"}
    assert net.reset_reasons('print fmt: "state=%s", REC->state') == {}  # a kernel before 6.10


def test_connect_error_names() -> None:
    assert net.errno_name(111) == "ECONNREFUSED"
    assert net.errno_name(110) == "ETIMEDOUT"
    assert net.errno_name(113) == "EHOSTUNREACH"
    assert net.errno_name(net.CLOSED_WHILE_CONNECTING) == "closed"
    assert net.errno_name(4000) == "E4000"


def test_log2_slot_matches_the_kernel() -> None:
    # bpf_log2l(v) is the index of the highest set bit: slot k holds [2^k, 2^(k+1)) ns
    assert [net._log2(v) for v in (1, 2, 3, 4, 1023, 1024)] == [0, 1, 1, 2, 9, 10]
