#!/usr/bin/env bash
# Generate Python stubs for adgate from proto/ (needs: pip install grpcio-tools).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
out="$here/gen"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$root/proto" \
    --python_out="$out" --grpc_python_out="$out" \
    "$root/proto/adgate/v1/gateway.proto"
echo "stubs written to $out/adgate/v1"
