"""More neuron layers: PReLU, ELU, AbsVal, Power, Exp, Log, BNLL, Threshold, Swish, Clip.

Caffe's element-wise activations beyond layers/neurons.py, with Caffe's
parameters, formulas and special cases (src/caffe/layers/<name>_layer.cpp).
One bottom, one top of its shape (NeuronLayer); kernels run on flat views
and are dtype-generic (float32 training, float64 gradient checks).

Each formula is written once (``@formula``, below; PReLU reuses ReLU's and
Swish the sigmoid of layers/neurons.py).  A layer names its formulas and
their operands (``forward_map``/``backward_map``); the CPU maps a formula
over the arrays with one @njit loop per formula (``cpu_map``), the GPU with
one kernel per formula (layers/activations_cuda.py), and both get the
layer's hyper-parameters in the data's dtype (``forward_params``/
``backward_params``).  PReLU's per-channel slope has loops of its own.

In place (``top[0] is bottom[0]``): layers whose backward needs the input
keep a copy of it during forward when they run in place -- PReLU as Caffe
does, and also Power, Log, BNLL and Clip (Caffe's own backward of these
reads the already overwritten bottom in place, which is wrong; dltrain
computes the true gradient).  ELU, Exp and Swish need only what survives
in place (as in Caffe).  AbsVal refuses to run in place, as Caffe does.
"""
import math
from typing import Callable, NamedTuple, Tuple

import numpy as np
from numba import njit

from dlcore.blob import Blob
from dlcore.errors import ConfigError, DLTrainError
from dlcore.filler import fill
from dlcore.formula import cpu_map, formula
from dlcore.registry import register_layer

from .neurons import NeuronLayer, flat, relu, relu_grad, sigmoid

CUDA_MODULE = ".activations_cuda"

KBNLL_THRESHOLD = 50.0    # Caffe's kBNLL_THRESHOLD


class Map(NamedTuple):
    """One pass of an activation: its formula over the elements of some operands.

    On the CPU through ``cpu_map``, on the GPU through dlcore.device.map_formula.  Operands: "x"
    the forward's input (the kept copy when the layer keeps one), "y" the top data, "dy" the top
    diff, "dx" the bottom diff, "s" Swish's sigmoid.
    """
    formula: Callable
    reads: Tuple[str, ...]
    writes: Tuple[str, ...]

    @property
    def cpu_loop(self):
        return cpu_map(self.formula, len(self.reads), len(self.writes))


class ActivationLayer(NeuronLayer):
    """A neuron layer of this module: a forward and a backward ``Map`` (the GPU code, in
    activations_cuda.py, is registered for this class).

    ``forward_params()``/``backward_params()``: the hyper-parameters the formulas take after the
    array elements, in the data's dtype (the CPU loops and the CUDA kernels get the very same
    scalars).
    """

    cuda_module = CUDA_MODULE
    forward_map = backward_map = None

    def keeps_bottom(self, bottom, top):
        """Does forward keep a copy of the input (in place, for backward)?"""
        return False

    def keep_input(self, bottom, top):
        if self.keeps_bottom(bottom, top):
            np.copyto(self.bottom_memory.data, bottom[0].data)

    def input_blob(self, bottom, top):
        """The blob holding the forward's input (the kept copy when the layer keeps one)."""
        return self.bottom_memory if self.keeps_bottom(bottom, top) else bottom[0]

    def operand(self, name, bottom, top):
        """A ``Map`` operand: (its blob, whether it is the blob's diff)."""
        if name == "x":
            return self.input_blob(bottom, top), False
        if name == "s":
            return self.sigmoid_output, False
        if name == "dx":
            return bottom[0], True
        return top[0], name == "dy"

    def forward_params(self):
        return ()

    def backward_params(self):
        return self.forward_params()

    def run_cpu(self, m, bottom, top, params):
        operands = (self.operand(name, bottom, top) for name in m.reads + m.writes)
        m.cpu_loop(*[flat(blob.diff if diff else blob.data) for blob, diff in operands], *params)

    def forward_cpu(self, bottom, top):
        self.keep_input(bottom, top)
        self.run_cpu(self.forward_map, bottom, top, self.forward_params())

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.run_cpu(self.backward_map, bottom, top, self.backward_params())


