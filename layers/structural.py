"""Layers that move or view data without computing on it.

Flatten and Reshape give a top that *shares* the bottom's data and diff
(a view in a new shape: no copy either way); Split gives tops that share
the bottom's data and sums their diffs backward; Concat copies slices;
Silence swallows blobs.  Semantics follow Caffe's flatten_layer.cpp,
reshape_layer.cpp, split_layer.cpp, concat_layer.cpp and silence_layer.cpp.

Concat (and Slice, layers/slicing.py) move blocks between a "whole" blob
and "parts" laid side by side along one axis: ``join_parts`` and
``split_parts`` walk the parts with the block copies of either device
(``copy_block``/``copy_block_back`` here, their twins of the same arguments
in layers/structural_cuda.py).  The GPU code is in
layers/structural_cuda.py.
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .neurons import flat
from .softmax import canonical_axis

CUDA_MODULE = ".structural_cuda"


def _shares(a, b):
    return a.size == b.size and (a.size == 0 or np.shares_memory(a, b))


class ViewLayer(Layer):
    """A top that views the bottom in another shape (Flatten, Reshape)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    allows_in_place = False
    cuda_module = CUDA_MODULE

    def _set_top_shape(self, bottom, top, shape):
        top[0].reshape(shape)
        if top[0].count != bottom[0].count:
            raise ConfigError(f"layer '{self.name}' ({self.type}): output count {top[0].count} must match "
                              f"input count {bottom[0].count}")
        top[0].share_data(bottom[0])
        top[0].share_diff(bottom[0])

    def forward_cpu(self, bottom, top):
        if not _shares(top[0].data, bottom[0].data):
            top[0].share_data(bottom[0])

    def backward_cpu(self, top, propagate_down, bottom):
        # The diffs are one array; copy only if someone replaced one of them.
        if propagate_down[0] and not _shares(top[0].diff, bottom[0].diff):
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register_layer("Flatten")
class FlattenLayer(ViewLayer):
    """Merge axes [axis, end_axis] (default 1..-1) into one."""

    def reshape(self, bottom, top):
        param = self.layer_param.flatten_param
        start = canonical_axis(self, bottom[0], param.axis)
        end = canonical_axis(self, bottom[0], param.end_axis)
        shape = bottom[0].shape
        new_shape = shape[:start] + (bottom[0].count_range(start, end + 1),) + shape[end + 1:]
        self._set_top_shape(bottom, top, new_shape)


@register_layer("Reshape")
class ReshapeLayer(ViewLayer):
    """reshape_param.shape replaces axes [axis, axis + num_axes) of the bottom.

    A 0 copies the bottom's dimension at that position; one -1 is inferred
    from the count.  ``axis`` may be negative (-1: after the last axis);
    ``num_axes`` -1 means up to the last axis.
    """

    def setup(self, bottom, top):
        dims = [int(d) for d in self.layer_param.reshape_param.shape.dim]
        self.copy_axes = []
        self.inferred_axis = -1
        self.constant_count = 1
        for i, d in enumerate(dims):
            if d == 0:
                self.copy_axes.append(i)
            elif d == -1:
                if self.inferred_axis != -1:
                    raise ConfigError(f"layer '{self.name}' (Reshape): new shape contains multiple -1 dims; "
                                      "at most a single (1) value of -1 may be specified")
                self.inferred_axis = i
            elif d < -1:
                raise ConfigError(f"layer '{self.name}' (Reshape): shape dimension {d} at position {i} is "
                                  "invalid (use a positive size, 0 to copy, -1 to infer)")
            else:
                self.constant_count *= d
        self.new_dims = dims

    def reshape(self, bottom, top):
        param = self.layer_param.reshape_param
        shape = bottom[0].shape
        n = len(shape)
        start = param.axis if param.axis >= 0 else n + param.axis + 1
        if not 0 <= start <= n:
            raise ConfigError(f"layer '{self.name}' (Reshape): axis {param.axis} out of range for a {n}-D "
                              f"bottom ({bottom[0].shape_string()})")
        if param.num_axes < -1:
            raise ConfigError(f"layer '{self.name}' (Reshape): num_axes must be >= 0, or -1 for all")
        end = n if param.num_axes == -1 else start + param.num_axes
        if end > n:
            raise ConfigError(f"layer '{self.name}' (Reshape): axis + num_axes = {end} is out of range for a "
                              f"{n}-D bottom ({bottom[0].shape_string()})")
        new_shape = list(shape[:start]) + list(self.new_dims) + list(shape[end:])
        for axis in self.copy_axes:
            if start + axis >= n:
                raise ConfigError(f"layer '{self.name}' (Reshape): new shape contains a 0 at position {axis}, "
                                  f"but there is no corresponding bottom axis to copy "
                                  f"({bottom[0].shape_string()})")
            new_shape[start + axis] = shape[start + axis]
        if self.inferred_axis >= 0:
            explicit = self.constant_count * bottom[0].count_range(0, start) * bottom[0].count_range(end)
            for axis in self.copy_axes:
                explicit *= new_shape[start + axis]
            if explicit == 0 or bottom[0].count % explicit:
                raise ConfigError(f"layer '{self.name}' (Reshape): bottom count ({bottom[0].count}) must be "
                                  f"divisible by the product of the specified dimensions ({explicit})")
            new_shape[start + self.inferred_axis] = bottom[0].count // explicit
        self._set_top_shape(bottom, top, tuple(new_shape))


# --- Split ----------------------------------------------------------------

@njit(cache=True)
def add_into(dst, src):
    for i in range(dst.shape[0]):
        dst[i] += src[i]


