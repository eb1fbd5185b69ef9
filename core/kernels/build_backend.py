"""The project's PEP 517 build backend: setuptools', plus what the CPU kernels need to compile.

Owns: asking for `jaxlib` at build time (the XLA FFI headers the kernels include ship in it)
and pointing the C++ compiler at those headers. The kernels themselves are declared in
pyproject.toml (`[[tool.setuptools.ext-modules]]`, one build per x86 ISA level, all optional:
without a compiler, or with TANDEM_BUILD_KERNELS=0, the install succeeds without them and the
core uses XLA's path; core/kernels/cpu.py picks a build at start).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the rest of the backend interface, unchanged)

KERNEL_BUILD_REQUIRES = ["jaxlib>=0.8"]


def _building_kernels() -> bool:
    return os.environ.get("TANDEM_BUILD_KERNELS", "1") != "0"


def _extra_requires() -> list[str]:
    return KERNEL_BUILD_REQUIRES if _building_kernels() else []


def _point_compiler_at_ffi_headers() -> None:
    """Put jaxlib's include directory (xla/ffi/api/ffi.h) on the C++ compiler's path."""
    if not _building_kernels():
        return
    try:
        import jaxlib
    except ImportError:  # the kernels then fail to compile, and are skipped (optional)
        return
    include = str(Path(jaxlib.__file__).resolve().parent / "include")
    existing = os.environ.get("CPLUS_INCLUDE_PATH")
    os.environ["CPLUS_INCLUDE_PATH"] = include + (os.pathsep + existing if existing else "")


def get_requires_for_build_wheel(config_settings=None):
    return _setuptools.get_requires_for_build_wheel(config_settings) + _extra_requires()


def get_requires_for_build_editable(config_settings=None):
    return _setuptools.get_requires_for_build_editable(config_settings) + _extra_requires()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _point_compiler_at_ffi_headers()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _point_compiler_at_ffi_headers()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
