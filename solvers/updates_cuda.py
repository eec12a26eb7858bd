"""The update rules on the GPU: solvers/updates.py's kernels compiled for CUDA.

The very loop and formulas of the CPU kernels (:func:`dltrain.solvers.updates.update_loop`),
compiled with ``cuda.jit`` as grid-stride kernels, one thread per element,
on the parameter's, its gradient's and its history's device arrays, which
never leave the device.  A non-finite update value is never applied; the
kernel then sets ``flags[param_id]`` and the solver, which reads the flags
once per iteration, stops with its usual error.  The gradient norm of
clip_gradients is a device reduction (float64) read back as one number.

The functions and their arguments are those of solvers/updates.py, on
device arrays.
"""
from functools import lru_cache

from numba import cuda

from dlcore.device import axpby, device_zeros, fill, grid, jit, reduce_sum

from .updates import update_loop

__all__ = ["kernel", "update", "apply_update", "sumsq_total", "new_flags", "reset_flags", "bad_params"]


@jit(device=True, inline=True)
def _grid_start():
    return cuda.grid(1)


@jit(device=True, inline=True)
def _grid_stride():
    return cuda.gridsize(1)


@lru_cache(maxsize=None)
def kernel(rule):
    """The CUDA kernel of update rule ``rule`` ("sgd", ..., "adam"; see solvers.updates.RULES)."""
    compiled = jit(update_loop(rule, _grid_start, _grid_stride))
    try:    # how to make it again (bench/cuda_compile_check.py compiles every kernel a run used)
        compiled._dltrain_key = ("dltrain.solvers.updates_cuda", "kernel", (rule,))
    except AttributeError:
        pass
    return compiled


def update(rule, w, g, histories, n, flags, param_id, apply, steps, hyper):
    """Run ``rule`` over a parameter's ``n`` elements (device arrays ``w``, ``g``, its 1 or 2 histories)."""
    if n:
        kernel(rule)[grid(n)](w, g, histories[0], histories[-1], n, flags, param_id, apply, tuple(steps),
                              tuple(hyper))


def apply_update(w, g, n):
    """Net::Update for one parameter: ``w -= g``."""
    axpby(-1.0, g, 1.0, w, n)


def sumsq_total(arrays_and_counts):
    """The sum of squares of several device arrays, as one Python float (one copy back)."""
    out = device_zeros(1, "float64")
    for array, n in arrays_and_counts:
        reduce_sum(array, out, 0, n, squares=True)
    return float(out.copy_to_host()[0])


def new_flags(count):
    """One int32 per parameter, on the device: set by the kernels when an update value is not finite."""
    return device_zeros(max(count, 1), "int32")


def reset_flags(flags):
    fill(flags, 0)


def bad_params(flags, count):
    """The parameter ids whose update was not finite (one small copy back)."""
    host = flags.copy_to_host()[:count]
    return [int(i) for i in host.nonzero()[0]]
