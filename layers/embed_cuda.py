"""Embed on the GPU (the GPU side of layers/embed.py).

Forward: one thread per output element gathers ``weight[index] (+ bias)``;
an index that is not an integer in [0, K) is reported through a device flag
(the smallest bad position, read back once per forward) and raises the CPU
layer's error.  Backward: the weight gradient is a scatter-add of the top
gradient's rows into the rows the indices name (atomics, as Caffe's
embed_layer.cu), the bias gradient a column sum.
"""
import numpy as np
from numba import cuda

from . import kernels_cuda as K
from .kernels_cuda import grid, jit

NO_BAD = np.iinfo(np.int64).max


@jit
def _embed_forward(indices, weight, bias, has_bias, M, Kd, Nd, top, bad):
    for t in range(cuda.grid(1), M * Nd, cuda.gridsize(1)):
        m = t // Nd
        j = t - m * Nd
        value = indices[m]
        if not (value >= 0 and value < Kd):
            cuda.atomic.min(bad, 0, m)
            continue
        index = int(value)
        if index != value:
            cuda.atomic.min(bad, 0, m)
            continue
        if has_bias:
            top[t] = weight[index * Nd + j] + bias[j]
        else:
            top[t] = weight[index * Nd + j]


@jit
def _embed_backward(indices, top_diff, M, Nd, weight_diff):
    for t in range(cuda.grid(1), M * Nd, cuda.gridsize(1)):
        m = t // Nd
        j = t - m * Nd
        index = int(indices[m])
        cuda.atomic.add(weight_diff, index * Nd + j, top_diff[t])


def forward(layer, bottom, top):
    """Returns the first bad index position, or -1."""
    M = bottom[0].count
    Nd = layer.num_output
    bad = getattr(layer, "_gpu_bad", None)
    if bad is None:
        bad = layer._gpu_bad = cuda.device_array(1, np.int64)
    K.fill(bad, NO_BAD)
    bias = layer.blobs[1].gpu_data() if layer.bias_term else layer.blobs[0].gpu_data()
    if M * Nd:
        _embed_forward[grid(M * Nd)](bottom[0].gpu_data(), layer.blobs[0].gpu_data(), bias, layer.bias_term, M,
                                     layer.input_dim, Nd, top[0].mutable_gpu_data(), bad)
    first = int(bad.copy_to_host()[0])
    return -1 if first == NO_BAD else first


def backward(layer, top, propagate_down, bottom):
    M = bottom[0].count
    Nd = layer.num_output
    dy = top[0].gpu_diff()
    if layer.param_propagate_down[0] and M * Nd:
        _embed_backward[grid(M * Nd)](bottom[0].gpu_data(), dy, M, Nd, layer.blobs[0].mutable_gpu_diff())
    if layer.bias_term and layer.param_propagate_down[1]:
        K.channel_sum(dy, M, Nd, 1, layer.blobs[1].mutable_gpu_diff(), accumulate=True)
