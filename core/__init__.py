"""Tandem model core: JAX model, engine and gRPC server. Importing this package loads no JAX."""
