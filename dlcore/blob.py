"""Blob: an N-D array of data and its gradient (diff), as Caffe's Blob."""
import numpy as np

from .errors import ConfigError


def _as_shape(shape):
    """Accept reshape(2, 3), reshape((2, 3)), reshape([2, 3]) or a BlobShape."""
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = shape[0]
        if hasattr(shape, "dim"):  # caffe_pb2.BlobShape
            shape = shape.dim
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"blob dimensions must be >= 0, got {shape}")
    return shape


def shape_string(shape):
    """Caffe's way of printing a shape: '64 1 28 28 (50176)'."""
    count = int(np.prod(shape, dtype=np.int64))
    return " ".join(str(d) for d in shape) + f" ({count})"


class Blob:
    """Holds ``data`` and ``diff``: C-contiguous NumPy arrays of one shape.

    Writes into ``blob.data[...]`` go to the blob; assigning ``blob.data = x``
    copies ``x`` in.  ``share_data``/``share_diff`` make two blobs use one
    array (Caffe's ShareData/ShareDiff), as shared weights and in-place
    reshaping layers need.
    """

    def __init__(self, *shape, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self._shape = None
        self._data = np.zeros(0, self.dtype)
        self._diff = np.zeros(0, self.dtype)
        self.reshape(*(shape or ((),)))

    # --- shape -----------------------------------------------------------
    def reshape(self, *shape):
        shape = _as_shape(shape)
        if shape == self._shape:
            return
        count = int(np.prod(shape, dtype=np.int64))
        if count == self._data.size:
            # Same size: keep the memory (and its values), as Caffe does.
            self._data = self._data.reshape(shape)
            self._diff = self._diff.reshape(shape)
        else:
            self._data = np.zeros(shape, self.dtype)
            self._diff = np.zeros(shape, self.dtype)
        self._shape = shape

    def reshape_like(self, other):
        self.reshape(other.shape)

    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return self._data.size

    @property
    def num_axes(self):
        return len(self._shape)

    def count_range(self, start, end=None):
        """Product of the dimensions in [start, end) (Caffe's count(start, end))."""
        return int(np.prod(self._shape[start:end], dtype=np.int64))

    def canonical_axis(self, axis):
        """Turn a negative axis into a positive one, with a clear error."""
        n = len(self._shape)
        if not -n <= axis < max(n, 1):
            raise ConfigError(f"axis {axis} out of range for a {n}-D blob of shape ({shape_string(self._shape)})")
        return axis + n if axis < 0 else axis

    def _legacy(self, index):
        # Caffe's num/channels/height/width: 1 past the last axis.
        if len(self._shape) > 4:
            raise ValueError("num/channels/height/width need a blob of at most 4 axes")
        return self._shape[index] if index < len(self._shape) else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def shape_string(self):
        return shape_string(self._shape)

    # --- memory ----------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data[...] = value

    @property
    def diff(self):
        return self._diff

    @diff.setter
    def diff(self, value):
        self._diff[...] = value

    def share_data(self, other):
        """Use ``other``'s data array (viewed in this blob's shape)."""
        if other.count != self.count:
            raise ValueError(f"share_data: count mismatch {self.shape_string()} vs {other.shape_string()}")
        self._data = other._data.reshape(self._shape)

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError(f"share_diff: count mismatch {self.shape_string()} vs {other.shape_string()}")
        self._diff = other._diff.reshape(self._shape)

    # --- protobuf --------------------------------------------------------
    def shape_equals(self, proto):
        return proto_shape(proto) == self._shape or (
            not proto.HasField("shape") and len(self._shape) <= 4
            and proto_shape(proto) == (1,) * (4 - len(self._shape)) + self._shape)

    def from_proto(self, proto, reshape=True):
        """Read a BlobProto (new ``shape`` or legacy num/channels/height/width)."""
        shape = proto_shape(proto)
        if reshape:
            self.reshape(shape)
        elif not self.shape_equals(proto):
            raise ValueError(f"shape mismatch: stored {shape_string(shape)}, blob {self.shape_string()}")
        for name, target in (("data", self._data), ("diff", self._diff)):
            values = getattr(proto, "double_" + name) or getattr(proto, name)
            if len(values):
                if len(values) != self.count:
                    raise ValueError(f"BlobProto has {len(values)} {name} values for shape {self.shape_string()}")
                target.reshape(-1)[:] = np.asarray(values, dtype=self.dtype)
        return self

    def to_proto(self, proto=None, write_diff=False):
        """Write this blob into a BlobProto (float or double by dtype)."""
        from proto import caffe_pb2
        proto = proto if proto is not None else caffe_pb2.BlobProto()
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        prefix = "double_" if self.dtype == np.float64 else ""
        getattr(proto, prefix + "data").extend(self._data.ravel().tolist())
        if write_diff:
            getattr(proto, prefix + "diff").extend(self._diff.ravel().tolist())
        return proto

    def __repr__(self):
        return f"Blob({self.shape_string()}, {self.dtype})"


def proto_shape(proto):
    """The shape a BlobProto describes, legacy 4-D fields included."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.double_data) or len(proto.data),) if (proto.data or proto.double_data) else ()
