"""GPU code of Eltwise, Tile, Reduction and ArgMax: the CUDA side of layers/elementwise.py.

The formulas and tie rules are the CPU's own (``@formula`` in
elementwise.py), mapped over the flat device arrays by
``dlcore.device.map_formula``.  Eltwise's SUM uses the shared
scale/axpby of dlcore.device; MAX keeps its winner index in a device int32
array of the layer's workspace.  Tile indexes the flat output; Reduction
runs one block per output (a shared-memory tree in float64); ArgMax one
thread per item (``argmax_items``: top_k passes over the item, no scratch
memory).
"""
import numba
import numpy as np
from numba import cuda

from dlcore.device import MAX_BLOCKS, RED_TPB, axpby, block_sum, copy, grid, jit, map_formula, scale
from dlcore.layer import gpu_backward, gpu_forward

from .elementwise import (ELTWISE_PROD, ELTWISE_SUM, ArgMaxLayer, EltwiseLayer, ReductionLayer, TileLayer,
                          argmax_items, keep_larger, product, quotient, reduction_grad, reduction_term, routed)


# --- Eltwise ------------------------------------------------------------------

@gpu_forward(EltwiseLayer)
def eltwise_forward_gpu(layer, bottom, top):
    n = top[0].count
    y = top[0].mutable_gpu_data()
    if layer.op == ELTWISE_PROD:
        map_formula(product, n, [bottom[0].gpu_data(), bottom[1].gpu_data()], [y])
        for blob in bottom[2:]:
            map_formula(product, n, [y, blob.gpu_data()], [y])
    elif layer.op == ELTWISE_SUM:
        scale(bottom[0].gpu_data(), y, layer.coeffs[0], n)
        for blob, c in zip(bottom[1:], layer.coeffs[1:]):
            axpby(c, blob.gpu_data(), 1.0, y, n)
    else:
        # bottom 0 wins over bottom 1 where larger; a later bottom where larger than the maximum so far
        winner = layer.workspace.get("max_winner", n, np.int32)
        map_formula(keep_larger, n, [bottom[1].gpu_data(), bottom[0].gpu_data()], [y, winner], (1, 0))
        for i, blob in enumerate(bottom[2:], 2):
            map_formula(keep_larger, n, [y, blob.gpu_data(), winner], [y, winner], (i,))


@gpu_backward(EltwiseLayer)
def eltwise_backward_gpu(layer, top, propagate_down, bottom):
    n = top[0].count
    dy = top[0].gpu_diff()
    for i in layer.backward_order(bottom, top):
        blob = bottom[i]
        if not propagate_down[i]:
            continue
        dx = blob.mutable_gpu_diff()
        if layer.op == ELTWISE_PROD:
            if layer.stable_prod_grad:
                others = [b for j, b in enumerate(bottom) if j != i]
                copy(others[0].gpu_data(), dx, n)
                for other in others[1:]:
                    map_formula(product, n, [other.gpu_data(), dx], [dx])
            else:
                map_formula(quotient, n, [top[0].gpu_data(), blob.gpu_data()], [dx])
            map_formula(product, n, [dx, dy], [dx])
        elif layer.op == ELTWISE_SUM:
            scale(dy, dx, layer.coeffs[i], n)
        else:
            map_formula(routed, n, [dy, layer.workspace.get("max_winner", n, np.int32)], [dx], (i,))


# --- Tile ---------------------------------------------------------------------

@jit
def _tile_forward(x, y, outer, inner, tiles):
    total = outer * tiles * inner
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        y[t] = x[t // (tiles * inner) * inner + t % inner]


@jit
def _tile_backward(dy, dx, outer, inner, tiles):
    """dx[o, k] = the sum of its tiles' dy, in the CPU's order (tile 0 first)."""
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        base = t // inner * tiles * inner + t % inner
        acc = dy[base]
        for r in range(1, tiles):
            acc += dy[base + r * inner]
        dx[t] = acc


@gpu_forward(TileLayer)
def tile_forward_gpu(layer, bottom, top):
    n = top[0].count
    if n:
        _tile_forward[grid(n)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), layer.outer, layer.inner,
                               layer.tiles)


@gpu_backward(TileLayer)
def tile_backward_gpu(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if propagate_down[0] and n:
        _tile_backward[grid(n)](top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), layer.outer, layer.inner,
                                layer.tiles)


# --- Reduction ----------------------------------------------------------------

@jit
def _reduce_rows(x, y, num, dim, op, coeff):
    """y[i] = coeff * the sum of row i's terms (in float64); one block per row (grid-stride over rows)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    for i in range(cuda.blockIdx.x, num, cuda.gridDim.x):
        acc = 0.0
        base = i * dim
        for k in range(tid, dim, RED_TPB):
            acc += numba.float64(reduction_term(x[base + k], op))
        part[tid] = acc
        block_sum(part, tid)
        if tid == 0:
            y[i] = part[0] * coeff
        cuda.syncthreads()


@jit
def _reduction_backward(x, dy, dx, num, dim, op, coeff):
    for t in range(cuda.grid(1), num * dim, cuda.gridsize(1)):
        dx[t] = reduction_grad(x[t], dy[t // dim] * coeff, op)


@gpu_forward(ReductionLayer)
def reduction_forward_gpu(layer, bottom, top):
    if layer.num:
        blocks = max(1, min(layer.num, MAX_BLOCKS * 4))
        _reduce_rows[blocks, RED_TPB](bottom[0].gpu_data(), top[0].mutable_gpu_data(), layer.num, layer.dim,
                                      layer.op, float(layer.coeff))


@gpu_backward(ReductionLayer)
def reduction_backward_gpu(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if propagate_down[0] and n:
        # coeff as a float64, as the CPU computes g = dy * coeff
        _reduction_backward[grid(n)](bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                                     layer.num, layer.dim, layer.op, float(layer.coeff))


# --- ArgMax -------------------------------------------------------------------

@jit
def _argmax(x, y, g):
    for i in range(cuda.grid(1), g.num, cuda.gridsize(1)):
        argmax_items(x, y, g, i, i + 1)


@gpu_forward(ArgMaxLayer)
def argmax_forward_gpu(layer, bottom, top):
    if layer.num and layer.dim:
        _argmax[grid(layer.num)](bottom[0].gpu_data(), top[0].mutable_gpu_data(), layer.geometry())
