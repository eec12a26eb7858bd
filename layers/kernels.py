"""What the convolution-like layers share: im2col/col2im, the matrix product, layout moves, and the
learnable weights' setup.

Every kernel is ``@njit(cache=True)`` and dtype-generic: it works on float32
and float64 arrays alike (no float literals that would narrow float64), so
one source serves training (float32) and gradient checks (float64).  Kernels
take FLAT (1-D, C-contiguous) arrays plus their dimensions, so each is
compiled once per dtype and cached on disk.  A convolution's geometry
travels as one record, :class:`ConvGeometry` (``g.kh``, ``g.OW``...), the
same record the GPU kernels of :mod:`dltrain.layers.kernels_cuda` take.

Column layouts (rows ordered (channel, kernel row, kernel column) as in
Caffe's im2col; P = OH*OW output pixels per image):

* batch layout ``(C*kh*kw, N*P)``: the whole batch side by side, so a
  convolution is ONE GEMM per group, ``W (M, C*kh*kw) @ col -> (M, N*P)``;
  ``cnp_to_ncp`` then moves the result into the blob layout ``(N, M, P)``
  adding the bias, and ``ncp_to_cnp`` is the reverse move for gradients
  (summing the bias gradient on the way).  Best for small output planes.
* image layout ``(N, C*kh*kw, P)``: Caffe's per-image buffers stacked, so a
  stacked GEMM ``W @ col[n]`` writes each image's top directly.  Best for
  large output planes (no layout move).

``im2col``/``col2im`` take ``row_stride`` and ``image_stride`` and so serve
both layouts.
"""
import os
from collections import namedtuple

import numpy as np
from numba import njit, prange

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.formula import formula

# Kernels run on one thread; BLAS (NumPy's OpenBLAS) uses all cores for the
# GEMMs.  Measured on the 2-core target: numba's parallel=True (OpenMP
# layer) made LeNet's conv layers 3-8x SLOWER: its spinning worker threads
# and OpenBLAS's fight for the two cores after every hand-over; with the
# workqueue layer or OMP_WAIT_POLICY=PASSIVE it gained nothing overall.  The
# loops are still written with prange where iterations are independent (not
# col2im, whose rows overlap), so flipping this is a one-line experiment;
# delete layers/__pycache__/kernels.* (and pooling.*) first: numba's on-disk
# cache kept serving the old build when only this flag changed.
PARALLEL = False

__all__ = ["PARALLEL", "ConvGeometry", "conv_geometry", "conv_out_size", "im2col", "col2im", "cnp_to_ncp",
           "ncp_to_cnp", "add_channel_bias", "channel_sum", "matmul", "Workspace", "learnable_blobs",
           "param_down"]


# ---------------------------------------------------------------------------
# the convolution's geometry
# ---------------------------------------------------------------------------

class ConvGeometry(namedtuple("ConvGeometry", "C H W kh kw ph pw sh sw dh dw OH OW")):
    """One image's side of a 2-D convolution (ints): C channels of H x W, a kh x kw kernel with
    its pad, stride and dilation, and the OH x OW output pixels.  Kernels on both devices take it
    whole and read ``g.kh``, ``g.OW``..."""
    __slots__ = ()


@formula
def conv_out_size(size, kernel, pad, stride, dilation):
    """Caffe's convolution output size: floor((in + 2p - (d(k-1)+1)) / s) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def conv_geometry(channels, height, width, kernel, pad, stride, dilation):
    """The :class:`ConvGeometry` of ``channels`` x ``height`` x ``width`` images and (h, w) pairs
    ``kernel``, ``pad``, ``stride``, ``dilation``; the output size by Caffe's rule."""
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = ([int(v) for v in pair] for pair in (kernel, pad, stride, dilation))
    H, W = int(height), int(width)
    return ConvGeometry(int(channels), H, W, kh, kw, ph, pw, sh, sw, dh, dw,
                        conv_out_size(H, kh, ph, sh, dh), conv_out_size(W, kw, pw, sw, dw))


