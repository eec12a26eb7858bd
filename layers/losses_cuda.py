"""CUDA kernels of the loss layers SoftmaxWithLoss and EuclideanLoss (the GPU side of layers/losses.py).

A loss is reduced on the device by ONE block (the positions of a batch are
few; one block needs no atomics and sums in a fixed order, so a run repeats
bit for bit) into a small float64 "stats" array: [loss sum, valid count,
first bad label position or -1].  The host reads those three numbers back
(the loss value is needed on the host every iteration anyway, as in Caffe),
checks the labels, and writes the scalar top.
"""
import math

import numba
import numpy as np
from numba import cuda

from .kernels_cuda import SIM, grid, jit, scalar

ONE_BLOCK = 32 if SIM else 256
FLT_MIN = 1.1754943508222875e-38
_INT_LIMIT = 2147483648.0


@jit
def _softmax_loss_forward(prob, label, outer, channels, inner, has_ignore, ignore_label, stats):
    """stats = [sum of -log(max(p_label, FLT_MIN)), valid count, first bad position or -1] (one block)."""
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    count_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    bad_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    dim = channels * inner
    loss = 0.0
    count = 0.0
    bad = math.inf
    for t in range(tid, outer * inner, ONE_BLOCK):
        raw = numba.float64(label[t])
        if not (-_INT_LIMIT < raw < _INT_LIMIT):
            if t < bad:
                bad = t
            continue
        value = int(raw)
        if has_ignore and value == ignore_label:
            continue
        if value < 0 or value >= channels:
            if t < bad:
                bad = t
            continue
        i = t // inner
        j = t - i * inner
        p = numba.float64(prob[i * dim + value * inner + j])
        loss -= math.log(max(p, FLT_MIN))
        count += 1.0
    loss_part[tid] = loss
    count_part[tid] = count
    bad_part[tid] = bad
    cuda.syncthreads()
    s = ONE_BLOCK // 2
    while s > 0:
        if tid < s:
            loss_part[tid] += loss_part[tid + s]
            count_part[tid] += count_part[tid + s]
            if bad_part[tid + s] < bad_part[tid]:
                bad_part[tid] = bad_part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        stats[0] = loss_part[0]
        stats[1] = count_part[0]
        stats[2] = bad_part[0] if bad_part[0] < math.inf else -1.0


@jit
def _softmax_loss_backward(prob, label, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    dim = channels * inner
    for t in range(cuda.grid(1), outer * dim, cuda.gridsize(1)):
        i = t // dim
        r = t - i * dim
        c = r // inner
        j = r - c * inner
        value = int(label[i * inner + j])
        if has_ignore and value == ignore_label:
            dx[t] = 0
        elif c == value:
            dx[t] = (prob[t] - 1) * scale
        else:
            dx[t] = prob[t] * scale


def softmax_loss_forward(prob, label, outer, channels, inner, has_ignore, ignore_label, stats):
    """Fill ``stats`` (a float64 device array of 3); returns (loss sum, valid count, bad position)."""
    _softmax_loss_forward[1, ONE_BLOCK](prob, label, outer, channels, inner, bool(has_ignore), int(ignore_label),
                                        stats)
    host = stats.copy_to_host()
    return float(host[0]), int(host[1]), int(host[2])


def softmax_loss_backward(prob, label, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    n = outer * channels * inner
    if n:
        _softmax_loss_backward[grid(n)](prob, label, dx, outer, channels, inner, bool(has_ignore),
                                        int(ignore_label), scalar(scale, dx.dtype))


@jit
def _euclidean_forward(a, b, diff, n, stats):
    """diff = a - b; stats[0] = sum(diff^2) (one block, float64)."""
    part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    total = 0.0
    for i in range(tid, n, ONE_BLOCK):
        d = a[i] - b[i]
        diff[i] = d
        total += d * d           # the product in the data's precision, summed in float64 (as the CPU kernel)
    part[tid] = total
    cuda.syncthreads()
    s = ONE_BLOCK // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        stats[0] = part[0]


def euclidean_forward(a, b, diff, n, stats):
    """diff = a - b on the device; returns sum(diff^2) as a float."""
    if n == 0:
        return 0.0
    _euclidean_forward[1, ONE_BLOCK](a, b, diff, n, stats)
    return float(stats.copy_to_host()[0])


def stats_array(size=3):
    return cuda.device_array(size, np.float64)
