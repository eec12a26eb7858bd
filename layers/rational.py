"""Rational tanh and sigmoid: the recurrent layers' CPU vectorization trick for float32.

libm's ``tanhf``/``expf`` are calls that LLVM does not vectorize, and the
LSTM's step kernels evaluate five of them per cell.  In float32 they use
instead tanh(x) ~= x P(x^2) / Q(x^2) on |x| <= 9 (a relative-error fit made
for dltrain: max relative error 7e-9 in exact arithmetic, < 3e-7 absolute
when evaluated in float32 with FMA; evaluating it in float64 costs twice the
time for no visible gain in a layer's output); beyond 9, tanh is +-1 in
float32.  The sigmoid is Caffe's Sigmoid-layer form 0.5 tanh(x/2) + 0.5 of
it.  On a whole LSTM (T=20, H=256) the output's error against a float64
reference is the same as with exact activations (~1e-7, set by float32
rounding in the matrix products).

``kernel_tanh(x, one)`` and ``kernel_sigmoid(x, one)`` are what those
kernels call (and hand to the LSTM cell formulas, layers/lstm_cell.py): the
rational forms for float32 arguments, the exact ones for float64 (gradient
checks).  They are plain functions that Numba specialises on the argument's
type (``@overload``), so the choice costs nothing at run time.  The GPU
kernels use the exact formulas (``math.tanh`` is fast there).
"""

import numpy as np
from numba import njit, types
from numba.extending import overload

from .lstm_cell import exact_tanh, logistic

_OPTIONS = {"error_model": "numpy", "fastmath": {"contract"}}

_TANH_CLAMP = 9.0
_P0, _P1, _P2, _P3 = 0.9999999934541551, 0.13084002612110607, 0.0031039475994803795, 1.1154212222105774e-05
_P4, _P5, _P6 = -2.0224806960112562e-08, 5.2777348981573375e-11, -8.488142170273733e-14
_Q1, _Q2, _Q3 = 0.46417329729436335, 0.024495144756486578, 0.00025461323079167434


@njit(cache=True, inline="always", **_OPTIONS)
def rational_tanh(x):
    """tanh of a float32 value without libm (vectorizes)."""
    f = np.float32
    v = min(max(x, f(-_TANH_CLAMP)), f(_TANH_CLAMP))
    u = v * v
    p = f(_P0) + u * (f(_P1) + u * (f(_P2) + u * (f(_P3) + u * (f(_P4) + u * (f(_P5) + u * f(_P6))))))
    q = f(1.0) + u * (f(_Q1) + u * (f(_Q2) + u * f(_Q3)))
    r = v * p / q
    return min(max(r, f(-1.0)), f(1.0))


@njit(cache=True, inline="always", **_OPTIONS)
def rational_sigmoid(x):
    """sigmoid of a float32 value, 0.5 tanh(x/2) + 0.5 with the rational tanh."""
    half = np.float32(0.5)
    return half * rational_tanh(half * x) + half


def kernel_tanh(x, one):
    """tanh in the recurrent layers' CPU kernels: rational on float32, exact otherwise."""
    return exact_tanh(x, one)


def kernel_sigmoid(x, one):
    """The sigmoid in the recurrent layers' CPU kernels: rational on float32, exact otherwise."""
    return logistic(x, one)


def _rational_on_float32(function, rational, exact):
    @overload(function, jit_options=_OPTIONS)
    def specialise(x, one):
        if isinstance(x, types.Float) and x.bitwidth == 32:
            return lambda x, one: rational(x)
        # the float64 path computes with the literal 1.0 (so LLVM orders, and fuses into FMAs,
        # the cell's products exactly as it always has: the same bits)
        return lambda x, one: exact(x, 1.0)


_rational_on_float32(kernel_tanh, rational_tanh, exact_tanh)
_rational_on_float32(kernel_sigmoid, rational_sigmoid, logistic)
