"""The gRPC transport: protobuf in, data-plane calls, protobuf out, errors as statuses."""
