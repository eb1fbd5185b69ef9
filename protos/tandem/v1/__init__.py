"""Generated Tandem contract code, version 1 (see inference.proto)."""
