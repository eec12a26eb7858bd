"""More neuron layers: PReLU, ELU, AbsVal, Power, Exp, Log, BNLL, Threshold, Swish, Clip.

Caffe's element-wise activations beyond layers/neurons.py, with Caffe's
parameters, formulas and special cases (src/caffe/layers/<name>_layer.cpp).
One bottom, one top of its shape (NeuronLayer); kernels run on flat views
and are dtype-generic (float32 training, float64 gradient checks).

In place (``top[0] is bottom[0]``): layers whose backward needs the input
keep a copy of it during forward when they run in place -- PReLU as Caffe
does, and also Power, Log, BNLL and Clip (Caffe's own backward of these
reads the already overwritten bottom in place, which is wrong; dltrain
computes the true gradient).  ELU, Exp and Swish need only what survives
in place (as in Caffe).  AbsVal refuses to run in place, as Caffe does.

The GPU kernels are in layers/activations_cuda.py (same formulas).
"""
import math

import numpy as np
from numba import njit

from dlcore.blob import Blob
from dlcore.errors import ConfigError, DLTrainError
from dlcore.filler import fill
from dlcore.registry import register_layer

from .neurons import NeuronLayer, flat

KBNLL_THRESHOLD = 50.0    # Caffe's kBNLL_THRESHOLD


def _cuda():
    from . import activations_cuda
    return activations_cuda


class _KeepsBottom(NeuronLayer):
    """A neuron layer whose backward needs the input: in place, forward keeps a copy."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if top[0] is bottom[0]:
            if not hasattr(self, "bottom_memory"):
                self.bottom_memory = Blob(dtype=self.dtype)
            self.bottom_memory.reshape_like(bottom[0])

    def _keep_cpu(self, bottom, top):
        if top[0] is bottom[0]:
            np.copyto(self.bottom_memory.data, bottom[0].data)

    def _keep_gpu(self, bottom, top):
        if top[0] is bottom[0]:
            from . import kernels_cuda as KC
            KC.copy(bottom[0].gpu_data(), self.bottom_memory.mutable_gpu_data(), bottom[0].count)

    def _input(self, bottom, top):
        """The blob holding the forward's input (the kept copy in place)."""
        return self.bottom_memory if top[0] is bottom[0] else bottom[0]


def _param_down(layer, i):
    ppd = layer.param_propagate_down
    return i >= len(ppd) or bool(ppd[i])


# --- PReLU ---------------------------------------------------------------------

# Element i is (n, c, j) with c = (i // dim) % channels; the slope index is c // div_factor
# (div_factor = channels when the slope is shared: always 0).

@njit(cache=True, error_model="numpy")
def prelu_forward(x, y, slope, dim, channels, div_factor):
    outer = x.shape[0] // max(dim * channels, 1)
    for n in range(outer):
        for c in range(channels):
            a = slope[c // div_factor]
            b = np.uint64((n * channels + c) * dim)
            for j in range(np.uint64(dim)):
                v = x[b + j]
                if v > 0:
                    y[b + j] = v
                else:
                    y[b + j] = a * v + 0        # max(x, 0) + slope * min(x, 0); + 0: no negative zeros


@njit(cache=True, error_model="numpy")
def prelu_backward(x, dy, dx, slope, dim, channels, div_factor):
    outer = x.shape[0] // max(dim * channels, 1)
    for n in range(outer):
        for c in range(channels):
            a = slope[c // div_factor]
            b = np.uint64((n * channels + c) * dim)
            for j in range(np.uint64(dim)):
                if x[b + j] > 0:
                    dx[b + j] = dy[b + j]
                else:
                    dx[b + j] = dy[b + j] * a


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "nsz", "contract"})
def prelu_slope_grad(x, dy, slope_diff, dim, channels, div_factor):
    """slope_diff[c] += sum of dy * x over x <= 0 (float64 accumulation)."""
    acc = np.zeros(slope_diff.shape[0])
    outer = x.shape[0] // max(dim * channels, 1)
    for n in range(outer):
        for c in range(channels):
            k = c // div_factor
            b = np.uint64((n * channels + c) * dim)
            t = 0.0
            for j in range(np.uint64(dim)):
                v = x[b + j]
                if v <= 0:
                    t += dy[b + j] * v
            acc[k] += t
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

    def _geometry(self, bottom):
        channels = bottom[0].shape[1]
        dim = bottom[0].count_range(2)
        return max(dim, 1), channels, (channels if self.channel_shared else 1)

    def forward_cpu(self, bottom, top):
        self._keep_cpu(bottom, top)
        x = flat(self._input(bottom, top).data)
        prelu_forward(x, flat(top[0].data), flat(self.blobs[0].data), *self._geometry(bottom))

    def backward_cpu(self, top, propagate_down, bottom):
        x = flat(self._input(bottom, top).data)
        geo = self._geometry(bottom)
        dy = flat(top[0].diff)
        # the slope gradient first: in place, writing the bottom diff overwrites the top diff
        if _param_down(self, 0):
            prelu_slope_grad(x, dy, flat(self.blobs[0].diff), *geo)
        if propagate_down[0]:
            prelu_backward(x, dy, flat(bottom[0].diff), flat(self.blobs[0].data), *geo)

    def forward_gpu(self, bottom, top):
        self._keep_gpu(bottom, top)
        _cuda().prelu_forward(self._input(bottom, top).gpu_data(), top[0].mutable_gpu_data(),
                              self.blobs[0].gpu_data(), top[0].count, *self._geometry(bottom))

    def backward_gpu(self, top, propagate_down, bottom):
        C = _cuda()
        x = self._input(bottom, top).gpu_data()
        geo = self._geometry(bottom)
        n = bottom[0].count
        if _param_down(self, 0):
            dim, channels, _ = geo
            C.prelu_slope_grad(x, top[0].gpu_diff(), self.blobs[0].mutable_gpu_diff(), n, dim, channels,
                               self.channel_shared, self)
        if propagate_down[0]:
            C.prelu_backward(x, top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), self.blobs[0].gpu_data(), n, *geo)


