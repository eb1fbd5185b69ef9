"""Tensor parallelism on 4 virtual CPU devices gives the tokens and logprobs of one device, and
so does a multi-host core: 2 `tandem core` processes of 2 CPU devices each (gloo collectives)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import (
    check_running,
    core_env,
    free_port,
    retry_on_taken_port,
    stop_process,
    xla_test_env,
)
from tests.core.engine.tp_check import ENGINE_LIMITS, MAX_TOKENS, PROMPTS, TOP_LOGPROBS

# parameters split 4 ways, per layer of the 2: q, o, gate, up, down, and Qwen2's q bias; Qwen3's
# [head_dim] q/k norm scales stay whole (as every RMSNorm scale). The MoE families: q, o and the
# 3 expert stacks (split over their 8 experts; the routers stay whole), and Mixtral's untied
# output projection (its 512-token vocabulary divides by 4)
SPLIT_PARAMS = {"qwen2": 2 * 6, "qwen3": 2 * 5, "qwen3_moe": 2 * 5, "mixtral": 2 * 5 + 1}
EXPERT_STACKS = {"qwen3_moe": 2 * 3, "mixtral": 2 * 3}  # split along the expert axis
VARIANTS = tuple(SPLIT_PARAMS)


@pytest.fixture(scope="module")
def tp_results(tiny_models) -> dict[str, dict]:
    """tp_check's result per variant, from one process (4 virtual CPU devices) for them all."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "XLA_FLAGS": xla_test_env(device_count=4),
           "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "tests.core.engine.tp_check",
                           *(str(tiny_models[variant]) for variant in VARIANTS)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()
             if line.startswith('{"model_dir"')]
    assert [line["model_dir"] for line in lines] == [str(tiny_models[v]) for v in VARIANTS]
    int8 = [json.loads(line) for line in done.stdout.strip().splitlines()
            if line.startswith('{"int8"')]
    return {**dict(zip(VARIANTS, lines, strict=True)), "int8": int8[0]["int8"]}


@pytest.mark.parametrize("variant", VARIANTS)
def test_tensor_parallel_4_matches_one_device(tp_results, variant):
    """Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms, head_dim twice hidden/heads); their 2
    key/value heads do not split 4 ways, so they are replicated while the 4 query heads, the MLP
    and (where it divides) the vocabulary are split. Qwen3-MoE and Mixtral: 2 of the 8 experts
    on each device (expert parallelism), token-exact too."""
    result = tp_results[variant]
    assert result["devices"] == 4
    assert result["one"]["split_params"] == 0
    assert result["four"]["split_params"] == SPLIT_PARAMS[variant]
    assert result["four"]["experts_split"] == EXPERT_STACKS.get(variant, 0)
    for one, four in zip(result["one"]["requests"], result["four"]["requests"], strict=True):
        assert four["tokens"] == one["tokens"] and len(one["tokens"]) == 12
        for top_one, top_four in zip(one["top"], four["top"], strict=True):
            assert [t for t, _ in top_four] == [t for t, _ in top_one]
            np.testing.assert_allclose([v for _, v in top_four], [v for _, v in top_one],
                                       atol=1e-4)


def test_two_processes_match_one_process(tp_results, tiny_models, tmp_path):
    """`tandem core --distributed` × 2 processes (2 CPU devices each, --tensor-parallel 4 over
    all of them): process 1 follows process 0's steps, and Generate over gRPC gives exactly the
    greedy tokens (and top logprobs) of one process with 4 devices. SIGTERM to process 0 ends
    both."""
    leader, follower, logs, port = retry_on_taken_port(
        lambda: _start_group(tiny_models["qwen2"], tmp_path))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.InferenceStub(channel)
            requests = [_generate(stub, prompt) for prompt in PROMPTS]
        reference = tp_results["qwen2"]["four"]["requests"]
        for two_hosts, four in zip(requests, reference, strict=True):
            assert two_hosts["tokens"] == four["tokens"]
            for top_two, top_four in zip(two_hosts["top"], four["top"], strict=True):
                assert [t for t, _ in top_two] == [t for t, _ in top_four]
                np.testing.assert_allclose([v for _, v in top_two], [v for _, v in top_four],
                                           atol=1e-4)
    finally:
        leader.send_signal(signal.SIGTERM)
        try:  # the follower stops when process 0 does: told so, or its channel closes
            assert follower.wait(timeout=120) == 0, logs[1].read_text()[-3000:]
            assert leader.wait(timeout=120) == 0, logs[0].read_text()[-3000:]
        finally:
            stop_process(leader)
            stop_process(follower)
    # process 1 replayed the steps (warm-up, the prompts' chunks, the decodes) and was told to stop
    assert re.search(r"the leader stopped after [1-9]\d* steps", logs[1].read_text())


