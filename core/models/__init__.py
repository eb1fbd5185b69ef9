"""Model families the core can run (Flax NNX) and their checkpoint loaders."""
