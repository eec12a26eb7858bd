"""Convolution, Deconvolution, Pooling, SPP and Crop as ONNX (layers/convolution.py, pooling.py,
vision_extra.py, slicing.py).

Pooling is built so that ONNX computes Caffe's numbers, not ONNX's own rules: the output size is
Caffe's (ceil, clipped when the last window would start in the padding) reached with explicit end
pads, and AVE's divisor (the window clipped to the PADDED image) comes from an explicit zero Pad,
a plain AveragePool over the padded tensor (every window then divides by kh*kw) and, where Caffe's
divisor differs, a constant correction map.
"""
from math import prod

import numpy as np

from dltrain.layers.pooling import MAX, NEG_FLT_MAX, ave_divisor, ave_window

from .registry import builtin_exporter


# --- Convolution / Deconvolution --------------------------------------------------------------

def _to_images(ctx, value, shape, varying, axis):
    """A bottom whose channel axis is ``axis`` viewed as (N', C, H, W) (N' = the axes before)."""
    if axis == 1:
        return value
    lead_varying = any(varying[:axis])
    return ctx.reshape(value, (prod(shape[:axis]),) + tuple(shape[axis:]), (lead_varying, False, False, False))


def _from_images(ctx, value, top_shape, top_varying, axis):
    if axis == 1:
        return value
    return ctx.reshape(value, top_shape, top_varying)


def _convolution(ctx, op):
    L = ctx.layer
    attrs = dict(kernel_shape=list(L.kernel), strides=list(L.stride), dilations=list(L.dilation),
                 pads=[L.pad[0], L.pad[1], L.pad[0], L.pad[1]], group=L.group)
    inputs = [ctx.weight(0, "weight")]
    if L.bias_term:
        inputs.append(ctx.weight(1, "bias"))
    outs = []
    for i, x in enumerate(ctx.bottoms):
        x = _to_images(ctx, x, ctx.bottom_shapes[i], ctx.bottom_varying[i], L.channel_axis)
        y = ctx.node(op, [x] + inputs, **attrs)
        outs.append(_from_images(ctx, y, ctx.top_shapes[i], ctx.top_varying[i], L.channel_axis))
    return outs


@builtin_exporter("Convolution")
def convolution(ctx):
    return _convolution(ctx, "Conv")


@builtin_exporter("Deconvolution")
def deconvolution(ctx):
    # Caffe's weights (channels, num_output / group, kh, kw) are ConvTranspose's layout, and its output
    # size s (in - 1) + d (k - 1) + 1 - 2 pad is ConvTranspose's with no output_padding
    return _convolution(ctx, "ConvTranspose")


# --- Pooling --------------------------------------------------------------------------------------

def _end_pad(size, pooled, kernel, pad, stride):
    """The end padding after which ONNX's floor rule gives Caffe's ``pooled`` windows (may be < 0)."""
    return (pooled - 1) * stride + kernel - size - pad


