"""The models one core serves: loading them, what each can do, and finding the one asked for.

Owns: `ServedModel` (a name, its tokenizer and prompt policy, and the engines doing its work:
the generation engine for Generate and Score, an embedding engine for Embed or, over a
cross-encoder, for Rerank), loading a generative model (optionally embedding too, its hidden
states pooled), an embedding model (a BERT-family encoder from a Hugging Face /
sentence-transformers directory) and a reranking model (a BERT cross-encoder), and `ModelInfo`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.config import EngineConfig, resolve_model
from core.engine.embedding import EmbeddingBuckets, EmbeddingEngine
from core.engine.loop import LlmEngine
from core.model_config import ConfigError, ModelConfig
from core.service.convert import PromptPolicy
from core.tokenizer import Tokenizer
from tandem.v1 import inference_pb2 as pb

if TYPE_CHECKING:
    from core.models.pooling import PoolingConfig

log = logging.getLogger(__name__)

CAPABILITY_NAMES = {pb.CAPABILITY_GENERATE: "generate", pb.CAPABILITY_SCORE: "score",
                    pb.CAPABILITY_EMBED: "embed", pb.CAPABILITY_RERANK: "rerank"}
DECODER_POOLING = ("last", "mean")
# Encoder calls of 64 rows run their dense layers on the real tokens only, padded up to one of
# these fractions of the grid (see core/engine/embedding.py): ~1.4× on sentences of mixed lengths.
PACKED_FRACTIONS = (0.375, 0.5, 0.625, 0.75)


@dataclass
class ServedModel:
    """One model this core serves."""

    name: str  # the id requests use
    tokenizer: Tokenizer
    policy: PromptPolicy  # what prompts it accepts (vocabulary, context length)
    info: pb.ModelInfo  # its static description; counters are filled in when asked
    generator: LlmEngine | None = None  # Generate and Score
    embedder: EmbeddingEngine | None = None  # Embed
    reranker: EmbeddingEngine | None = None  # Rerank: a cross-encoder's pair scores [n, 1]

    @property
    def capabilities(self) -> list[int]:
        result = [pb.CAPABILITY_GENERATE, pb.CAPABILITY_SCORE] if self.generator else []
        return result + ([pb.CAPABILITY_EMBED] if self.embedder else []) + (
            [pb.CAPABILITY_RERANK] if self.reranker else [])

    @property
    def engines(self) -> list:
        """Every engine of this model (the first is the one GetLoad reports)."""
        return [engine for engine in (self.generator, self.embedder, self.reranker)
                if engine is not None]

    def model_info(self) -> pb.ModelInfo:
        info = pb.ModelInfo()
        info.CopyFrom(self.info)
        info.capabilities[:] = self.capabilities
        info.compilations_after_warmup = sum(
            engine.compilations_after_warmup for engine in self.engines)
        return info

    def stop_admitting(self) -> None:
        for engine in self.engines:
            engine.stop_admitting()

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()


def load_generative(model_dir: Path, name: str, requested: EngineConfig, description: str,
                    decoder_pooling: str | None = None,
                    allow_request_chat_template: bool = False,
                    tool_call_parser: str = "auto", hf_config: dict | None = None,
                    reasoning_parser: str = "auto",
                    json_open_objects: bool = False) -> ServedModel:
    """A decoder: its configuration resolved once (`resolve_model`; `hf_config` is its
    config.json when already read), one tokenizer for the engine and every RPC, the generation
    engine (compiled, started) and, with `decoder_pooling`, an embedding engine over its hidden
    states."""
    from core.engine.startup import start_engine
    from core.service.reasoning import PARSER_NAMES as REASONING_PARSERS
    from core.service.tools import PARSER_NAMES

    if tool_call_parser not in ("auto", *PARSER_NAMES):
        raise ConfigError(f"unknown tool-call parser {tool_call_parser!r}; expected auto or "
                          f"one of {', '.join(PARSER_NAMES)}")
    if reasoning_parser not in ("auto", "none", *REASONING_PARSERS):
        raise ConfigError(f"unknown reasoning parser {reasoning_parser!r}; expected auto, none "
                          f"or one of {', '.join(REASONING_PARSERS)}")
    if decoder_pooling is not None and decoder_pooling not in DECODER_POOLING:
        raise ConfigError(f"decoder pooling must be one of {DECODER_POOLING}")
    config, engine_config = resolve_model(model_dir, requested, hf_config=hf_config)
    tokenizer = Tokenizer(model_dir)
    engine = start_engine(model_dir, config, engine_config, tokenizer)
    policy = PromptPolicy(vocab_size=config.vocab_size, max_model_len=engine_config.max_model_len,
                          max_token_chars=tokenizer.max_token_chars,
                          allow_request_chat_template=allow_request_chat_template,
                          tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser,
                          json_open_objects=json_open_objects)
    info = pb.ModelInfo(
        id=name, owned_by="tandem", created=int(time.time()), architecture=config.architecture,
        dtype=engine_config.dtype, max_model_len=engine_config.max_model_len,
        vocab_size=config.vocab_size, is_demo=config.is_demo,
        description=description if config.is_demo else "")
    embedder = None
    if decoder_pooling is not None:
        embedder = _decoder_embedder(engine, config, engine_config, decoder_pooling)
        info.embedding_dimensions = config.hidden_size
    return ServedModel(name, tokenizer, policy, info, generator=engine, embedder=embedder)


def _decoder_embedder(engine: LlmEngine, config: ModelConfig, engine_config: EngineConfig,
                      pooling: str) -> EmbeddingEngine:
    """An embedding engine over the generation engine's own parameters (no second copy)."""
    from core.models.llama import pooled_hidden_states

    runner = engine.runner

    def forward(model, token_ids, attention_mask):
        return pooled_hidden_states(model, token_ids, attention_mask, pooling)

    buckets = EmbeddingBuckets(max_batch_tokens=4096).for_max_len(engine_config.max_model_len)
    static = repr(("decoder pooling", pooling, config, engine_config.dtype))
    return _started_embedder(forward, runner.graphdef, runner.param_treedef,
                             runner.param_leaves, config.hidden_size, buckets, static)


