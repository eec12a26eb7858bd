"""BatchNorm, Scale, Bias, LRN, MVN and Softmax as ONNX (layers/normalization.py, softmax.py)."""
import numpy as np

from .registry import builtin_exporter
from .vision import ave_pool


def _channel_shape(rank, channels):
    """(C, 1, 1...) for broadcasting along axis 1 of a rank-``rank`` tensor ((C,) for rank 2, () for 1)."""
    if rank <= 1:
        return ()
    return (channels,) + (1,) * (rank - 2)


@builtin_exporter("BatchNorm")
def batch_norm(ctx):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1).  With global statistics (TEST's default)
    mean and var are the stored sums times 1/s, computed here in float32 exactly as dltrain does;
    otherwise they are the batch's own, reduced over every axis but the channels."""
    from dltrain.layers.normalization import batch_norm_std, global_stats_factor
    L = ctx.layer
    rank = len(ctx.bottom_shapes[0])
    shape = _channel_shape(rank, L.channels)
    x = ctx.bottoms[0]
    if L.use_global_stats:
        b0, b1, b2 = (np.asarray(b.data, np.float32).reshape(-1) for b in L.blobs)
        # dltrain's own formulas on float32 scalars (as its forward pass runs them)
        factor = global_stats_factor(b2[0], np.float32(1))
        mean = (factor * b0).astype(np.float32)
        var = (factor * b1).astype(np.float32)
        eps = np.float32(L.eps)
        std = np.array([batch_norm_std(v, eps) for v in var], np.float32)
        centered = ctx.node("Sub", [x, ctx.const(mean.reshape(shape), "mean")])
        return [ctx.node("Div", [centered, ctx.const(std.reshape(shape), "std")])]
    axes = [a for a in range(rank) if a != 1] if rank > 1 else [0]
    mean = ctx.reduce("ReduceMean", x, axes)
    centered = ctx.node("Sub", [x, mean])
    var = ctx.reduce("ReduceMean", ctx.node("Mul", [centered, centered]), axes)
    std = ctx.node("Sqrt", [ctx.node("Add", [var, ctx.scalar(L.eps, "eps")])])
    return [ctx.node("Div", [centered, std])]


def _operand_view(ctx, blob_or_value, operand_shape, axis, from_bottom, what="operand"):
    """Scale's/Bias's operand shaped to broadcast over bottom 0's axes [axis, axis + its axes)."""
    rank = len(ctx.bottom_shapes[0])
    trailing = rank - axis - len(operand_shape)
    shape = tuple(operand_shape) + (1,) * trailing
    if not from_bottom:
        return ctx.const(np.asarray(blob_or_value.data, np.float32).reshape(shape), what)
    if shape == tuple(operand_shape):
        return blob_or_value
    varying = tuple(ctx.bottom_varying[1]) + (False,) * trailing
    return ctx.reshape(blob_or_value, shape, varying, "operand")


def _broadcast(ctx, op, param_axis):
    L = ctx.layer
    from_bottom = len(ctx.bottoms) > 1
    operand_shape = ctx.bottom_shapes[1] if from_bottom else tuple(L.blobs[0].shape)
    axis = 0 if len(operand_shape) == 0 else (param_axis % len(ctx.bottom_shapes[0]) if param_axis < 0
                                               else param_axis)
    source = ctx.bottoms[1] if from_bottom else L.blobs[0]
    operand = _operand_view(ctx, source, operand_shape, axis, from_bottom)
    return ctx.node(op, [ctx.bottoms[0], operand]), axis


@builtin_exporter("Scale")
def scale(ctx):
    L = ctx.layer
    y, axis = _broadcast(ctx, "Mul", L.layer_param.scale_param.axis)
    if L.bias_layer is not None:
        bias_blob = L.bias_layer.blobs[0]
        y = ctx.node("Add", [y, _operand_view(ctx, bias_blob, bias_blob.shape, axis, False, "bias")])
    return [y]


@builtin_exporter("Bias")
def bias(ctx):
    y, _ = _broadcast(ctx, "Add", ctx.layer.layer_param.bias_param.axis)
    return [y]


@builtin_exporter("LRN")
def lrn(ctx):
    """ACROSS_CHANNELS is ONNX's LRN (both divide alpha by the window size); WITHIN_CHANNEL is Caffe's
    own chain: x * (1 + alpha * AVE-pool(x^2, n x n, pad (n-1)/2))^-beta."""
    L = ctx.layer
    x = ctx.bottoms[0]
    if L.across:
        return [ctx.node("LRN", [x], size=L.size, alpha=L.alpha, beta=L.beta, bias=L.k)]
    square = ctx.node("Mul", [x, x])
    size = (L.H, L.W)
    pooled = ave_pool(ctx, square, size, (L.size, L.size), (L.pre_pad, L.pre_pad), (1, 1), size)
    base = ctx.node("Add", [ctx.node("Mul", [pooled, ctx.scalar(L.alpha, "alpha")]), ctx.scalar(1.0, "one")])
    power = ctx.node("Pow", [base, ctx.scalar(-L.beta, "neg_beta")])
    return [ctx.node("Mul", [x, power])]


@builtin_exporter("MVN")
def mvn(ctx):
    """(x - mean) [/ (sqrt(var) + eps)] per (image, channel), or per image across channels, on the
    4-D (num, channels, height, width) view Caffe gives the top."""
    L = ctx.layer
    x = ctx.bottoms[0]
    top_shape = ctx.top_shapes[0]
    if tuple(ctx.bottom_shapes[0]) != tuple(top_shape):
        x = ctx.reshape(x, top_shape, ctx.top_varying[0], "view")
    axes = [1, 2, 3] if L.across_channels else [2, 3]
    centered = ctx.node("Sub", [x, ctx.reduce("ReduceMean", x, axes)])
    if not L.normalize_variance:
        return [centered]
    var = ctx.reduce("ReduceMean", ctx.node("Mul", [centered, centered]), axes)
    std = ctx.node("Add", [ctx.node("Sqrt", [var]), ctx.scalar(L.eps, "eps")])
    return [ctx.node("Div", [centered, std])]


@builtin_exporter("Softmax")
def softmax(ctx):
    return [ctx.node("Softmax", [ctx.bottoms[0]], axis=int(ctx.layer.axis))]
