"""TLS handshakes seen by bpf/go_ctxtls.c: the record's layout, the failure reason's closed set, and the
`gotel.tls.handshake.duration` histogram.

The BPF side returns the handshake function's error as itab addresses (the outer error and, for one
level of wrapping, the wrapped one), the first bytes of the final error value and an *errors.errorString's
message. The reason is named here from the dynamic type (itab symbols of the binary) first, the message
second: both change across Go versions (CertificateVerificationError wraps the x509 error from Go 1.20;
Go 1.19 returns it bare, and its server says "failed to verify client certificate: ..." as text).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gotel.receivers.go_ebpf.events import DURATION_BOUNDS, Hist, _ip

K_TLS = 1
MSG_LEN = 128
DETAIL_LEN = 32
# struct tls_ev in bpf/go_ctxtls.c
RECORD = struct.Struct(f"<IIQQQQQBBHHH16sB7x{DETAIL_LEN}s{MSG_LEN}s")

REASONS = ("unknown_authority", "expired", "hostname_mismatch", "bad_certificate", "protocol_version",
           "timeout", "eof", "other")

# TLS alerts (RFC 8446 6.2) received from the peer. Any certificate alert means the peer rejected this
# side's certificate: bad_certificate (the peer's own reason, unknown_ca or expired, is the peer's
# error.type); this side's own verification failures carry the specific reason instead.
_ALERTS = {42: "bad_certificate", 43: "bad_certificate", 44: "bad_certificate", 45: "bad_certificate",
           46: "bad_certificate", 48: "bad_certificate", 116: "bad_certificate", 70: "protocol_version",
           71: "protocol_version"}
X509_EXPIRED = 1  # crypto/x509.Expired (InvalidReason)

# wrapping errors whose wrapped error the BPF side follows (the field named, from DWARF)
# (the Error method, the struct, its field holding the wrapped error); at most 6 (N_WRAP)
WRAPPERS = (("crypto/tls.(*CertificateVerificationError).Error", "crypto/tls.CertificateVerificationError", "Err"),
            ("crypto/tls.(*permanentError).Error", "crypto/tls.permanentError", "err"),
            ("net.(*OpError).Error", "net.OpError", "Err"),
            ("fmt.(*wrapError).Error", "fmt.wrapError", "err"),
            ("net/url.(*Error).Error", "net/url.Error", "Err"))


def error_type_name(method: str) -> str:
    """`net.(*OpError).Error` -> `*net.OpError`; `crypto/tls.alert.Error` -> `crypto/tls.alert`."""
    base = method.removesuffix(".Error")
    m = re.fullmatch(r"(.*)\.\(\*([^()]*)\)", base)
    return f"*{m.group(1)}.{m.group(2)}" if m else base

VERSIONS = {0x0301: "1.0", 0x0302: "1.1", 0x0303: "1.2", 0x0304: "1.3"}
# the cipher suites crypto/tls implements (IANA names, as tls.CipherSuiteName gives them)
CIPHERS = {
    0x0005: "TLS_RSA_WITH_RC4_128_SHA", 0x000A: "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA", 0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x003C: "TLS_RSA_WITH_AES_128_CBC_SHA256", 0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256",
    0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384", 0xC007: "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    0xC009: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", 0xC00A: "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    0xC011: "TLS_ECDHE_RSA_WITH_RC4_128_SHA", 0xC012: "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0xC023: "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", 0xC027: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384", 0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}


@dataclass(frozen=True)
class ErrorTypes:
    """Per binary: an error's dynamic type from its Error method's address (`name_of`), and the offset of
    x509.CertificateInvalidError.Reason."""

    name_of: Callable[[int], str] = field(default=lambda _addr: "")
    reason_offset: int | None = None


@dataclass(slots=True)
class Handshake:
    pid: int
    start_ns: int  # CLOCK_MONOTONIC
    end_ns: int
    goroutine: int
    side: str
    error_type: str | None  # None: success
    version: str | None
    cipher: str | None
    peer: str | None
    peer_port: int
    error_go_type: str  # the final error's Go type, for the log and the span event


def classify(outer: str, final: str, detail: bytes, msg: str, reason_offset: int | None) -> str:
    """The closed-set reason of a failed handshake from its error's Go types, value and message."""
    t = (final or outer).lstrip("*")  # value or pointer receiver: the same error
    if t.endswith("x509.UnknownAuthorityError"):
        return "unknown_authority"
    if t.endswith("x509.HostnameError"):
        return "hostname_mismatch"
    if t.endswith("x509.CertificateInvalidError"):
        if reason_offset is not None and reason_offset + 8 <= len(detail):
            reason = int.from_bytes(detail[reason_offset:reason_offset + 8], "little", signed=True)
            return "expired" if reason == X509_EXPIRED else "bad_certificate"
        return "bad_certificate"
    if t == "crypto/tls.alert":  # a byte; in an interface, a pointer to runtime.staticuint64s
        return _ALERTS.get(detail[0], "other")
    if t in ("internal/poll.DeadlineExceededError", "context.deadlineExceededError", "net.timeoutError"):
        return "timeout"
    m = msg.lower()
    if m in ("eof", "unexpected eof"):
        return "eof"
    for needle, why in _MESSAGES:
        if needle in m:
            return why
    return "other"


