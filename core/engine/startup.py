"""Building a generation engine: resolve its configuration, load the weights, build the runner
(leading a multi-host group's followers when `--distributed` joined one), compile every bucket,
start the step loop.

Owns `create_engine` (tests and tools: resolve, then start) and `start_engine` (the servicer's
path, with configs it resolved once). The step loop itself is `core/engine/loop.py`'s
`LlmEngine`.
"""

from __future__ import annotations

from pathlib import Path

from core.config import EngineConfig, resolve_model
from core.engine.loop import LlmEngine
from core.model_config import ModelConfig
from core.tokenizer import Tokenizer


def create_engine(model_dir: Path, requested: EngineConfig, warmup: bool = True) -> LlmEngine:
    """Resolve the configuration (`resolve_model`), then `start_engine` (tests and tools; the
    servicer resolves once itself and keeps the tokenizer it makes)."""
    model_config, engine_config = resolve_model(model_dir, requested)
    return start_engine(model_dir, model_config, engine_config, Tokenizer(model_dir), warmup)


def start_engine(model_dir: Path, model_config: ModelConfig, engine_config: EngineConfig,
                 tokenizer: Tokenizer, warmup: bool = True) -> LlmEngine:
    """Load the weights, compile every bucket, start the step loop (configs resolved)."""
    from core.distributed import group as distributed
    from core.engine.runner import ModelRunner  # JAX is imported here, not at module import
    from core.models.loader import load_model

    def make_runner() -> ModelRunner:
        model, _ = load_model(model_dir, engine_config.dtype, model_config,
                              engine_config.quantization, engine_config.quantize_lm_head)
        return ModelRunner(model, model_config, engine_config)

    if (group := distributed.current()) is not None:  # multi-host: process 0 leads the steps
        from core.distributed.lockstep import lead

        runner = lead(make_runner, model_config, engine_config, group)
    else:
        runner = make_runner()
    if warmup:
        runner.warmup()
    engine = LlmEngine(runner, model_config, engine_config, tokenizer)
    engine.start()
    return engine
