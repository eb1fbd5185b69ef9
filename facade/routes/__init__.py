"""Thin HTTP endpoints: each one validates, calls the core over gRPC and shapes the answer."""
