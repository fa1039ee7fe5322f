"""OTLP wire facts shared by the otlp receiver and the otlp / otlp_http exporters.

gRPC method names, HTTP paths, response messages and their partial-success fields per signal, the
OTLP/JSON mapping (hex trace and span ids, integer enums), google.rpc.Status / RetryInfo handling,
endpoint parsing (``unix://`` sockets) and the HTTP ``Retry-After`` header.
"""

from __future__ import annotations

import binascii
import json
import os
import socket
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from gotel.pdata import otlpjson
from gotel.pdata.batch import Batch, Signal, batch_type

if TYPE_CHECKING:
    from gotel.component.contract import Context


@dataclass(frozen=True)
class SignalWire:
    service: str  # fully qualified gRPC service name
    http_path: str  # default OTLP/HTTP path
    response: type[Message]
    rejected_field: str  # partial_success.rejected_<items>

    @property
    def grpc_method(self) -> str:
        return f"/{self.service}/Export"


WIRE: dict[Signal, SignalWire] = {
    Signal.TRACES: SignalWire(
        "opentelemetry.proto.collector.trace.v1.TraceService", "/v1/traces", ExportTraceServiceResponse, "rejected_spans"
    ),
    Signal.METRICS: SignalWire(
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
    Signal.LOGS: SignalWire(
        "opentelemetry.proto.collector.logs.v1.LogsService", "/v1/logs", ExportLogsServiceResponse, "rejected_log_records"
    ),
    Signal.PROFILES: SignalWire(
        "opentelemetry.proto.collector.profiles.v1development.ProfilesService",
        "/v1development/profiles",
        ExportProfilesServiceResponse,
        "rejected_profiles",
    ),
}

CONTENT_PROTOBUF = "application/x-protobuf"
CONTENT_JSON = "application/json"


def partial_success(signal: Signal, response: Message) -> tuple[int, str] | None:
    """(rejected items, message) when the server reported a partial success, else None."""
    if not response.HasField("partial_success"):
        return None
    ps = getattr(response, "partial_success")  # noqa: B009 - typed as Message
    rejected = int(getattr(ps, WIRE[signal].rejected_field))
    if rejected == 0 and not ps.error_message:
        return None
    return rejected, str(ps.error_message)


def report_partial_success(signal: Signal, response: Message, batch: Batch, ctx: Context) -> None:
    """What both OTLP exporters do with a partial success: count the rejected items as dropped (the spec
    forbids retrying them) and say once what the backend objected to."""
    ps = partial_success(signal, response)
    if ps is None:
        return
    rejected, message = ps
    if rejected:
        ctx.telemetry.dropped(signal, rejected, "partial_success")
    ctx.logger.warning(
        "%s: backend accepted the request partially: %d of %d %s rejected: %s",
        ctx.id, rejected, batch.item_count(), signal, message or "(no message)",
    )


# --- OTLP/JSON (gotel.pdata.otlpjson does the mapping; this adds the receiver's error messages) ----------


def message_to_json(msg: Message) -> bytes:
    return otlpjson.to_json(msg).encode()


def json_to_message(data: bytes, msg: Message) -> Message:
    """Parses OTLP/JSON into msg; unknown fields are ignored as the spec requires. Raises ValueError."""
    try:
        d = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError("invalid OTLP/JSON: the top level must be an object")
    try:
        otlpjson.from_dict(d, msg)
    except (json_format.ParseError, binascii.Error, ValueError, TypeError) as e:
        raise ValueError(f"invalid OTLP/JSON: {e}") from None
    return msg


def decode_request(signal: Signal, body: bytes, json_body: bool) -> Any:
    """Wire body -> Batch. Raises ValueError (or DecodeError) on malformed input."""
    cls = batch_type(signal)
    if json_body:
        return cls(json_to_message(body, cls.request_type()))
    return cls.parse(body)


# --- google.rpc.Status ------------------------------------------------------------------------------

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def rpc_status(code: int, message: str, retry_after: float | None = None) -> status_pb2.Status:
    st = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        ri = error_details_pb2.RetryInfo()
        ri.retry_delay.FromNanoseconds(int(retry_after * 1e9))
        st.details.add().Pack(ri)
    return st


def retry_info_delay(status_bin: bytes | None) -> float | None:
    """The RetryInfo delay (seconds) inside a serialized google.rpc.Status, if it carries one."""
    if not status_bin:
        return None
    st = status_pb2.Status()
    try:
        st.ParseFromString(status_bin)
    except Exception:
        return None
    for d in st.details:
        if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            ri = error_details_pb2.RetryInfo()
            d.Unpack(ri)
            return max(0.0, int(ri.retry_delay.ToNanoseconds()) / 1e9)
    return None


def status_message(body: bytes, content_type: str) -> str:
    """The message of a google.rpc.Status error body (protobuf or JSON), else a short text excerpt."""
    if not body:
        return ""
    st = status_pb2.Status()
    try:
        if content_type.startswith(CONTENT_JSON):
            json_format.Parse(body, st, ignore_unknown_fields=True)
        elif content_type.startswith(CONTENT_PROTOBUF) or content_type.startswith("application/protobuf"):
            st.ParseFromString(body)
        else:
            raise ValueError
        if st.message:
            return str(st.message)
    except Exception:
        pass
    return body[:200].decode("utf-8", "replace").strip()


GRPC_CODE = code_pb2  # google.rpc.Code numbers equal gRPC status codes


# --- endpoints --------------------------------------------------------------------------------------


def unix_path(endpoint: str) -> str | None:
    """'unix:///run/x.sock' or 'unix:/run/x.sock' -> '/run/x.sock'; None for other endpoints."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    if endpoint.startswith("unix:"):
        return endpoint[len("unix:") :]
    return None


def prepare_unix_socket(path: str) -> None:
    """Creates the socket's directory (0700) and removes a stale socket left by a previous run.

    A socket somebody still listens on is not stolen: that is an error, as a busy TCP port is.
    """
    d = os.path.dirname(path) or "."
    if not os.path.isdir(d):
        os.makedirs(d, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # stale: nobody listens
            return
        except OSError:
            pass
    raise OSError(f"{path} is in use by another process")


def secure_unix_socket(path: str) -> None:
    os.chmod(path, 0o600)
