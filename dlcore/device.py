"""The GPU backend's device plumbing, shared by the layers and the solvers.

Launch shapes and ``cuda.jit`` defaults, scalars in the data's dtype,
device arrays, the per-layer device workspace, and the level-1 array work
every part of the engine needs on the device (fill, copy, axpby, scale,
sums and maxima).  Layer math that only layers use (the tiled matrix
product, col2im, ...) lives in :mod:`dltrain.layers.kernels_cuda`.

Imported only when something runs on the GPU, so a CPU run never imports
``numba.cuda``.

Conventions
-----------
* Device arrays are FLAT (1-D, what ``Blob.gpu_data()`` returns); kernels
  take element offsets instead of sliced views (slicing a device array
  costs host time at every launch).
* Kernels are dtype-generic: compiled per dtype on first use.  Scalars are
  passed in the arrays' dtype (:func:`scalar`), so float32 work stays
  float32 on the device.
* Element-wise kernels use grid-stride loops, so any launch shape is
  correct; :func:`grid` picks one (small under the simulator, which runs
  one OS thread per CUDA thread).
"""
import importlib
import math

import numba
import numpy as np
from numba import cuda

SIM = bool(numba.config.ENABLE_CUDASIM)

# launch shapes: threads per block, and the most blocks a grid-stride kernel gets
TPB = 16 if SIM else 256
MAX_BLOCKS = 2 if SIM else 2048

_jit = cuda.jit(cache=not SIM)


def jit(fn=None, **options):
    """``cuda.jit`` with dltrain's defaults (on-disk cache on a real GPU)."""
    options.setdefault("cache", not SIM)
    if fn is None:
        return cuda.jit(**options)
    return cuda.jit(**options)(fn)


