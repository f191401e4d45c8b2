"""Schemas of files SmoothServe reads (generated from the .proto files beside them)."""
