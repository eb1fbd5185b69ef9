"""The warm-up's executable store: a second start loads what the first compiled (no tracing),
gets the same results, keys on everything the executable depends on, and survives a bad file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from core import executables


@pytest.fixture
def store(tmp_path):
    executables.configure(tmp_path / "executables")
    yield tmp_path / "executables"
    executables.configure(None)


def _jobs(traces: list, static: str = "scale 3"):
    def scaled(weights, x):
        traces.append(x.shape)  # runs only while tracing
        return {"out": x @ weights * 3.0, "doubled": x * 2}, x.sum()  # x's buffer reused

    function = jax.jit(scaled, donate_argnums=(1,))
    weights = jnp.arange(12.0).reshape(4, 3)
    return [executables.CompileJob(f"scaled {rows}", function,
                                   (weights, jax.ShapeDtypeStruct((rows, 4), jnp.float32)), static)
            for rows in (2, 8)]


def test_a_restart_loads_the_executables_without_tracing_and_gets_the_same_results(store):
    traces, loaded = [], []
    first = executables.compile_all(_jobs(traces))
    assert sorted(traces) == [(2, 4), (8, 4)] and len(list(store.glob("*.exe"))) == 2
    traces.clear()
    second = executables.compile_all(
        _jobs(traces), on_done=lambda index, job, seconds, was_loaded: loaded.append(was_loaded))
    assert traces == [] and loaded == [True, True]  # nothing traced: loaded from the store
    weights = jnp.arange(12.0).reshape(4, 3)
    for a, b in zip(first, second, strict=True):
        rows = a.args_info[0][1].shape[0]  # ((args), kwargs)
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        donated = jnp.asarray(x)
        (out_a, sum_a), (out_b, sum_b) = a(weights, jnp.asarray(x)), b(weights, donated)
        np.testing.assert_array_equal(out_a["out"], out_b["out"])
        assert float(sum_a) == float(sum_b) and donated.is_deleted()  # donation kept


def test_what_the_function_depends_on_keys_the_store(store):
    traces = []
    executables.compile_all(_jobs(traces, static="scale 3"))
    traces.clear()
    executables.compile_all(_jobs(traces, static="scale 4"))  # another config: compiled anew
    assert sorted(traces) == [(2, 4), (8, 4)] and len(list(store.glob("*.exe"))) == 4


def test_a_file_that_cannot_be_loaded_is_compiled_again(store):
    traces = []
    executables.compile_all(_jobs(traces))
    for path in store.glob("*.exe"):
        path.write_bytes(b"not an executable")
    traces.clear()
    compiled = executables.compile_all(_jobs(traces))
    assert sorted(traces) == [(2, 4), (8, 4)]
    out, _ = compiled[0](jnp.arange(12.0).reshape(4, 3), jnp.ones((2, 4)))
    np.testing.assert_allclose(out["out"], np.ones((2, 4)) @ np.arange(12.0).reshape(4, 3) * 3)
    executables.compile_all(_jobs(traces))  # the rewritten files load
    assert len(traces) == 2


def test_without_a_store_nothing_is_written(tmp_path):
    executables.configure(None)
    traces = []
    executables.compile_all(_jobs(traces), workers=1)
    assert sorted(traces) == [(2, 4), (8, 4)] and not list(tmp_path.rglob("*.exe"))
