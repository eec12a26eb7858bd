"""Pooling on the GPU (the GPU side of layers/pooling.py): MAX with its argmax mask, and AVE.

Forward: one thread per output element, with the CPU kernels' window rules
(MAX: the first maximum in row-major order wins; an empty window gives
-FLT_MAX and index -1; AVE divides by the window clipped to the padded
image).  Backward is a gather, as Caffe's pooling_layer.cu: each input
element sums the gradients of the windows that cover it (MAX: of those
whose argmax it is), so no atomics and no zeroing pass.
"""
from numba import cuda

from .kernels_cuda import device_array, grid, jit

NEG_FLT_MAX = -3.4028234663852886e38


@jit
def _max_forward(x, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, y, mask, mask_top, has_mask_top):
    total = planes * PH * PW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        px = t % PW
        r = t // PW
        py = r % PH
        pl = r // PH
        hs = py * sh - ph
        ws = px * sw - pw
        he = min(hs + kh, H)
        we = min(ws + kw, W)
        hs = max(hs, 0)
        ws = max(ws, 0)
        base = pl * H * W
        if hs >= he or ws >= we:
            best = x[base] * 0 + NEG_FLT_MAX
            idx = -1
        else:
            idx = hs * W + ws
            best = x[base + idx]
            for h in range(hs, he):
                for w in range(ws, we):
                    k = h * W + w
                    v = x[base + k]
                    if v > best:
                        best = v
                        idx = k
        y[t] = best
        mask[t] = idx
        if has_mask_top:
            mask_top[t] = idx


@jit
def _max_backward(dy, mask, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, dx):
    total = planes * H * W
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % W
        r = t // W
        h = r % H
        pl = r // H
        phs = 0 if h + ph < kh else (h + ph - kh) // sh + 1
        phe = min((h + ph) // sh + 1, PH)
        pws = 0 if w + pw < kw else (w + pw - kw) // sw + 1
        pwe = min((w + pw) // sw + 1, PW)
        acc = dy[0] * 0
        me = h * W + w
        ob = pl * PH * PW
        for py in range(phs, phe):
            for px in range(pws, pwe):
                o = ob + py * PW + px
                if int(mask[o]) == me:
                    acc += dy[o]
        dx[t] = acc


@jit
def _ave_forward(x, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, y):
    total = planes * PH * PW
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        px = t % PW
        r = t // PW
        py = r % PH
        pl = r // PH
        hs = py * sh - ph
        ws = px * sw - pw
        he = min(hs + kh, H + ph)
        we = min(ws + kw, W + pw)
        size = (he - hs) * (we - ws)
        base = pl * H * W
        acc = x[base] * 0
        for h in range(max(hs, 0), min(he, H)):
            for w in range(max(ws, 0), min(we, W)):
                acc += x[base + h * W + w]
        if size > 0:
            y[t] = acc / size
        else:
            y[t] = 0


@jit
def _ave_backward(dy, planes, H, W, PH, PW, kh, kw, ph, pw, sh, sw, dx):
    total = planes * H * W
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        w = t % W
        r = t // W
        h = r % H
        pl = r // H
        phs = 0 if h + ph < kh else (h + ph - kh) // sh + 1
        phe = min((h + ph) // sh + 1, PH)
        pws = 0 if w + pw < kw else (w + pw - kw) // sw + 1
        pwe = min((w + pw) // sw + 1, PW)
        acc = dy[0] * 0
        ob = pl * PH * PW
        for py in range(phs, phe):
            hs = py * sh - ph
            he = min(hs + kh, H + ph)
            for px in range(pws, pwe):
                ws = px * sw - pw
                we = min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                if size > 0:
                    acc += dy[ob + py * PW + px] / size
        dx[t] = acc


def _geometry(layer):
    return (layer.num * layer.channels, layer.height, layer.width, layer.pooled_h, layer.pooled_w,
            layer.kernel_h, layer.kernel_w, layer.pad_h, layer.pad_w, layer.stride_h, layer.stride_w)


def forward(layer, bottom, top):
    geo = _geometry(layer)
    x = bottom[0].gpu_data()
    y = top[0].mutable_gpu_data()
    n = top[0].count
    if layer.method == 0:    # MAX
        mask = getattr(layer, "_gpu_mask", None)
        if mask is None or mask.size != max(n, 1):
            mask = layer._gpu_mask = device_array(n, "int32")
        has_top = len(top) > 1
        mask_top = top[1].mutable_gpu_data() if has_top else y
        if n:
            _max_forward[grid(n)](x, *geo, y, mask, mask_top, has_top)
    elif n:
        _ave_forward[grid(n)](x, *geo, y)


def backward(layer, top, propagate_down, bottom):
    if not propagate_down[0]:
        return
    geo = _geometry(layer)
    dy = top[0].gpu_diff()
    dx = bottom[0].mutable_gpu_diff()
    n = bottom[0].count
    if not n:
        return
    if layer.method == 0:
        # Caffe routes through the mask top's data when there is one
        mask = top[1].gpu_data() if len(top) > 1 else layer._gpu_mask
        _max_backward[grid(n)](dy, mask, *geo, dx)
    else:
        _ave_backward[grid(n)](dy, *geo, dx)
