"""GPU code of SoftmaxWithLoss (and its subclass InfogainLoss) and EuclideanLoss (the CUDA side of
layers/losses.py), and the one-block loss reduction that every loss layer's GPU code uses.

A loss is reduced on the device by ONE block (the positions of a batch are
few; one block needs no atomics and sums in a fixed order, so a run repeats
bit for bit): each thread sums its share of the positions in float64, then
:func:`store_stats` totals the block into a small float64 "stats" array,
[loss sum, valid count, first bad label position or -1], that the host reads
back (:func:`one_block`; the loss value is needed on the host every
iteration anyway, as in Caffe) and hands to ``LossLayer.set_loss``, which
checks the labels and writes the scalar top as the CPU forward does.
Gradients are grid-stride element-wise kernels.  The element formulas are
the CPU's (``@formula`` in losses.py), with the CPU's scalars (the scale in
float64).
"""
import math

import numba
import numpy as np
from numba import cuda

from dlcore.device import RED_TPB, block_sum, copy, device_array, grid, jit, to_device
from dlcore.layer import gpu_backward, gpu_forward

from .losses import (BAD_LABEL, IGNORED, EuclideanLossLayer, SoftmaxWithLossLayer, label_class, log_loss_grad,
                     row_sum, squared_difference, subtract_log_loss)
from .softmax_cuda import softmax_forward

NO_BAD = math.inf        # a thread's "first bad position" when it saw none


# --- the one-block loss reduction -----------------------------------------------------------------

@jit(device=True)
def block_min(part, tid):
    """Tree-min the RED_TPB values in the shared array ``part`` into part[0] (every thread calls it)."""
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if tid < s and part[tid + s] < part[tid]:
            part[tid] = part[tid + s]
        cuda.syncthreads()
        s //= 2


@jit(device=True)
def store_stats(stats, loss, count, bad):
    """Every thread of the ONE block calls it with its partial loss, count and first bad position
    (NO_BAD: none): stats = [loss sum, count, first bad position or -1]."""
    loss_part = cuda.shared.array(RED_TPB, numba.float64)
    count_part = cuda.shared.array(RED_TPB, numba.float64)
    bad_part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    loss_part[tid] = loss
    count_part[tid] = count
    bad_part[tid] = bad
    block_sum(loss_part, tid)
    block_sum(count_part, tid)
    block_min(bad_part, tid)
    if tid == 0:
        stats[0] = loss_part[0]
        stats[1] = count_part[0]
        stats[2] = bad_part[0] if bad_part[0] < NO_BAD else -1.0


def one_block(layer, kernel, *args):
    """Launch the one-block loss ``kernel`` (its last argument: the stats array, kept in the
    layer's workspace); returns (loss sum, count, first bad position or -1) on the host."""
    stats = layer.workspace.get("stats", 3, np.float64)
    kernel[1, RED_TPB](*args, stats)
    host = stats.copy_to_host()
    return float(host[0]), int(host[1]), int(host[2])


@jit(device=True)
def class_base(t, labels):
    """The flat score index of class 0 at label position ``t`` (class c is ``inner`` further per class)."""
    i = t // labels.inner
    return i * labels.channels * labels.inner + t - i * labels.inner


@jit(device=True)
def split_index(k, labels):
    """(label position, class) of the flat score index ``k``."""
    dim = labels.channels * labels.inner
    i = k // dim
    r = k - i * dim
    c = r // labels.inner
    return i * labels.inner + r - c * labels.inner, c


# --- the log loss: SoftmaxWithLoss, InfogainLoss (and MultinomialLogisticLoss's forward) ------------

@jit
def _log_loss_forward(prob, label, H, labels, threshold, stats):
    loss = 0.0
    count = 0.0
    bad = NO_BAD
    for t in range(cuda.threadIdx.x, labels.outer * labels.inner, RED_TPB):
        value = label_class(label[t], labels)
        if value == BAD_LABEL:
            bad = min(bad, t)
        elif value != IGNORED:
            loss = subtract_log_loss(loss, prob, class_base(t, labels), value, H, labels, threshold)
            count += 1.0
    store_stats(stats, loss, count, bad)


