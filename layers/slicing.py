"""Layers that select parts of blobs: Slice, Crop, Filter, BatchReindex, and Parameter.

Semantics follow Caffe's slice_layer.cpp, crop_layer.cpp, filter_layer.cpp,
batch_reindex_layer.cpp and parameter_layer.hpp:

* Slice: cut bottom 0 along ``axis`` (or the legacy ``slice_dim``) at the
  ``slice_point`` values, or into equal parts; one top shares the bottom.
* Crop: bottom 0 cropped to bottom 1's shape on the axes from ``axis``
  (default 2) on, starting at ``offset`` (one value for all those axes, or
  one per axis; default 0).
* Filter: the last bottom is a selector (N x 1 x ...); the items (along
  axis 0) of the other bottoms whose selector is non-zero are forwarded, in
  order.  Backward copies the gradients back and zeroes the dropped items.
* BatchReindex: top[i] = bottom0[int(bottom1[i])] along axis 0; backward
  sums the gradients of repeated indices.
* Parameter: a learnable blob of ``parameter_param.shape`` (zero-filled,
  as Caffe) exposed as the top, sharing its data and diff.

Index and selector bottoms get no gradient (Caffe aborts if asked;
dltrain raises a clear error, and never forces backward onto them).
The GPU code is in layers/slicing_cuda.py; Slice is Concat backwards and
uses its block copies (``join_parts``/``split_parts`` in
layers/structural.py and layers/structural_cuda.py).  The index lists
Filter and BatchReindex need are computed on the host, from the (small)
selector / index bottom, for either device.
"""
import numpy as np
from numba import njit

from dlcore.blob import Blob
from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .neurons import flat
from .softmax import canonical_axis
from .structural import block_axis, copy_block, copy_block_back, copy_run, join_parts, split_parts

CUDA_MODULE = ".slicing_cuda"


# --- Slice --------------------------------------------------------------------

