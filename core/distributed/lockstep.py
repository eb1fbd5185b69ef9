"""JAX's multi-controller pattern for the engine: every process runs the same executables, with
the same global shapes, in the same order.

Owns the one seam where that is kept: the runner's three entry points that run device work —
`warmup()`, `dispatch(SchedulerOutput)` and `sample(step, bitmask, constrained)`. Process 0
wraps its `ModelRunner` in a `LeadingRunner`, which sends each call's host inputs (the
scheduler's output: token ids, positions, page ids, sampling parameters, row-state rebuilds;
the grammar bitmask) down the step channel before making it; every other process runs
`follow()`, which builds the same runner from the leader's resolved configuration and makes the
same calls with those inputs. The runner turns inputs into padded arrays deterministically, so
both sides dispatch identical executables; the collectives inside them (XLA's all-reduces over
the mesh) then pair up. Followers discard their copy of the sampled tokens (they are replicated:
the same on every process).

A call that fails on the leader fails the same way on a follower (same inputs, same code): the
follower logs it and goes on, as the leader's engine does. A follower ends when the leader says
stop (its engine stopped) or the channel closes (the leader is gone).
"""

from __future__ import annotations

import logging
from pathlib import Path

from core.distributed.group import Group
from core.model_config import ConfigError, ModelConfig

log = logging.getLogger(__name__)


class LeadingRunner:
    """Process 0's runner: each device-running call is first sent to the followers. Everything
    else (counters, page counts, the graph) is the wrapped runner's."""

    # the followers would need the previous step's device tokens: async scheduling stays off
    supports_async_scheduling = False

    def __init__(self, runner, group: Group):
        self._runner = runner
        self._group = group

    def __getattr__(self, name: str):
        return getattr(self._runner, name)

    def warmup(self) -> None:
        self._group.send(("warmup",))
        self._runner.warmup()

    def dispatch(self, output):
        self._group.send(("dispatch", output))
        return self._runner.dispatch(output)

    def sample(self, step, bitmask=None, constrained: frozenset[int] = frozenset()):
        self._group.send(("sample", bitmask, constrained))
        return self._runner.sample(step, bitmask, constrained)

    def execute(self, output):
        return self.sample(self.dispatch(output))

    def close(self) -> None:
        """Tell the followers to stop (the engine has stopped)."""
        try:
            self._group.send(("stop",))
        except OSError:  # a follower already gone: nothing to tell it
            pass
        self._group.close()


def check_mesh(engine_config) -> None:
    """A multi-host core splits its model over every device of every process."""
    import jax

    if engine_config.tensor_parallel != jax.device_count():
        raise ConfigError(f"--distributed: --tensor-parallel must be the group's device count "
                          f"({jax.device_count()}), not {engine_config.tensor_parallel}")


def lead(runner_factory, model_config: ModelConfig, engine_config, group: Group):
    """Leader: send the resolved configuration (the followers resolve nothing themselves: a
    memory-sized KV pool or an "auto" dtype must be equal everywhere), build the runner."""
    check_mesh(engine_config)
    group.send(("config", model_config, engine_config))
    return LeadingRunner(runner_factory(), group)


def follow(group: Group, model_dir: Path) -> None:
    """Follower: build the leader's runner over `model_dir` (the same checkpoint on every host)
    and replay its calls until told to stop or the leader is gone."""
    from core.engine.runner import ModelRunner  # JAX is imported here
    from core.models.loader import load_model

    kind, model_config, engine_config = group.receive()
    assert kind == "config", kind
    check_mesh(engine_config)
    model, _ = load_model(model_dir, engine_config.dtype, model_config,
                          engine_config.quantization, engine_config.quantize_lm_head)
    runner = ModelRunner(model, model_config, engine_config)
    log.info("following process 0: %s over %d devices", model_config.architecture,
             engine_config.tensor_parallel)
    pending = None  # the dispatched step the next "sample" samples
    steps = 0
    while True:
        try:
            message = group.receive()
        except (EOFError, OSError):
            log.warning("the leader's step channel closed after %d steps: stopping", steps)
            return
        kind = message[0]
        if kind == "stop":
            log.info("the leader stopped after %d steps: stopping", steps)
            return
        try:
            if kind == "warmup":
                runner.warmup()
            elif kind == "dispatch":
                pending = runner.dispatch(message[1])
                steps += 1
            elif kind == "sample":
                step, pending = pending, None
                runner.sample(step, *message[1:])
            else:
                raise ValueError(f"unknown step message {kind!r}")
        except Exception:  # the leader's call failed the same way: its engine goes on, so do we
            log.exception("a %s call failed (as on the leader)", kind)
