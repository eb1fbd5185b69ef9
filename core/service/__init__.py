"""The core's gRPC edge, its only door to the contract: the servicer and its start-up and drain,
turning `tandem.v1` requests into the engine's internal dataclasses (`convert`), the models
served (`served_models`), the request handling of Score and Embed (`score`, `embed`), and the
mapping of engine outputs and parsed tool calls back to `tandem.v1` messages. Nothing outside
this package imports `tandem.v1`."""
