"""Kernels that many layers share: im2col/col2im, GEMM, layout moves, pooling.

Every kernel is ``@njit(cache=True)`` and dtype-generic: it works on float32
and float64 arrays alike (no float literals that would narrow float64), so
one source serves training (float32) and gradient checks (float64).  Kernels
take FLAT (1-D, C-contiguous) arrays plus their dimensions, so each is
compiled once per dtype and cached on disk.

Column layouts (rows ordered (channel, kernel row, kernel column) as in
Caffe's im2col; P = oh*ow output pixels per image):

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
import numpy as np
from numba import njit, prange

# Kernels run on one thread; BLAS (NumPy's OpenBLAS) uses all cores for the
# GEMMs.  Measured on the 2-core target: numba's parallel=True (OpenMP
# layer) made LeNet's conv layers 3-8x SLOWER: its spinning worker threads
# and OpenBLAS's fight for the two cores after every hand-over; with the
# workqueue layer or OMP_WAIT_POLICY=PASSIVE it gained nothing overall.  The
# loops are still written with prange where iterations are independent (not
# col2im, whose rows overlap), so flipping this is a one-line experiment;
# delete layers/__pycache__/kernels.* first: numba's on-disk cache kept
# serving the old build when only this flag changed.
_PAR = False

__all__ = ["conv_out_size", "im2col", "col2im", "cnp_to_ncp", "ncp_to_cnp", "add_channel_bias",
           "channel_sum", "gemm", "Workspace", "max_pool_forward", "max_pool_forward_2x2", "max_pool_backward",
           "ave_pool_forward", "ave_pool_backward"]


def conv_out_size(size, kernel, pad, stride, dilation=1):
    """Caffe's convolution output size: floor((in + 2p - (d(k-1)+1)) / s) + 1."""
    return (size + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


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


@njit(cache=True, parallel=_PAR)
def im2col(data, N, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, col, row_stride, image_stride):
    """Images ``data`` (flat N*C*H*W) -> columns ``col``; every column element is written.

    Element (row r = (c, ki, kj), image n, output pixel p) goes to
    ``col[r*row_stride + n*image_stride + p]``: ``(N*P, P)`` gives the batch
    layout (C*kh*kw, N*P), ``(P, C*kh*kw*P)`` the image layout (N, C*kh*kw, P).
    """
    oh = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    khw = kh * kw
    usw = np.uint64(sw)
    uow = np.uint64(ow)
    for r in prange(C * khw):
        c = r // khw
        ki = (r // kw) % kh
        kj = r % kw
        ylo, yhi, yoff = _valid_range(ki, ph, sh, dh, H, oh)
        xlo, xhi, xoff = _valid_range(kj, pw, sw, dw, W, ow)
        nx = np.uint64(xhi - xlo)
        uxlo = np.uint64(xlo)
        uxhi = np.uint64(xhi)
        for n in range(N):
            for y in range(oh):
                o = np.uint64(r * row_stride + n * image_stride + y * ow)
                if y < ylo or y >= yhi:
                    for t in range(uow):
                        col[o + t] = 0
                    continue
                for t in range(uxlo):
                    col[o + t] = 0
                s = np.uint64(((n * C + c) * H + y * sh + yoff) * W + xlo * sw + xoff)
                d = o + uxlo
                if sw == 1:
                    for t in range(nx):
                        col[d + t] = data[s + t]
                else:
                    for t in range(nx):
                        col[d + t] = data[s + t * usw]
                for t in range(uxhi, uow):
                    col[o + t] = 0


@njit(cache=True)
def col2im(col, N, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, data, row_stride, image_stride):
    """Columns -> images ``data`` (flat N*C*H*W), overwritten with the sums (layouts as im2col).

    The loops follow the column buffer's memory order (rows outer in the batch
    layout, images outer in the image layout): reading it sequentially is 2x
    faster than visiting it plane by plane.  Integer divisions stay out of
    the inner loops (they cost another 2x).
    """
    oh = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    for t in range(np.uint64(N * C * H * W)):
        data[t] = 0
    rows = C * kh * kw
    if row_stride >= image_stride:
        for r in range(rows):
            _col2im_row(col, data, r, N, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, row_stride, image_stride)
        return
    # Image layout: per-row geometry computed once.
    geo = np.empty((rows, 7), np.int64)
    for r in range(rows):
        ylo, yhi, yoff = _valid_range((r // kw) % kh, ph, sh, dh, H, oh)
        xlo, xhi, xoff = _valid_range(r % kw, pw, sw, dw, W, ow)
        geo[r, 0] = r // (kh * kw)
        geo[r, 1] = ylo
        geo[r, 2] = yhi
        geo[r, 3] = yoff
        geo[r, 4] = xlo
        geo[r, 5] = xhi
        geo[r, 6] = xoff
    usw = np.uint64(sw)
    for n in range(N):
        for r in range(rows):
            c = geo[r, 0]
            yoff = geo[r, 3]
            xlo = geo[r, 4]
            xoff = geo[r, 6]
            nx = np.uint64(geo[r, 5] - xlo)
            for y in range(geo[r, 1], geo[r, 2]):
                d = np.uint64(((n * C + c) * H + y * sh + yoff) * W + xlo * sw + xoff)
                o = np.uint64(r * row_stride + n * image_stride + y * ow + xlo)
                if sw == 1:
                    for t in range(nx):
                        data[d + t] += col[o + t]
                else:
                    for t in range(nx):
                        data[d + t * usw] += col[o + t]


@njit(cache=True)
def _col2im_row(col, data, r, N, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, oh, ow, row_stride, image_stride):
    """Batch layout: add column row r (channel, ki, kj) of every image into the images."""
    c = r // (kh * kw)
    ylo, yhi, yoff = _valid_range((r // kw) % kh, ph, sh, dh, H, oh)
    xlo, xhi, xoff = _valid_range(r % kw, pw, sw, dw, W, ow)
    nx = np.uint64(xhi - xlo)
    usw = np.uint64(sw)
    for n in range(N):
        for y in range(ylo, yhi):
            d = np.uint64(((n * C + c) * H + y * sh + yoff) * W + xlo * sw + xoff)
            o = np.uint64(r * row_stride + n * image_stride + y * ow + xlo)
            if sw == 1:
                for t in range(nx):
                    data[d + t] += col[o + t]
            else:
                for t in range(nx):
                    data[d + t * usw] += col[o + t]


# ---------------------------------------------------------------------------
# layout moves between GEMM results and blobs, and the bias
# ---------------------------------------------------------------------------

@njit(cache=True, parallel=_PAR)
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


@njit(cache=True, parallel=_PAR, fastmath=True)
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


@njit(cache=True, parallel=_PAR)
def add_channel_bias(data, bias, N, M, P):
    """``data[n, m, p] += bias[m]`` (flat (N, M, P))."""
    uP = np.uint64(P)
    for i in prange(N * M):
        b = bias[i % M]
        d = np.uint64(i * P)
        for p in range(uP):
            data[d + p] += b


@njit(cache=True, parallel=_PAR, fastmath=True)
def channel_sum(data, N, M, P, out):
    """``out[m] += sum over n, p of data[n, m, p]`` (flat (N, M, P)), accumulated in float64."""
    uP = np.uint64(P)
    for m in prange(M):
        acc = 0.0
        for n in range(N):
            d = np.uint64((n * M + m) * P)
            for p in range(uP):
                acc += data[d + p]
        out[m] += acc


# ---------------------------------------------------------------------------
# GEMM and scratch memory
# ---------------------------------------------------------------------------

def gemm(a, b, out, accumulate=False, work=None):
    """``out = a @ b`` or, with ``accumulate``, ``out += a @ b``.

    ``a`` and ``b`` may be transposed views (``x.T``): NumPy hands them to
    BLAS with the transpose flag, without copies.  Accumulating computes into
    ``work`` (an array of ``out``'s shape; allocated if None) and adds.
    Measured on the LeNet shapes, NumPy's matmul with ``out=`` is as fast as
    calling BLAS directly (scipy's ?gemm with beta=1 saves only the small
    add), and it keeps ONE BLAS thread pool in the process (scipy and numba's
    np.dot use a second OpenBLAS whose spinning threads would compete).
    """
    if not accumulate:
        np.matmul(a, b, out=out)
        return out
    if work is None:
        work = np.empty_like(out)
    np.matmul(a, b, out=work)
    np.add(out, work, out=out)
    return out


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
# pooling (Caffe's window rules; see layers/pooling.py).  Flat arrays: the
# image is ``planes`` planes of H*W (planes = N*C), the top planes of PH*PW.
# ---------------------------------------------------------------------------

@njit(cache=True, inline="always")
def _window_max(data, ib, H, W, hs, ws, kh, kw):
    """Max and argmax (index in the H*W plane) of the window clipped to the image; (-FLT_MAX, -1) if empty."""
    he = min(hs + kh, H)
    we = min(ws + kw, W)
    hs = max(hs, 0)
    ws = max(ws, 0)
    if hs >= he or ws >= we:
        return data[ib] * 0 - 3.4028234663852886e38, -1
    idx = hs * W + ws
    best = data[np.uint64(ib + idx)]
    for h in range(hs, he):
        for w in range(ws, we):
            k = h * W + w
            v = data[np.uint64(ib + k)]
            if v > best:
                best = v
                idx = k
    return best, idx


@njit(cache=True, parallel=_PAR)
def max_pool_forward(data, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, top, mask):
    """MAX pooling.  ``mask`` (int32, top's size) gets the argmax as an index into the
    H*W plane; the first maximum in row-major order wins, as in Caffe.  An empty
    window (only possible with Caffe's ceil rounding and stride > kernel) gives
    -FLT_MAX and index -1, as Caffe does.
    """
    for pl in prange(planes):
        ib = pl * H * W
        ob = pl * PH * PW
        for py in range(PH):
            for px in range(PW):
                best, idx = _window_max(data, ib, H, W, py * sh - ph, px * sw - pw, kh, kw)
                o = np.uint64(ob + py * PW + px)
                top[o] = best
                mask[o] = idx


@njit(cache=True, parallel=_PAR)
def max_pool_forward_2x2(data, planes, H, W, PH, PW, ph, pw, sh, sw, top, mask):
    """``max_pool_forward`` for 2x2 windows (the common case), unrolled: ~3.5x faster."""
    uW = np.uint64(W)
    one = np.uint64(1)
    for pl in prange(planes):
        ib = pl * H * W
        ub = np.uint64(ib)
        ob = pl * PH * PW
        for py in range(PH):
            hs = py * sh - ph
            rows_inside = hs >= 0 and hs + 2 <= H
            for px in range(PW):
                ws = px * sw - pw
                o = np.uint64(ob + py * PW + px)
                if rows_inside and ws >= 0 and ws + 2 <= W:
                    k = np.uint64(hs * W + ws)
                    best = data[ub + k]
                    idx = k
                    v = data[ub + k + one]
                    if v > best:
                        best = v
                        idx = k + one
                    v = data[ub + k + uW]
                    if v > best:
                        best = v
                        idx = k + uW
                    v = data[ub + k + uW + one]
                    if v > best:
                        best = v
                        idx = k + uW + one
                    top[o] = best
                    mask[o] = idx
                else:
                    best, sidx = _window_max(data, ib, H, W, hs, ws, 2, 2)
                    top[o] = best
                    mask[o] = sidx


@njit(cache=True, parallel=_PAR)
def max_pool_backward(top_diff, mask, planes, H, W, PH, PW, bottom_diff):
    """Route each top gradient to its argmax; ``bottom_diff`` is overwritten."""
    for pl in prange(planes):
        ib = np.uint64(pl * H * W)
        for t in range(np.uint64(H * W)):
            bottom_diff[ib + t] = 0
        ob = np.uint64(pl * PH * PW)
        for t in range(np.uint64(PH * PW)):
            idx = mask[ob + t]
            if idx >= 0:
                bottom_diff[ib + np.uint64(idx)] += top_diff[ob + t]


@njit(cache=True, parallel=_PAR)
def ave_pool_forward(data, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, top):
    """AVE pooling with Caffe's divisor: the window clipped to the PADDED image."""
    uW = np.uint64(W)
    for pl in prange(planes):
        ib = np.uint64(pl * H * W)
        ob = pl * PH * PW
        for py in range(PH):
            hs = py * sh - ph
            he = min(hs + kh, H + ph)
            for px in range(PW):
                ws = px * sw - pw
                we = min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                acc = data[ib] * 0
                for h in range(np.uint64(max(hs, 0)), np.uint64(min(he, H))):
                    for w in range(np.uint64(max(ws, 0)), np.uint64(min(we, W))):
                        acc += data[ib + h * uW + w]
                o = np.uint64(ob + py * PW + px)
                if size > 0:
                    top[o] = acc / size
                else:
                    top[o] = 0


@njit(cache=True, parallel=_PAR)
def ave_pool_backward(top_diff, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, bottom_diff):
    """Spread each top gradient / divisor over its window; ``bottom_diff`` is overwritten."""
    uW = np.uint64(W)
    for pl in prange(planes):
        ib = np.uint64(pl * H * W)
        for t in range(np.uint64(H * W)):
            bottom_diff[ib + t] = 0
        ob = pl * PH * PW
        for py in range(PH):
            hs = py * sh - ph
            he = min(hs + kh, H + ph)
            for px in range(PW):
                ws = px * sw - pw
                we = min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                if size <= 0:
                    continue
                g = top_diff[np.uint64(ob + py * PW + px)] / size
                for h in range(np.uint64(max(hs, 0)), np.uint64(min(he, H))):
                    for w in range(np.uint64(max(ws, 0)), np.uint64(min(we, W))):
                        bottom_diff[ib + h * uW + w] += g
