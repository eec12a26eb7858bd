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
from dlcore.rng import get_rng

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


@gpu_forward(SigmoidLayer)
def sigmoid_forward(layer, bottom, top):
    n = top[0].count
    if n:
        _sigmoid_forward[grid(n)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), n)


@gpu_backward(SigmoidLayer)
def sigmoid_backward(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if propagate_down[0] and n:
        _sigmoid_backward[grid(n)](top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)


@gpu_forward(TanHLayer)
def tanh_forward(layer, bottom, top):
    n = top[0].count
    if n:
        _tanh_forward[grid(n)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), n)


@gpu_backward(TanHLayer)
def tanh_backward(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if propagate_down[0] and n:
        _tanh_backward[grid(n)](top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)


def masked_scale(x, mask, y, n, scale):
    """y = x * mask * scale (mask: a device array of 0/1 bytes)."""
    if n:
        _masked_scale[grid(n)](x, mask, y, n, scalar(scale, y.dtype))


@gpu_forward(DropoutLayer)
def dropout_forward(layer, bottom, top):
    n = bottom[0].count
    if layer.phase == TRAIN:
        layer.mask[...] = get_rng().random(n) < (1.0 - layer.threshold)
        mask = layer.workspace.get("mask", n, np.uint8)
        if n:
            mask[:n].copy_to_device(layer.mask)
        masked_scale(bottom[0].gpu_data(), mask, top[0].mutable_gpu_data(), n, layer.train_scale)
    elif layer.scale_train:
        if top[0] is not bottom[0]:
            copy(bottom[0].gpu_data(), top[0].mutable_gpu_data(), n)
    else:
        scale(bottom[0].gpu_data(), top[0].mutable_gpu_data(), 1.0 / layer.scale, n)


@gpu_backward(DropoutLayer)
def dropout_backward(layer, top, propagate_down, bottom):
    if not propagate_down[0]:
        return
    n = bottom[0].count
    if layer.phase == TRAIN:
        masked_scale(top[0].gpu_diff(), layer.workspace.get("mask", n, np.uint8), bottom[0].mutable_gpu_diff(), n,
                     layer.train_scale)
    elif layer.scale_train:
        if top[0] is not bottom[0]:
            copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)
    else:
        scale(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), 1.0 / layer.scale, n)
