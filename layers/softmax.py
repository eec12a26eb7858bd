"""Softmax along one axis (softmax_param.axis, default 1).

The blob is viewed as (outer, channels, inner) around the softmax axis, as
Caffe's softmax_layer.cpp does.  ``softmax_forward`` is also what
SoftmaxWithLoss uses (layers/losses.py imports it from here).
"""
import math

from numba import njit

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer


@njit(cache=True)
def softmax_forward(x, y, outer, channels, inner):
    """y = softmax of x over the channel axis; x, y flat, may be the same array.

    Numerically stable: the maximum over the channels is subtracted first.
    """
    dim = channels * inner
    for i in range(outer):
        base = i * dim
        for j in range(inner):
            m = x[base + j]
            for c in range(1, channels):
                v = x[base + c * inner + j]
                if v > m:
                    m = v
            total = 0.0
            for c in range(channels):
                k = base + c * inner + j
                e = math.exp(x[k] - m)
                y[k] = e
                total += e
            for c in range(channels):
                k = base + c * inner + j
                y[k] = y[k] / total


@njit(cache=True)
def softmax_backward(y, dy, dx, outer, channels, inner):
    """dx = (dy - sum_c(dy * y)) * y; dx may be dy (in place)."""
    dim = channels * inner
    for i in range(outer):
        base = i * dim
        for j in range(inner):
            dot = 0.0
            for c in range(channels):
                k = base + c * inner + j
                dot += dy[k] * y[k]
            for c in range(channels):
                k = base + c * inner + j
                dx[k] = (dy[k] - dot) * y[k]


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

    def forward_gpu(self, bottom, top):
        from . import softmax_cuda as C
        C.softmax_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), self.outer, self.channels, self.inner)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import softmax_cuda as C
            C.softmax_backward(top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                               self.outer, self.channels, self.inner)