@register_layer("Split")
class SplitLayer(Layer):
    """Tops share the bottom's data; backward sums their diffs into the bottom."""

    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    cuda_module = CUDA_MODULE

    def reshape(self, bottom, top):
        for i, blob in enumerate(top):
            if blob is bottom[0]:
                raise ConfigError(f"layer '{self.name}' (Split) does not allow in-place computation (top {i})")
            blob.reshape_like(bottom[0])
            blob.share_data(bottom[0])

    def forward_cpu(self, bottom, top):
        for blob in top:
            if not _shares(blob.data, bottom[0].data):
                blob.share_data(bottom[0])

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dst = flat(bottom[0].diff)
        dst[...] = flat(top[0].diff)
        for blob in top[1:]:
            add_into(dst, flat(blob.diff))


# --- Concat ---------------------------------------------------------------

@njit(cache=True, inline="always")
def copy_run(src, s, dst, d, n):
    """dst[d:d+n] = src[s:s+n]: one contiguous run."""
    for k in range(n):
        dst[d + k] = src[s + k]


@njit(cache=True)
def copy_block(src, dst, outer, src_axis, dst_axis, offset, inner):
    """dst[o, offset:offset+src_axis, :] = src[o, :, :] on flat (outer, axis, inner) views."""
    block = src_axis * inner
    for o in range(outer):
        copy_run(src, o * block, dst, (o * dst_axis + offset) * inner, block)


@njit(cache=True)
def copy_block_back(src, dst, outer, src_axis, dst_axis, offset, inner):
    """The reverse of copy_block: dst[o, :, :] = src[o, offset:offset+dst_axis, :]."""
    block = dst_axis * inner
    for o in range(outer):
        copy_run(src, (o * src_axis + offset) * inner, dst, o * block, block)


def block_axis(layer, bottom, param, legacy):
    """Concat's and Slice's axis in ``bottom``: ``param.axis`` (negative counts from the end), or the
    legacy field named ``legacy`` (``concat_dim``, ``slice_dim``: never negative) if set; not both."""
    name = f"layer '{layer.name}' ({layer.type})"
    if not param.HasField(legacy):
        return canonical_axis(layer, bottom, param.axis)
    if param.HasField("axis"):
        raise ConfigError(f"{name}: either axis or {legacy} should be specified; not both")
    axis = int(getattr(param, legacy))
    if axis >= bottom.num_axes:
        raise ConfigError(f"{name}: {legacy} {axis} out of range for a {bottom.num_axes}-D bottom "
                          f"({bottom.shape_string()})")
    return axis


def _placed(parts):
    """(part, size, whole_axis, offset) for parts [(flat array or None: skip it, size along the axis)]
    laid side by side along the middle axis of a whole of whole_axis = the sum of the sizes."""
    whole_axis = sum(size for _, size in parts)
    offset = 0
    for part, size in parts:
        if part is not None:
            yield part, size, whole_axis, offset
        offset += size


def join_parts(copy_block, parts, whole, outer, inner):
    """whole (flat (outer, whole_axis, inner)) = the parts (flat (outer, size, inner)) side by side;
    ``copy_block``: this module's, or its CUDA twin (structural_cuda.copy_block) on device arrays."""
    for part, size, whole_axis, offset in _placed(parts):
        copy_block(part, whole, outer, size, whole_axis, offset, inner)


def split_parts(copy_block_back, whole, parts, outer, inner):
    """The reverse of join_parts: each part = its block of the whole."""
    for part, size, whole_axis, offset in _placed(parts):
        copy_block_back(whole, part, outer, whole_axis, size, offset, inner)


@register_layer("Concat")
class ConcatLayer(Layer):
    """Join the bottoms along concat_param.axis (default 1; legacy concat_dim)."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def setup(self, bottom, top):
        # One bottom: the top is a view of it, in place or not.  More: the joined top would be resized
        # over the first part while the parts are copied in.
        if len(bottom) > 1 and top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (Concat) with more than one bottom does not allow in-place "
                              "computation")

    def reshape(self, bottom, top):
        n = bottom[0].num_axes
        self.axis = axis = block_axis(self, bottom[0], self.layer_param.concat_param, "concat_dim")
        top_shape = list(bottom[0].shape)
        for i, blob in enumerate(bottom[1:], 1):
            if blob.num_axes != n or any(blob.shape[j] != top_shape[j] for j in range(n) if j != axis):
                raise ConfigError(f"layer '{self.name}' (Concat): all inputs must have the same shape, except "
                                  f"at concat axis {axis}: bottom 0 is {bottom[0].shape_string()}, "
                                  f"bottom {i} is {blob.shape_string()}")
            top_shape[axis] += blob.shape[axis]
        self.outer = bottom[0].count_range(0, axis)
        self.inner = bottom[0].count_range(axis + 1)
        top[0].reshape(tuple(top_shape))
        if len(bottom) == 1:
            top[0].share_data(bottom[0])
            top[0].share_diff(bottom[0])

    def forward_cpu(self, bottom, top):
        if len(bottom) == 1:
            if not _shares(top[0].data, bottom[0].data):
                top[0].share_data(bottom[0])
            return
        join_parts(copy_block, [(flat(b.data), b.shape[self.axis]) for b in bottom], flat(top[0].data), self.outer,
                   self.inner)

    def backward_cpu(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            if propagate_down[0] and not _shares(top[0].diff, bottom[0].diff):
                bottom[0].diff[...] = top[0].diff
            return
        parts = [(flat(b.diff) if down else None, b.shape[self.axis]) for b, down in zip(bottom, propagate_down)]
        split_parts(copy_block_back, flat(top[0].diff), parts, self.outer, self.inner)


# --- Silence --------------------------------------------------------------

@register_layer("Silence")
class SilenceLayer(Layer):
    """Takes bottoms, gives nothing (keeps unused outputs from being printed)."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0
    cuda_module = CUDA_MODULE

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0