@jit
def _log_loss_backward(prob, label, H, row_sums, dx, labels, scale):
    for k in range(cuda.grid(1), labels.outer * labels.channels * labels.inner, cuda.gridsize(1)):
        t, c = split_index(k, labels)
        value = int(label[t])
        skip = labels.has_ignore and value == labels.ignore_label
        dx[k] = 0 if skip else log_loss_grad(prob[k], c, value, H, row_sums, labels, scale)


@jit
def _row_sums(H, n, out):
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[r] = row_sum(H, r, n)


def no_matrix(layer):
    """An empty device array: the log-loss kernels' "no H" (SoftmaxWithLoss, MultinomialLogisticLoss)."""
    return layer.workspace.cached("no_matrix", layer.dtype, lambda: device_array(0, layer.dtype))


def device_matrix(layer, bottom):
    """The log loss's H and its row sums on the device: none (SoftmaxWithLoss); InfogainLoss's third
    bottom (summed at every call: H may change), or the matrix of its source file (copied once)."""
    if len(bottom) == 3:
        sums = layer.workspace.get("sum_rows", layer.channels, layer.dtype)
        _row_sums[grid(layer.channels)](bottom[2].gpu_data(), layer.channels, sums)
        return bottom[2].gpu_data(), sums
    if layer.infogain is None:
        return no_matrix(layer), no_matrix(layer)
    return layer.workspace.cached("infogain", layer.channels,
                                  lambda: (to_device(layer.infogain), to_device(layer.sum_rows)))


def log_loss_stats(layer, prob, label, H, threshold):
    """The log loss's (sum, valid count, first bad position or -1) over ``layer.labels``."""
    return one_block(layer, _log_loss_forward, prob, label, H, layer.labels, threshold)


@gpu_forward(SoftmaxWithLossLayer)
def softmax_with_loss_forward(layer, bottom, top):
    """SoftmaxWithLoss's and InfogainLoss's forward."""
    count = bottom[0].count
    prob = layer.workspace.get("prob", count, layer.dtype)
    softmax_forward(bottom[0].gpu_data(), prob, layer.outer, layer.channels, layer.inner)
    H = bottom[2].gpu_data() if len(bottom) == 3 else device_matrix(layer, bottom)[0]
    layer.set_loss(bottom, top, *log_loss_stats(layer, prob, bottom[1].gpu_data(), H, layer.threshold))
    if len(top) == 2:
        copy(prob, top[1].mutable_gpu_data(), count)


@gpu_backward(SoftmaxWithLossLayer)
def softmax_with_loss_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        n = bottom[0].count
        _log_loss_backward[grid(n)](layer.workspace.get("prob", n, layer.dtype), bottom[1].gpu_data(),
                                    *device_matrix(layer, bottom), bottom[0].mutable_gpu_diff(), layer.labels,
                                    layer.loss_scale(top))


# --- EuclideanLoss ------------------------------------------------------------------------------------

@jit
def _euclidean_forward(a, b, diff, n, stats):
    """diff = a - b; the loss sum: sum(diff^2), the squares in the data's precision (as the CPU's)."""
    total = 0.0
    for i in range(cuda.threadIdx.x, n, RED_TPB):
        d, square = squared_difference(a[i], b[i])
        diff[i] = d
        total += square
    store_stats(stats, total, 0.0, NO_BAD)


@jit
def _scaled_copy(x, y, n, alpha):
    """y = alpha * x with alpha in float64, as the CPU's scaled_copy (dlcore.device.scale rounds alpha
    to the data's dtype first)."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = alpha * x[i]


@gpu_forward(EuclideanLossLayer)
def euclidean_loss_forward(layer, bottom, top):
    n = bottom[0].count
    diff = layer.workspace.get("diff", n, layer.dtype)
    layer.set_loss(bottom, top, one_block(layer, _euclidean_forward, bottom[0].gpu_data(), bottom[1].gpu_data(),
                                          diff, n)[0])


@gpu_backward(EuclideanLossLayer)
def euclidean_loss_backward(layer, top, propagate_down, bottom):
    for i, sign in ((0, 1.0), (1, -1.0)):
        if propagate_down[i]:
            n = bottom[i].count
            _scaled_copy[grid(n)](layer.workspace.get("diff", n, layer.dtype), bottom[i].mutable_gpu_diff(), n,
                                  layer.loss_scale(top, sign))
