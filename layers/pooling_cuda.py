"""Pooling on the GPU (the GPU side of layers/pooling.py): MAX with its argmax mask, and AVE.

Forward: one thread per output element, with the CPU loops' window rules
(the ``@formula`` functions of pooling.py: MAX's first maximum in row-major
order wins, an empty window gives -FLT_MAX and index -1; AVE divides by the
window clipped to the padded image).  Backward is a gather, as Caffe's
pooling_layer.cu: each input element sums the gradients of the windows that
cover it (MAX: of those whose argmax it is), so no atomics and no zeroing
pass.  SPP (layers/vision_extra_cuda.py) pools its levels with
:func:`pool_forward` / :func:`pool_backward`.
"""
import numpy as np
from numba import cuda

from dlcore.device import grid, jit
from dlcore.formula import formula
from dlcore.layer import gpu_backward, gpu_forward

from .pooling import MAX, PoolingLayer, ave_divisor, ave_window, covering_windows, window_max, window_sum


@formula
def _unravel(t, rows, cols):
    """Element t of planes of rows x cols: (plane, row, column)."""
    col = t % cols
    r = t // cols
    return r // rows, r % rows, col


@jit
def _pool_forward(x, g, method, y, mask, mask_top, has_mask_top):
    for t in range(cuda.grid(1), g.planes * g.PH * g.PW, cuda.gridsize(1)):
        pl, py, px = _unravel(t, g.PH, g.PW)
        base = pl * g.H * g.W
        if method == MAX:
            best, idx = window_max(x, base, g.H, g.W, py * g.sh - g.ph, px * g.sw - g.pw, g.kh, g.kw)
            y[t] = best
            mask[t] = idx
            if has_mask_top:
                mask_top[t] = idx
        else:
            hs, he = ave_window(py, g.sh, g.ph, g.kh, g.H)
            ws, we = ave_window(px, g.sw, g.pw, g.kw, g.W)
            size = ave_divisor(hs, he, ws, we)
            acc = window_sum(x, base, g.H, g.W, hs, he, ws, we)
            if size > 0:
                y[t] = acc / size
            else:
                y[t] = 0


@jit
def _pool_backward(dy, mask, g, method, dx):
    for t in range(cuda.grid(1), g.planes * g.H * g.W, cuda.gridsize(1)):
        pl, h, w = _unravel(t, g.H, g.W)
        phs, phe = covering_windows(h, g.sh, g.ph, g.kh, g.PH)
        pws, pwe = covering_windows(w, g.sw, g.pw, g.kw, g.PW)
        me = h * g.W + w
        ob = pl * g.PH * g.PW
        acc = dy[0] * 0
        for py in range(phs, phe):
            hs, he = ave_window(py, g.sh, g.ph, g.kh, g.H)
            for px in range(pws, pwe):
                o = ob + py * g.PW + px
                if method == MAX:
                    if int(mask[o]) == me:
                        acc += dy[o]
                else:
                    ws, we = ave_window(px, g.sw, g.pw, g.kw, g.W)
                    size = ave_divisor(hs, he, ws, we)
                    if size > 0:
                        acc += dy[o] / size
        dx[t] = acc


def pool_forward(method, g, x, y, mask, mask_top=None):
    """Pool the flat device array ``x`` into ``y`` (as pooling.pool_forward): MAX also writes the
    argmaxes into ``mask`` (int32) and, if given, ``mask_top``."""
    n = g.planes * g.PH * g.PW
    if n:
        _pool_forward[grid(n)](x, g, method, y, mask, y if mask_top is None else mask_top, mask_top is not None)


def pool_backward(method, g, dy, mask, dx):
    """The gradient of :func:`pool_forward`: ``dx`` (overwritten) from ``dy`` (MAX: through ``mask``)."""
    n = g.planes * g.H * g.W
    if n:
        _pool_backward[grid(n)](dy, mask, g, method, dx)


def _mask(layer, count):
    """The argmaxes of the last MAX forward (AVE keeps none: one unused element)."""
    return layer.workspace.get("mask", count if layer.method == MAX else 1, np.int32)


@gpu_forward(PoolingLayer)
def forward(layer, bottom, top):
    pool_forward(layer.method, layer.geometry, bottom[0].gpu_data(), top[0].mutable_gpu_data(),
                 _mask(layer, top[0].count), top[1].mutable_gpu_data() if len(top) > 1 else None)


@gpu_backward(PoolingLayer)
def backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        # Caffe routes MAX through the mask top's data when there is one
        mask = top[1].gpu_data() if len(top) > 1 else _mask(layer, top[0].count)
        pool_backward(layer.method, layer.geometry, top[0].gpu_diff(), mask, bottom[0].mutable_gpu_diff())
