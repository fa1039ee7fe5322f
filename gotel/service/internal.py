"""The pipeline process's internal OTLP entry point: where receiver processes deliver their data.

The core owns it. It is built from the core's own OTLP receiver, imported directly, never looked up
by name in the plugin registry: a third-party package registering a receiver named `otlp` must not
replace the socket every receiver process writes to.
"""

from __future__ import annotations

from collections.abc import Mapping

from gotel.component.contract import ComponentID, Consumer, Context, Receiver
from gotel.pdata.batch import Signal
from gotel.receivers import otlp

INTERNAL_RECEIVER = ComponentID("otlp", "_internal")
# As large as the otlp exporter's default send limit: a receiver process's big requests (profiles
# with their dictionaries) must not be refused on the local hop.
MAX_RECV_MIB = 64


def internal_receiver(socket_path: str, sinks: Mapping[Signal, Consumer], ctx: Context) -> Receiver:
    """An OTLP/gRPC server on a unix socket, handing each signal to its sink (a router)."""
    grpc = otlp.GRPCServer(endpoint=f"unix://{socket_path}", max_recv_msg_size_mib=MAX_RECV_MIB)
    return otlp.OTLPReceiver(otlp.Config(protocols=otlp.Protocols(grpc=grpc)), sinks, ctx, internal=True)