# --- ELU ----------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def elu_forward(x, y, alpha):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if v > 0:
            y[i] = v
        else:
            y[i] = alpha * (np.exp(v) - 1)


@njit(cache=True, error_model="numpy")
def elu_backward(x, y, dy, dx, alpha):
    for i in range(np.uint64(x.shape[0])):
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * (alpha + y[i])


@register_layer("ELU")
class ELULayer(_KeepsBottom):
    """y = x for x > 0, alpha (exp(x) - 1) otherwise; dy/dx = 1 or alpha + y.

    In place the output's sign stands for the input's (alpha >= 0, as in
    Caffe); with a negative alpha the input is kept.
    """

    def setup(self, bottom, top):
        self.alpha = float(self.layer_param.elu_param.alpha)

    def _keeps(self, bottom, top):
        return top[0] is bottom[0] and self.alpha < 0

    def reshape(self, bottom, top):
        NeuronLayer.reshape(self, bottom, top)
        if self._keeps(bottom, top):
            _KeepsBottom.reshape(self, bottom, top)

    def _x(self, bottom, top):
        return self.bottom_memory if self._keeps(bottom, top) else bottom[0]

    def forward_cpu(self, bottom, top):
        if self._keeps(bottom, top):
            self._keep_cpu(bottom, top)
        elu_forward(flat(self._x(bottom, top).data), flat(top[0].data), self.dtype.type(self.alpha))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            elu_backward(flat(self._x(bottom, top).data), flat(top[0].data), flat(top[0].diff),
                         flat(bottom[0].diff), self.dtype.type(self.alpha))

    def forward_gpu(self, bottom, top):
        if self._keeps(bottom, top):
            self._keep_gpu(bottom, top)
        _cuda().elu_forward(self._x(bottom, top).gpu_data(), top[0].mutable_gpu_data(), top[0].count, self.alpha)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().elu_backward(self._x(bottom, top).gpu_data(), top[0].gpu_data(), top[0].gpu_diff(),
                                 bottom[0].mutable_gpu_diff(), bottom[0].count, self.alpha)


# --- AbsVal -------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def absval_forward(x, y):
    for i in range(np.uint64(x.shape[0])):
        y[i] = abs(x[i])


@njit(cache=True, error_model="numpy")
def absval_backward(x, dy, dx):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if v > 0:
            dx[i] = dy[i]
        elif v < 0:
            dx[i] = -dy[i]
        else:
            dx[i] = dy[i] * 0           # sign(0) = 0, as caffe_cpu_sign


@register_layer("AbsVal")
class AbsValLayer(NeuronLayer):
    """y = |x|; dy/dx = sign(x) (0 at 0).  Not in place (Caffe refuses it too)."""

    def setup(self, bottom, top):
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (AbsVal) does not allow in-place computation")

    def forward_cpu(self, bottom, top):
        absval_forward(flat(bottom[0].data), flat(top[0].data))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            absval_backward(flat(bottom[0].data), flat(top[0].diff), flat(bottom[0].diff))

    def forward_gpu(self, bottom, top):
        _cuda().absval_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().absval_backward(bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                                    bottom[0].count)


