"""CUDA kernels of LSTMUnit: the GPU side of layers/lstm_unit.py.

One thread per cell (instance n, hidden unit d), Caffe's CPU formulas
(the forget gate includes ``cont``; tanh is 2 sigmoid(2x) - 1), computed
in the data's precision.
"""
import math

from numba import cuda

from .kernels_cuda import grid, jit, scalar


@cuda.jit(device=True)
def _sigmoid(x, one):
    return one / (one + math.exp(-x))


@cuda.jit(device=True)
def _tanh(x, one):
    return (one + one) * _sigmoid((one + one) * x, one) - one


@jit
def _forward(c_prev, x, cont, c, h, N, H, one):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        d = k - n * H
        xb = n * 4 * H + d
        cn = cont[n]
        i = _sigmoid(x[xb], one)
        f = cn * 0
        if cn != 0:
            f = cn * _sigmoid(x[xb + H], one)
        o = _sigmoid(x[xb + 2 * H], one)
        g = _tanh(x[xb + 3 * H], one)
        cv = f * c_prev[k] + i * g
        c[k] = cv
        h[k] = o * _tanh(cv, one)


@jit
def _backward(c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x, one):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        d = k - n * H
        xb = n * 4 * H + d
        cn = cont[n]
        i = _sigmoid(x[xb], one)
        f = cn * 0
        if cn != 0:
            f = cn * _sigmoid(x[xb + H], one)
        o = _sigmoid(x[xb + 2 * H], one)
        g = _tanh(x[xb + 3 * H], one)
        tc = _tanh(c[k], one)
        dct = dc[k] + dh[k] * o * (one - tc * tc)
        if do_c:
            dc_prev[k] = dct * f
        if do_x:
            dx[xb] = dct * g * i * (one - i)
            dx[xb + H] = dct * c_prev[k] * f * (one - f)
            dx[xb + 2 * H] = dh[k] * tc * o * (one - o)
            dx[xb + 3 * H] = dct * i * (one - g * g)


def forward(c_prev, x, cont, c, h, N, H):
    if N * H:
        _forward[grid(N * H)](c_prev, x, cont, c, h, N, H, scalar(1, c.dtype))


def backward(c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x):
    if N * H:
        _backward[grid(N * H)](c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x, scalar(1, c.dtype))
