"""Tandem's OpenAI-compatible HTTP facade.

Owns the OpenAI contract only: request/response models, validation, request ids, SSE framing,
the error envelope, and routing requests to model cores over gRPC (`tandem.v1.Inference`).
It never imports JAX, torch or transformers, never tokenizes and never holds a model.
Entry points: `facade.app.create_app()` and `facade.main.run()`.
"""
