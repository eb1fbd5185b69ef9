"""KV memory of the engine: the page pool (device arrays + allocator) and the radix prefix cache."""