def _started_embedder(forward, graphdef, treedef, leaves: list, dimensions: int,
                      buckets: EmbeddingBuckets, static: str, pad_token_id: int = 0,
                      uses_token_types: bool = False) -> EmbeddingEngine:
    """An EmbeddingEngine over `forward(model, token_ids, attention_mask[, packed])`, with the
    model rebuilt from its flat parameter leaves inside the jit; compiled and started."""
    import jax
    from flax import nnx

    def forward_leaves(param_leaves, *arrays):
        return forward(nnx.merge(graphdef, jax.tree.unflatten(treedef, param_leaves)), *arrays)

    embedder = EmbeddingEngine(forward_leaves, leaves, dimensions, buckets, static,
                               pad_token_id=pad_token_id, uses_token_types=uses_token_types)
    started = time.perf_counter()
    embedder.warmup()
    embedder.start()
    log.info("embedding engine ready in %.1f s (%d shapes)", time.perf_counter() - started,
             len(buckets.shapes()))
    return embedder


def load_embedding(model_dir: Path, name: str, max_batch_rows: int = 64) -> ServedModel:
    """A BERT-family encoder with its sentence-transformers pooling (compiled, started)."""
    import jax
    from flax import nnx

    from core.models.bert import encode, load_bert

    model, config, pooling, max_seq_len_tokens = load_bert(Path(model_dir))
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    def forward(encoder, token_ids, attention_mask, num_packed_tokens=None):
        return encode(encoder, token_ids, attention_mask, pooling, num_packed_tokens)

    tokenizer = Tokenizer(Path(model_dir))
    buckets = EmbeddingBuckets(packed_fractions=PACKED_FRACTIONS).with_max_rows(
        max_batch_rows).for_max_len(max_seq_len_tokens)
    embedder = _started_embedder(forward, graphdef, treedef, leaves, config.hidden_size, buckets,
                                 repr(("bert", config, pooling)), pad_token_id=config.pad_token_id)
    policy = PromptPolicy(vocab_size=config.vocab_size, max_model_len=max_seq_len_tokens,
                          max_token_chars=tokenizer.max_token_chars)
    info = pb.ModelInfo(
        id=name, owned_by="tandem", created=int(time.time()),
        architecture=config.architecture, dtype="float32", max_model_len=max_seq_len_tokens,
        vocab_size=config.vocab_size, embedding_dimensions=config.hidden_size,
        description=embedding_description(Path(model_dir), config.num_layers,
                                          config.hidden_size, pooling))
    return ServedModel(name, tokenizer, policy, info, embedder=embedder)


