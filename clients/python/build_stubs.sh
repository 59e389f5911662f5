#!/bin/sh
# Generates the package's gRPC modules (latchkey/v1/*_pb2.py and
# *_pb2_grpc.py) from protos/latchkey/v1 with protoc and
# grpc_python_plugin (Debian: protobuf-compiler, protobuf-compiler-grpc),
# for `pip install clients/python`. They are build output, never committed
# (.gitignore); Bazel builds the same files with //clients/python:stubs.
# The protoc that generates them must be no newer than the protobuf runtime
# that imports them (Debian 12: both 3.21).
#
#   clients/python/build_stubs.sh [OUT_DIR]   # default: clients/python
set -eu

here="$(cd "$(dirname "$0")" && pwd)"
protos="${LATCHKEY_PROTOS:-${here}/../../protos}"
out="${1:-${here}}"
plugin="${GRPC_PYTHON_PLUGIN:-$(command -v grpc_python_plugin || true)}"

if ! command -v protoc >/dev/null 2>&1 || [ -z "${plugin}" ]; then
  echo "build_stubs.sh: needs protoc and grpc_python_plugin" \
    "(apt-get install protobuf-compiler protobuf-compiler-grpc)" >&2
  exit 1
fi
if [ ! -f "${protos}/latchkey/v1/toolcalls.proto" ]; then
  echo "build_stubs.sh: no ${protos}/latchkey/v1/toolcalls.proto" \
    "(set LATCHKEY_PROTOS to the repository's protos/ directory)" >&2
  exit 1
fi

mkdir -p "${out}/latchkey/v1"
protoc --proto_path="${protos}" \
  --python_out="${out}" --grpc_python_out="${out}" \
  --plugin=protoc-gen-grpc_python="${plugin}" \
  "${protos}/latchkey/v1/types.proto" "${protos}/latchkey/v1/toolcalls.proto"
printf '"""Generated from protos/latchkey/v1 by protoc; do not edit."""\n' \
  > "${out}/latchkey/v1/__init__.py"
echo "build_stubs.sh: wrote ${out}/latchkey/v1"
