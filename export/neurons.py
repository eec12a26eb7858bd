"""Neuron layers as ONNX (layers/neurons.py, activations.py): each in Caffe's own form of its formula,
so the exported model computes what Caffe computes (e.g. sigmoid as 0.5 tanh(0.5 x) + 0.5)."""
import numpy as np

from dlcore.layer import TRAIN

from .registry import builtin_exporter


def _x(ctx):
    return ctx.bottoms[0]


def scaled(ctx, value, factor, what="scale"):
    """value * factor, skipping a multiply by 1 (as Caffe does)."""
    if float(np.float32(factor)) == 1.0:
        return value
    return ctx.node("Mul", [value, ctx.scalar(factor, what)])


def affine(ctx, value, scale, shift):
    """shift + scale * value, skipping a multiply by 1 and an add of 0 (as Caffe does)."""
    value = scaled(ctx, value, scale)
    if float(np.float32(shift)) == 0.0:
        return value
    return ctx.node("Add", [value, ctx.scalar(shift, "shift")])


def caffe_sigmoid(ctx, value):
    """Caffe's sigmoid: 0.5 tanh(0.5 x) + 0.5."""
    half = ctx.scalar(0.5, "half")
    t = ctx.node("Tanh", [ctx.node("Mul", [value, half])])
    return ctx.node("Add", [ctx.node("Mul", [t, half]), half])


@builtin_exporter("ReLU")
def relu(ctx):
    slope = float(ctx.layer.negative_slope)
    if slope == 0:
        return [ctx.node("Relu", [_x(ctx)])]
    return [ctx.node("LeakyRelu", [_x(ctx)], alpha=slope)]


@builtin_exporter("Sigmoid")
def sigmoid(ctx):
    return [caffe_sigmoid(ctx, _x(ctx))]


@builtin_exporter("TanH")
def tanh(ctx):
    return [ctx.node("Tanh", [_x(ctx)])]


@builtin_exporter("Dropout")
def dropout(ctx):
    L = ctx.layer
    if L.phase == TRAIN:
        raise ctx.fail("it is in the TRAIN phase (random masks); deploy nets run it in TEST")
    if L.scale_train:
        return [ctx.node("Identity", [_x(ctx)])]
    return [ctx.node("Mul", [_x(ctx), ctx.scalar(1.0 / L.scale, "keep")])]


@builtin_exporter("PReLU")
def prelu(ctx):
    L = ctx.layer
    rank = len(ctx.bottom_shapes[0])
    slope = np.asarray(L.blobs[0].data, np.float32).reshape(-1)
    if not L.channel_shared:
        slope = slope.reshape((-1,) + (1,) * (rank - 2))
    return [ctx.node("PRelu", [_x(ctx), ctx.const(slope, "slope")])]


@builtin_exporter("ELU")
def elu(ctx):
    return [ctx.node("Elu", [_x(ctx)], alpha=float(ctx.layer.alpha))]


@builtin_exporter("AbsVal")
def absval(ctx):
    return [ctx.node("Abs", [_x(ctx)])]


@builtin_exporter("BNLL")
def bnll(ctx):
    """Caffe's stable log(1 + exp(x)): max(x, 0) + log(1 + exp(-|x|))."""
    x = _x(ctx)
    tail = ctx.node("Log", [ctx.node("Add", [ctx.scalar(1.0, "one"),
                                             ctx.node("Exp", [ctx.node("Neg", [ctx.node("Abs", [x])])])])])
    return [ctx.node("Add", [ctx.node("Relu", [x]), tail])]


@builtin_exporter("Power")
def power(ctx):
    L = ctx.layer
    x = _x(ctx)
    if L.power * L.scale == 0:
        # Caffe's constant case: 1 (power 0) or shift^power, whatever x holds
        value = 1.0 if L.power == 0 else float(np.float32(L.shift) ** np.float32(L.power))
        shape = ctx.node("Shape", [x])
        return [ctx.node("Expand", [ctx.scalar(value, "constant"), shape])]
    v = affine(ctx, x, L.scale, L.shift)
    if L.power == 1:
        return [v if v != x else ctx.node("Identity", [x])]
    return [ctx.node("Pow", [v, ctx.scalar(L.power, "power")])]


@builtin_exporter("Exp")
def exp(ctx):
    L = ctx.layer
    y = ctx.node("Exp", [scaled(ctx, _x(ctx), L.inner_scale, "inner_scale")])
    return [scaled(ctx, y, L.outer_scale, "outer_scale")]


@builtin_exporter("Log")
def log(ctx):
    L = ctx.layer
    y = ctx.node("Log", [affine(ctx, _x(ctx), L.scale, L.shift)])
    return [scaled(ctx, y, L.base_scale, "base_scale")]


@builtin_exporter("Threshold")
def threshold(ctx):
    above = ctx.node("Greater", [_x(ctx), ctx.scalar(ctx.layer.threshold, "threshold")])
    return [ctx.node("Cast", [above], to=1)]


@builtin_exporter("Clip")
def clip(ctx):
    # Caffe's order: cap at max, then raise to min (min wins where min > max)
    capped = ctx.node("Min", [_x(ctx), ctx.scalar(ctx.layer.max, "max")])
    return [ctx.node("Max", [capped, ctx.scalar(ctx.layer.min, "min")])]


@builtin_exporter("Swish")
def swish(ctx):
    x = _x(ctx)
    s = caffe_sigmoid(ctx, scaled(ctx, x, ctx.layer.beta, "beta"))
    return [ctx.node("Mul", [x, s])]
