#!/usr/bin/env bash
# Regenerate the Python stubs of the API from clients/smoothserve_client/api/v1/smoothserve.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
# grpcio-tools 1.72 emits gencode for protobuf 6.30, which tritonclient (protobuf<7) can load.
python -m grpc_tools.protoc -Iclients --python_out=clients --pyi_out=clients --grpc_python_out=clients \
  clients/smoothserve_client/api/v1/smoothserve.proto
# The schema of config.pbtxt (the fields of Triton's ModelConfig that SmoothServe reads), in the
# statistics package the verifier shares, and the Predict outline the server reads.
python -m grpc_tools.protoc -Iclients --python_out=clients --pyi_out=clients \
  clients/smoothcert/schema/model_config.proto
python -m grpc_tools.protoc -Iserver --python_out=server --pyi_out=server \
  server/smoothserve/schema/request_envelope.proto
