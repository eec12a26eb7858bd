"""Embed on the GPU (the GPU side of layers/embed.py).

Forward: one thread per output element gathers ``weight[index] (+ bias)``,
the index checked by embed.py's ``lookup_row``; an index that is not an
integer in [0, K) is reported through a device flag (the smallest bad
position, read back once per forward) and raises the CPU layer's error.
Backward: the weight gradient is a scatter-add of the top gradient's rows
into the rows the indices name (atomics, as Caffe's embed_layer.cu), the
bias gradient a column sum.
"""
import numpy as np
from numba import cuda

from dlcore.device import fill, grid, jit
from dlcore.layer import gpu_backward, gpu_forward

from .embed import EmbedLayer, lookup_row
from .kernels_cuda import channel_sum

NO_BAD = np.iinfo(np.int64).max


@jit
def _embed_forward(indices, weight, bias, has_bias, M, Kd, Nd, top, bad):
    for t in range(cuda.grid(1), M * Nd, cuda.gridsize(1)):
        m = t // Nd
        j = t - m * Nd
        index = lookup_row(indices[m], Kd)
        if index < 0:
            cuda.atomic.min(bad, 0, m)
        elif has_bias:
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


@gpu_forward(EmbedLayer)
def forward(layer, bottom, top):
    M = bottom[0].count
    Nd = layer.num_output
    bad = layer.workspace.get("bad", 1, np.int64)
    fill(bad, NO_BAD)
    bias = layer.blobs[1].gpu_data() if layer.bias_term else layer.blobs[0].gpu_data()
    if M * Nd:
        _embed_forward[grid(M * Nd)](bottom[0].gpu_data(), layer.blobs[0].gpu_data(), bias, layer.bias_term, M,
                                     layer.input_dim, Nd, top[0].mutable_gpu_data(), bad)
    first = int(bad.copy_to_host()[0])
    if first != NO_BAD:
        raise layer.bad_index(bottom, first)


@gpu_backward(EmbedLayer)
def backward(layer, top, propagate_down, bottom):
    layer.check_propagate_down(propagate_down)
    M = bottom[0].count
    Nd = layer.num_output
    dy = top[0].gpu_diff()
    if layer.param_propagate_down[0] and M * Nd:
        _embed_backward[grid(M * Nd)](bottom[0].gpu_data(), dy, M, Nd, layer.blobs[0].mutable_gpu_diff())
    if layer.bias_term and layer.param_propagate_down[1]:
        channel_sum(dy, M, Nd, 1, layer.blobs[1].mutable_gpu_diff())
