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
formulas.  Keep device-specific tricks out of them (the CPU's rational
tanh in the LSTM stays in the CPU loop).

Numba's on-disk cache keys a kernel on its own file: after editing a
formula in another file, clear the cache (``find . -name '*.nb[ic]' -delete``)
or touch the kernels' files.
"""
from numba.extending import register_jitable

__all__ = ["formula"]


def formula(fn):
    """Decorator: ``fn`` (scalars in, a scalar or tuple out) compiles for @njit and @cuda.jit callers."""
    return register_jitable(fn)
