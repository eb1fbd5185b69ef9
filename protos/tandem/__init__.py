"""Tandem protobuf packages generated from protos/ (see scripts/gen_protos.py)."""
