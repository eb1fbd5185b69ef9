"""Multi-host serving: one model over the devices of several processes (JAX's multi-controller
runtime, `jax.distributed`), started by `tandem core --distributed HOST:PORT --num-processes N
--process-id I`.

Owns: joining the process group and the step channel (`group.py`), and keeping every process's
device work in lockstep (`lockstep.py`): process 0 runs the gRPC servicer and the scheduler and
sends each engine step's host inputs to the others, which run the same executables with them.
Nothing here is imported unless `--distributed` is given.
"""
