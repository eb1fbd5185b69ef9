"""CPU kernels XLA:CPU lacks, built by `pip install` (setup.py) and called as XLA FFI custom
calls: `cpu` loads the build this CPU runs and registers its targets."""