def embedding_description(model_dir: Path, num_layers: int, dimensions: int,
                          pooling: PoolingConfig) -> str:
    """What /v1/models says of an embedding model: where it comes from and what it gives."""
    from core.models.bundled import BUNDLED_EMBEDDING_SOURCE, is_bundled_embedding_model

    source = (BUNDLED_EMBEDDING_SOURCE if is_bundled_embedding_model(model_dir)
              else f"read from {model_dir.name}")
    normalized = ", normalized" if pooling.normalize else ""
    return (f"Sentence-embedding model ({source}): a {num_layers}-layer BERT encoder, "
            f"{dimensions}-dimensional {pooling.mode}-pooled vectors{normalized}. Serves "
            "embeddings only.")


def load_reranker(model_dir: Path, name: str, max_batch_rows: int = 64) -> ServedModel:
    """A cross-encoder (BERT's or XLM-RoBERTa's `…ForSequenceClassification`, one label) for
    Rerank: an embedding engine whose forward scores token-typed pairs (compiled, started)."""
    import jax
    from flax import nnx

    from core.models.cross_encoder import load_cross_encoder, score_pairs

    model, config = load_cross_encoder(Path(model_dir))
    if config.num_labels != 1:
        raise ConfigError(f"{model_dir}: a reranker has one label (one relevance score per "
                          f"pair); this cross-encoder has {config.num_labels}")
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    def forward(encoder, token_ids, attention_mask, token_type_ids, num_packed_tokens=None):
        return score_pairs(encoder, token_ids, attention_mask, token_type_ids,
                           config.activation, num_packed_tokens)

    tokenizer = Tokenizer(Path(model_dir))
    max_len = config.max_seq_len_tokens
    buckets = EmbeddingBuckets(packed_fractions=PACKED_FRACTIONS).with_max_rows(
        max_batch_rows).for_max_len(max_len)
    reranker = _started_embedder(forward, graphdef, treedef, leaves, config.num_labels, buckets,
                                 repr(("cross-encoder", config)),
                                 pad_token_id=config.encoder.pad_token_id, uses_token_types=True)
    policy = PromptPolicy(vocab_size=config.encoder.vocab_size, max_model_len=max_len,
                          max_token_chars=tokenizer.max_token_chars)
    info = pb.ModelInfo(
        id=name, owned_by="tandem", created=int(time.time()),
        architecture=config.encoder.architecture, dtype="float32", max_model_len=max_len,
        vocab_size=config.encoder.vocab_size,
        description=(f"Reranking model (read from {Path(model_dir).name}): a "
                     f"{config.encoder.num_layers}-layer {config.encoder.architecture} "
                     f"scoring (query, document) pairs of up to {max_len} tokens, "
                     f"{config.activation} of its logit. Serves rerank and cross-encoder "
                     "score only."))
    return ServedModel(name, tokenizer, policy, info, reranker=reranker)
