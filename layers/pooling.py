"""Pooling: Caffe's PoolingLayer (MAX with optional argmax top, AVE, global pooling).

Output size follows Caffe: ``ceil((in + 2*pad - k) / stride) + 1`` (or floor
with ``round_mode: FLOOR``), then, when padding, one less if the last window
would start in the padding.  AVE divides by the window clipped to the
PADDED image (padded border cells count), as Caffe does.  STOCHASTIC
pooling is not implemented.

The window rules are written once (``@formula``, below) and used by the CPU
loops here and the CUDA kernels in ``pooling_cuda.py``; SPP
(layers/vision_extra.py) pools its levels with the same loops.  The loops
take the geometry as one record, :class:`PoolGeometry`.
"""
from collections import namedtuple

import numpy as np
from numba import njit, prange

from dlcore.errors import ConfigError
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .kernels import PARALLEL

# the pooling methods (caffe.proto's PoolingParameter.PoolMethod; SPPParameter's has the same values)
MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC

# what an empty MAX window gives (only possible with ceil rounding and stride > kernel): Caffe's -FLT_MAX
NEG_FLT_MAX = -3.4028234663852886e38


class PoolGeometry(namedtuple("PoolGeometry", "planes H W PH PW kh kw ph pw sh sw")):
    """``planes`` planes (num * channels) of H x W pooled to PH x PW with a kh x kw window, its
    pad and stride (ints).  The loops and kernels take it whole (``g.kh``, ``g.PW``...)."""
    __slots__ = ()


# --- the window rules -----------------------------------------------------------------
# (``inline_cpu``: Numba inlines them into the CPU loops; left as calls, the MAX and AVE loops
# compiled to other code and measured up to 2x slower on LeNet's shapes.)

