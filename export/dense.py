"""InnerProduct and Embed as ONNX (layers/inner_product.py, embed.py)."""
from math import prod

from .registry import builtin_exporter


@builtin_exporter("InnerProduct")
def inner_product(ctx):
    """The bottom viewed as (M, K), one Gemm with Caffe's (N, K) weights (transB), or (K, N) with
    ``transpose``, then the top's shape bottom.shape[:axis] + (N,)."""
    L = ctx.layer
    shape, varying = ctx.bottom_shapes[0], ctx.bottom_varying[0]
    axis = L.axis
    x = ctx.bottoms[0]
    if not (len(shape) == 2 and axis == 1):
        x = ctx.reshape(x, (prod(shape[:axis]), prod(shape[axis:])),
                        (any(varying[:axis]), any(varying[axis:])), "rows")
    inputs = [x, ctx.weight(0, "weight")]
    if L.bias_term:
        inputs.append(ctx.weight(1, "bias"))
    y = ctx.node("Gemm", inputs, transB=0 if L.transpose else 1)
    if len(ctx.top_shapes[0]) != 2:
        y = ctx.reshape(y, ctx.top_shapes[0], ctx.top_varying[0], "top")
    return [y]


@builtin_exporter("Embed")
def embed(ctx):
    """Caffe's float indices cast to integers (truncation, as Caffe's static_cast) and gathered from
    the (K, N) table; ONNX Runtime, like dltrain, refuses an index outside [0, K)."""
    L = ctx.layer
    index = ctx.node("Cast", [ctx.bottoms[0]], to=7)        # INT64
    y = ctx.node("Gather", [ctx.weight(0, "weight"), index], axis=0)
    if L.bias_term:
        y = ctx.node("Add", [y, ctx.weight(1, "bias")])
    return [y]


@builtin_exporter("Parameter")
def parameter(ctx):
    return [ctx.node("Identity", [ctx.weight(0, "value")])]
