"""Blob: an N-D array of data and its gradient (diff), as Caffe's Blob."""
import math
import os

import numpy as np

from .errors import AllocationError, BlobError, ConfigError


def _as_shape(shape):
    """Accept reshape(2, 3), reshape((2, 3)), reshape([2, 3]) or a BlobShape."""
    if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
        shape = shape[0]
        if hasattr(shape, "dim"):  # caffe_pb2.BlobShape
            shape = shape.dim
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise BlobError(f"blob dimensions must be >= 0, got {shape}")
    return shape


def shape_string(shape):
    """Caffe's way of printing a shape: '64 1 28 28 (50176)'."""
    return " ".join(str(d) for d in shape) + f" ({math.prod(shape)})"


def _physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


PHYSICAL_MEMORY = _physical_memory()


def format_bytes(n):
    """'4.0 TB', '512 B': decimal units, as disk and memory sizes are sold."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


def _allocation_error(shape, itemsize, detail):
    dims = " x ".join(str(d) for d in shape) or "()"
    return AllocationError(f"cannot allocate {format_bytes(math.prod(shape) * itemsize)} for a blob of shape "
                           f"{dims} x {itemsize} bytes: {detail}")


def _new_memory(shape, count, dtype):
    """Data and diff memory for ``count`` values of a blob of ``shape``.

    Refused before allocating when one array alone is larger than this
    machine's memory: NumPy may hand out such an array lazily, and the
    process would be killed later, when it is written.
    """
    if PHYSICAL_MEMORY is not None and count * dtype.itemsize > PHYSICAL_MEMORY:
        raise _allocation_error(shape, dtype.itemsize,
                                f"more than this machine's memory ({format_bytes(PHYSICAL_MEMORY)})")
    try:
        return SyncedMemory(count, dtype), SyncedMemory(count, dtype)
    except (MemoryError, ValueError, OverflowError) as err:   # the last two: more than NumPy can index
        raise _allocation_error(shape, dtype.itemsize, str(err)) from None


HOST, DEVICE, SYNCED = 0, 1, 2     # SyncedMemory.head: which side holds the newest values


class SyncedMemory:
    """One array's memory on the host and (lazily) on the GPU: Caffe's SyncedMemory.

    ``host`` is a flat NumPy array (always there); ``device`` a flat numba
    device array, created the first time the GPU side is asked for (a CPU
    run never creates one).  ``head`` says which side is newer: HOST,
    DEVICE, or SYNCED (both equal).  Reading a side copies from the other
    only when the other is newer; asking for a side to write marks it the
    head.  Blobs that share data (shared parameters, Flatten, Reshape,
    Split) share one SyncedMemory, so both sides stay shared.
    """

    __slots__ = ("host", "device", "head")

    def __init__(self, count, dtype):
        self.host = np.zeros(count, dtype)
        self.device = None
        self.head = HOST

    def to_host(self):
        """Make the host side current (a device-to-host copy if the device is newer)."""
        if self.head == DEVICE:
            self.device.copy_to_host(self.host)
            self.head = SYNCED

    def to_device(self):
        """Make the device side current; returns the flat device array."""
        if self.device is None:
            from .backend import cuda_module
            self.device = cuda_module().to_device(self.host)
            self.head = SYNCED
        elif self.head == HOST:
            self.device.copy_to_device(self.host)
            self.head = SYNCED
        return self.device


class Blob:
    """Holds ``data`` and ``diff``: C-contiguous NumPy arrays of one shape.

    Writes into ``blob.data[...]`` go to the blob; assigning ``blob.data = x``
    copies ``x`` in.  ``share_data``/``share_diff`` make two blobs use one
    array (Caffe's ShareData/ShareDiff), as shared weights and in-place
    reshaping layers need.

    GPU memory (Caffe's SyncedMemory): when a net runs on the GPU, each of
    data and diff also lives on the device.  ``.data``/``.diff`` (pycaffe's
    host view) copy from the device first if it is newer, and mark the host
    as newer (the caller may write).  ``cpu_data()``/``cpu_diff()`` read
    without that mark; ``gpu_data()``/``gpu_diff()`` return the flat device
    array for reading, ``mutable_gpu_data()``/``mutable_gpu_diff()`` for
    writing.  Copies happen only when the other side is newer.
    """

    def __init__(self, *shape, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self._shape = None
        self._data_mem = SyncedMemory(0, self.dtype)
        self._diff_mem = SyncedMemory(0, self.dtype)
        self._data = self._data_mem.host
        self._diff = self._diff_mem.host
        self.reshape(*(shape or ((),)))

    # --- shape -----------------------------------------------------------
    def reshape(self, *shape):
        shape = _as_shape(shape)
        if shape == self._shape:
            return
        count = math.prod(shape)
        if count != self._data_mem.host.size:
            # New memory on both sides (the device side is made when asked for).
            self._data_mem, self._diff_mem = _new_memory(shape, count, self.dtype)
        # Same size: keep the memory (and its values), as Caffe does.
        try:
            self._data = self._data_mem.host.reshape(shape)
        except ValueError:          # e.g. 0 x 2**70: no values, but NumPy cannot index it
            raise BlobError(f"blob shape {shape_string(shape)} has a dimension too large to index") from None
        self._diff = self._diff_mem.host.reshape(shape)
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
        return math.prod(self._shape[start:end])

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

    # --- memory: the host side (pycaffe's .data / .diff) -------------------
    @property
    def data(self):
        mem = self._data_mem
        if mem.head != HOST:
            mem.to_host()
            mem.head = HOST
        return self._data

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        mem = self._diff_mem
        if mem.head != HOST:
            mem.to_host()
            mem.head = HOST
        return self._diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def cpu_data(self):
        """The data on the host, for reading (no copy back to the device is implied)."""
        self._data_mem.to_host()
        return self._data

    def cpu_diff(self):
        self._diff_mem.to_host()
        return self._diff

    def mutable_cpu_data(self):
        return self.data

    def mutable_cpu_diff(self):
        return self.diff

    # --- memory: the device side -------------------------------------------
    def gpu_data(self):
        """The data as a flat device array, for reading."""
        return self._data_mem.to_device()

    def gpu_diff(self):
        return self._diff_mem.to_device()

    def mutable_gpu_data(self):
        """The data as a flat device array, for writing (the device becomes the newer side)."""
        mem = self._data_mem
        device = mem.to_device()
        mem.head = DEVICE
        return device

    def mutable_gpu_diff(self):
        mem = self._diff_mem
        device = mem.to_device()
        mem.head = DEVICE
        return device

    @property
    def data_head(self):
        """Which side holds the newest data: 'host', 'device' or 'synced'."""
        return _HEAD_NAMES[self._data_mem.head]

    @property
    def diff_head(self):
        return _HEAD_NAMES[self._diff_mem.head]

    def has_device_memory(self):
        return self._data_mem.device is not None or self._diff_mem.device is not None

    def share_data(self, other):
        """Use ``other``'s data memory (viewed in this blob's shape), host and device alike."""
        if other.count != self.count:
            raise ValueError(f"share_data: count mismatch {self.shape_string()} vs {other.shape_string()}")
        self._data_mem = other._data_mem
        self._data = other._data_mem.host.reshape(self._shape)

    def share_diff(self, other):
        if other.count != self.count:
            raise ValueError(f"share_diff: count mismatch {self.shape_string()} vs {other.shape_string()}")
        self._diff_mem = other._diff_mem
        self._diff = other._diff_mem.host.reshape(self._shape)

    def shares_data_with(self, other):
        return self._data_mem is other._data_mem

    def shares_diff_with(self, other):
        return self._diff_mem is other._diff_mem

    # --- protobuf --------------------------------------------------------
    def shape_equals(self, proto):
        return proto_shape(proto) == self._shape or (
            not proto.HasField("shape") and len(self._shape) <= 4
            and proto_shape(proto) == (1,) * (4 - len(self._shape)) + self._shape)

    def from_proto(self, proto, reshape=True):
        """Read a BlobProto (new ``shape`` or legacy num/channels/height/width).

        As Caffe's FromProto: the data values (``double_data`` if any, else
        ``data``) must match the shape's count; diff values are optional.
        Raises BlobError, without the file and layer, which the caller adds.
        """
        shape = _as_shape(proto_shape(proto))
        count = math.prod(shape)
        data = proto.double_data or proto.data
        diff = proto.double_diff or proto.diff
        if len(data) != count:
            raise BlobError(f"the file holds {len(data)} values for shape {shape_string(shape)}")
        if len(diff) and len(diff) != count:
            raise BlobError(f"the file holds {len(diff)} diff values for shape {shape_string(shape)}")
        if reshape:
            self.reshape(shape)
        elif not self.shape_equals(proto):
            raise BlobError(f"shape mismatch: the file holds {shape_string(shape)}, the blob is "
                            f"{self.shape_string()}")
        self.data.reshape(-1)[:] = np.asarray(data, dtype=self.dtype)
        if len(diff):
            self.diff.reshape(-1)[:] = np.asarray(diff, dtype=self.dtype)
        return self

    def to_proto(self, proto=None, write_diff=False):
        """Write this blob into a BlobProto (float or double by dtype)."""
        from dltrain.proto import caffe_pb2
        proto = proto if proto is not None else caffe_pb2.BlobProto()
        proto.Clear()
        proto.shape.dim.extend(self._shape)
        prefix = "double_" if self.dtype == np.float64 else ""
        getattr(proto, prefix + "data").extend(self.cpu_data().ravel().tolist())
        if write_diff:
            getattr(proto, prefix + "diff").extend(self.cpu_diff().ravel().tolist())
        return proto

    def __repr__(self):
        return f"Blob({self.shape_string()}, {self.dtype})"


_HEAD_NAMES = {HOST: "host", DEVICE: "device", SYNCED: "synced"}


def proto_shape(proto):
    """The shape a BlobProto describes, legacy 4-D fields included."""
    if proto.HasField("shape"):
        return tuple(int(d) for d in proto.shape.dim)
    if any(proto.HasField(f) for f in ("num", "channels", "height", "width")):
        return (proto.num, proto.channels, proto.height, proto.width)
    return (len(proto.double_data) or len(proto.data),) if (proto.data or proto.double_data) else ()