# errors that are plain text (*errors.errorString, as Go 1.19's server wraps its verification failure)
_MESSAGES = (("unknown authority", "unknown_authority"), ("expired", "expired"), ("not valid for", "hostname_mismatch"),
             ("unsupported versions", "protocol_version"), ("protocol version", "protocol_version"),
             ("didn't provide a certificate", "bad_certificate"), ("bad certificate", "bad_certificate"),
             ("i/o timeout", "timeout"))


def decode(rec: bytes, types: ErrorTypes) -> Handshake | None:
    if len(rec) < RECORD.size:
        return None
    (kind, pid, start, end, g, outer_fn, final_fn, side, _unwrapped, vers, cipher, rport, rip, riplen,
     detail, msg_b) = RECORD.unpack_from(rec)
    if kind != K_TLS:
        return None
    err_type: str | None = None
    go_type = ""
    if outer_fn:
        outer = types.name_of(outer_fn)
        final = types.name_of(final_fn) if final_fn != outer_fn else outer
        msg = msg_b.split(b"\0", 1)[0].decode("utf-8", "replace")
        err_type = classify(outer, final, detail, msg, types.reason_offset)
        go_type = final or outer or f"Error method {final_fn:#x}"
    return Handshake(pid, start, end, g, "client" if side == 1 else "server", err_type,
                     None if err_type else VERSIONS.get(vers, f"{vers:#06x}" if vers else None),
                     None if err_type or not cipher else CIPHERS.get(cipher, f"0x{cipher:04X}"),
                     _ip(rip, riplen), rport, go_type)


class TlsMetrics:
    """`gotel.tls.handshake.duration` per process, cumulative."""

    def __init__(self) -> None:
        self.hists: dict[int, dict[tuple[tuple[str, Any], ...], Hist]] = {}

    def add(self, h: Handshake) -> None:
        labels: dict[str, Any] = {"gotel.tls.side": h.side}
        if h.peer:
            labels["network.peer.address"] = h.peer
            if h.side == "client":
                labels["server.port"] = h.peer_port
        if h.error_type:
            labels["error.type"] = h.error_type
        else:
            if h.version:
                labels["tls.protocol.version"] = h.version
            if h.cipher:
                labels["tls.cipher"] = h.cipher
        key = tuple(sorted(labels.items()))
        per = self.hists.setdefault(h.pid, {})
        hist = per.get(key)
        if hist is None:
            hist = per[key] = Hist(DURATION_BOUNDS, [0] * (len(DURATION_BOUNDS) + 1))
        hist.add(max(0, h.end_ns - h.start_ns) / 1e9, 0, b"", b"")
        hist.exemplar = None

    def remove_process(self, pid: int) -> None:
        self.hists.pop(pid, None)
