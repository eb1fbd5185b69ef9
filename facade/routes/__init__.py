"""Thin HTTP endpoints: each one validates, checks limits, calls the core over gRPC (chat and
completions through facade/pipeline/) and shapes the answer. Only facade/app.py imports them."""