def _start_group(model_dir: Path, logs_dir: Path):
    coordinator, port = _free_port_pair(), free_port()
    flags = ["core", "--model", str(model_dir), "--embedding-model", "none",
             *(f"--{name.replace('_', '-')}={value}" for name, value in ENGINE_LIMITS.items()),
             "--tensor-parallel", "4", "--distributed", f"127.0.0.1:{coordinator}",
             "--num-processes", "2",
             # the in-process reference's dtype (EngineConfig's default: the checkpoint's);
             # the CLI's "auto" is bfloat16 on a CPU with bf16 units
             "--dtype", "checkpoint"]
    env = core_env(XLA_FLAGS=xla_test_env(device_count=2),
                   TANDEM_LOG_FORMAT="text")
    processes, logs = [], []
    for process_id, grpc_port in ((1, 0), (0, port)):
        logs.append(logs_dir / f"process-{process_id}-{coordinator}.log")
        with open(logs[-1], "w") as log_file:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "core.cli", *flags, "--process-id", str(process_id),
                 "--grpc-port", str(grpc_port)],
                stdout=log_file, stderr=subprocess.STDOUT, env=env,
                cwd=Path(__file__).resolve().parents[3]))
    follower, leader = processes
    logs.reverse()  # [process 0's, process 1's]
    try:
        _wait_serving(port, leader, follower, logs)
    except BaseException:
        stop_process(leader)
        stop_process(follower)
        raise
    return leader, follower, logs, port


def _free_port_pair() -> int:
    """A port free now whose successor is free too (the coordinator's and the step channel)."""
    while True:
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def _wait_serving(port: int, leader, follower, logs, within_s: float = 600) -> None:
    """Until process 0 is ready (both warmed up in lockstep); fail if either exits."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        check_running(leader, logs[0])
        check_running(follower, logs[1])
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service="tandem.v1.Inference"), timeout=2)
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the 2-process core was not ready in {within_s} s:\n"
                f"{logs[0].read_text()[-3000:]}")


def _generate(stub, prompt) -> dict:
    tokens, top = [], []
    for response in stub.Generate(pb.GenerateRequest(
            tokens=pb.TokenIds(ids=prompt), sampling=pb.SamplingParams(temperature=0.0),
            stopping=pb.StoppingCriteria(max_tokens=MAX_TOKENS, ignore_eos=True),
            logprobs=True, top_logprobs=TOP_LOGPROBS), timeout=300):
        for choice in response.choices:
            tokens += choice.token_ids
            top += [[(t.token_id, t.logprob) for t in entry.top_logprobs]
                    for entry in choice.logprobs]
    return {"tokens": tokens, "top": top}


def test_tensor_parallel_4_int8_matches_one_device(tp_results):
    """Qwen2 with --quantization int8: each weight's scales split with its output axis — q's
    (heads) and gate/up's (MLP width) per layer; k/v's stay whole with their replicated heads,
    o/down's along the model width, and its tied head is the float embedding table; the
    logits are those of one device."""
    result = tp_results["int8"]
    assert result["scales_split"] == 2 * 3  # q, gate, up per layer
    assert result["argmax_equal"] and result["max_abs_difference"] < 1e-4