# --- Power --------------------------------------------------------------------
# Shared with LRN's WITHIN_CHANNEL mode (layers/normalization.py), which Caffe
# builds from Power layers.

@njit(cache=True, error_model="numpy")
def power_forward(x, y, power, scale, shift):
    """y = (shift + scale x)^power with Caffe's special cases."""
    un = np.uint64(x.shape[0])
    if power * scale == 0:
        # the input does not matter: y = 1 (power 0) or shift^power (scale 0)
        value = shift ** power if power != 0 else power * 0 + 1
        for i in range(un):
            y[i] = value
        return
    for i in range(un):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        if power != 1:
            v = v ** power
        y[i] = v


@njit(cache=True, error_model="numpy")
def power_backward(x, y, dy, dx, power, scale, shift):
    """dx = dy * power scale (shift + scale x)^(power - 1), in Caffe's special-case forms."""
    un = np.uint64(x.shape[0])
    diff_scale = power * scale
    if diff_scale == 0:
        for i in range(un):
            dx[i] = diff_scale          # 0: Caffe sets the diff without the top diff
        return
    if power == 1:
        for i in range(un):
            dx[i] = dy[i] * diff_scale
    elif power == 2:
        # dy/dx = 2 scale (shift + scale x) = diff_scale scale x + diff_scale shift
        a = diff_scale * scale
        b = diff_scale * shift
        for i in range(un):
            g = a * x[i]
            if shift != 0:
                g = g + b
            dx[i] = dy[i] * g
    elif shift == 0:
        # dy/dx = power y / x
        for i in range(un):
            dx[i] = dy[i] * (y[i] / x[i] * power)
    else:
        # dy/dx = diff_scale y / (shift + scale x)
        for i in range(un):
            v = x[i]
            if scale != 1:
                v = v * scale
            g = y[i] / (v + shift)
            if diff_scale != 1:
                g = g * diff_scale
            dx[i] = dy[i] * g


@register_layer("Power")
class PowerLayer(_KeepsBottom):
    """y = (shift + scale x)^power (``power_param { power scale shift }``, defaults 1, 1, 0).

    Caffe's special cases: power = 0 or scale = 0 gives a constant (1, or
    shift^power) and a zero gradient; power 1 and 2 and shift 0 take their
    own gradient forms (``power y / x`` for shift 0).
    """

    def setup(self, bottom, top):
        param = self.layer_param.power_param
        self.power, self.scale, self.shift = float(param.power), float(param.scale), float(param.shift)

    def _params(self):
        t = self.dtype.type
        return t(self.power), t(self.scale), t(self.shift)

    def forward_cpu(self, bottom, top):
        self._keep_cpu(bottom, top)
        power_forward(flat(self._input(bottom, top).data), flat(top[0].data), *self._params())

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            power_backward(flat(self._input(bottom, top).data), flat(top[0].data), flat(top[0].diff),
                           flat(bottom[0].diff), *self._params())

    def forward_gpu(self, bottom, top):
        self._keep_gpu(bottom, top)
        _cuda().power_forward(self._input(bottom, top).gpu_data(), top[0].mutable_gpu_data(), top[0].count,
                              self.power, self.scale, self.shift)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().power_backward(self._input(bottom, top).gpu_data(), top[0].gpu_data(), top[0].gpu_diff(),
                                   bottom[0].mutable_gpu_diff(), bottom[0].count, self.power, self.scale,
                                   self.shift)


# --- Exp ----------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def exp_forward(x, y, inner_scale, outer_scale):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if inner_scale != 1:
            v = v * inner_scale
        v = np.exp(v)
        if outer_scale != 1:
            v = v * outer_scale
        y[i] = v


