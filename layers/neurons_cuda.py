"""GPU code of the neuron layers (ReLU, Sigmoid, TanH, Dropout): the CUDA side of layers/neurons.py.

Element-wise, grid-stride, on the blobs' flat device arrays, with the very
formulas the CPU loops use (``@formula`` in neurons.py).  Dropout's mask is
drawn on the host from dltrain's one RNG (``dlcore.rng``, as the CPU layer
does) and copied to the device: a GPU run then drops exactly the units a CPU
run with the same seed drops, so the two can be compared loss for loss.
"""
import math

import numpy as np
from numba import cuda

from dlcore.device import copy, grid, jit, scalar, scale
from dlcore.layer import TRAIN, gpu_backward, gpu_forward

from .neurons import (DropoutLayer, ReLULayer, SigmoidLayer, TanHLayer, masked, relu, relu_grad, sigmoid,
                      sigmoid_grad, tanh_grad)


@jit
def _relu_forward(x, y, n, negative_slope):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = relu(x[i], negative_slope)


@jit
def _relu_backward(x, dy, dx, n, negative_slope):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[i] = relu_grad(x[i], dy[i], negative_slope)


@jit
def _sigmoid_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = sigmoid(x[i])


@jit
def _sigmoid_backward(y, dy, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[i] = sigmoid_grad(y[i], dy[i])


@jit
def _tanh_forward(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = math.tanh(x[i])


@jit
def _tanh_backward(y, dy, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[i] = tanh_grad(y[i], dy[i])


@jit
def _masked_scale(x, mask, y, n, scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = masked(x[i], mask[i], scale)


@gpu_forward(ReLULayer)
def relu_forward(layer, bottom, top):
    n = top[0].count
    if n:
        _relu_forward[grid(n)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), n,
                               scalar(layer.negative_slope, top[0].dtype))


@gpu_backward(ReLULayer)
def relu_backward(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if propagate_down[0] and n:
        _relu_backward[grid(n)](bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n,
                                scalar(layer.negative_slope, bottom[0].dtype))


def _top_data_activation(layer_class, forward_kernel, backward_kernel):
    """Register the GPU pair of an activation whose gradient needs only the top data."""
    @gpu_forward(layer_class)
    def forward(layer, bottom, top):
        n = top[0].count
        if n:
            forward_kernel[grid(n)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), n)

    @gpu_backward(layer_class)
    def backward(layer, top, propagate_down, bottom):
        n = bottom[0].count
        if propagate_down[0] and n:
            backward_kernel[grid(n)](top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)


_top_data_activation(SigmoidLayer, _sigmoid_forward, _sigmoid_backward)
_top_data_activation(TanHLayer, _tanh_forward, _tanh_backward)


def masked_scale(x, mask, y, n, scale):
    """y = x * mask * scale (mask: a device array of 0/1 bytes)."""
    if n:
        _masked_scale[grid(n)](x, mask, y, n, scalar(scale, y.dtype))


@gpu_forward(DropoutLayer)
def dropout_forward(layer, bottom, top):
    n = bottom[0].count
    if layer.phase == TRAIN:
        layer.draw_mask()
        if n:
            layer.workspace.get("mask", n, np.uint8)[:n].copy_to_device(layer.mask)
    _dropout(layer, bottom[0].gpu_data(), top[0].mutable_gpu_data(), n, top[0] is bottom[0])


@gpu_backward(DropoutLayer)
def dropout_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        _dropout(layer, top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count, top[0] is bottom[0])


def _dropout(layer, src, dst, n, in_place):
    # The same map forward (data) and backward (diffs), as the CPU layer's _apply.
    if layer.phase == TRAIN:
        masked_scale(src, layer.workspace.get("mask", n, np.uint8), dst, n, layer.train_scale)
    elif layer.scale_train:
        if not in_place:
            copy(src, dst, n)
    else:
        scale(src, dst, 1.0 / layer.scale, n)
