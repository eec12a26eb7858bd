"""CUDA kernels of the neuron layers (ReLU, Sigmoid, TanH, Dropout): the GPU side of layers/neurons.py.

Element-wise, grid-stride, on the blobs' flat device arrays; the formulas
are the CPU kernels' (same rounding: Sigmoid is 0.5 tanh(0.5 x) + 0.5).
Dropout's mask is drawn on the host from dltrain's one RNG
(``dlcore.rng``, as the CPU layer does) and copied to the device: a GPU run
then drops exactly the units a CPU run with the same seed drops, so the two
can be compared loss for loss.
"""
import math

from numba import cuda

from .kernels_cuda import grid, jit, scalar


@jit
def _relu_forward(x, y, n, negative_slope):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        if v > 0:
            y[i] = v
        else:
            y[i] = v * negative_slope + 0      # + 0: no negative zeros, as the CPU kernel

@jit
def _relu_backward(x, dy, dx, n, negative_slope):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * negative_slope


@jit
def _sigmoid_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = 0.5 * math.tanh(0.5 * x[i]) + 0.5


@jit
def _sigmoid_backward(y, dy, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        s = y[i]
        dx[i] = dy[i] * s * (1 - s)


@jit
def _tanh_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = math.tanh(x[i])


@jit
def _tanh_backward(y, dy, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        t = y[i]
        dx[i] = dy[i] * (1 - t * t)


@jit
def _masked_scale(x, mask, y, n, scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if mask[i]:
            y[i] = x[i] * scale
        else:
            y[i] = x[i] * 0


def relu_forward(x, y, n, negative_slope):
    if n:
        _relu_forward[grid(n)](x, y, n, scalar(negative_slope, y.dtype))


def relu_backward(x, dy, dx, n, negative_slope):
    if n:
        _relu_backward[grid(n)](x, dy, dx, n, scalar(negative_slope, dx.dtype))


def sigmoid_forward(x, y, n):
    if n:
        _sigmoid_forward[grid(n)](x, y, n)


def sigmoid_backward(y, dy, dx, n):
    if n:
        _sigmoid_backward[grid(n)](y, dy, dx, n)


def tanh_forward(x, y, n):
    if n:
        _tanh_forward[grid(n)](x, y, n)


def tanh_backward(y, dy, dx, n):
    if n:
        _tanh_backward[grid(n)](y, dy, dx, n)


def masked_scale(x, mask, y, n, scale):
    """y = x * mask * scale (mask: a device array of 0/1 bytes)."""
    if n:
        _masked_scale[grid(n)](x, mask, y, n, scalar(scale, y.dtype))
