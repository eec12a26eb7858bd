"""GPU code of Softmax (the CUDA side of layers/softmax.py; SoftmaxWithLoss and InfogainLoss use it too).

One thread per (outer, inner) position runs the CPU's very column formulas
(``softmax_column``, ``softmax_grad_column``: max subtracted first, sums in
float64).
"""
from numba import cuda

from dlcore.device import grid, jit
from dlcore.layer import gpu_backward, gpu_forward

from .softmax import SoftmaxLayer, softmax_column, softmax_grad_column


@jit
def _softmax_forward(x, y, outer, channels, inner):
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        i = t // inner
        softmax_column(x, y, i * channels * inner + t - i * inner, channels, inner)


@jit
def _softmax_backward(y, dy, dx, outer, channels, inner):
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        i = t // inner
        softmax_grad_column(y, dy, dx, i * channels * inner + t - i * inner, channels, inner)


def softmax_forward(x, y, outer, channels, inner):
    """y = softmax of x over the channel axis (flat device arrays; y may be x)."""
    n = outer * inner
    if n and channels:
        _softmax_forward[grid(n)](x, y, outer, channels, inner)


def softmax_backward(y, dy, dx, outer, channels, inner):
    n = outer * inner
    if n and channels:
        _softmax_backward[grid(n)](y, dy, dx, outer, channels, inner)


@gpu_forward(SoftmaxLayer)
def softmax_layer_forward(layer, bottom, top):
    softmax_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), layer.outer, layer.channels, layer.inner)


@gpu_backward(SoftmaxLayer)
def softmax_layer_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        softmax_backward(top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                         layer.outer, layer.channels, layer.inner)
