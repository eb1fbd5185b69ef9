"""Generate the Python gRPC code from protos/ (the contract) and check it is current.

Owns: running grpcio-tools' protoc with the mypy-protobuf plugins to write `*_pb2.py`,
`*_pb2_grpc.py` and their `.pyi` stubs next to each `.proto` under `protos/`.

    python scripts/gen_protos.py          # regenerate in place
    python scripts/gen_protos.py --check  # exit 1 when the committed output is stale

The generator versions are pinned (pyproject's `dev` extra and below); output from other versions
differs, so the script refuses to run with them.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PINNED_VERSIONS = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def check_pins() -> None:
    for package, wanted in PINNED_VERSIONS.items():
        have = importlib.metadata.version(package)
        if have != wanted:
            sys.exit(f"gen_protos: {package}=={have} installed, {wanted} pinned; "
                     f"run: pip install {package}=={wanted}")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc  # imported late: only this script needs it

    bin_dir = Path(sys.executable).parent
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    with _stderr_captured() as captured:  # the plugins' "Writing mypy to <temp dir>" chatter
        status = protoc.main(args)
    if status != 0:
        sys.exit(f"gen_protos: protoc failed\n{''.join(captured)}")


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 (this process's and its plugin children's) to a file; yields a
    list that holds what was written there once the block has exited."""
    captured: list[str] = []
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile("w+b") as log_file:
        os.dup2(log_file.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            log_file.seek(0)
            captured.append(log_file.read().decode(errors="replace"))


def generated_files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.name.endswith(GENERATED_SUFFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed output is stale")
    args = parser.parse_args()
    check_pins()
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, committed = generated_files(fresh_root), generated_files(PROTO_ROOT)
        if args.check:
            stale = sorted(str(p) for p in fresh ^ committed)
            stale += sorted(str(p) for p in fresh & committed
                            if not filecmp.cmp(fresh_root / p, PROTO_ROOT / p, shallow=False))
            if stale:
                print("gen_protos --check: stale generated code:", *stale, sep="\n  ")
                print("run: python scripts/gen_protos.py")
                return 1
            print(f"gen_protos --check: {len(fresh)} generated files are current")
            return 0
        for old in committed - fresh:
            (PROTO_ROOT / old).unlink()
        for path in fresh:
            shutil.copyfile(fresh_root / path, PROTO_ROOT / path)
        print(f"gen_protos: wrote {len(fresh)} files under {PROTO_ROOT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