@njit(cache=True, error_model="numpy")
def exp_backward(y, dy, dx, inner_scale):
    for i in range(np.uint64(y.shape[0])):
        g = dy[i] * y[i]
        if inner_scale != 1:
            g = g * inner_scale
        dx[i] = g


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
class ExpLayer(NeuronLayer):
    """y = base^(shift + scale x) (``exp_param { base (-1: e) scale shift }``).

    As Caffe: ``inner_scale = log(base) scale``, ``outer_scale = base^shift``,
    y = outer_scale exp(inner_scale x); backward from the output.
    """

    def setup(self, bottom, top):
        param = self.layer_param.exp_param
        base, scale, shift = float(param.base), float(param.scale), float(param.shift)
        log_base = _log_base(self, "Exp", base)
        t = self.dtype.type
        self.inner_scale = float(t(log_base) * t(scale))
        if shift == 0:
            self.outer_scale = 1.0
        else:
            self.outer_scale = math.exp(shift) if base == -1 else math.pow(base, shift)

    def forward_cpu(self, bottom, top):
        t = self.dtype.type
        exp_forward(flat(bottom[0].data), flat(top[0].data), t(self.inner_scale), t(self.outer_scale))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            exp_backward(flat(top[0].data), flat(top[0].diff), flat(bottom[0].diff), self.dtype.type(self.inner_scale))

    def forward_gpu(self, bottom, top):
        _cuda().exp_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count, self.inner_scale,
                            self.outer_scale)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().exp_backward(top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count,
                                 self.inner_scale)


# --- Log ----------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def log_forward(x, y, scale, shift, base_scale):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        v = np.log(v)
        if base_scale != 1:
            v = v * base_scale
        y[i] = v


@njit(cache=True, error_model="numpy")
def log_backward(x, dy, dx, scale, shift, backward_num_scale):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if scale != 1:
            v = v * scale
        if shift != 0:
            v = v + shift
        g = v ** -1
        if backward_num_scale != 1:
            g = g * backward_num_scale
        dx[i] = dy[i] * g


@register_layer("Log")
class LogLayer(_KeepsBottom):
    """y = log_base(shift + scale x) (``log_param { base (-1: e) scale shift }``)."""

    def setup(self, bottom, top):
        param = self.layer_param.log_param
        base = float(param.base)
        t = self.dtype.type
        log_base = t(_log_base(self, "Log", base))
        self.base_scale = float(t(1) / log_base)
        self.scale, self.shift = float(param.scale), float(param.shift)
        self.backward_num_scale = float(t(self.scale) / log_base)

    def forward_cpu(self, bottom, top):
        self._keep_cpu(bottom, top)
        t = self.dtype.type
        log_forward(flat(self._input(bottom, top).data), flat(top[0].data), t(self.scale), t(self.shift),
                    t(self.base_scale))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            t = self.dtype.type
            log_backward(flat(self._input(bottom, top).data), flat(top[0].diff), flat(bottom[0].diff), t(self.scale),
                         t(self.shift), t(self.backward_num_scale))

    def forward_gpu(self, bottom, top):
        self._keep_gpu(bottom, top)
        _cuda().log_forward(self._input(bottom, top).gpu_data(), top[0].mutable_gpu_data(), top[0].count,
                            self.scale, self.shift, self.base_scale)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().log_backward(self._input(bottom, top).gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                                 bottom[0].count, self.scale, self.shift, self.backward_num_scale)


# --- BNLL ---------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def bnll_forward(x, y):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if v > 0:
            y[i] = v + np.log(1.0 + np.exp(-v))
        else:
            y[i] = np.log(1.0 + np.exp(v))


@njit(cache=True, error_model="numpy")
def bnll_backward(x, dy, dx, threshold):
    for i in range(np.uint64(x.shape[0])):
        e = np.exp(min(x[i], threshold))
        dx[i] = dy[i] * e / (e + 1.0)


