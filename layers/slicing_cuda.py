"""CUDA kernels of Crop, Filter and BatchReindex: the GPU side of layers/slicing.py.

(Slice reuses Concat's block copies in layers/structural_cuda.py; Parameter
moves nothing.)  The index lists Filter and BatchReindex need are computed
on the host from the (small) selector / index bottom, as Caffe does, and
copied over once per forward.  BatchReindex's backward is a gather: each
bottom row sums the top rows that point at it (a CSR list built on the
host, in top order, so the sums match the CPU's bit for bit); no atomics.
"""
import numpy as np
from numba import cuda

from . import kernels_cuda as K
from .kernels_cuda import grid, jit, scalar


# --- Crop ---------------------------------------------------------------------

@jit
def _crop(src, dst, n, nd, top_shape, bottom_strides, offsets, forward):
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        rem = t
        b = 0
        for a in range(nd - 1, -1, -1):
            idx = rem % top_shape[a]
            rem //= top_shape[a]
            b += (idx + offsets[a]) * bottom_strides[a]
        if forward:
            dst[t] = src[b]
        else:
            dst[b] = src[t]


def crop(layer, src, dst, forward):
    """forward: top = the crop of bottom; else the top gradient into the crop window of the bottom's."""
    n = int(np.prod(layer.top_shape)) if layer.top_shape.size else 1
    if not n:
        return
    geo = layer._gpu_geo
    if geo is None:
        geo = layer._gpu_geo = (K.to_device(layer.top_shape), K.to_device(layer.bottom_strides),
                                K.to_device(layer.offsets))
    _crop[grid(n)](src, dst, n, layer.top_shape.size, geo[0], geo[1], geo[2], forward)


# --- Filter / BatchReindex ------------------------------------------------------

@jit
def _gather_rows(src, dst, indices, rows, dim):
    n = rows * dim
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = t // dim
        dst[t] = src[indices[r] * dim + (t - r * dim)]


@jit
def _filter_backward(dy, dx, position, rows, dim, zero):
    n = rows * dim
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = t // dim
        p = position[r]
        if p >= 0:
            dx[t] = dy[p * dim + (t - r * dim)]
        else:
            dx[t] = zero


@jit
def _reindex_backward(dy, dx, order, begin, rows, inner, zero):
    n = rows * inner
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        r = t // inner
        k = t - r * inner
        acc = zero
        for j in range(begin[r], begin[r + 1]):
            acc += dy[order[j] * inner + k]
        dx[t] = acc


def gather_rows(src, dst, indices, rows, dim):
    """dst[r] = src[indices[r]] for ``rows`` rows of ``dim`` (indices: an int64 device array)."""
    if rows and dim:
        _gather_rows[grid(rows * dim)](src, dst, indices, rows, dim)


def _filter_lists(layer):
    lists = layer._gpu_indices
    if lists is None:
        lists = layer._gpu_indices = (K.to_device(np.maximum(layer.indices, 0) if layer.indices.size
                                                  else np.zeros(1, np.int64)),
                                      K.to_device(layer.position if layer.position.size else np.zeros(1, np.int64)))
    return lists


def filter_forward(layer, bottom, top):
    if not layer.indices.size:
        return
    indices, _ = _filter_lists(layer)
    for blob, t in zip(bottom, top):
        gather_rows(blob.gpu_data(), t.mutable_gpu_data(), indices, layer.indices.size, blob.count_range(1))


def filter_backward(layer, top, propagate_down, bottom):
    _, position = _filter_lists(layer)
    for i, t in enumerate(top):
        if not propagate_down[i]:
            continue
        rows, dim = bottom[i].shape[0], bottom[i].count_range(1)
        if not (rows and dim):
            continue
        dx = bottom[i].mutable_gpu_diff()
        if t.count:
            _filter_backward[grid(rows * dim)](t.gpu_diff(), dx, position, rows, dim, scalar(0, dx.dtype))
        else:
            K.fill(dx, 0, rows * dim)


def reindex_forward(layer, bottom, top, indices):
    if top[0].count:
        gather_rows(bottom[0].gpu_data(), top[0].mutable_gpu_data(), K.to_device(indices), indices.size, layer.inner)


def reindex_backward(layer, top, bottom, indices):
    rows, inner = bottom[0].shape[0], layer.inner
    if not (rows and inner):
        return
    dx = bottom[0].mutable_gpu_diff()
    if not indices.size:
        K.fill(dx, 0, rows * inner)
        return
    order = np.argsort(indices, kind="stable").astype(np.int64)
    begin = np.searchsorted(indices[order], np.arange(rows + 1), side="left").astype(np.int64)
    _reindex_backward[grid(rows * inner)](top[0].gpu_diff(), dx, K.to_device(order), K.to_device(begin), rows,
                                          inner, scalar(0, dx.dtype))
