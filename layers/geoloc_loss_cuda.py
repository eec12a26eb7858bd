"""GeolocLoss on the GPU (the CUDA side of layers/geoloc_loss.py).

The CPU's very great-circle formulas (``central_angle`` and ``geoloc_row``
in layers/geoloc_loss.py: angles from the coordinate *differences*, exact
degree reduction, the antipode trick past a quarter turn, the unit-speed
gradient, 0 at exactly coincident or antipodal points), in float64.  ONE
block walks the rows, writes each row's four partial derivatives and sums
the angles (fixed order, no atomics: the loss reduction of losses_cuda.py)
into a float64 that the host reads back for the scalar loss.  Backward
scales the stored derivatives by the loss weight.
"""
import numpy as np
from numba import cuda

from dlcore.device import RED_TPB, grid, jit
from dlcore.layer import gpu_backward, gpu_forward

from .geoloc_loss import GeolocLossLayer, geoloc_row
from .losses_cuda import NO_BAD, one_block, store_stats


@jit
def _geoloc_forward(pred, label, n, unit, grad, stats):
    total = 0.0
    for i in range(cuda.threadIdx.x, n, RED_TPB):
        total += geoloc_row(pred, label, i, unit, grad)
    store_stats(stats, total, 0.0, NO_BAD)


@jit
def _geoloc_backward(grad, n, coef, column, diff):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        diff[2 * i] = coef * grad[4 * i + column]
        diff[2 * i + 1] = coef * grad[4 * i + column + 1]


@gpu_forward(GeolocLossLayer)
def geoloc_loss_forward(layer, bottom, top):
    n = layer.outer
    grad = layer.workspace.get("grad", 4 * n, np.float64)
    layer.set_loss(bottom, top, one_block(layer, _geoloc_forward, bottom[0].gpu_data(), bottom[1].gpu_data(), n,
                                          layer.unit, grad)[0])


@gpu_backward(GeolocLossLayer)
def geoloc_loss_backward(layer, top, propagate_down, bottom):
    n = layer.outer
    grad = layer.workspace.get("grad", 4 * n, np.float64)
    for i in range(2):
        if propagate_down[i]:
            _geoloc_backward[grid(n)](grad, n, layer.loss_scale(top, layer.radius), 2 * i,
                                      bottom[i].mutable_gpu_diff())
