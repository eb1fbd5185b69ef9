"""The engines: the step loop of generation (`loop`: schedule → dispatch → grammar mask →
sample → update), its scheduler, runner, sampler and logits stages, the request dataclasses,
the detokenizer, the embedding engine, sharding, metrics and the store of compiled executables.
Internal dataclasses only: nothing here imports the contract (`tandem.v1`) or the service."""
