"""GetTokenizer: the files a gateway needs to tokenize and render prompts as the core does.

Owns: which files of a model directory make up its tokenizer (the Hugging Face tokenizer files,
their configs and the chat template, as `AutoTokenizer` reads them), and streaming them in
chunks of at most CHUNK_BYTES, each chunk carrying its file's SHA-256 and size so that a client
can check what it reassembled. Weights and the model config are never sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from tandem.v1 import inference_pb2 as pb

CHUNK_BYTES = 1 << 20  # the most one GetTokenizerResponse carries
# What AutoTokenizer (fast and slow tokenizers, chat templates) reads from a model directory.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "chat_template.jinja", "chat_template.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
    "generation_config.json",
)


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The tokenizer files present in `model_dir`, sorted by name."""
    return sorted(path for name in TOKENIZER_FILES
                  if (path := Path(model_dir) / name).is_file())  # fmt: skip


def tokenizer_chunks(model_dir: Path) -> Iterator[pb.GetTokenizerResponse]:
    """Every tokenizer file of `model_dir`, chunk by chunk (each file read whole once, to hash
    it before its first chunk goes out; tokenizer files are a few MiB at most)."""
    for path in tokenizer_files(model_dir):
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        offsets = range(0, len(data), CHUNK_BYTES) if data else range(1)
        for offset in offsets:
            chunk = data[offset:offset + CHUNK_BYTES]
            yield pb.GetTokenizerResponse(
                file_name=path.name, sha256=digest, size_bytes=len(data), offset_bytes=offset,
                data=chunk, last_chunk=offset + CHUNK_BYTES >= len(data))
