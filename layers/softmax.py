"""Softmax along one axis (softmax_param.axis, default 1).

The blob is viewed as (outer, channels, inner) around the softmax axis, as
Caffe's softmax_layer.cpp does.  ``softmax_forward`` is also what
SoftmaxWithLoss and InfogainLoss use.  The work at one (outer, inner)
position is written once (``softmax_column``, ``softmax_grad_column``) and
run by the CPU loops here and the CUDA kernels in ``softmax_cuda.py``.
"""
import math

from numba import njit

from dlcore.errors import ConfigError
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer


@formula
def softmax_column(x, y, k0, channels, stride):
    """y = the softmax of x[k0 + c * stride] over c < channels (one position); y may be x.

    Numerically stable: the maximum over the channels is subtracted first."""
    m = x[k0]
    for c in range(1, channels):
        v = x[k0 + c * stride]
        if v > m:
            m = v
    total = 0.0
    for c in range(channels):
        k = k0 + c * stride
        e = math.exp(x[k] - m)
        y[k] = e
        total += e
    for c in range(channels):
        k = k0 + c * stride
        y[k] = y[k] / total


@formula
def softmax_grad_column(y, dy, dx, k0, channels, stride):
    """dx = (dy - sum_c(dy * y)) * y at one position; dx may be dy (in place)."""
    dot = 0.0
    for c in range(channels):
        k = k0 + c * stride
        dot += dy[k] * y[k]
    for c in range(channels):
        k = k0 + c * stride
        dx[k] = (dy[k] - dot) * y[k]


@njit(cache=True)
def softmax_forward(x, y, outer, channels, inner):
    """y = softmax of x over the channel axis; x, y flat, may be the same array."""
    for i in range(outer):
        for j in range(inner):
            softmax_column(x, y, i * channels * inner + j, channels, inner)


@njit(cache=True)
def softmax_backward(y, dy, dx, outer, channels, inner):
    """dx = (dy - sum_c(dy * y)) * y; dx may be dy (in place)."""
    for i in range(outer):
        for j in range(inner):
            softmax_grad_column(y, dy, dx, i * channels * inner + j, channels, inner)


def canonical_axis(layer, blob, axis):
    """``blob.canonical_axis(axis)``, with the layer named in the error."""
    try:
        return blob.canonical_axis(axis)
    except ConfigError as err:
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): {err.message}") from None


def softmax_geometry(layer, blob, axis):
    """(canonical axis, outer, channels, inner) of ``blob`` around ``axis``."""
    axis = canonical_axis(layer, blob, axis)
    return axis, blob.count_range(0, axis), blob.shape[axis], blob.count_range(axis + 1)


@register_layer("Softmax")
class SoftmaxLayer(Layer):
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = ".softmax_cuda"

    def reshape(self, bottom, top):
        self.axis, self.outer, self.channels, self.inner = softmax_geometry(
            self, bottom[0], self.layer_param.softmax_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        softmax_forward(bottom[0].data.reshape(-1), top[0].data.reshape(-1),
                        self.outer, self.channels, self.inner)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            softmax_backward(top[0].data.reshape(-1), top[0].diff.reshape(-1), bottom[0].diff.reshape(-1),
                             self.outer, self.channels, self.inner)