def grid(n, tpb=None):
    """(blocks, threads) for a grid-stride kernel over ``n`` items."""
    tpb = tpb or TPB
    return max(1, min((int(n) + tpb - 1) // tpb, MAX_BLOCKS)), tpb


def scalar(value, dtype):
    """``value`` as a NumPy scalar of ``dtype`` (so kernels compute in the data's precision)."""
    return np.dtype(dtype).type(value)


def device_zeros(count, dtype):
    """A zero-filled flat device array."""
    out = cuda.device_array(max(int(count), 0), np.dtype(dtype))
    if count:
        fill(out, 0)
    return out


def device_array(count, dtype):
    return cuda.device_array(max(int(count), 0), np.dtype(dtype))


def to_device(array):
    return cuda.to_device(np.ascontiguousarray(array))


def synchronize():
    cuda.synchronize()


class DeviceWorkspace:
    """What a layer keeps on the device between calls: scratch arrays (re-allocated only when
    they must grow) and tables derived from the shapes.  Each layer owns one
    (:attr:`dlcore.Layer.workspace`)."""

    def __init__(self):
        self._flat = {}
        self._cached = {}

    def get(self, name, count, dtype):
        """A flat device array of at least ``count`` elements (contents undefined)."""
        dtype = np.dtype(dtype)
        count = max(int(count), 1)
        buf = self._flat.get(name)
        if buf is None or buf.size < count or buf.dtype != dtype:
            buf = cuda.device_array(count, dtype)
            self._flat[name] = buf
        return buf

    def zeros(self, name, count, dtype):
        buf = self.get(name, count, dtype)
        fill(buf, 0, count)
        return buf

    def cached(self, name, key, build):
        """``build()``'s result, kept under ``name`` until ``key`` changes (geometry
        tables, masks, index arrays: anything derived from the shapes)."""
        held = self._cached.get(name)
        if held is None or held[0] != key:
            held = self._cached[name] = (key, build())
        return held[1]

    def clear(self):
        self._flat.clear()
        self._cached.clear()


# ---------------------------------------------------------------------------
# element-wise helpers (grid-stride)
# ---------------------------------------------------------------------------

@_jit
def _fill(x, off, n, value):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        x[off + i] = value


def fill(x, value, n=None, off=0):
    """x[off:off+n] = value (n: the rest of the array)."""
    n = x.size - off if n is None else int(n)
    if n > 0:
        _fill[grid(n)](x, off, n, scalar(value, x.dtype))


@_jit
def _copy(src, s_off, dst, d_off, n):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        dst[d_off + i] = src[s_off + i]


def copy(src, dst, n=None, s_off=0, d_off=0):
    """dst[d_off:d_off+n] = src[s_off:s_off+n]."""
    n = src.size - s_off if n is None else int(n)
    if n > 0:
        _copy[grid(n)](src, s_off, dst, d_off, n)


@_jit
def _axpby(a, x, b, y, n):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        y[i] = a * x[i] + b * y[i]


def axpby(a, x, b, y, n=None):
    """y = a*x + b*y (Caffe's caffe_gpu_axpby)."""
    n = y.size if n is None else int(n)
    if n > 0:
        _axpby[grid(n)](scalar(a, y.dtype), x, scalar(b, y.dtype), y, n)


@_jit
def _add_into(dst, src, n):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        dst[i] += src[i]


def add_into(dst, src, n=None):
    """dst += src."""
    n = dst.size if n is None else int(n)
    if n > 0:
        _add_into[grid(n)](dst, src, n)


@_jit
def _scale(x, y, n, alpha):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, n, stride):
        y[i] = alpha * x[i]


def scale(x, y, alpha, n=None):
    """y = alpha * x (y may be x)."""
    n = x.size if n is None else int(n)
    if n > 0:
        _scale[grid(n)](x, y, n, scalar(alpha, y.dtype))


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------

RED_TPB = 16 if SIM else 256


@jit(device=True)
def block_sum(part, tid):
    """Tree-sum the RED_TPB partial sums in the shared array ``part``: the total ends in part[0].

    Every thread of the block must call it (it synchronizes before and after each step)."""
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2


@_jit
def _reduce_sum(x, off, n, squares, out, out_idx):
    """out[out_idx] += sum(x[off:off+n]) (or the sum of squares), in float64, across blocks."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = numba.float64(x[off + i])
        if squares:
            acc += v * v
        else:
            acc += v
    part[tid] = acc
    block_sum(part, tid)
    if tid == 0:
        cuda.atomic.add(out, out_idx, part[0])


def reduce_sum(x, out, out_idx=0, n=None, off=0, squares=False):
    """Add sum(x) (``squares``: sum(x^2)) into the float64 device array ``out[out_idx]``."""
    n = x.size - off if n is None else int(n)
    if n > 0:
        blocks = max(1, min((n + RED_TPB - 1) // RED_TPB, MAX_BLOCKS))
        _reduce_sum[blocks, RED_TPB](x, off, n, squares, out, out_idx)


def sum_host(x, n=None, squares=False):
    """sum(x) (or sum of squares) as a Python float (one small copy back)."""
    out = device_zeros(1, np.float64)
    reduce_sum(x, out, 0, n, squares=squares)
    return float(out.copy_to_host()[0])


@_jit
def _reduce_max(x, n, out):
    """out[0] = max(out[0], max(x[:n])) across blocks."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    best = -math.inf
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = numba.float64(x[i])
        if v > best:
            best = v
    part[tid] = best
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if tid < s and part[tid + s] > part[tid]:
            part[tid] = part[tid + s]
        cuda.syncthreads()
        s //= 2
    if tid == 0:
        cuda.atomic.max(out, 0, part[0])


def max_host(x, n=None):
    """max(x) as a Python float."""
    n = x.size if n is None else int(n)
    out = cuda.to_device(np.array([-np.inf]))
    if n > 0:
        blocks = max(1, min((n + RED_TPB - 1) // RED_TPB, MAX_BLOCKS))
        _reduce_max[blocks, RED_TPB](x, n, out)
    return float(out.copy_to_host()[0])


# ---------------------------------------------------------------------------
# the element-wise map: a formula over device arrays (the CPU's is dlcore.formula.cpu_map)
# ---------------------------------------------------------------------------

def _map_body(f, inputs, outputs):
    """A grid-stride kernel (n, params, *outputs, *inputs): outputs[..][i] = f(inputs[0][i], ..., *params)."""
    if outputs == 2:
        if inputs == 1:
            def kernel(n, p, u, v, a):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], *p)
        elif inputs == 2:
            def kernel(n, p, u, v, a, b):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], b[i], *p)
        else:
            def kernel(n, p, u, v, a, b, c):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], b[i], c[i], *p)
    elif inputs == 1:
        def kernel(n, p, u, a):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], *p)
    elif inputs == 2:
        def kernel(n, p, u, a, b):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], b[i], *p)
    else:
        def kernel(n, p, u, a, b, c):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], b[i], c[i], *p)
    return kernel


_MAPS = {}


def map_kernel(module, name, inputs, outputs):
    """The map kernel of the formula ``module.name`` with 1-3 input and 1-2 output arrays (made once)."""
    key = (module, name, inputs, outputs)
    kernel = _MAPS.get(key)
    if kernel is None:
        if not (1 <= inputs <= 3 and 1 <= outputs <= 2):
            raise ValueError(f"map_kernel: {inputs} inputs, {outputs} outputs (1-3 and 1-2 supported)")
        kernel = jit(_map_body(getattr(importlib.import_module(module), name), inputs, outputs))
        # how to make it again (bench/cuda_compile_check.py compiles every kernel a run used)
        kernel._dltrain_key = (__name__, "map_kernel", key)
        _MAPS[key] = kernel
    return kernel


def map_formula(f, n, inputs, outputs, params=()):
    """``outputs[0][i] = f(inputs[0][i], ..., *params)`` for i < n on the device (a formula returning a
    pair fills two outputs): the GPU's ``dlcore.formula.cpu_map``.  ``params``: scalars, passed as
    given (in the data's dtype, as a rule)."""
    if n:
        kernel = map_kernel(f.__module__, f.__name__, len(inputs), len(outputs))
        kernel[grid(n)](n, tuple(params), *outputs, *inputs)
