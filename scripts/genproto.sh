#!/usr/bin/env bash
# Regenerates gotel/proto/*_pb2.py from the .proto files next to them (needs grpcio-tools in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY -m grpc_tools.protoc -I gotel/proto -I "$($PY -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
  --python_out=gotel/proto --pyi_out=gotel/proto gotel/proto/remote_write.proto gotel/proto/logproto.proto