@register_layer("BNLL")
class BNLLLayer(_KeepsBottom):
    """y = log(1 + exp(x)) in Caffe's stable form (x + log(1 + exp(-x)) for x > 0);
    dy/dx = e / (e + 1) with e = exp(min(x, 50))."""

    def forward_cpu(self, bottom, top):
        self._keep_cpu(bottom, top)
        bnll_forward(flat(self._input(bottom, top).data), flat(top[0].data))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bnll_backward(flat(self._input(bottom, top).data), flat(top[0].diff), flat(bottom[0].diff),
                          self.dtype.type(KBNLL_THRESHOLD))

    def forward_gpu(self, bottom, top):
        self._keep_gpu(bottom, top)
        _cuda().bnll_forward(self._input(bottom, top).gpu_data(), top[0].mutable_gpu_data(), top[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().bnll_backward(self._input(bottom, top).gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                                  bottom[0].count, KBNLL_THRESHOLD)


# --- Threshold ----------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def threshold_forward(x, y, threshold):
    for i in range(np.uint64(x.shape[0])):
        if x[i] > threshold:
            y[i] = 1
        else:
            y[i] = 0


@register_layer("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0 (``threshold_param { threshold }``, default 0).

    It has no gradient: backward into the bottom is an error, as in Caffe
    (NOT_IMPLEMENTED).
    """

    def setup(self, bottom, top):
        self.threshold = float(self.layer_param.threshold_param.threshold)

    def forward_cpu(self, bottom, top):
        threshold_forward(flat(bottom[0].data), flat(top[0].data), self.dtype.type(self.threshold))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise DLTrainError(f"layer '{self.name}' (Threshold) has no backward pass: it cannot propagate a "
                               "gradient to its bottom (set propagate_down: false, or do not train through it)")

    def forward_gpu(self, bottom, top):
        _cuda().threshold_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count, self.threshold)


# --- Swish --------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def swish_forward(x, s, y, beta):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        t = 0.5 * np.tanh(0.5 * (v * beta)) + 0.5        # Caffe's sigmoid of beta x
        s[i] = t
        y[i] = v * t


@njit(cache=True, error_model="numpy")
def swish_backward(y, s, dy, dx, beta):
    for i in range(np.uint64(y.shape[0])):
        by = beta * y[i]
        dx[i] = dy[i] * (by + s[i] * (1 - by))


@register_layer("Swish")
class SwishLayer(NeuronLayer):
    """y = x sigmoid(beta x) (``swish_param { beta }``, default 1);
    dy/dx = beta y + sigmoid(beta x) (1 - beta y), from the output and the kept sigmoid."""

    def setup(self, bottom, top):
        self.beta = float(self.layer_param.swish_param.beta)
        self.sigmoid_output = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.sigmoid_output.reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        swish_forward(flat(bottom[0].data), flat(self.sigmoid_output.data), flat(top[0].data),
                      self.dtype.type(self.beta))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            swish_backward(flat(top[0].data), flat(self.sigmoid_output.data), flat(top[0].diff),
                           flat(bottom[0].diff), self.dtype.type(self.beta))

    def forward_gpu(self, bottom, top):
        _cuda().swish_forward(bottom[0].gpu_data(), self.sigmoid_output.mutable_gpu_data(),
                              top[0].mutable_gpu_data(), top[0].count, self.beta)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().swish_backward(top[0].gpu_data(), self.sigmoid_output.gpu_data(), top[0].gpu_diff(),
                                   bottom[0].mutable_gpu_diff(), bottom[0].count, self.beta)


# --- Clip ---------------------------------------------------------------------

@njit(cache=True, error_model="numpy")
def clip_forward(x, y, lo, hi):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if v > hi:
            v = hi
        if v < lo:
            v = lo
        y[i] = v


@njit(cache=True, error_model="numpy")
def clip_backward(x, dy, dx, lo, hi):
    for i in range(np.uint64(x.shape[0])):
        v = x[i]
        if v >= lo and v <= hi:        # inclusive at both ends, as Caffe
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * 0


@register_layer("Clip")
class ClipLayer(_KeepsBottom):
    """y = max(min, min(x, max)) (``clip_param { min max }``, both required);
    the gradient passes where min <= x <= max (both ends included, as Caffe)."""

    def setup(self, bottom, top):
        param = self.layer_param.clip_param
        missing = [f for f in ("min", "max") if not param.HasField(f)]
        if missing:
            raise ConfigError(f"layer '{self.name}' (Clip): clip_param.{' and clip_param.'.join(missing)} "
                              "must be given")
        self.min, self.max = float(param.min), float(param.max)

    def forward_cpu(self, bottom, top):
        self._keep_cpu(bottom, top)
        t = self.dtype.type
        clip_forward(flat(self._input(bottom, top).data), flat(top[0].data), t(self.min), t(self.max))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            t = self.dtype.type
            clip_backward(flat(self._input(bottom, top).data), flat(top[0].diff), flat(bottom[0].diff), t(self.min),
                          t(self.max))

    def forward_gpu(self, bottom, top):
        self._keep_gpu(bottom, top)
        _cuda().clip_forward(self._input(bottom, top).gpu_data(), top[0].mutable_gpu_data(), top[0].count,
                             self.min, self.max)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            _cuda().clip_backward(self._input(bottom, top).gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(),
                                  bottom[0].count, self.min, self.max)


__all__ = ["PReLULayer", "ELULayer", "AbsValLayer", "PowerLayer", "ExpLayer", "LogLayer", "BNLLLayer",
           "ThresholdLayer", "SwishLayer", "ClipLayer", "power_forward", "power_backward"]
