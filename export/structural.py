"""Concat, Slice, Split, Flatten, Reshape, Eltwise, ArgMax, Reduction, Tile, Silence and BatchReindex as
ONNX (layers/structural.py, slicing.py, elementwise.py)."""
import numpy as np

from .neurons import scaled
from .registry import builtin_exporter


@builtin_exporter("Split")
def split(ctx):
    # every top is the bottom's data: no node (the graph's outputs get an Identity where needed)
    return [ctx.bottoms[0]] * len(ctx.top_shapes)


@builtin_exporter("Silence")
def silence(ctx):
    return []


@builtin_exporter("Concat")
def concat(ctx):
    if len(ctx.bottoms) == 1:
        return [ctx.node("Identity", ctx.bottoms)]
    return [ctx.node("Concat", ctx.bottoms, axis=int(ctx.layer.axis))]


@builtin_exporter("Slice")
def slice_(ctx):
    axis = int(ctx.layer.axis)
    if len(ctx.top_shapes) == 1:
        return [ctx.node("Identity", ctx.bottoms)]
    if ctx.bottom_varying[0][axis]:
        raise ctx.fail(f"it slices axis {axis}, which follows the batch; export with a fixed --batch")
    outs, start = [], 0
    for shape in ctx.top_shapes:
        outs.append(ctx.slice(ctx.bottoms[0], axis, start, start + shape[axis]))
        start += shape[axis]
    return outs


def _view(ctx):
    return [ctx.reshape(ctx.bottoms[0], ctx.top_shapes[0], ctx.top_varying[0])]


builtin_exporter("Flatten")(_view)
builtin_exporter("Reshape")(_view)


@builtin_exporter("Eltwise")
def eltwise(ctx):
    from dltrain.layers.elementwise import ELTWISE_MAX, ELTWISE_PROD
    L = ctx.layer
    xs = ctx.bottoms
    if L.op == ELTWISE_PROD:
        y = xs[0]
        for x in xs[1:]:
            y = ctx.node("Mul", [y, x])
        return [y]
    if L.op == ELTWISE_MAX:
        return [ctx.node("Max", xs)]
    # SUM: y = c0 x0, then y += c_i x_i, in Caffe's order
    terms = [scaled(ctx, x, c, "coeff") for x, c in zip(xs, L.coeffs)]
    y = terms[0]
    for t in terms[1:]:
        y = ctx.node("Add", [y, t])
    return [y]


@builtin_exporter("Reduction")
def reduction(ctx):
    """SUM, ASUM, SUMSQ or MEAN over the axes from ``axis`` on, times ``coeff`` (MEAN: coeff / count,
    as dltrain and Caffe fold it)."""
    from dltrain.layers.elementwise import REDUCE_ASUM, REDUCE_SUMSQ
    L = ctx.layer
    rank = len(ctx.bottom_shapes[0])
    axes = list(range(L.axis, rank))
    op = {REDUCE_ASUM: "ReduceL1", REDUCE_SUMSQ: "ReduceSumSquare"}.get(L.op, "ReduceSum")
    x = ctx.bottoms[0]
    if not axes:
        y = x
    else:
        y = ctx.reduce(op, x, axes, keepdims=0)
    y = scaled(ctx, y, L.coeff, "coeff")
    return [y if y != x else ctx.node("Identity", [x])]


@builtin_exporter("Tile")
def tile(ctx):
    # ONNX repeats along the axis the way Caffe copies the block of the axes from ``axis`` on
    repeats = [1] * len(ctx.bottom_shapes[0])
    repeats[ctx.layer.axis] = ctx.layer.tiles
    return [ctx.node("Tile", [ctx.bottoms[0], ctx.ints(repeats, "repeats")])]


@builtin_exporter("ArgMax")
def argmax(ctx):
    """Caffe's top_k (value, index) pairs, largest first, ties to the LARGER index (ONNX's TopK prefers
    the smaller: it runs on the reversed axis and the indices are mapped back)."""
    L = ctx.layer
    shape = ctx.bottom_shapes[0]
    x = ctx.bottoms[0]
    if L.has_axis:
        axis, dim = L.axis, shape[L.axis]
    else:
        axis, dim = 1, L.dim
        x = ctx.reshape(x, (shape[0], dim), (ctx.bottom_varying[0][0], False), "rows")
    reversed_x = ctx.slice(x, axis, -1, -(2 ** 62), -1)
    values, rev_index = ctx.node("TopK", [reversed_x, ctx.ints([L.top_k], "k")], 2, axis=axis, largest=1, sorted=1)
    index = ctx.node("Sub", [ctx.const(np.asarray(dim - 1, np.int64), "last", np.int64), rev_index])
    index = ctx.node("Cast", [index], to=1)
    if L.has_axis:
        return [values if L.out_max_val else index]
    top_shape, top_varying = ctx.top_shapes[0], ctx.top_varying[0]
    if L.out_max_val:
        pair = ctx.node("Concat", [index, values], axis=1)          # (N, 2 top_k): indices, then values
        return [ctx.reshape(pair, top_shape, top_varying, "top")]
    return [ctx.reshape(index, top_shape, top_varying, "top")]


@builtin_exporter("BatchReindex")
def batch_reindex(ctx):
    index = ctx.node("Cast", [ctx.bottoms[1]], to=7)
    return [ctx.node("Gather", [ctx.bottoms[0], index], axis=0)]
