"""CUDA kernels of the activations in layers/activations.py (PReLU, ELU, AbsVal, Power, Exp, Log,
BNLL, Threshold, Swish, Clip).

Element-wise, grid-stride, on the blobs' flat device arrays, with the CPU
kernels' formulas and Caffe's special cases.  Scalars go in the data's
dtype (``scalar``).  PReLU's slope gradient is the product dy * x * [x <= 0]
written to a scratch array and summed per channel by the shared
``kernels_cuda.channel_sum`` (float64 accumulation).
"""
import math

from numba import cuda

from . import kernels_cuda as K
from .kernels_cuda import grid, jit, scalar


# --- PReLU ---------------------------------------------------------------------

@jit
def _prelu_forward(x, y, slope, n, dim, channels, div_factor):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // dim) % channels // div_factor
        v = x[i]
        if v > 0:
            y[i] = v
        else:
            y[i] = slope[c] * v + 0


@jit
def _prelu_backward(x, dy, dx, slope, n, dim, channels, div_factor):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        c = (i // dim) % channels // div_factor
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * slope[c]


@jit
def _prelu_slope_product(x, dy, out, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v <= 0:
            out[i] = dy[i] * v
        else:
            out[i] = v * 0


def prelu_forward(x, y, slope, n, dim, channels, div_factor):
    if n:
        _prelu_forward[grid(n)](x, y, slope, n, dim, channels, div_factor)


def prelu_backward(x, dy, dx, slope, n, dim, channels, div_factor):
    if n:
        _prelu_backward[grid(n)](x, dy, dx, slope, n, dim, channels, div_factor)


def prelu_slope_grad(x, dy, slope_diff, n, dim, channels, shared, layer):
    """slope_diff += per-channel (or, shared, total) sum of dy * x over x <= 0."""
    if not n:
        return
    if getattr(layer, "_gpu_work", None) is None:
        layer._gpu_work = K.DeviceWorkspace()
    product = layer._gpu_work.get("prelu_product", n, x.dtype)
    _prelu_slope_product[grid(n)](x, dy, product, n)
    if shared:
        K.channel_sum(product, 1, 1, n, slope_diff, accumulate=True)
    else:
        K.channel_sum(product, n // (channels * dim), channels, dim, slope_diff, accumulate=True)


# --- ELU, AbsVal ----------------------------------------------------------------

@jit
def _elu_forward(x, y, n, alpha):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v > 0:
            y[i] = v
        else:
            y[i] = alpha * (math.exp(v) - 1)


@jit
def _elu_backward(x, y, dy, dx, n, alpha):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * (alpha + y[i])


@jit
def _absval_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = abs(x[i])


@jit
def _absval_backward(x, dy, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v > 0:
            dx[i] = dy[i]
        elif v < 0:
            dx[i] = -dy[i]
        else:
            dx[i] = dy[i] * 0


def elu_forward(x, y, n, alpha):
    if n:
        _elu_forward[grid(n)](x, y, n, scalar(alpha, y.dtype))


def elu_backward(x, y, dy, dx, n, alpha):
    if n:
        _elu_backward[grid(n)](x, y, dy, dx, n, scalar(alpha, dx.dtype))


def absval_forward(x, y, n):
    if n:
        _absval_forward[grid(n)](x, y, n)


def absval_backward(x, dy, dx, n):
    if n:
        _absval_backward[grid(n)](x, dy, dx, n)


# --- Power (also LRN's WITHIN_CHANNEL) -------------------------------------------

@jit
def _fill_value(y, n, value):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = value


@jit
def _power_forward(x, y, n, power, scale, shift):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        if power != 1:
            v = math.pow(v, power)
        y[i] = v


@jit
def _power_backward(x, y, dy, dx, n, power, scale, shift, diff_scale, mode):
    # mode 0: power 1; 1: power 2; 2: shift 0; 3: general (see activations.power_backward)
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if mode == 0:
            dx[i] = dy[i] * diff_scale
        elif mode == 1:
            g = diff_scale * scale * x[i]
            if shift != 0:
                g = g + diff_scale * shift
            dx[i] = dy[i] * g
        elif mode == 2:
            dx[i] = dy[i] * (y[i] / x[i] * power)
        else:
            v = x[i]
            if scale != 1:
                v = v * scale
            g = y[i] / (v + shift)
            if diff_scale != 1:
                g = g * diff_scale
            dx[i] = dy[i] * g


def power_forward(x, y, n, power, scale, shift):
    if not n:
        return
    dt = y.dtype
    if power * scale == 0:
        value = 1.0 if power == 0 else _host_pow(scalar(shift, dt), scalar(power, dt))
        _fill_value[grid(n)](y, n, scalar(value, dt))
        return
    _power_forward[grid(n)](x, y, n, scalar(power, dt), scalar(scale, dt), scalar(shift, dt))


def _host_pow(a, b):
    import numpy as np
    with np.errstate(all="ignore"):
        return np.power(a, b)


def power_backward(x, y, dy, dx, n, power, scale, shift):
    if not n:
        return
    dt = dx.dtype
    p, s, h = scalar(power, dt), scalar(scale, dt), scalar(shift, dt)
    diff_scale = p * s
    if diff_scale == 0:
        _fill_value[grid(n)](dx, n, scalar(0, dt))
        return
    mode = 0 if p == 1 else 1 if p == 2 else 2 if h == 0 else 3
    _power_backward[grid(n)](x, y, dy, dx, n, p, s, h, diff_scale, mode)


# --- Exp, Log, BNLL, Threshold ---------------------------------------------------

@jit
def _exp_forward(x, y, n, inner_scale, outer_scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if inner_scale != 1:
            v = v * inner_scale
        v = math.exp(v)
        if outer_scale != 1:
            v = v * outer_scale
        y[i] = v


@jit
def _exp_backward(y, dy, dx, n, inner_scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        g = dy[i] * y[i]
        if inner_scale != 1:
            g = g * inner_scale
        dx[i] = g


@jit
def _log_forward(x, y, n, scale, shift, base_scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        v = math.log(v)
        if base_scale != 1:
            v = v * base_scale
        y[i] = v


@jit
def _log_backward(x, dy, dx, n, scale, shift, backward_num_scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        g = 1 / v
        if backward_num_scale != 1:
            g = g * backward_num_scale
        dx[i] = dy[i] * g


@jit
def _bnll_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v > 0:
            y[i] = v + math.log(1.0 + math.exp(-v))
        else:
            y[i] = math.log(1.0 + math.exp(v))


@jit
def _bnll_backward(x, dy, dx, n, threshold):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        e = math.exp(min(x[i], threshold))
        dx[i] = dy[i] * e / (e + 1.0)


@jit
def _threshold_forward(x, y, n, threshold):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if x[i] > threshold:
            y[i] = 1
        else:
            y[i] = 0


def exp_forward(x, y, n, inner_scale, outer_scale):
    if n:
        _exp_forward[grid(n)](x, y, n, scalar(inner_scale, y.dtype), scalar(outer_scale, y.dtype))


def exp_backward(y, dy, dx, n, inner_scale):
    if n:
        _exp_backward[grid(n)](y, dy, dx, n, scalar(inner_scale, dx.dtype))


def log_forward(x, y, n, scale, shift, base_scale):
    if n:
        dt = y.dtype
        _log_forward[grid(n)](x, y, n, scalar(scale, dt), scalar(shift, dt), scalar(base_scale, dt))


def log_backward(x, dy, dx, n, scale, shift, backward_num_scale):
    if n:
        dt = dx.dtype
        _log_backward[grid(n)](x, dy, dx, n, scalar(scale, dt), scalar(shift, dt), scalar(backward_num_scale, dt))


def bnll_forward(x, y, n):
    if n:
        _bnll_forward[grid(n)](x, y, n)


def bnll_backward(x, dy, dx, n, threshold):
    if n:
        _bnll_backward[grid(n)](x, dy, dx, n, scalar(threshold, dx.dtype))


def threshold_forward(x, y, n, threshold):
    if n:
        _threshold_forward[grid(n)](x, y, n, scalar(threshold, y.dtype))


# --- Swish, Clip ----------------------------------------------------------------

@jit
def _swish_forward(x, s, y, n, beta):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        t = 0.5 * math.tanh(0.5 * (v * beta)) + 0.5
        s[i] = t
        y[i] = v * t


@jit
def _swish_backward(y, s, dy, dx, n, beta):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        by = beta * y[i]
        dx[i] = dy[i] * (by + s[i] * (1 - by))


@jit
def _clip_forward(x, y, n, lo, hi):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v > hi:
            v = hi
        if v < lo:
            v = lo
        y[i] = v


@jit
def _clip_backward(x, dy, dx, n, lo, hi):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v >= lo and v <= hi:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * 0


def swish_forward(x, s, y, n, beta):
    if n:
        _swish_forward[grid(n)](x, s, y, n, scalar(beta, y.dtype))


def swish_backward(y, s, dy, dx, n, beta):
    if n:
        _swish_backward[grid(n)](y, s, dy, dx, n, scalar(beta, dx.dtype))


def clip_forward(x, y, n, lo, hi):
    if n:
        _clip_forward[grid(n)](x, y, n, scalar(lo, y.dtype), scalar(hi, y.dtype))


def clip_backward(x, dy, dx, n, lo, hi):
    if n:
        _clip_backward[grid(n)](x, dy, dx, n, scalar(lo, dx.dtype), scalar(hi, dx.dtype))
