"""CUDA kernels of Eltwise, Tile, Reduction and ArgMax: the GPU side of layers/elementwise.py.

Same formulas and tie rules as the CPU kernels.  Eltwise's SUM uses the
shared scale/axpby helpers of layers/kernels_cuda.py; MAX keeps its
winner index in a device int32 array on the layer.  Reduction runs one
block per output (a shared-memory tree in float64); ArgMax one thread per
item (top_k passes over the item, no scratch memory).
"""
import numba
import numpy as np
from numba import cuda

from . import kernels_cuda as K
from .kernels_cuda import RED_TPB, MAX_BLOCKS, grid, jit, scalar


# --- Eltwise ------------------------------------------------------------------

@jit
def _mul(a, b, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = a[i] * b[i]


@jit
def _div(a, b, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = a[i] / b[i]


@jit
def _max_first(a, b, y, mask, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if a[i] > b[i]:
            y[i] = a[i]
            mask[i] = 0
        else:
            y[i] = b[i]
            mask[i] = 1


@jit
def _max_next(b, index, y, mask, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if b[i] > y[i]:
            y[i] = b[i]
            mask[i] = index


@jit
def _max_backward(dy, mask, index, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        if mask[i] == index:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * 0


def mul(a, b, y, n):
    if n:
        _mul[grid(n)](a, b, y, n)


def eltwise_forward(layer, bottom, top):
    n = top[0].count
    if not n:
        return
    y = top[0].mutable_gpu_data()
    if layer.op == layer.PROD:
        mul(bottom[0].gpu_data(), bottom[1].gpu_data(), y, n)
        for blob in bottom[2:]:
            mul(y, blob.gpu_data(), y, n)
    elif layer.op == layer.SUM:
        K.scale(bottom[0].gpu_data(), y, layer.coeffs[0], n)
        for blob, c in zip(bottom[1:], layer.coeffs[1:]):
            K.axpby(c, blob.gpu_data(), 1.0, y, n)
    else:
        mask = getattr(layer, "_gpu_mask", None)
        if mask is None or mask.size != n:
            mask = layer._gpu_mask = K.device_array(n, np.int32)
        _max_first[grid(n)](bottom[0].gpu_data(), bottom[1].gpu_data(), y, mask, n)
        for i, blob in enumerate(bottom[2:], 2):
            _max_next[grid(n)](blob.gpu_data(), i, y, mask, n)


def eltwise_backward(layer, top, propagate_down, bottom):
    n = top[0].count
    if not n:
        return
    dy = top[0].gpu_diff()
    for i, blob in enumerate(bottom):
        if not propagate_down[i]:
            continue
        dx = blob.mutable_gpu_diff()
        if layer.op == layer.PROD:
            if layer.stable_prod_grad:
                others = [b for j, b in enumerate(bottom) if j != i]
                K.copy(others[0].gpu_data(), dx, n)
                for other in others[1:]:
                    mul(other.gpu_data(), dx, dx, n)
            else:
                _div[grid(n)](top[0].gpu_data(), blob.gpu_data(), dx, n)
            mul(dx, dy, dx, n)
        elif layer.op == layer.SUM:
            K.scale(dy, dx, layer.coeffs[i], n)
        else:
            _max_backward[grid(n)](dy, layer._gpu_mask, i, dx, n)


# --- Tile ---------------------------------------------------------------------

@jit
def _tile_forward(x, y, outer, inner, tiles):
    total = outer * tiles * inner
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        k = t % inner
        o = t // (tiles * inner)
        y[t] = x[o * inner + k]


@jit
def _tile_backward(dy, dx, outer, inner, tiles):
    total = outer * inner
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        k = t % inner
        o = t // inner
        base = o * tiles * inner + k
        acc = dy[base]
        for r in range(1, tiles):
            acc += dy[base + r * inner]
        dx[t] = acc


def tile_forward(x, y, outer, inner, tiles):
    n = outer * inner * tiles
    if n:
        _tile_forward[grid(n)](x, y, outer, inner, tiles)


def tile_backward(dy, dx, outer, inner, tiles):
    n = outer * inner
    if n:
        _tile_backward[grid(n)](dy, dx, outer, inner, tiles)


# --- Reduction ----------------------------------------------------------------

@jit
def _reduce_rows(x, y, num, dim, op, coeff):
    """y[i] = coeff * reduce(x row i); one block per row (grid-stride over rows)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    for i in range(cuda.blockIdx.x, num, cuda.gridDim.x):
        acc = 0.0
        base = i * dim
        for k in range(tid, dim, RED_TPB):
            v = numba.float64(x[base + k])
            if op == 2:
                acc += abs(v)
            elif op == 3:
                acc += v * v
            else:
                acc += v
        part[tid] = acc
        K.block_sum(part, tid)
        if tid == 0:
            y[i] = part[0] * coeff
        cuda.syncthreads()


@jit
def _reduction_backward(x, dy, dx, num, dim, op, coeff):
    total = num * dim
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        g = dy[t // dim] * coeff
        if op == 2:
            v = x[t]
            if v > 0:
                dx[t] = g
            elif v < 0:
                dx[t] = -g
            else:
                dx[t] = g * 0
        elif op == 3:
            dx[t] = 2 * g * x[t]
        else:
            dx[t] = g


def reduction_forward(x, y, num, dim, op, coeff):
    if num:
        blocks = max(1, min(num, MAX_BLOCKS * 4))
        _reduce_rows[blocks, RED_TPB](x, y, num, dim, op, float(coeff))


def reduction_backward(x, dy, dx, num, dim, op, coeff):
    n = num * dim
    if n:
        _reduction_backward[grid(n)](x, dy, dx, num, dim, op, scalar(coeff, dx.dtype))


# --- ArgMax -------------------------------------------------------------------

@jit
def _argmax(x, y, num, dim, axis_dist, top_k, out_max_val, has_axis):
    for i in range(cuda.grid(1), num, cuda.gridsize(1)):
        base = (i // axis_dist) * dim * axis_dist + i % axis_dist
        prev_v = x[base] * 0
        prev_j = -1
        for k in range(top_k):
            best_j = -1
            best = prev_v
            for j in range(dim):
                v = x[base + j * axis_dist]
                if prev_j >= 0 and not (v < prev_v or (v == prev_v and j < prev_j)):
                    continue
                if best_j < 0 or v > best or (v == best and j > best_j):
                    best = v
                    best_j = j
            prev_v = best
            prev_j = best_j
            if out_max_val and not has_axis:
                y[2 * i * top_k + k] = best_j
                y[2 * i * top_k + top_k + k] = best
            else:
                o = (i // axis_dist * top_k + k) * axis_dist + i % axis_dist
                if out_max_val:
                    y[o] = best
                else:
                    y[o] = best_j


def argmax_forward(x, y, num, dim, axis_dist, top_k, out_max_val, has_axis):
    if num and dim:
        _argmax[grid(num)](x, y, num, dim, axis_dist, top_k, bool(out_max_val), bool(has_axis))