# ---------------------------------------------------------------------------
# im2col / col2im (2-D, pad, stride, dilation)
#
# Kernels take FLAT (1-D) arrays plus their dimensions, and index them with
# unsigned integers: Numba then skips its negative-index wrap-around select,
# which otherwise blocks vectorization (measured 3-4x on LeNet's shapes).
# Signed offsets are computed first and turned unsigned once known >= 0.
# ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _valid_range(k, pad, stride, dilation, size, out):
    """Output positions o in [lo, hi) whose input o*stride + off (off = k*dilation - pad) is in [0, size)."""
    off = k * dilation - pad
    lo = -(off // stride) if off < 0 else 0     # ceil(-off / stride)
    hi = (size - 1 - off) // stride + 1 if size - 1 - off >= 0 else 0
    if hi > out:
        hi = out
    if hi < lo:
        hi = lo
    return lo, hi, off


@njit(cache=True, inline="always")
def _row_spans(g, r):
    """Column row r = (channel c, kernel row ki, kernel column kj): c, and the output rows [ylo, yhi)
    and columns [xlo, xhi) whose input pixel (y*sh + yoff, x*sw + xoff) lies inside the image."""
    ylo, yhi, yoff = _valid_range((r // g.kw) % g.kh, g.ph, g.sh, g.dh, g.H, g.OH)
    xlo, xhi, xoff = _valid_range(r % g.kw, g.pw, g.sw, g.dw, g.W, g.OW)
    return r // (g.kh * g.kw), ylo, yhi, yoff, xlo, xhi, xoff


@njit(cache=True, parallel=PARALLEL)
def im2col(data, N, g, col, row_stride, image_stride):
    """Images ``data`` (flat N*C*H*W, geometry ``g``) -> columns ``col``; every column element is written.

    Element (row r = (c, ki, kj), image n, output pixel p) goes to
    ``col[r*row_stride + n*image_stride + p]``: ``(N*P, P)`` gives the batch
    layout (C*kh*kw, N*P), ``(P, C*kh*kw*P)`` the image layout (N, C*kh*kw, P).
    """
    usw = np.uint64(g.sw)
    uow = np.uint64(g.OW)
    for r in prange(g.C * g.kh * g.kw):
        c, ylo, yhi, yoff, xlo, xhi, xoff = _row_spans(g, r)
        nx = np.uint64(xhi - xlo)
        uxlo = np.uint64(xlo)
        uxhi = np.uint64(xhi)
        for n in range(N):
            for y in range(g.OH):
                o = np.uint64(r * row_stride + n * image_stride + y * g.OW)
                if y < ylo or y >= yhi:
                    for t in range(uow):
                        col[o + t] = 0
                    continue
                for t in range(uxlo):
                    col[o + t] = 0
                s = np.uint64(((n * g.C + c) * g.H + y * g.sh + yoff) * g.W + xlo * g.sw + xoff)
                d = o + uxlo
                if g.sw == 1:
                    for t in range(nx):
                        col[d + t] = data[s + t]
                else:
                    for t in range(nx):
                        col[d + t] = data[s + t * usw]
                for t in range(uxhi, uow):
                    col[o + t] = 0


@njit(cache=True)
def col2im(col, N, g, data, row_stride, image_stride):
    """Columns -> images ``data`` (flat N*C*H*W), overwritten with the sums (layouts as im2col).

    The loops follow the column buffer's memory order (rows outer in the batch
    layout, images outer in the image layout): reading it sequentially is 2x
    faster than visiting it plane by plane.  Integer divisions stay out of
    the inner loops (they cost another 2x).
    """
    for t in range(np.uint64(N * g.C * g.H * g.W)):
        data[t] = 0
    rows = g.C * g.kh * g.kw
    if row_stride >= image_stride:
        for r in range(rows):
            _col2im_row(col, data, r, N, g, row_stride, image_stride)
        return
    # Image layout: each row's spans computed once.
    spans = np.empty((rows, 7), np.int64)
    for r in range(rows):
        spans[r, 0], spans[r, 1], spans[r, 2], spans[r, 3], spans[r, 4], spans[r, 5], spans[r, 6] = \
            _row_spans(g, r)
    for n in range(N):
        for r in range(rows):
            _add_column_row(col, data, n, r, spans[r, 0], spans[r, 1], spans[r, 2], spans[r, 3], spans[r, 4],
                            np.uint64(spans[r, 5] - spans[r, 4]), spans[r, 6], g, row_stride, image_stride)


@njit(cache=True)
def _col2im_row(col, data, r, N, g, row_stride, image_stride):
    """Batch layout: add column row r of every image into the images."""
    c, ylo, yhi, yoff, xlo, xhi, xoff = _row_spans(g, r)
    nx = np.uint64(xhi - xlo)
    for n in range(N):
        _add_column_row(col, data, n, r, c, ylo, yhi, yoff, xlo, nx, xoff, g, row_stride, image_stride)


@njit(cache=True, inline="always")
def _add_column_row(col, data, n, r, c, ylo, yhi, yoff, xlo, nx, xoff, g, row_stride, image_stride):
    """Add column row r of image n (channel c; spans as _row_spans, nx = xhi - xlo) into the image."""
    usw = np.uint64(g.sw)
    for y in range(ylo, yhi):
        d = np.uint64(((n * g.C + c) * g.H + y * g.sh + yoff) * g.W + xlo * g.sw + xoff)
        o = np.uint64(r * row_stride + n * image_stride + y * g.OW + xlo)
        if g.sw == 1:
            for t in range(nx):
                data[d + t] += col[o + t]
        else:
            for t in range(nx):
                data[d + t * usw] += col[o + t]


# ---------------------------------------------------------------------------
# layout moves between GEMM results and blobs, and the bias
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=PARALLEL)
def cnp_to_ncp(src, bias, N, M, P, dst):
    """``dst[n, m, p] = src[m, n*P + p] + bias[m]`` (all flat: src (M, N*P), dst (N, M, P))."""
    uP = np.uint64(P)
    for i in prange(N * M):
        n = i // M
        m = i - n * M
        b = bias[m]
        s = np.uint64((m * N + n) * P)
        d = np.uint64(i * P)
        for p in range(uP):
            dst[d + p] = src[s + p] + b


@njit(cache=True, parallel=PARALLEL, fastmath=True)
def ncp_to_cnp(src, N, M, P, dst, bias_diff, add_bias):
    """``dst[m, n*P + p] = src[n, m, p]`` (flat); if ``add_bias``: ``bias_diff[m] += sum over n, p``.

    (fastmath lets the bias sum vectorize; it is accumulated in float64.)
    """
    uP = np.uint64(P)
    for m in prange(M):
        acc = 0.0
        for n in range(N):
            s = np.uint64((n * M + m) * P)
            d = np.uint64((m * N + n) * P)
            for p in range(uP):
                v = src[s + p]
                dst[d + p] = v
                acc += v
        if add_bias:
            bias_diff[m] += acc


@njit(cache=True, parallel=PARALLEL)
def add_channel_bias(data, bias, N, M, P):
    """``data[n, m, p] += bias[m]`` (flat (N, M, P))."""
    uP = np.uint64(P)
    for i in prange(N * M):
        b = bias[i % M]
        d = np.uint64(i * P)
        for p in range(uP):
            data[d + p] += b


@njit(cache=True, parallel=PARALLEL, fastmath=True)
def channel_sum(data, N, M, P, out):
    """``out[m] += sum over n, p of data[n, m, p]`` (flat (N, M, P)), accumulated in float64."""
    uP = np.uint64(P)
    image = np.uint64(M * P)
    for m in prange(M):
        acc = 0.0
        # channel m of image n starts at (n*M + m)*P: step through the images
        for d in range(np.uint64(m * P), np.uint64(N) * image, image):
            for p in range(uP):
                acc += data[d + p]
        out[m] += acc


# ---------------------------------------------------------------------------
# the matrix product and scratch memory
# ---------------------------------------------------------------------------

def matmul(a, b, out, accumulate=False, work=None):
    """``out = a @ b`` or, with ``accumulate``, ``out += a @ b``.

    ``a`` and ``b`` may be transposed views (``x.T``): NumPy hands them to
    BLAS with the transpose flag, without copies.  Accumulating calls
    NumPy's own BLAS with beta = 1 where it can (Caffe's ``caffe_cpu_gemm``
    with beta 1: CaffeNet's fc6 weight gradient 21 -> 13 ms, no temporary
    going out to memory and back); otherwise it computes into ``work`` (an
    array of ``out``'s shape; allocated if None) and adds.  Either way it
    keeps ONE BLAS thread pool in the process: NumPy's (scipy and numba's
    np.dot use a second OpenBLAS whose spinning threads would compete).
    ``work`` may be the layer's ``Workspace``: the array is then taken from
    it only when needed.
    (The GPU's BLAS-style product, on flat device arrays, is ``kernels_cuda.gemm``.)
    """
    if not accumulate:
        np.matmul(a, b, out=out)
        return out
    if _gemm_accumulate(a, b, out):
        return out
    if work is None:
        work = np.empty_like(out)
    elif isinstance(work, Workspace):
        work = work.get("matmul_work", out.shape, out.dtype)
    np.matmul(a, b, out=work)
    np.add(out, work, out=out)
    return out


_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_cblas = None        # None: not looked for yet; {} when NumPy's BLAS has no cblas ?gemm to call


def _numpy_cblas():
    """NumPy's own BLAS ``cblas_sgemm``/``cblas_dgemm`` through ctypes, keyed by dtype: the library
    threadpoolctl finds under NumPy's folder (its wheels bundle OpenBLAS, with a ``scipy_`` prefix and
    a ``64_`` suffix), or {} -- then accumulating products take the work-array route."""
    global _cblas
    if _cblas is None:
        import ctypes
        from .blas_threads import numpy_blas_files
        found = {}
        # the symbol's spellings, with the integer type its suffix means
        spellings = [(prefix, suffix, index) for prefix in ("scipy_", "")
                     for suffix, index in (("64_", ctypes.c_int64), ("", ctypes.c_int))]
        ptr = ctypes.c_void_p
        for path in numpy_blas_files():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for dtype, letter, scalar in ((np.float32, "s", ctypes.c_float), (np.float64, "d", ctypes.c_double)):
                names = [(f"{prefix}cblas_{letter}gemm{suffix}", index) for prefix, suffix, index in spellings]
                name, index = next(((n, i) for n, i in names if hasattr(lib, n)), (None, None))
                if np.dtype(dtype) in found or name is None:
                    continue
                gemm = getattr(lib, name)
                gemm.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, index, index, index, scalar,
                                 ptr, index, ptr, index, scalar, ptr, index]
                gemm.restype = None
                found[np.dtype(dtype)] = gemm
        _cblas = found
    return _cblas


def _blas_operand(m):
    """(transpose flag, leading dimension) of a matrix BLAS can read in place, or None."""
    item = m.itemsize
    rows, cols = m.strides
    if cols == item and rows % item == 0 and rows >= max(1, m.shape[1]) * item:
        return _NO_TRANS, rows // item
    if rows == item and cols % item == 0 and cols >= max(1, m.shape[0]) * item:
        return _TRANS, cols // item
    return None


def _gemm_accumulate(a, b, out):
    """``out += a @ b`` by one BLAS call (beta = 1) where the operands allow it; False where not."""
    if os.environ.get("DLTRAIN_NO_CBLAS"):
        return False
    gemm = _numpy_cblas().get(out.dtype)
    if gemm is None or a.dtype != out.dtype or b.dtype != out.dtype or a.ndim != 2 or b.ndim != 2 \
            or out.ndim != 2 or min(out.shape) == 0 or a.shape[1] == 0:
        return False
    ta, tb, to = _blas_operand(a), _blas_operand(b), _blas_operand(out)
    if ta is None or tb is None or to is None or to[0] != _NO_TRANS:
        return False
    (m, k), n = a.shape, b.shape[1]
    gemm(_ROW_MAJOR, ta[0], tb[0], m, n, k, 1, a.ctypes.data, ta[1], b.ctypes.data, tb[1], 1,
         out.ctypes.data, to[1])
    return True


class Workspace:
    """Scratch arrays a layer keeps between calls, re-allocated only when they must grow."""

    def __init__(self):
        self._flat = {}

    def get(self, name, shape, dtype):
        """A C-contiguous array of ``shape`` (contents undefined) backed by a cached buffer."""
        size = 1
        for d in shape:
            size *= int(d)
        dtype = np.dtype(dtype)
        buf = self._flat.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = np.empty(max(size, 1), dtype)
            self._flat[name] = buf
        return buf[:size].reshape(shape)

    def clear(self):
        self._flat.clear()


# ---------------------------------------------------------------------------
# learnable weights and bias (InnerProduct, Embed, Convolution, Deconvolution)
# ---------------------------------------------------------------------------

def learnable_blobs(layer, param, weight_shape, bias_shape=None):
    """Caffe's weight (and bias) setup: check the blobs the model carried in ``layer.blobs``, or
    create them and fill them with ``param.weight_filler`` (``param.bias_filler``).  ``bias_shape``
    None: no bias."""
    name = f"layer '{layer.name}' ({layer.type or type(layer).__name__})"
    shapes = [tuple(weight_shape)] + ([tuple(bias_shape)] if bias_shape is not None else [])
    if layer.blobs:
        if len(layer.blobs) != len(shapes):
            raise ConfigError(f"{name}: incorrect number of weight blobs (expected {len(shapes)}, "
                              f"got {len(layer.blobs)})")
        for blob, shape, what in zip(layer.blobs, shapes, ("weight", "bias")):
            if blob.shape != shape:
                raise ConfigError(f"{name}: incorrect {what} shape: expected shape {' '.join(map(str, shape))}; "
                                  f"instead, shape was {blob.shape_string()}")
        return
    layer.blobs = [Blob(*shape, dtype=layer.dtype) for shape in shapes]
    for blob, filler in zip(layer.blobs, (param.weight_filler, param.bias_filler)):
        fill(blob, filler)


def param_down(layer, i):
    """Does backward compute the gradient of ``layer.blobs[i]``?  (The net may leave
    ``param_propagate_down`` short: unset means True, as in Caffe.)"""
    ppd = layer.param_propagate_down
    return i >= len(ppd) or bool(ppd[i])
