"""Generated protobuf stubs of the config schema (``model_config.proto``)."""