def _onnx_pooled(size, kernel, pad, end, stride):
    """ONNX's (floor) pooled size per axis of the image padded by ``pad`` before and ``end`` after."""
    return [(size[a] + pad[a] + end[a] - kernel[a]) // stride[a] + 1 for a in (0, 1)]


def _crop_pooled(ctx, value, pooled, got):
    """Cut the extra windows ONNX made (floor over a longer padded axis) down to Caffe's count."""
    for axis in (2, 3):
        if got[axis - 2] > pooled[axis - 2]:
            value = ctx.slice(value, axis, 0, pooled[axis - 2])
    return value


def _pad(ctx, value, begin, end, fill):
    pads = [0, 0, begin[0], begin[1], 0, 0, end[0], end[1]]
    if not any(pads):
        return value
    return ctx.node("Pad", [value, ctx.ints(pads, "pads"), ctx.scalar(fill, "pad_value")], mode="constant")


def max_pool(ctx, x, size, kernel, pad, stride, pooled, want_indices=False):
    """Caffe's MAX pooling of the (N, C, H, W) value ``x``: (top, indices or None)."""
    end = [_end_pad(size[a], pooled[a], kernel[a], pad[a], stride[a]) for a in (0, 1)]
    fits = all(e < k for e, k in zip(end, kernel))
    end = [max(e, 0) for e in end]
    got = _onnx_pooled(size, kernel, pad, end, stride)
    if fits:
        outputs = 2 if want_indices else 1
        out = ctx.node("MaxPool", [x], outputs, kernel_shape=list(kernel), strides=list(stride),
                       pads=[pad[0], pad[1], end[0], end[1]])
        y, idx = (out if want_indices else (out, None))
        y = _crop_pooled(ctx, y, pooled, got)
        if idx is not None:
            idx = _crop_pooled(ctx, idx, pooled, got)
        return y, idx
    # a last window that starts beyond the image (stride > kernel, ceil): ONNX refuses such pads, so pad
    # with Caffe's empty-window value explicitly
    if want_indices:
        raise ctx.fail("the argmax top of a MAX pooling whose last window starts beyond the image")
    padded = _pad(ctx, x, pad, end, NEG_FLT_MAX)
    y = ctx.node("MaxPool", [padded], kernel_shape=list(kernel), strides=list(stride))
    return _crop_pooled(ctx, y, pooled, got), None


def ave_divisors(size, pooled, kernel, pad, stride):
    """Caffe's AVE divisor of every output, (PH, PW): the window clipped to the padded image (dltrain's
    own window rules, layers/pooling.py)."""
    rows = [ave_window(o, stride[0], pad[0], kernel[0], size[0]) for o in range(pooled[0])]
    cols = [ave_window(o, stride[1], pad[1], kernel[1], size[1]) for o in range(pooled[1])]
    return np.array([[ave_divisor(hs, he, ws, we) for ws, we in cols] for hs, he in rows], np.float64)


def ave_pool(ctx, x, size, kernel, pad, stride, pooled):
    """Caffe's AVE pooling of the (N, C, H, W) value ``x`` (sum of the in-image cells / Caffe's divisor)."""
    end = [max(_end_pad(size[a], pooled[a], kernel[a], pad[a], stride[a]), 0) for a in (0, 1)]
    padded = _pad(ctx, x, pad, end, 0.0)
    got = _onnx_pooled(size, kernel, pad, end, stride)
    y = ctx.node("AveragePool", [padded], kernel_shape=list(kernel), strides=list(stride))
    y = _crop_pooled(ctx, y, pooled, got)
    divisor = ave_divisors(size, pooled, kernel, pad, stride)
    full = kernel[0] * kernel[1]
    if np.any(divisor != full):
        correction = (full / divisor).reshape(1, 1, pooled[0], pooled[1])
        y = ctx.node("Mul", [y, ctx.const(correction, "divisor_correction")])
    return y


@builtin_exporter("Pooling")
def pooling(ctx):
    L = ctx.layer
    size = (L.height, L.width)
    pooled = (L.pooled_h, L.pooled_w)
    kernel, pad, stride = (L.kernel_h, L.kernel_w), (L.pad_h, L.pad_w), (L.stride_h, L.stride_w)
    x = ctx.bottoms[0]
    want_mask = len(ctx.top_shapes) > 1
    if L.global_pooling and not want_mask:
        return [ctx.node("GlobalMaxPool" if L.method == MAX else "GlobalAveragePool", [x])]
    if L.method != MAX:
        return [ave_pool(ctx, x, size, kernel, pad, stride, pooled)]
    y, idx = max_pool(ctx, x, size, kernel, pad, stride, pooled, want_mask)
    if not want_mask:
        return [y]
    # ONNX's indices count over the whole (N, C, H, W) input; Caffe's mask over one H x W plane, as floats
    plane = ctx.const(np.asarray(size[0] * size[1], np.int64), "plane", np.int64)
    mask = ctx.node("Cast", [ctx.node("Mod", [idx, plane])], to=1)
    return [y, mask]


@builtin_exporter("SPP")
def spp(ctx):
    """Each pyramid level pooled as Pooling does; one level keeps its 4-D shape, several are flattened
    per image and concatenated (as Caffe's SPP)."""
    L = ctx.layer
    shape = ctx.bottom_shapes[0]
    varying = ctx.bottom_varying[0][0]
    parts = []
    for g in L.levels:
        size, kernel, pad, stride, pooled = (g.H, g.W), (g.kh, g.kw), (g.ph, g.pw), (g.sh, g.sw), (g.PH, g.PW)
        if L.method == MAX:
            y, _ = max_pool(ctx, ctx.bottoms[0], size, kernel, pad, stride, pooled)
        else:
            y = ave_pool(ctx, ctx.bottoms[0], size, kernel, pad, stride, pooled)
        parts.append(y)
    if len(parts) == 1:
        return parts
    flat = [ctx.reshape(y, (shape[0], shape[1] * g.PH * g.PW), (varying, False)) for y, g in zip(parts, L.levels)]
    return [ctx.node("Concat", flat, axis=1)]


# --- Crop -------------------------------------------------------------------------------------

@builtin_exporter("Crop")
def crop(ctx):
    L = ctx.layer
    shape, top = ctx.bottom_shapes[0], ctx.top_shapes[0]
    axes = [a for a in range(len(shape)) if top[a] != shape[a] or int(L.offsets[a]) != 0]
    if not axes:
        return [ctx.node("Identity", [ctx.bottoms[0]])]
    for a in axes:
        if ctx.bottom_varying[0][a]:
            raise ctx.fail(f"it crops axis {a}, which follows the batch; export with a fixed --batch")
    starts = [int(L.offsets[a]) for a in axes]
    ends = [int(L.offsets[a]) + int(top[a]) for a in axes]
    return [ctx.node("Slice", [ctx.bottoms[0], ctx.ints(starts, "starts"), ctx.ints(ends, "ends"),
                               ctx.ints(axes, "axes")])]
