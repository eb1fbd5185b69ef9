// The avx512 build of the paged decode-attention kernel: the same source, compiled with that
// ISA level's flags (pyproject.toml), as its own object file.
#include "paged_decode_attention.cc"