class _KeepsBottom(ActivationLayer):
    """A neuron layer whose backward needs the input: in place, forward keeps a copy."""

    def keeps_bottom(self, bottom, top):
        return top[0] is bottom[0]

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.keeps_bottom(bottom, top):
            if not hasattr(self, "bottom_memory"):
                self.bottom_memory = Blob(dtype=self.dtype)
            self.bottom_memory.reshape_like(bottom[0])


# --- PReLU ---------------------------------------------------------------------
# y = relu(x, a_c) and dx = relu_grad(x, dy, a_c) (layers/neurons.py) with the slope a_c of the
# element's channel.  Element i is (n, c, j) with c = (i // dim) % channels; the slope index is
# c // div_factor (div_factor = channels when the slope is shared: always 0).

class PReLUGeometry(NamedTuple):
    dim: int            # elements per (item, channel): the product of the axes after 1 (at least 1)
    channels: int       # axis 1
    div_factor: int     # channels when the slope is shared, else 1


@formula
def prelu_slope_term(x, dy):
    """An element's part of its slope's gradient: dy * x where x <= 0."""
    return dy * x if x <= 0 else 0.0


@njit(cache=True, error_model="numpy")
def prelu_map(x, dy, out, slope, g, backward):
    """out = relu(x, a_c), or with ``backward`` the bottom diff relu_grad(x, dy, a_c) (dy: unused forward)."""
    for n in range(x.shape[0] // max(g.dim * g.channels, 1)):
        for c in range(g.channels):
            a = slope[c // g.div_factor]
            b = np.uint64((n * g.channels + c) * g.dim)
            if backward:
                for j in range(np.uint64(g.dim)):
                    out[b + j] = relu_grad(x[b + j], dy[b + j], a)
            else:
                for j in range(np.uint64(g.dim)):
                    out[b + j] = relu(x[b + j], a)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz", "contract"})
def prelu_slope_grad(x, dy, slope_diff, g):
    """slope_diff[c] += sum of dy * x over x <= 0 (float64 accumulation)."""
    acc = np.zeros(slope_diff.shape[0])
    for n in range(x.shape[0] // max(g.dim * g.channels, 1)):
        for c in range(g.channels):
            b = np.uint64((n * g.channels + c) * g.dim)
            t = 0.0
            for j in range(np.uint64(g.dim)):
                t += prelu_slope_term(x[b + j], dy[b + j])
            acc[c // g.div_factor] += t
    for c in range(slope_diff.shape[0]):
        slope_diff[c] += acc[c]


@register_layer("PReLU")
class PReLULayer(_KeepsBottom):
    """y = max(x, 0) + a_c min(x, 0), with a learnable slope per channel (or one shared).

    ``prelu_param { filler (default constant 0.25) channel_shared }``; the
    slope blob has shape (C) or, shared, shape () (one element).  Channels
    are axis 1; the bottom needs at least 2 axes.
    """

    def setup(self, bottom, top):
        name = f"layer '{self.name}' (PReLU)"
        if bottom[0].num_axes < 2:
            raise ConfigError(f"{name}: the bottom needs at least 2 axes, got shape {bottom[0].shape_string()}")
        param = self.layer_param.prelu_param
        self.channel_shared = bool(param.channel_shared)
        channels = bottom[0].shape[1]
        if not self.blobs:
            self.blobs = [Blob(*(() if self.channel_shared else (channels,)), dtype=self.dtype)]
            if param.HasField("filler"):
                fill(self.blobs[0], param.filler)
            else:
                self.blobs[0].data[...] = 0.25
        if len(self.blobs) != 1:
            raise ConfigError(f"{name}: expected 1 parameter blob (the slopes), got {len(self.blobs)}")
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            what = "channel_shared" if self.channel_shared else f"{channels} channels"
            raise ConfigError(f"{name}: negative slope size is inconsistent with the definition: "
                              f"{self.blobs[0].count} slopes for {what}")

    def reshape(self, bottom, top):
        if bottom[0].num_axes < 2:
            raise ConfigError(f"layer '{self.name}' (PReLU): the bottom needs at least 2 axes, "
                              f"got shape {bottom[0].shape_string()}")
        super().reshape(bottom, top)

    def slope_propagates(self):
        """Does backward compute the slope gradient (``param_propagate_down``, default yes)?"""
        return not self.param_propagate_down or bool(self.param_propagate_down[0])

    def geometry(self, bottom):
        channels = bottom[0].shape[1]
        return PReLUGeometry(max(bottom[0].count_range(2), 1), channels, channels if self.channel_shared else 1)

    def forward_cpu(self, bottom, top):
        self.keep_input(bottom, top)
        x = flat(self.input_blob(bottom, top).data)
        prelu_map(x, x, flat(top[0].data), flat(self.blobs[0].data), self.geometry(bottom), False)

    def backward_cpu(self, top, propagate_down, bottom):
        x = flat(self.input_blob(bottom, top).data)
        geo = self.geometry(bottom)
        dy = flat(top[0].diff)
        # the slope gradient first: in place, writing the bottom diff overwrites the top diff
        if self.slope_propagates():
            prelu_slope_grad(x, dy, flat(self.blobs[0].diff), geo)
        if propagate_down[0]:
            prelu_map(x, dy, flat(bottom[0].diff), flat(self.blobs[0].data), geo, True)


# --- ELU ----------------------------------------------------------------------

@formula
def elu(x, alpha):
    return x if x > 0 else alpha * (math.exp(x) - 1)


@formula
def elu_grad(x, y, dy, alpha):
    return dy if x > 0 else dy * (alpha + y)


@register_layer("ELU")
class ELULayer(_KeepsBottom):
    """y = x for x > 0, alpha (exp(x) - 1) otherwise; dy/dx = 1 or alpha + y.

    In place the output's sign stands for the input's (alpha >= 0, as in
    Caffe); with a negative alpha the input is kept.
    """

    forward_map = Map(elu, ("x",), ("y",))
    backward_map = Map(elu_grad, ("x", "y", "dy"), ("dx",))

    def setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def keeps_bottom(self, bottom, top):
        return top[0] is bottom[0] and self.alpha < 0

    def forward_params(self):
        return (self.dtype.type(self.alpha),)


# --- AbsVal -------------------------------------------------------------------

@formula
def absval(x):
    return abs(x)


@formula
def absval_grad(x, dy):
    if x > 0:
        return dy
    if x < 0:
        return -dy
    return dy * 0           # sign(0) = 0, as caffe_cpu_sign


@register_layer("AbsVal")
class AbsValLayer(ActivationLayer):
    """y = |x|; dy/dx = sign(x) (0 at 0).  Not in place (Caffe refuses it too)."""

    forward_map = Map(absval, ("x",), ("y",))
    backward_map = Map(absval_grad, ("x", "dy"), ("dx",))

    allows_in_place = False


# --- Power --------------------------------------------------------------------
# Shared with LRN's WITHIN_CHANNEL mode (layers/normalization.py), which Caffe
# builds from Power layers.

@formula
def scaled(v, factor):
    """v * factor, as Caffe computes it: no multiply by 1."""
    return v * factor if factor != 1 else v


@formula
def affine(x, scale, shift):
    """shift + scale x, as Caffe computes it: no multiply by 1, no add of 0."""
    v = scaled(x, scale)
    return v + shift if shift != 0 else v


@formula
def shifted_power(x, power, scale, shift):
    """(shift + scale x)^power; Caffe's constant case power * scale == 0 gives 1 (power 0) or shift^power."""
    if power * scale == 0:
        return shift ** power if power != 0 else power * 0 + 1
    v = affine(x, scale, shift)
    return v ** power if power != 1 else v


@formula
def shifted_power_grad(x, y, dy, power, scale, shift):
    """dy * power scale (shift + scale x)^(power - 1), in Caffe's special-case forms."""
    diff_scale = power * scale
    if diff_scale == 0:
        return diff_scale           # 0: Caffe sets the diff without the top diff
    if power == 1:
        return dy * diff_scale
    if power == 2:
        # dy/dx = 2 scale (shift + scale x) = diff_scale scale x + diff_scale shift
        g = diff_scale * scale * x
        if shift != 0:
            g = g + diff_scale * shift
        return dy * g
    if shift == 0:
        return dy * (y / x * power)                                 # dy/dx = power y / x
    return dy * scaled(y / affine(x, scale, shift), diff_scale)     # dy/dx = diff_scale y / (shift + scale x)


# y = (shift + scale x)^power and its gradient on flat arrays: power_forward(x, y, power, scale, shift),
# power_backward(x, y, dy, dx, power, scale, shift)
power_forward = cpu_map(shifted_power, 1, 1)
power_backward = cpu_map(shifted_power_grad, 3, 1)


@register_layer("Power")
class PowerLayer(_KeepsBottom):
    """y = (shift + scale x)^power (``power_param { power scale shift }``, defaults 1, 1, 0).

    Caffe's special cases: power = 0 or scale = 0 gives a constant (1, or
    shift^power) and a zero gradient; power 1 and 2 and shift 0 take their
    own gradient forms (``power y / x`` for shift 0).
    """

    forward_map = Map(shifted_power, ("x",), ("y",))
    backward_map = Map(shifted_power_grad, ("x", "y", "dy"), ("dx",))

    def setup(self, bottom, top):
        param = self.layer_param.power_param
        self.power, self.scale, self.shift = float(param.power), float(param.scale), float(param.shift)

    def forward_params(self):
        t = self.dtype.type
        return t(self.power), t(self.scale), t(self.shift)


# --- Exp ----------------------------------------------------------------------

@formula
def exp_scaled(x, inner_scale, outer_scale):
    """outer_scale exp(inner_scale x)."""
    return scaled(math.exp(scaled(x, inner_scale)), outer_scale)


@formula
def exp_grad(y, dy, inner_scale):
    return scaled(dy * y, inner_scale)


def _log_base(layer, kind, base):
    """Caffe's log_base: 1 for base -1 (e), else log(base) (base must be > 0)."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise ConfigError(f"layer '{layer.name}' ({kind}): base must be strictly positive (or -1 for e), got {base}")
    value = math.log(base)
    if math.isinf(value) or math.isnan(value):
        raise ConfigError(f"layer '{layer.name}' ({kind}): log(base) = log({base}) is not finite")
    return value


@register_layer("Exp")
class ExpLayer(ActivationLayer):
    """y = base^(shift + scale x) (``exp_param { base (-1: e) scale shift }``).

    As Caffe: ``inner_scale = log(base) scale``, ``outer_scale = base^shift``,
    y = outer_scale exp(inner_scale x); backward from the output.
    """

    forward_map = Map(exp_scaled, ("x",), ("y",))
    backward_map = Map(exp_grad, ("y", "dy"), ("dx",))

    def setup(self, bottom, top):
        param = self.layer_param.exp_param
        base, scale, shift = float(param.base), float(param.scale), float(param.shift)
        log_base = _log_base(self, "Exp", base)
        t = self.dtype.type
        self.inner_scale = float(t(log_base) * t(scale))
        if shift == 0:
            self.outer_scale = 1.0
        else:
            try:
                self.outer_scale = math.exp(shift) if base == -1 else math.pow(base, shift)
            except OverflowError:
                self.outer_scale = math.inf
            if not self.outer_scale <= float(np.finfo(self.dtype).max):     # inf or nan in the data's dtype
                raise ConfigError(f"layer '{self.name}' (Exp): base^shift = {'e' if base == -1 else f'{base:g}'}"
                                  f"^{shift:g} is not finite (exp_param.shift)")

    def forward_params(self):
        t = self.dtype.type
        return t(self.inner_scale), t(self.outer_scale)

    def backward_params(self):
        return (self.dtype.type(self.inner_scale),)


# --- Log ----------------------------------------------------------------------

@formula
def log_scaled(x, scale, shift, base_scale):
    """base_scale log(shift + scale x)."""
    return scaled(math.log(affine(x, scale, shift)), base_scale)


@formula
def log_grad(x, dy, scale, shift, backward_num_scale):
    # A float exponent: 0 ** -1.0 is inf, as Caffe's powx gives; Numba's integer power raises at 0.
    return dy * scaled(affine(x, scale, shift) ** -1.0, backward_num_scale)


@register_layer("Log")
class LogLayer(_KeepsBottom):
    """y = log_base(shift + scale x) (``log_param { base (-1: e) scale shift }``)."""

    forward_map = Map(log_scaled, ("x",), ("y",))
    backward_map = Map(log_grad, ("x", "dy"), ("dx",))

    def setup(self, bottom, top):
        param = self.layer_param.log_param
        base = float(param.base)
        t = self.dtype.type
        log_base = t(_log_base(self, "Log", base))
        self.base_scale = float(t(1) / log_base)
        self.scale, self.shift = float(param.scale), float(param.shift)
        self.backward_num_scale = float(t(self.scale) / log_base)

    def forward_params(self):
        t = self.dtype.type
        return t(self.scale), t(self.shift), t(self.base_scale)

    def backward_params(self):
        t = self.dtype.type
        return t(self.scale), t(self.shift), t(self.backward_num_scale)


# --- BNLL ---------------------------------------------------------------------

@formula
def bnll(x):
    """log(1 + exp(x)) in Caffe's stable form."""
    return x + math.log(1.0 + math.exp(-x)) if x > 0 else math.log(1.0 + math.exp(x))


@formula
def bnll_grad(x, dy, threshold):
    e = math.exp(min(x, threshold))
    return dy * e / (e + 1.0)


@register_layer("BNLL")
class BNLLLayer(_KeepsBottom):
    """y = log(1 + exp(x)) in Caffe's stable form (x + log(1 + exp(-x)) for x > 0);
    dy/dx = e / (e + 1) with e = exp(min(x, 50))."""

    forward_map = Map(bnll, ("x",), ("y",))
    backward_map = Map(bnll_grad, ("x", "dy"), ("dx",))

    def backward_params(self):
        return (self.dtype.type(KBNLL_THRESHOLD),)


# --- Threshold ----------------------------------------------------------------

@formula
def threshold_step(x, threshold):
    return 1 if x > threshold else 0


@register_layer("Threshold")
class ThresholdLayer(ActivationLayer):
    """y = 1 if x > threshold else 0 (``threshold_param { threshold }``, default 0).

    It has no gradient: backward into the bottom is an error, as in Caffe
    (NOT_IMPLEMENTED).
    """

    forward_map = Map(threshold_step, ("x",), ("y",))

    def setup(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward_params(self):
        return (self.dtype.type(self.threshold),)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise DLTrainError(f"layer '{self.name}' (Threshold) has no backward pass: it cannot propagate a "
                               "gradient to its bottom (set propagate_down: false, or do not train through it)")


# --- Swish --------------------------------------------------------------------

@formula
def swish(x, beta):
    """(sigmoid(beta x), x sigmoid(beta x)): the sigmoid backward needs, and the output."""
    s = sigmoid(x * beta)
    return s, x * s


@formula
def swish_grad(y, s, dy, beta):
    by = beta * y
    return dy * (by + s * (1 - by))


@register_layer("Swish")
class SwishLayer(ActivationLayer):
    """y = x sigmoid(beta x) (``swish_param { beta }``, default 1);
    dy/dx = beta y + sigmoid(beta x) (1 - beta y), from the output and the kept sigmoid."""

    forward_map = Map(swish, ("x",), ("s", "y"))
    backward_map = Map(swish_grad, ("y", "s", "dy"), ("dx",))

    def setup(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)
        self.sigmoid_output = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.sigmoid_output.reshape_like(bottom[0])

    def forward_params(self):
        return (self.dtype.type(self.beta),)


# --- Clip ---------------------------------------------------------------------

@formula
def clip(x, lo, hi):
    v = x
    if v > hi:
        v = hi
    if v < lo:
        v = lo
    return v


@formula
def clip_grad(x, dy, lo, hi):
    return dy if x >= lo and x <= hi else dy * 0        # inclusive at both ends, as Caffe


@register_layer("Clip")
class ClipLayer(_KeepsBottom):
    """y = max(min, min(x, max)) (``clip_param { min max }``, both required);
    the gradient passes where min <= x <= max (both ends included, as Caffe)."""

    forward_map = Map(clip, ("x",), ("y",))
    backward_map = Map(clip_grad, ("x", "dy"), ("dx",))

    def setup(self, bottom, top):
        param = self.layer_param.clip_param
        missing = [f for f in ("min", "max") if not param.HasField(f)]
        if missing:
            raise ConfigError(f"layer '{self.name}' (Clip): clip_param.{' and clip_param.'.join(missing)} "
                              "must be given")
        self.min, self.max = float(param.min), float(param.max)

    def forward_params(self):
        t = self.dtype.type
        return t(self.min), t(self.max)


__all__ = ["PReLULayer", "ELULayer", "AbsValLayer", "PowerLayer", "ExpLayer", "LogLayer", "BNLLLayer",
           "ThresholdLayer", "SwishLayer", "ClipLayer", "power_forward", "power_backward"]