@register_layer("Slice")
class SliceLayer(Layer):
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        self.slice_points = [int(p) for p in self.layer_param.slice_param.slice_point]

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (Slice)"
        self.axis = axis = block_axis(self, bottom[0], self.layer_param.slice_param, "slice_dim")
        bottom_axis = bottom[0].shape[axis]
        self.outer = bottom[0].count_range(0, axis)
        self.inner = bottom[0].count_range(axis + 1)
        if self.slice_points:
            if len(self.slice_points) != len(top) - 1:
                raise ConfigError(f"{name}: {len(self.slice_points)} slice_point values for {len(top)} tops "
                                  "(give one fewer than the tops)")
            if len(top) > bottom_axis:
                raise ConfigError(f"{name}: {len(top)} tops but slice axis {axis} of the bottom has only "
                                  f"{bottom_axis} entries ({bottom[0].shape_string()})")
            sizes, prev = [], 0
            for p in self.slice_points:
                if p <= prev:
                    raise ConfigError(f"{name}: slice_point values must be increasing and positive "
                                      f"(got {self.slice_points})")
                sizes.append(p - prev)
                prev = p
            if bottom_axis - prev <= 0:
                raise ConfigError(f"{name}: slice_point {prev} is beyond the slice axis size {bottom_axis} "
                                  f"({bottom[0].shape_string()})")
            sizes.append(bottom_axis - prev)
        else:
            if bottom_axis % len(top):
                raise ConfigError(f"{name}: number of top blobs ({len(top)}) should evenly divide input slice "
                                  f"axis ({bottom_axis})")
            sizes = [bottom_axis // len(top)] * len(top)
        shape = list(bottom[0].shape)
        for blob, size in zip(top, sizes):
            if blob is bottom[0] and len(top) > 1:
                raise ConfigError(f"{name} does not allow in-place computation")
            shape[axis] = size
            blob.reshape(tuple(shape))
        if len(top) == 1 and top[0] is not bottom[0]:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward_cpu(self, bottom, top):
        if len(top) > 1:            # (one top shares the bottom)
            split_parts(copy_block_back, flat(bottom[0].data), [(flat(t.data), t.shape[self.axis]) for t in top],
                        self.outer, self.inner)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and len(top) > 1:
            join_parts(copy_block, [(flat(t.diff), t.shape[self.axis]) for t in top], flat(bottom[0].diff),
                       self.outer, self.inner)


# --- Crop ---------------------------------------------------------------------

@njit(cache=True)
def crop_copy(bottom, top, top_shape, bottom_strides, offsets, to_bottom):
    """Between ``top`` and the crop window of ``bottom`` (its ``top_shape`` elements from ``offsets``):
    bottom -> top, or top -> bottom (``to_bottom``: the bottom's other entries are not touched).  Rows
    along the last axis are contiguous in both blobs."""
    nd = top_shape.shape[0]
    rows, last = 1, 1                        # (0-D: one element)
    if nd:
        last = top_shape[nd - 1]
        for a in range(nd - 1):
            rows *= top_shape[a]
    for r in range(rows):
        rem = r
        b = offsets[nd - 1] if nd else 0
        for a in range(nd - 2, -1, -1):
            idx = rem % top_shape[a]
            rem //= top_shape[a]
            b += (idx + offsets[a]) * bottom_strides[a]
        if to_bottom:
            copy_run(top, r * last, bottom, b, last)
        else:
            copy_run(bottom, b, top, r * last, last)


@register_layer("Crop")
class CropLayer(Layer):
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    allows_in_place = False
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        param = self.layer_param.crop_param
        n_axes = bottom[0].num_axes
        start = canonical_axis(self, bottom[0], param.axis)
        if len(param.offset) > 1 and start + len(param.offset) != n_axes:
            raise ConfigError(f"layer '{self.name}' (Crop): number of offset values ({len(param.offset)}) must "
                              f"be equal to the number of dimensions following axis {start} "
                              f"({n_axes - start} for bottom {bottom[0].shape_string()})")

    def reshape(self, bottom, top):
        param = self.layer_param.crop_param
        n_axes = bottom[0].num_axes
        start = canonical_axis(self, bottom[0], param.axis)
        offsets = [0] * n_axes
        shape = list(bottom[0].shape)
        for i in range(start, n_axes):
            if i >= bottom[1].num_axes:
                raise ConfigError(f"layer '{self.name}' (Crop): bottom 1 ({bottom[1].shape_string()}) has no axis "
                                  f"{i} to take the crop size from")
            off = 0
            if len(param.offset) == 1:
                off = int(param.offset[0])
            elif len(param.offset) > 1:
                off = int(param.offset[i - start])
            if bottom[0].shape[i] - off < bottom[1].shape[i]:
                raise ConfigError(f"layer '{self.name}' (Crop): the crop for dimension {i} is out-of-bounds with "
                                  f"size {bottom[1].shape[i]} and offset {off} (bottom 0 has "
                                  f"{bottom[0].shape[i]})")
            shape[i] = bottom[1].shape[i]
            offsets[i] = off
        top[0].reshape(tuple(shape))
        # the crop window, as the kernels take it
        self.top_shape = np.array(shape, np.int64)
        self.offsets = np.array(offsets, np.int64)
        self.bottom_strides = np.array([bottom[0].count_range(i + 1) for i in range(n_axes)], np.int64)

    def forward_cpu(self, bottom, top):
        crop_copy(flat(bottom[0].data), flat(top[0].data), self.top_shape, self.bottom_strides, self.offsets, False)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = flat(bottom[0].diff)
            dx[...] = 0
            crop_copy(dx, flat(top[0].diff), self.top_shape, self.bottom_strides, self.offsets, True)
        if propagate_down[1]:
            bottom[1].diff[...] = 0          # only bottom 1's shape is used


# --- Filter -------------------------------------------------------------------

@njit(cache=True)
def gather_rows(src, dst, indices, dim):
    """dst[n] = src[indices[n]] for rows of ``dim`` elements."""
    for n in range(indices.shape[0]):
        s = indices[n] * dim
        d = n * dim
        for k in range(dim):
            dst[d + k] = src[s + k]


@njit(cache=True)
def filter_backward(dy, dx, position, dim):
    """dx[n] = dy[position[n]] where position[n] >= 0, else 0."""
    for n in range(position.shape[0]):
        p = position[n]
        d = n * dim
        if p >= 0:
            s = p * dim
            for k in range(dim):
                dx[d + k] = dy[s + k]
        else:
            for k in range(dim):
                dx[d + k] = 0


@register_layer("Filter")
class FilterLayer(Layer):
    min_bottom_blobs = 2
    min_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise ConfigError(f"layer '{self.name}' (Filter) needs one top per filtered bottom (all bottoms but "
                              f"the last, the selector): {len(bottom)} bottoms, {len(top)} tops")
        self.num_bottom = len(bottom)
        self.first_reshape = True

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (Filter)"
        selector = bottom[-1]
        if selector.num_axes < 1:
            raise ConfigError(f"{name}: the selector (last bottom) needs an axis 0")
        for i in range(1, selector.num_axes):
            if selector.shape[i] != 1:
                raise ConfigError(f"{name}: selector blob dimensions must be singletons (1), except the first "
                                  f"(got {selector.shape_string()})")
        for i, blob in enumerate(bottom[:-1]):
            if blob.num_axes < 1 or blob.shape[0] != selector.shape[0]:
                raise ConfigError(f"{name}: each bottom should have the same 0th dimension as the selector blob "
                                  f"(bottom {i} is {blob.shape_string()}, selector {selector.shape_string()})")
        values = selector.cpu_data().reshape(-1)
        self.indices = np.flatnonzero(values != 0).astype(np.int64)
        self.position = np.full(selector.shape[0], -1, np.int64)
        self.position[self.indices] = np.arange(self.indices.size)
        kept = self.indices.size
        if self.first_reshape:
            kept = bottom[0].shape[0]            # Caffe: the first reshape keeps the batch size
            self.first_reshape = False
        for blob, t in zip(bottom, top):
            if t is blob:
                raise ConfigError(f"{name} does not allow in-place computation")
            t.reshape((kept,) + blob.shape[1:])

    def allow_force_backward(self, bottom_index):
        # Caffe would abort on force_backward to the selector; dltrain skips it
        return bottom_index != self.num_bottom - 1

    def check_propagate_down(self, propagate_down):
        if propagate_down[-1]:
            raise DLTrainError(f"layer '{self.name}' (Filter) cannot backpropagate to the filter index input "
                               "(its last bottom)")

    def forward_cpu(self, bottom, top):
        for blob, t in zip(bottom, top):
            dim = blob.count_range(1)
            if self.indices.size and dim:
                gather_rows(flat(blob.data), flat(t.data), self.indices, dim)

    def backward_cpu(self, top, propagate_down, bottom):
        self.check_propagate_down(propagate_down)
        for i, t in enumerate(top):
            if propagate_down[i]:
                dim = bottom[i].count_range(1)
                if dim:
                    filter_backward(flat(t.diff), flat(bottom[i].diff), self.position, dim)


# --- BatchReindex -------------------------------------------------------------

def reindex_lists(indices, rows):
    """Who took each bottom row: the top rows ``order[begin[r]:begin[r + 1]]`` took row r (in top
    order, so that the gradient sums add in the order of a scatter over the top rows)."""
    order = np.argsort(indices, kind="stable").astype(np.int64)
    begin = np.searchsorted(indices[order], np.arange(rows + 1), side="left").astype(np.int64)
    return order, begin


@njit(cache=True)
def reindex_backward(dy, dx, order, begin, inner):
    """dx[r] = the sum of the top rows dy[order[begin[r]:begin[r + 1]]] (0 for a row no one took)."""
    for r in range(begin.shape[0] - 1):
        d = r * inner
        for k in range(inner):
            dx[d + k] = 0
        for j in range(begin[r], begin[r + 1]):
            s = order[j] * inner
            for k in range(inner):
                dx[d + k] += dy[s + k]


@register_layer("BatchReindex")
class BatchReindexLayer(Layer):
    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    allows_in_place = False
    cuda_module = CUDA_MODULE

    def reshape(self, bottom, top):
        if bottom[1].num_axes != 1:
            raise ConfigError(f"layer '{self.name}' (BatchReindex): the index bottom must have 1 axis "
                              f"(got {bottom[1].shape_string()})")
        if bottom[0].num_axes < 1:
            raise ConfigError(f"layer '{self.name}' (BatchReindex): bottom 0 needs an axis 0")
        top[0].reshape((bottom[1].shape[0],) + bottom[0].shape[1:])
        self.inner = bottom[0].count_range(1)

    def indices(self, bottom):
        """bottom 1 as integer indices, checked as Caffe does (on the values, before truncation)."""
        raw = bottom[1].cpu_data().reshape(-1)
        num = bottom[0].shape[0]
        bad = np.flatnonzero(~((raw >= 0) & (raw < num)))
        if bad.size:
            k = int(bad[0])
            raise DLTrainError(f"layer '{self.name}' (BatchReindex): index {float(raw[k]):g} at position {k} of "
                               f"bottom 1 is outside [0, {num}) (the batch size of bottom 0)")
        return raw.astype(np.int64)      # C's truncation toward zero

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0     # Caffe would abort on force_backward to the indices; dltrain skips them

    def check_propagate_down(self, propagate_down):
        if propagate_down[1]:
            raise DLTrainError(f"layer '{self.name}' (BatchReindex) cannot backpropagate to the indices (bottom 1)")

    def forward_cpu(self, bottom, top):
        indices = self.indices(bottom)
        if top[0].count:
            gather_rows(flat(bottom[0].data), flat(top[0].data), indices, self.inner)

    def backward_cpu(self, top, propagate_down, bottom):
        self.check_propagate_down(propagate_down)
        if propagate_down[0]:
            order, begin = reindex_lists(self.indices(bottom), bottom[0].shape[0])
            reindex_backward(flat(top[0].diff), flat(bottom[0].diff), order, begin, self.inner)


# --- Parameter ----------------------------------------------------------------

@register_layer("Parameter")
class ParameterLayer(Layer):
    """A learnable blob (parameter_param.shape, zero-filled) given as the top.

    The top shares the blob's data and diff, so the gradient the layers
    above write into the top is the parameter's gradient (as in Caffe).
    """

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        param = self.layer_param.parameter_param
        shape = tuple(int(d) for d in param.shape.dim)
        if not self.blobs:
            self.blobs = [Blob(*shape, dtype=self.dtype)]
        self.shape = shape
        top[0].reshape(shape)
        if top[0].count != self.blobs[0].count:
            raise ConfigError(f"layer '{self.name}' (Parameter): the stored blob ({self.blobs[0].shape_string()}) "
                              f"does not match parameter_param.shape ({top[0].shape_string()})")

    def reshape(self, bottom, top):
        pass

    def share_blob(self, top):
        """The top is the blob (its data and diff)."""
        if not (top[0].shares_data_with(self.blobs[0]) and top[0].shares_diff_with(self.blobs[0])):
            top[0].share_data(self.blobs[0])
            top[0].share_diff(self.blobs[0])

    def forward_cpu(self, bottom, top):
        self.share_blob(top)

    def backward_cpu(self, top, propagate_down, bottom):
        pass