@formula
def pooled_size(size, kernel, pad, stride, ceil_mode, padded):
    """Caffe's pooled output size along one axis: ceil (or floor) of (size + 2 pad - kernel) / stride,
    plus one; then, if the layer pads (``padded``: on either axis), one less when the last window
    would start in the padding."""
    span = size + 2 * pad - kernel
    pooled = (-(-span // stride) if ceil_mode else span // stride) + 1
    if padded and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


@formula(inline_cpu=True)
def ave_window(o, stride, pad, kernel, size):
    """AVE: output o's window along one axis, [start, end) clipped to the PADDED image (the
    cells summed are those inside the image)."""
    start = o * stride - pad
    return start, min(start + kernel, size + pad)


@formula(inline_cpu=True)
def ave_divisor(hs, he, ws, we):
    """AVE's divisor, Caffe's: the window's cells in the padded image, padding included."""
    return (he - hs) * (we - ws)


@formula(inline_cpu=True)
def window_max(data, base, H, W, hs, ws, kh, kw):
    """MAX over the kh x kw window at row hs, column ws (negative: in the padding) of the H x W
    plane at data[base], clipped to the image: the max and its argmax (an index into the plane);
    the first maximum in row-major order wins, as in Caffe; an empty window gives (-FLT_MAX, -1)."""
    he = min(hs + kh, H)
    we = min(ws + kw, W)
    hs = max(hs, 0)
    ws = max(ws, 0)
    if hs >= he or ws >= we:
        return data[base] * 0 + NEG_FLT_MAX, -1
    idx = hs * W + ws
    best = data[np.uint64(base + idx)]
    for h in range(hs, he):
        for w in range(ws, we):
            k = h * W + w
            v = data[np.uint64(base + k)]
            if v > best:
                best = v
                idx = k
    return best, idx


@formula(inline_cpu=True)
def window_sum(data, base, H, W, hs, he, ws, we):
    """The sum over rows [hs, he) and columns [ws, we), clipped to the image, of the H x W plane
    at data[base]."""
    acc = data[base] * 0
    ub = np.uint64(base)
    uW = np.uint64(W)
    for h in range(np.uint64(max(hs, 0)), np.uint64(min(he, H))):
        for w in range(np.uint64(max(ws, 0)), np.uint64(min(we, W))):
            acc += data[ub + h * uW + w]
    return acc


@formula
def covering_windows(i, stride, pad, kernel, pooled):
    """The outputs [first, last) along one axis whose window covers input i (a gather backward)."""
    first = 0 if i + pad < kernel else (i + pad - kernel) // stride + 1
    last = min((i + pad) // stride + 1, pooled)
    return first, last


# --- the CPU loops (flat arrays: the image is g.planes planes of H*W, the top planes of PH*PW) ----

@njit(cache=True, parallel=PARALLEL)
def max_pool_forward(data, g, top, mask):
    """MAX pooling; ``mask`` (int32, top's size) gets each argmax as an index into the H*W plane.
    (The plain loop; pool_forward takes the unrolled 2x2 and 3x3 kernels where they apply.)"""
    for pl in prange(g.planes):
        ib = pl * g.H * g.W
        ob = pl * g.PH * g.PW
        for py in range(g.PH):
            for px in range(g.PW):
                best, idx = window_max(data, ib, g.H, g.W, py * g.sh - g.ph, px * g.sw - g.pw, g.kh, g.kw)
                o = np.uint64(ob + py * g.PW + px)
                top[o] = best
                mask[o] = idx


@njit(cache=True, inline="always")
def _take_if_greater(data, ub, k, best, idx):
    """(data[ub + k], k) if it is greater than ``best``, else (best, idx)."""
    v = data[ub + k]
    if v > best:
        return v, k
    return best, idx


@njit(cache=True, parallel=PARALLEL)
def max_pool_forward_2x2(data, g, top, mask):
    """``max_pool_forward`` for 2x2 windows (the common case), unrolled inside the image: ~3.5x faster."""
    W = g.W
    uW = np.uint64(W)
    one = np.uint64(1)
    for pl in prange(g.planes):
        ib = pl * g.H * W
        ub = np.uint64(ib)
        ob = pl * g.PH * g.PW
        for py in range(g.PH):
            hs = py * g.sh - g.ph
            rows_inside = hs >= 0 and hs + 2 <= g.H
            for px in range(g.PW):
                ws = px * g.sw - g.pw
                o = np.uint64(ob + py * g.PW + px)
                if rows_inside and ws >= 0 and ws + 2 <= W:
                    k = np.uint64(hs * W + ws)
                    best, idx = data[ub + k], k
                    best, idx = _take_if_greater(data, ub, k + one, best, idx)
                    best, idx = _take_if_greater(data, ub, k + uW, best, idx)
                    best, idx = _take_if_greater(data, ub, k + uW + one, best, idx)
                    top[o] = best
                    mask[o] = idx
                else:
                    best, sidx = window_max(data, ib, g.H, W, hs, ws, 2, 2)
                    top[o] = best
                    mask[o] = sidx


@njit(cache=True, parallel=PARALLEL)
def max_pool_forward_3x3(data, g, top, mask):
    """``max_pool_forward`` for 3x3 windows (CaffeNet's, GoogLeNet's): inside the image a tight
    loop over the row's outputs, unrolled in the same row-major order (the first maximum wins,
    as in window_max), that compiles to vector selects; windows over the border take window_max."""
    W = g.W
    uW = np.uint64(W)
    usw = np.uint64(g.sw)
    one = np.uint64(1)
    two = np.uint64(2)
    # the outputs px whose window columns all lie inside the image: [px_lo, px_hi)
    px_lo = min(g.PW, -(-g.pw // g.sw))
    px_hi = max(px_lo, min(g.PW, (W - 3 + g.pw) // g.sw + 1))
    for pl in prange(g.planes):
        ib = pl * g.H * W
        ub = np.uint64(ib)
        ob = pl * g.PH * g.PW
        for py in range(g.PH):
            hs = py * g.sh - g.ph
            orow = ob + py * g.PW
            lo, hi = (px_lo, px_hi) if hs >= 0 and hs + 3 <= g.H else (0, 0)
            if hi > lo:
                k0 = np.uint64(hs * W + lo * g.sw - g.pw)     # the first inner window's top-left
                uo = np.uint64(orow + lo)
                for t in range(np.uint64(hi - lo)):
                    k = k0 + t * usw
                    best, idx = data[ub + k], k
                    best, idx = _take_if_greater(data, ub, k + one, best, idx)
                    best, idx = _take_if_greater(data, ub, k + two, best, idx)
                    k1 = k + uW
                    best, idx = _take_if_greater(data, ub, k1, best, idx)
                    best, idx = _take_if_greater(data, ub, k1 + one, best, idx)
                    best, idx = _take_if_greater(data, ub, k1 + two, best, idx)
                    k2 = k1 + uW
                    best, idx = _take_if_greater(data, ub, k2, best, idx)
                    best, idx = _take_if_greater(data, ub, k2 + one, best, idx)
                    best, idx = _take_if_greater(data, ub, k2 + two, best, idx)
                    top[uo + t] = best
                    mask[uo + t] = idx
            for px in range(g.PW):
                if lo <= px < hi:
                    continue
                best, sidx = window_max(data, ib, g.H, W, hs, px * g.sw - g.pw, 3, 3)
                o = np.uint64(orow + px)
                top[o] = best
                mask[o] = sidx


@njit(cache=True, parallel=PARALLEL)
def max_pool_backward(top_diff, mask, g, bottom_diff):
    """Route each top gradient to its argmax; ``bottom_diff`` is overwritten."""
    for pl in prange(g.planes):
        ib = np.uint64(pl * g.H * g.W)
        for t in range(np.uint64(g.H * g.W)):
            bottom_diff[ib + t] = 0
        ob = np.uint64(pl * g.PH * g.PW)
        for t in range(np.uint64(g.PH * g.PW)):
            idx = mask[ob + t]
            if idx >= 0:
                bottom_diff[ib + np.uint64(idx)] += top_diff[ob + t]


@njit(cache=True, parallel=PARALLEL)
def ave_pool_forward(data, g, top):
    """AVE pooling with Caffe's divisor: the window clipped to the PADDED image."""
    for pl in prange(g.planes):
        ib = np.uint64(pl * g.H * g.W)
        ob = pl * g.PH * g.PW
        for py in range(g.PH):
            hs, he = ave_window(py, g.sh, g.ph, g.kh, g.H)
            for px in range(g.PW):
                ws, we = ave_window(px, g.sw, g.pw, g.kw, g.W)
                acc = window_sum(data, ib, g.H, g.W, hs, he, ws, we)
                size = ave_divisor(hs, he, ws, we)
                o = np.uint64(ob + py * g.PW + px)
                if size > 0:
                    top[o] = acc / size
                else:
                    top[o] = 0


@njit(cache=True, parallel=PARALLEL)
def ave_pool_backward(top_diff, g, bottom_diff):
    """Spread each top gradient / divisor over its window; ``bottom_diff`` is overwritten."""
    uW = np.uint64(g.W)
    for pl in prange(g.planes):
        ib = np.uint64(pl * g.H * g.W)
        for t in range(np.uint64(g.H * g.W)):
            bottom_diff[ib + t] = 0
        ob = pl * g.PH * g.PW
        for py in range(g.PH):
            hs, he = ave_window(py, g.sh, g.ph, g.kh, g.H)
            for px in range(g.PW):
                ws, we = ave_window(px, g.sw, g.pw, g.kw, g.W)
                size = ave_divisor(hs, he, ws, we)
                if size <= 0:
                    continue
                grad = top_diff[np.uint64(ob + py * g.PW + px)] / size
                for h in range(np.uint64(max(hs, 0)), np.uint64(min(he, g.H))):
                    for w in range(np.uint64(max(ws, 0)), np.uint64(min(we, g.W))):
                        bottom_diff[ib + h * uW + w] += grad


def pool_forward(method, g, x, y, mask, mask_top=None):
    """Pool the flat ``x`` into ``y``: MAX (argmaxes into ``mask``, int32, and, if given, into
    ``mask_top`` too) or AVE (``mask`` unused)."""
    if method == MAX:
        if g.kh == 2 and g.kw == 2:
            max_pool_forward_2x2(x, g, y, mask)
        elif g.kh == 3 and g.kw == 3:
            max_pool_forward_3x3(x, g, y, mask)
        else:
            max_pool_forward(x, g, y, mask)
        if mask_top is not None:
            mask_top[:] = mask
    else:
        ave_pool_forward(x, g, y)


def pool_backward(method, g, dy, mask, dx):
    """The gradient of :func:`pool_forward`: ``dx`` (overwritten) from ``dy`` (MAX: through ``mask``)."""
    if method == MAX:
        max_pool_backward(dy, mask, g, dx)
    else:
        ave_pool_backward(dy, g, dx)


def check_method(layer, method):
    """``method`` (a PoolMethod value) if dltrain implements it, else a ConfigError naming the layer."""
    if method == STOCHASTIC:
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): STOCHASTIC pooling is not implemented")
    if method not in (MAX, AVE):
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): unknown pooling method {method}")
    return method


# --- the layer --------------------------------------------------------------------------

@register_layer("Pooling")
class PoolingLayer(Layer):
    """Caffe's pooling (MAX, with the argmaxes as an optional second top, or AVE; see the module docstring)."""

    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2     # the second (MAX only) is the argmax mask
    cuda_module = ".pooling_cuda"

    allows_in_place = False    # the smaller top would resize the input under the windows

    def setup(self, bottom, top):
        pp = self.layer_param.pooling_param
        name = f"layer '{self.name}' (Pooling)"
        self.method = check_method(self, pp.pool)
        if len(top) > 1 and self.method != MAX:
            raise ConfigError(f"{name}: only MAX pooling has a second (mask) top")
        self.global_pooling = pp.global_pooling
        has_k, has_kh, has_kw = pp.HasField("kernel_size"), pp.HasField("kernel_h"), pp.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise ConfigError(f"{name}: with global_pooling: true the filter size cannot be specified")
        else:
            if has_k == (has_kh and has_kw):
                raise ConfigError(f"{name}: filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not (has_k or (has_kh and has_kw)):
                raise ConfigError(f"{name}: for non-square filters both kernel_h and kernel_w are required")
        if (pp.HasField("pad_h") or pp.HasField("pad_w")) and \
                (pp.HasField("pad") or not (pp.HasField("pad_h") and pp.HasField("pad_w"))):
            raise ConfigError(f"{name}: pad is pad OR pad_h and pad_w are required")
        if (pp.HasField("stride_h") or pp.HasField("stride_w")) and \
                (pp.HasField("stride") or not (pp.HasField("stride_h") and pp.HasField("stride_w"))):
            raise ConfigError(f"{name}: stride is stride OR stride_h and stride_w are required")
        if not self.global_pooling:
            self.kernel_h, self.kernel_w = ((pp.kernel_size, pp.kernel_size) if has_k
                                            else (pp.kernel_h, pp.kernel_w))
            if self.kernel_h <= 0 or self.kernel_w <= 0:
                raise ConfigError(f"{name}: filter dimensions cannot be zero")
        self.pad_h, self.pad_w = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
        self.stride_h, self.stride_w = ((pp.stride_h, pp.stride_w) if pp.HasField("stride_h")
                                        else (pp.stride, pp.stride))
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise ConfigError(f"{name}: stride must be > 0")
        if self.global_pooling and (self.pad_h or self.pad_w or self.stride_h != 1 or self.stride_w != 1):
            raise ConfigError(f"{name}: with global_pooling: true only pad = 0 and stride = 1 are allowed")
        if not self.global_pooling and (self.pad_h or self.pad_w):
            if self.pad_h >= self.kernel_h or self.pad_w >= self.kernel_w:
                raise ConfigError(f"{name}: pad ({self.pad_h}, {self.pad_w}) must be smaller than the kernel "
                                  f"({self.kernel_h}, {self.kernel_w})")
        self.ceil_mode = pp.round_mode == caffe_pb2.PoolingParameter.CEIL
        self.mask = np.zeros(0, np.int32)

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise ConfigError(f"layer '{self.name}' (Pooling): input must have 4 axes (num, channels, height, "
                              f"width), got {b.shape_string()}")
        self.num, self.channels, self.height, self.width = b.shape
        if self.global_pooling:
            self.kernel_h, self.kernel_w = self.height, self.width
        # (with any padding, on either axis, the last window must start inside the image, as Caffe tests)
        padded = bool(self.pad_h or self.pad_w)
        self.pooled_h = pooled_size(self.height, self.kernel_h, self.pad_h, self.stride_h, self.ceil_mode, padded)
        self.pooled_w = pooled_size(self.width, self.kernel_w, self.pad_w, self.stride_w, self.ceil_mode, padded)
        if self.pooled_h <= 0 or self.pooled_w <= 0:
            raise ConfigError(f"layer '{self.name}' (Pooling): kernel {self.kernel_h}x{self.kernel_w} is larger "
                              f"than the padded input {self.height}x{self.width}")
        self.geometry = PoolGeometry(*(int(v) for v in (
            self.num * self.channels, self.height, self.width, self.pooled_h, self.pooled_w, self.kernel_h,
            self.kernel_w, self.pad_h, self.pad_w, self.stride_h, self.stride_w)))
        shape = (self.num, self.channels, self.pooled_h, self.pooled_w)
        for t in top:
            t.reshape(shape)
        if self.mask.size != top[0].count:
            self.mask = np.zeros(top[0].count, np.int32)

    def forward_cpu(self, bottom, top):
        pool_forward(self.method, self.geometry, bottom[0].data.reshape(-1), top[0].data.reshape(-1), self.mask,
                     top[1].data.reshape(-1) if len(top) > 1 else None)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # Caffe routes MAX through the mask top's data when there is one
            mask = top[1].data.reshape(-1).astype(np.int32) if len(top) > 1 else self.mask
            pool_backward(self.method, self.geometry, top[0].diff.reshape(-1), mask, bottom[0].diff.reshape(-1))
