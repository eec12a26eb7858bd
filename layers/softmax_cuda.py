"""CUDA kernels of Softmax (the GPU side of layers/softmax.py; SoftmaxWithLoss uses them too).

One thread per (outer, inner) position loops over the channels, as the CPU
kernel does (max subtracted first; sums in float64).
"""
import math

from numba import cuda

from .kernels_cuda import grid, jit


@jit
def _softmax_forward(x, y, outer, channels, inner):
    dim = channels * inner
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        i = t // inner
        j = t - i * inner
        base = i * dim + j
        m = x[base]
        for c in range(1, channels):
            v = x[base + c * inner]
            if v > m:
                m = v
        total = 0.0
        for c in range(channels):
            k = base + c * inner
            e = math.exp(x[k] - m)
            y[k] = e
            total += e
        for c in range(channels):
            k = base + c * inner
            y[k] = y[k] / total


@jit
def _softmax_backward(y, dy, dx, outer, channels, inner):
    dim = channels * inner
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        i = t // inner
        j = t - i * inner
        base = i * dim + j
        dot = 0.0
        for c in range(channels):
            k = base + c * inner
            dot += dy[k] * y[k]
        for c in range(channels):
            k = base + c * inner
            dx[k] = (dy[k] - dot) * y[k]


def softmax_forward(x, y, outer, channels, inner):
    """y = softmax of x over the channel axis (flat device arrays; y may be x)."""
    n = outer * inner
    if n and channels:
        _softmax_forward[grid(n)](x, y, outer, channels, inner)


def softmax_backward(y, dy, dx, outer, channels, inner):
    n = outer * inner
    if n and channels:
        _softmax_backward[grid(n)](y, dy, dx, outer, channels, inner)
