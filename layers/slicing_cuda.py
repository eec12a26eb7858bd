"""GPU code of Slice, Crop, Filter, BatchReindex and Parameter: the CUDA side of layers/slicing.py.

Each launch function has the name and arguments of the CPU loop it stands
for (``crop_copy``, ``gather_rows``, ``filter_backward``,
``reindex_backward``).  Slice uses Concat's block copies
(layers/structural_cuda.py); Parameter moves nothing.  The index lists
Filter and BatchReindex need are computed on the host from the (small)
selector / index bottom, as Caffe does (slicing.py), and copied over when
they change.  BatchReindex's backward is a gather: each bottom row sums the
top rows that took it (``reindex_lists``, in top order, so the sums match
the CPU's bit for bit); no atomics.
"""
from numba import cuda

from dlcore.device import fill, grid, jit, to_device
from dlcore.layer import gpu_backward, gpu_forward

from .slicing import BatchReindexLayer, CropLayer, FilterLayer, ParameterLayer, SliceLayer, reindex_lists
from .structural import join_parts, split_parts
from .structural_cuda import copy_block, copy_block_back


def _on_device(layer, name, host):
    """``host`` (a small int64 table) on the device, copied again only when it changes."""
    return layer.workspace.cached(name, host.tobytes(), lambda: to_device(host))


# --- Slice ----------------------------------------------------------------------

@gpu_forward(SliceLayer)
def slice_forward(layer, bottom, top):
    if len(top) > 1:            # (one top shares the bottom)
        split_parts(copy_block_back, bottom[0].gpu_data(), [(t.mutable_gpu_data(), t.shape[layer.axis]) for t in top],
                    layer.outer, layer.inner)


@gpu_backward(SliceLayer)
def slice_backward(layer, top, propagate_down, bottom):
    if propagate_down[0] and len(top) > 1:
        join_parts(copy_block, [(t.gpu_diff(), t.shape[layer.axis]) for t in top], bottom[0].mutable_gpu_diff(),
                   layer.outer, layer.inner)


# --- Crop ---------------------------------------------------------------------

@jit
def _crop_copy(bottom, top, top_shape, bottom_strides, offsets, to_bottom):
    nd = top_shape.size
    n = 1
    for a in range(nd):
        n *= top_shape[a]
    for t in range(cuda.grid(1), n, cuda.gridsize(1)):
        rem = t
        b = 0
        for a in range(nd - 1, -1, -1):
            idx = rem % top_shape[a]
            rem //= top_shape[a]
            b += (idx + offsets[a]) * bottom_strides[a]
        if to_bottom:
            bottom[b] = top[t]
        else:
            top[t] = bottom[b]


def crop_copy(bottom, top, top_shape, bottom_strides, offsets, to_bottom):
    """Between ``top`` and the crop window of ``bottom``: bottom -> top, or top -> bottom (``to_bottom``)
    (the tables: device arrays)."""
    if top.size:
        _crop_copy[grid(top.size)](bottom, top, top_shape, bottom_strides, offsets, to_bottom)


def _crop_window(layer):
    return (_on_device(layer, "top_shape", layer.top_shape), _on_device(layer, "bottom_strides", layer.bottom_strides),
            _on_device(layer, "offsets", layer.offsets))


@gpu_forward(CropLayer)
def crop_forward(layer, bottom, top):
    crop_copy(bottom[0].gpu_data(), top[0].mutable_gpu_data(), *_crop_window(layer), False)


@gpu_backward(CropLayer)
def crop_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        dx = bottom[0].mutable_gpu_diff()
        fill(dx, 0, bottom[0].count)
        crop_copy(dx, top[0].gpu_diff(), *_crop_window(layer), True)
    if propagate_down[1]:
        fill(bottom[1].mutable_gpu_diff(), 0, bottom[1].count)


# --- Filter / BatchReindex ------------------------------------------------------

@jit
def _gather_rows(src, dst, indices, dim):
    for t in range(cuda.grid(1), indices.size * dim, cuda.gridsize(1)):
        r = t // dim
        dst[t] = src[indices[r] * dim + (t - r * dim)]


@jit
def _filter_backward(dy, dx, position, dim):
    for t in range(cuda.grid(1), position.size * dim, cuda.gridsize(1)):
        r = t // dim
        p = position[r]
        if p >= 0:
            dx[t] = dy[p * dim + (t - r * dim)]
        else:
            dx[t] = 0


@jit
def _reindex_backward(dy, dx, order, begin, inner):
    for t in range(cuda.grid(1), (begin.size - 1) * inner, cuda.gridsize(1)):
        r = t // inner
        k = t - r * inner
        acc = dx.dtype.type(0)
        for j in range(begin[r], begin[r + 1]):
            acc += dy[order[j] * inner + k]
        dx[t] = acc


def gather_rows(src, dst, indices, dim):
    """dst[n] = src[indices[n]] for rows of ``dim`` elements (indices: an int64 device array)."""
    if indices.size and dim:
        _gather_rows[grid(indices.size * dim)](src, dst, indices, dim)


def filter_backward(dy, dx, position, dim):
    """dx[n] = dy[position[n]] where position[n] >= 0, else 0."""
    if position.size and dim:
        _filter_backward[grid(position.size * dim)](dy, dx, position, dim)


def reindex_backward(dy, dx, order, begin, inner):
    """dx[r] = the sum of the top rows dy[order[begin[r]:begin[r + 1]]] (0 for a row no one took)."""
    if begin.size > 1 and inner:
        _reindex_backward[grid((begin.size - 1) * inner)](dy, dx, order, begin, inner)


@gpu_forward(FilterLayer)
def filter_layer_forward(layer, bottom, top):
    if not layer.indices.size:
        return
    indices = _on_device(layer, "indices", layer.indices)
    for blob, t in zip(bottom, top):
        gather_rows(blob.gpu_data(), t.mutable_gpu_data(), indices, blob.count_range(1))


@gpu_backward(FilterLayer)
def filter_layer_backward(layer, top, propagate_down, bottom):
    layer.check_propagate_down(propagate_down)
    for t, b, down in zip(top, bottom, propagate_down):
        if not (down and b.count):
            continue
        if t.count:
            filter_backward(t.gpu_diff(), b.mutable_gpu_diff(), _on_device(layer, "position", layer.position),
                            b.count_range(1))
        else:
            fill(b.mutable_gpu_diff(), 0, b.count)


@gpu_forward(BatchReindexLayer)
def batch_reindex_forward(layer, bottom, top):
    indices = layer.indices(bottom)
    if top[0].count:
        gather_rows(bottom[0].gpu_data(), top[0].mutable_gpu_data(), _on_device(layer, "indices", indices),
                    layer.inner)


@gpu_backward(BatchReindexLayer)
def batch_reindex_backward(layer, top, propagate_down, bottom):
    layer.check_propagate_down(propagate_down)
    if not (propagate_down[0] and bottom[0].count):
        return
    dx = bottom[0].mutable_gpu_diff()
    indices = layer.indices(bottom)
    if not indices.size:
        fill(dx, 0, bottom[0].count)
        return
    order, begin = reindex_lists(indices, bottom[0].shape[0])
    reindex_backward(top[0].gpu_diff(), dx, _on_device(layer, "order", order), _on_device(layer, "begin", begin),
                     layer.inner)


# --- Parameter ----------------------------------------------------------------

@gpu_forward(ParameterLayer)
def parameter_forward(layer, bottom, top):
    layer.share_blob(top)


@gpu_backward(ParameterLayer)
def parameter_backward(layer, top, propagate_down, bottom):
    """Nothing to do: the top's diff is the blob's, as on the CPU."""
