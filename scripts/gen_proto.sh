#!/usr/bin/env bash
# Regenerates the committed protobuf modules in gotel/proto from their .proto files.
# Needs grpcio-tools (pip install grpcio-tools); run after editing a .proto file.
set -euo pipefail
cd "$(dirname "$0")/../gotel/proto"
PY=${PYTHON:-../../.venv/bin/python}
"$PY" -m grpc_tools.protoc -I. --python_out=. --pyi_out=. pprof_profile.proto pyroscope_push.proto
echo "gen_proto: regenerated $(ls ./*_pb2.py | tr '\n' ' ')"
