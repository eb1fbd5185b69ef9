"""`tandem core` without --model: the built-in demo model is made locally and says what it is;
its log lines are JSON, tagged with the request id of the RPC that wrote them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from tandem.v1 import inference_pb2 as pb
from tandem.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import free_port


def test_core_without_model_serves_the_demo_model(tmp_path):
    port = free_port()
    log_path = tmp_path / "core.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "core", "--grpc-port", str(port),
             "--max-model-len", "64", "--max-num-seqs", "2", "--encoder-max-batch-rows", "16",
             # the session's store of compiled buckets: the bundled MiniLM's load from it (a
             # core's TANDEM_HOME does not key the store); the demo model's compile
             "--compilation-cache-dir", str(Path(os.environ["TANDEM_HOME"]) / "jax-cache")],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, "TANDEM_HOME": str(tmp_path / "home")})
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InferenceStub(channel)
                deadline = time.monotonic() + 480  # a cold core on a loaded machine
                while True:
                    assert process.poll() is None, log_path.read_text()
                    try:
                        models = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
                        break
                    except grpc.RpcError as error:  # still loading (or too busy to answer)
                        assert error.code() in (grpc.StatusCode.UNAVAILABLE,
                                                grpc.StatusCode.DEADLINE_EXCEEDED), error
                        assert time.monotonic() < deadline, log_path.read_text()
                        time.sleep(0.5)
                demo, minilm = models  # the demo decoder and the bundled embedding model
                assert demo.id == "tandem-demo" and demo.is_demo
                assert minilm.id == "all-MiniLM-L6-v2" and minilm.embedding_dimensions == 384
                assert list(minilm.capabilities) == [pb.CAPABILITY_EMBED]
                assert "all-MiniLM-L6-v2" in minilm.description
                assert "RANDOM weights" in demo.description
                chunks = list(stub.Generate(pb.GenerateRequest(
                    text="hello", stopping=pb.StoppingCriteria(max_tokens=4, ignore_eos=True)),
                    metadata=[("x-request-id", "req-cli-42")]))
                assert chunks[-1].usage.completion_tokens == 4
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
    assert (tmp_path / "home" / "demo-model" / "config.json").exists()
    assert "DEMO model" in log_path.read_text()
    assert "Unable to initialize backend" not in log_path.read_text()  # JAX's probing, quiet
    lines = [json.loads(line) for line in log_path.read_text().splitlines()
             if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    tagged = [line for line in lines if line.get("request_id") == "req-cli-42"]
    assert tagged and "req-cli-42" in tagged[0]["message"]


def test_every_flag_has_help_and_shows_its_default():
    """`tandem serve|core|facade --help`: each flag explains itself and says its default."""
    import argparse

    from core.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("serve", "core", "facade"):
        subparser = subcommands.choices[name]
        formatter = subparser._get_formatter()
        for action in subparser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            shown = formatter._get_help_string(action) % vars(action)
            assert action.help, f"tandem {name} {action.option_strings[0]} has no help"
            assert "(default: " in shown, f"tandem {name} {action.option_strings[0]}: {shown}"
        text = subparser.format_help()
        if name != "facade":
            assert "core gRPC port (default: 50051)" in text
            assert "--drain-timeout-s" in text and "(default: 30.0)" in text


def test_serve_logs_one_format_from_the_first_line(tmp_path):
    """The launcher's own lines, the facade's, the core's and a fatal error all come as JSON
    lines (a core that cannot load its model stops `tandem serve` within seconds)."""
    result = subprocess.run(
        [sys.executable, "-m", "core.cli", "serve", "--model", str(tmp_path / "missing"),
         "--embedding-model", "none", "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "TANDEM_HOME": str(tmp_path / "home"), "TANDEM_LOG_FORMAT": "json"})
    assert result.returncode != 0
    lines = [json.loads(line) for line in result.stderr.splitlines() + result.stdout.splitlines()
             if line.strip()]  # a plain-text line would fail here
    assert lines[0]["message"].startswith("started core")
    failed = next(line for line in lines if line["message"] == "the core failed")
    assert "config.json" in failed["exception"]
