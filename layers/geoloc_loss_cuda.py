"""GeolocLoss on the GPU (the GPU side of layers/geoloc_loss.py).

The same well-conditioned great-circle formulas as the CPU kernel (see
layers/geoloc_loss.py: angles from the coordinate *differences*, exact
degree reduction, the antipode trick past a quarter turn, the unit-speed
gradient, 0 at exactly coincident or antipodal points), in float64,
written as CUDA device functions.  One thread per row writes the row's
angle and its four partial derivatives; ONE block sums the angles (fixed
order, no atomics) into a float64 that the host reads back for the
scalar loss.  Backward scales the stored derivatives by the loss weight.
"""
import math

import numba
import numpy as np
from numba import cuda

from .kernels_cuda import SIM, grid, jit

ONE_BLOCK = 32 if SIM else 256


@cuda.jit(device=True, inline=True)
def _reduce(d, period):
    return d - period * math.floor(d / period + 0.5)


@cuda.jit(device=True, inline=True)
def _sincos(x, degrees):
    if not degrees:
        return math.sin(x), math.cos(x)
    r = _reduce(x, 360.0)
    q = math.floor(r / 90.0 + 0.5)
    t = (r - 90.0 * q) * (math.pi / 180.0)
    s = math.sin(t)
    c = math.cos(t)
    k = int(q) % 4
    if k == 0:
        return s, c
    if k == 1:
        return c, -s
    if k == 2:
        return -s, -c
    return -c, s


@cuda.jit(device=True, inline=True)
def _bearings(lat1, lat2, dlat, dlon, degrees):
    s1, c1 = _sincos(lat1, degrees)
    s2, c2 = _sincos(lat2, degrees)
    sd, cd = _sincos(dlat, degrees)
    half, _unused = _sincos(0.5 * dlon, degrees)
    hav2 = 2.0 * half * half
    sl, _unused2 = _sincos(dlon, degrees)
    north1 = sd + s1 * c2 * hav2
    east1 = c2 * sl
    north2 = -sd + s2 * c1 * hav2
    east2 = -c1 * sl
    cosine = cd - c1 * c2 * hav2
    return north1, east1, north2, east2, cosine, c1, c2


@jit
def _geoloc_rows(pred, label, n, degrees, grad, angles):
    if degrees:
        scale = math.pi / 180.0
        period = 360.0
    else:
        scale = 1.0
        period = 2.0 * math.pi
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        lat1 = numba.float64(pred[2 * i])
        lon1 = numba.float64(pred[2 * i + 1])
        lat2 = numba.float64(label[2 * i])
        lon2 = numba.float64(label[2 * i + 1])
        dlat = lat2 - lat1
        dlon = _reduce(lon2 - lon1, period)
        n1, e1, n2, e2, cosine, c1, c2 = _bearings(lat1, lat2, dlat, dlon, degrees)
        flip = 1.0
        if cosine < 0.0:
            dlat = -lat2 - lat1
            dlon = _reduce(lon2 - lon1 + 0.5 * period, period)
            n1, e1, n2, e2, cosine, c1, c2 = _bearings(lat1, -lat2, dlat, dlon, degrees)
            flip = -1.0
        s1 = math.sqrt(n1 * n1 + e1 * e1)
        s2 = math.sqrt(n2 * n2 + e2 * e2)
        theta = math.atan2(s1, cosine)
        if flip < 0.0:
            theta = math.pi - theta
        angles[i] = theta
        if s1 == 0.0 or s2 == 0.0:
            grad[4 * i] = 0.0
            grad[4 * i + 1] = 0.0
            grad[4 * i + 2] = 0.0
            grad[4 * i + 3] = 0.0
        else:
            grad[4 * i] = -flip * n1 / s1 * scale
            grad[4 * i + 1] = -flip * c1 * e1 / s1 * scale
            grad[4 * i + 2] = -n2 / s2 * scale
            grad[4 * i + 3] = -flip * c2 * e2 / s2 * scale


@jit
def _sum_one_block(values, n, out):
    part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    for i in range(tid, n, ONE_BLOCK):
        acc += values[i]
    part[tid] = acc
    cuda.syncthreads()
    s = ONE_BLOCK // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        out[0] = part[0]


@jit
def _geoloc_backward(grad, n, coef, column, diff):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        diff[2 * i] = coef * grad[4 * i + column]
        diff[2 * i + 1] = coef * grad[4 * i + column + 1]


def _buffers(layer, n):
    bufs = getattr(layer, "_gpu_bufs", None)
    if bufs is None or bufs[0] != n:
        bufs = (n, cuda.device_array(max(4 * n, 1), np.float64), cuda.device_array(max(n, 1), np.float64),
                cuda.device_array(1, np.float64))
        layer._gpu_bufs = bufs
    return bufs[1], bufs[2], bufs[3]


def forward(layer, bottom, top):
    """The sum of the rows' central angles (radians), as a Python float."""
    n = bottom[0].shape[0]
    grad, angles, total = _buffers(layer, n)
    if n == 0:
        return 0.0
    _geoloc_rows[grid(n)](bottom[0].gpu_data(), bottom[1].gpu_data(), n, layer.degrees, grad, angles)
    _sum_one_block[1, ONE_BLOCK](angles, n, total)
    return float(total.copy_to_host()[0])


def backward(layer, top, propagate_down, bottom):
    n = bottom[0].shape[0]
    if n == 0:
        return
    grad, _, _ = _buffers(layer, n)
    coef = float(top[0].cpu_diff().flat[0]) * layer.radius / max(n, 1)
    for i in range(2):
        if propagate_down[i]:
            _geoloc_backward[grid(n)](grad, n, coef, 2 * i, bottom[i].mutable_gpu_diff())
