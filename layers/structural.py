"""Layers that move or view data without computing on it.

Flatten and Reshape give a top that *shares* the bottom's data and diff
(a view in a new shape: no copy either way); Split gives tops that share
the bottom's data and sums their diffs backward; Concat copies slices;
Silence swallows blobs.  Semantics follow Caffe's flatten_layer.cpp,
reshape_layer.cpp, split_layer.cpp, concat_layer.cpp and silence_layer.cpp.
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .softmax import canonical_axis


def _shares(a, b):
    return a.size == b.size and (a.size == 0 or np.shares_memory(a, b))


class _ViewLayer(Layer):
    """A top that views the bottom in another shape (Flatten, Reshape)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def _check_not_in_place(self, bottom, top):
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' ({self.type}) does not allow in-place computation")

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

    def forward_gpu(self, bottom, top):
        if not top[0].shares_data_with(bottom[0]):
            top[0].share_data(bottom[0])

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0] and not top[0].shares_diff_with(bottom[0]):
            from . import kernels_cuda as K
            K.copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)


@register_layer("Flatten")
class FlattenLayer(_ViewLayer):
    """Merge axes [axis, end_axis] (default 1..-1) into one."""

    def reshape(self, bottom, top):
        self._check_not_in_place(bottom, top)
        param = self.layer_param.flatten_param
        start = canonical_axis(self, bottom[0], param.axis)
        end = canonical_axis(self, bottom[0], param.end_axis)
        shape = bottom[0].shape
        new_shape = shape[:start] + (bottom[0].count_range(start, end + 1),) + shape[end + 1:]
        self._set_top_shape(bottom, top, new_shape)


@register_layer("Reshape")
class ReshapeLayer(_ViewLayer):
    """reshape_param.shape replaces axes [axis, axis + num_axes) of the bottom.

    A 0 copies the bottom's dimension at that position; one -1 is inferred
    from the count.  ``axis`` may be negative (-1: after the last axis);
    ``num_axes`` -1 means up to the last axis.
    """

    def setup(self, bottom, top):
        self._check_not_in_place(bottom, top)
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
        self._check_not_in_place(bottom, top)
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
        dst = bottom[0].diff.reshape(-1)
        dst[...] = top[0].diff.reshape(-1)
        for blob in top[1:]:
            add_into(dst, blob.diff.reshape(-1))

    def forward_gpu(self, bottom, top):
        for blob in top:
            if not blob.shares_data_with(bottom[0]):
                blob.share_data(bottom[0])

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        from . import kernels_cuda as K
        n = bottom[0].count
        dst = bottom[0].mutable_gpu_diff()
        K.copy(top[0].gpu_diff(), dst, n)
        for blob in top[1:]:
            K.add_into(dst, blob.gpu_diff(), n)


# --- Concat ---------------------------------------------------------------

@njit(cache=True)
def copy_block(src, dst, outer, src_axis, dst_axis, offset, inner):
    """dst[o, offset:offset+src_axis, :] = src[o, :, :] on flat (outer, axis, inner) views."""
    block = src_axis * inner
    for o in range(outer):
        s = o * block
        d = (o * dst_axis + offset) * inner
        for k in range(block):
            dst[d + k] = src[s + k]


@njit(cache=True)
def copy_block_back(src, dst, outer, src_axis, dst_axis, offset, inner):
    """The reverse of copy_block: dst[o, :, :] = src[o, offset:offset+dst_axis, :]."""
    block = dst_axis * inner
    for o in range(outer):
        s = (o * src_axis + offset) * inner
        d = o * block
        for k in range(block):
            dst[d + k] = src[s + k]


@register_layer("Concat")
class ConcatLayer(Layer):
    """Join the bottoms along concat_param.axis (default 1; legacy concat_dim)."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        param = self.layer_param.concat_param
        if param.HasField("axis") and param.HasField("concat_dim"):
            raise ConfigError(f"layer '{self.name}' (Concat): either axis or concat_dim should be specified; "
                              "not both")

    def reshape(self, bottom, top):
        param = self.layer_param.concat_param
        n = bottom[0].num_axes
        if param.HasField("concat_dim"):
            axis = int(param.concat_dim)
            if axis >= n:
                raise ConfigError(f"layer '{self.name}' (Concat): concat_dim {axis} out of range for a {n}-D "
                                  f"bottom ({bottom[0].shape_string()})")
        else:
            axis = canonical_axis(self, bottom[0], param.axis)
        self.axis = axis
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
        dst = top[0].data.reshape(-1)
        dst_axis = top[0].shape[self.axis]
        offset = 0
        for blob in bottom:
            src_axis = blob.shape[self.axis]
            copy_block(blob.data.reshape(-1), dst, self.outer, src_axis, dst_axis, offset, self.inner)
            offset += src_axis

    def backward_cpu(self, top, propagate_down, bottom):
        if len(bottom) == 1:
            if propagate_down[0] and not _shares(top[0].diff, bottom[0].diff):
                bottom[0].diff[...] = top[0].diff
            return
        src = top[0].diff.reshape(-1)
        src_axis = top[0].shape[self.axis]
        offset = 0
        for blob, down in zip(bottom, propagate_down):
            dst_axis = blob.shape[self.axis]
            if down:
                copy_block_back(src, blob.diff.reshape(-1), self.outer, src_axis, dst_axis, offset, self.inner)
            offset += dst_axis

    def forward_gpu(self, bottom, top):
        if len(bottom) == 1:
            if not top[0].shares_data_with(bottom[0]):
                top[0].share_data(bottom[0])
            return
        from . import structural_cuda as C
        dst = top[0].mutable_gpu_data()
        dst_axis = top[0].shape[self.axis]
        offset = 0
        for blob in bottom:
            src_axis = blob.shape[self.axis]
            C.concat_forward(blob.gpu_data(), dst, self.outer, src_axis, dst_axis, offset, self.inner)
            offset += src_axis

    def backward_gpu(self, top, propagate_down, bottom):
        from . import kernels_cuda as K
        if len(bottom) == 1:
            if propagate_down[0] and not top[0].shares_diff_with(bottom[0]):
                K.copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)
            return
        from . import structural_cuda as C
        src = top[0].gpu_diff()
        src_axis = top[0].shape[self.axis]
        offset = 0
        for blob, down in zip(bottom, propagate_down):
            dst_axis = blob.shape[self.axis]
            if down:
                C.concat_backward(src, blob.mutable_gpu_diff(), self.outer, src_axis, dst_axis, offset, self.inner)
            offset += dst_axis


# --- Silence --------------------------------------------------------------

@register_layer("Silence")
class SilenceLayer(Layer):
    """Takes bottoms, gives nothing (keeps unused outputs from being printed)."""

    min_bottom_blobs = 1
    exact_num_top_blobs = 0

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        for blob, down in zip(bottom, propagate_down):
            if down:
                blob.diff[...] = 0

    def forward_gpu(self, bottom, top):
        pass

    def backward_gpu(self, top, propagate_down, bottom):
        from . import kernels_cuda as K
        for blob, down in zip(bottom, propagate_down):
            if down:
                K.fill(blob.mutable_gpu_diff(), 0, blob.count)
