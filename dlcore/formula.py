"""Formulas: each element-wise or window formula written once, for the CPU and the GPU.

A formula is a plain Python function on scalars (``math.*``, no arrays, no
NumPy calls).  ``@formula`` makes it callable from both of Numba's targets:

* from ``@njit`` CPU kernels, where LLVM inlines it into the loop (no call
  cost: the loop vectorizes as if the formula were typed in place);
* from ``@cuda.jit`` kernels, as a device function (inlined by NVVM);
* from plain Python (and so under Numba's CUDA simulator), as itself.

So a layer family's module defines its formulas once, its CPU loops call
them, and its ``*_cuda.py`` sibling's kernels call the same ones: a change
made on one side is made on both, and the CUDA simulator tests, which do no
type checking, compare the very same arithmetic.  Formulas may call other
formulas, and may take a small record (a NamedTuple of scalars) for their
hyper-parameters.  ``float(x)`` of a float32 stays float32 under Numba:
cast with ``numba.float64(x)`` where float64 is meant.  Keep device-specific tricks out of them (the CPU's rational
tanh in the LSTM stays in the CPU loop).

Numba's on-disk cache keys a kernel on its own file: after editing a
formula in another file, clear the cache (``find . -name '*.nb[ic]' -delete``)
or touch the kernels' files.
"""
import numpy as np
from numba import njit
from numba.extending import overload, register_jitable

__all__ = ["formula", "cpu_map"]


def formula(fn=None, *, inline_cpu=False):
    """Decorator: ``fn`` (scalars in, a scalar or tuple out) compiles for @njit and @cuda.jit callers.

    ``@formula(inline_cpu=True)``: also have Numba inline it into its CPU callers before LLVM sees
    them.  LLVM leaves a formula with loops or many branches a call, which can cost a per-element
    CPU loop up to 2x; Numba's own inliner does not work for the CUDA target, so CUDA callers keep
    the (NVVM-inlined) device function.
    """
    def make(fn):
        register_jitable(fn)
        if inline_cpu:            # a CPU-only overload: Numba prefers it to the generic one there
            overload(fn, target="cpu", inline="always", strict=False)(lambda *args, **kwargs: fn)
        return fn
    return make if fn is None else make(fn)


# --- the element-wise map: a formula over arrays (the GPU's is dlcore.device.map_formula) -----------

def _map_loop(f, inputs, outputs):
    """loop(*inputs, *outputs, *params): outputs[..][i] = f(inputs[0][i], ..., *params) for every i."""
    if outputs == 2:
        if inputs == 1:
            def loop(a, u, v, *p):
                for i in range(np.uint64(a.shape[0])):
                    u[i], v[i] = f(a[i], *p)
        elif inputs == 2:
            def loop(a, b, u, v, *p):
                for i in range(np.uint64(a.shape[0])):
                    u[i], v[i] = f(a[i], b[i], *p)
        else:
            def loop(a, b, c, u, v, *p):
                for i in range(np.uint64(a.shape[0])):
                    u[i], v[i] = f(a[i], b[i], c[i], *p)
    elif inputs == 1:
        def loop(a, u, *p):
            for i in range(np.uint64(a.shape[0])):
                u[i] = f(a[i], *p)
    elif inputs == 2:
        def loop(a, b, u, *p):
            for i in range(np.uint64(a.shape[0])):
                u[i] = f(a[i], b[i], *p)
    else:
        def loop(a, b, c, u, *p):
            for i in range(np.uint64(a.shape[0])):
                u[i] = f(a[i], b[i], c[i], *p)
    return loop


_LOOPS = {}


def cpu_map(f, inputs, outputs):
    """The @njit loop ``loop(*inputs, *outputs, *params)`` of the formula ``f``: 1-3 input and 1-2 output
    arrays of one length (a formula returning a pair fills two).  Made once, cached on disk with this
    file's kernels: after editing a formula, clear the cache (see above)."""
    key = (f, inputs, outputs)
    loop = _LOOPS.get(key)
    if loop is None:
        if not (1 <= inputs <= 3 and 1 <= outputs <= 2):
            raise ValueError(f"cpu_map: {inputs} inputs, {outputs} outputs (1-3 and 1-2 supported)")
        loop = _LOOPS[key] = njit(cache=True, error_model="numpy")(_map_loop(f, inputs, outputs))
    return loop
