"""Normalization layers: BatchNorm, Scale, Bias, LRN, MVN (Caffe's semantics).

* **BatchNorm** normalizes each channel (axis 1) over the batch and the
  spatial axes: y = (x - mean) / sqrt(var + eps).  Its three blobs are
  Caffe's running statistics [mean sum, variance sum, scale factor s (one
  element)]; a TRAIN forward updates them as Caffe does:
  ``s <- lambda s + 1``, ``mean <- lambda mean + batch_mean``,
  ``var <- lambda var + m/(m-1) batch_var`` (m = count / channels;
  batch_var is the biased E[(x - mean)^2]).  With ``use_global_stats``
  (default: true in TEST, false in TRAIN) it normalizes with mean / s and
  var / s instead (0 when s = 0).  The blobs are not learned: setup adds
  ``param { lr_mult: 0 }`` for each to the layer's definition, as Caffe's
  LayerSetUp does (a spec that sets another lr_mult is an error); the Net
  reads the layer's ``param`` specs after setup, so the solver sees them as
  fixed and no gradient is computed for them.
* **Scale** multiplies by a learned blob or a second bottom broadcast over
  the axes [axis, axis + num_axes) (outer and inner dimensions as in Caffe),
  optionally adding a bias (``bias_term``) through an internal Bias layer.
* **Bias** adds a learned blob or a second bottom, broadcast the same way.
* **LRN**: ACROSS_CHANNELS scale = k + alpha/n sum of x^2 over n channels;
  WITHIN_CHANNEL builds Caffe's chain (square, AVE pooling of size n with
  pad (n-1)/2, power (1 + alpha pooled)^-beta, product); y = x scale^-beta.
* **MVN** subtracts the mean per (image, channel) or per image
  (``across_channels``) and, with ``normalize_variance``, divides by
  sqrt(var) + eps (Caffe adds eps to the standard deviation).

Each element-wise formula is written once (``@formula``, below) and used by
the CPU loops here and the CUDA kernels in ``normalization_cuda.py``.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.formula import formula
from dlcore.layer import TEST, Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .activations import power_backward, power_forward
from .elementwise import mul_into as multiply     # out = a * b (a may be b: the squares)
from .kernels import add_channel_bias, channel_sum, param_down
from .neurons import flat
from .pooling import PoolGeometry, ave_pool_backward, ave_pool_forward

CUDA_MODULE = ".normalization_cuda"

# LRN's norm_region
ACROSS_CHANNELS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
WITHIN_CHANNEL = caffe_pb2.LRNParameter.WITHIN_CHANNEL

# What the normalization's gradient flows through (group_norm_backward's ``mode``):
STATS_FIXED = 0         # nothing: the mean and std are constants (BatchNorm with global statistics)
STATS_MEAN_VAR = 1      # the group's mean and variance (BatchNorm in TRAIN, MVN with normalize_variance)
STATS_MEAN = 2          # the group's mean only (MVN without normalize_variance: y = x - mean)


class Groups(NamedTuple):
    """A "group" layout (N, G, S) of a flat array: element (n, g, s) at (n*G + g)*S + s.

    BatchNorm's channels are (num, C, spatial), MVN's rows (1, rows, dim),
    Scale/Bias's (outer, dim, inner)."""
    N: int
    G: int
    S: int


# ---------------------------------------------------------------------------
# Formulas (also the CUDA kernels' arithmetic)
# ---------------------------------------------------------------------------

@formula
def normalize(x, mean, std, divide):
    """BatchNorm's and MVN's output: (x - mean) / std, or x - mean."""
    v = x - mean
    return v / std if divide else v


@formula
def normalize_grad(dy, y, sum_dy, sum_dy_y, inv_m, std, mode):
    """dx of ``normalize`` given the group's sums of dy and dy*y (y: the normalized output);
    ``mode``: what the gradient flows through (STATS_FIXED, STATS_MEAN_VAR, STATS_MEAN)."""
    if mode == STATS_FIXED:
        return dy / std
    if mode == STATS_MEAN_VAR:
        return (dy - (sum_dy_y * y + sum_dy) * inv_m) / std
    return dy - sum_dy * inv_m


@formula
def running_sum(value, running, moving_average_fraction):
    """Caffe's BatchNorm statistics update: running <- value + lambda running."""
    return value + moving_average_fraction * running


@formula
def global_stats_factor(s, one):
    """1 / s, the factor that turns the running sums into statistics (0 before any batch: s = 0)."""
    f = s - s
    if s != 0:
        f = one / s
    return f


@formula
def batch_norm_std(var, eps):
    return math.sqrt(var + eps)


@formula
def mvn_std(var, eps):
    return math.sqrt(var) + eps


@formula
def lrn_term(x, alpha_over_size):
    """One channel's share of LRN's ACROSS_CHANNELS scale: alpha/n x^2."""
    return alpha_over_size * (x * x)


@formula
def lrn_power(scale, neg_beta):
    return scale ** neg_beta


@formula
def lrn_output(x, scale, neg_beta):
    """y = x scale^-beta."""
    return lrn_power(scale, neg_beta) * x


@formula
def lrn_ratio(dy, x, scale, power):
    """dy y / scale, y = power x as forward computed it (power: scale^-beta): the terms of the
    ACROSS_CHANNELS gradient's window sum (Caffe's accum_ratio)."""
    return dy * (power * x) / scale


@formula
def lrn_grad(dy, x, power, window_ratio, cache_ratio):
    """ACROSS_CHANNELS: dx = dy scale^-beta - 2 alpha beta / n x (window sum of lrn_ratio)."""
    return dy * power - cache_ratio * (x * window_ratio)


@formula
def lrn_within_grad(dy, power, x, d_square):
    """WITHIN_CHANNEL: dx = dy power + (2 x) d(square) (Caffe's Split sums the product's and the square's diffs)."""
    return dy * power + (2 * x) * d_square


# LRN's power for beta = 0.75 (AlexNet's, CaffeNet's, GoogLeNet's) without pow: this CPU's
# Numba has no vector pow (no SVML), so scale ** -0.75 costs a libm call per element, most of
# the layer's time; 1 / (sqrt(s) sqrt(sqrt(s))) vectorizes (~7x faster).  Rounding: each
# sqrt, the product and the quotient are correctly rounded, so the relative error stays within
# LRN_POWER_075_ULPS units in the last place of the data's type (tests/test_normalization.py
# checks it; pow itself is within 1).
LRN_POWER_075_ULPS = 5


@njit(cache=True, error_model="numpy")
def lrn_powers(scale, base, count, neg_beta, out):
    """``out[i] = lrn_power(scale[base + i], neg_beta)`` for i < count (see LRN_POWER_075_ULPS)."""
    ub = np.uint64(base)
    if neg_beta == -0.75:
        for i in range(np.uint64(count)):
            r = math.sqrt(scale[ub + i])
            out[i] = 1.0 / (r * math.sqrt(r))
    else:
        for i in range(np.uint64(count)):
            out[i] = lrn_power(scale[ub + i], neg_beta)


class LRNParams(NamedTuple):
    """LRN ACROSS_CHANNELS's geometry (num, channels, plane = H*W, window size, pre_pad) and its
    constants in the data's dtype."""
    num: int
    channels: int
    plane: int
    size: int
    pre_pad: int
    alpha_over_size: float
    k: float
    neg_beta: float
    cache_ratio: float          # 2 alpha beta / n


# ---------------------------------------------------------------------------
# CPU kernels (on Groups layouts)
# ---------------------------------------------------------------------------

# Reductions accumulate in float64 and may reassociate (vectorized sums, as the shared
# kernels.channel_sum); inner loops index with unsigned integers (no wrap-around checks).
_SUM = {"reassoc", "nsz", "contract"}


@njit(cache=True, error_model="numpy", fastmath=_SUM)
def group_moments(x, groups, mean, var, want_var):
    """mean[g] = E[x], var[g] = E[(x - mean[g])^2] over n, s (float64 sums)."""
    N, G, S = groups
    m = N * S
    uS = np.uint64(S)
    for g in range(G):
        acc = 0.0
        for n in range(N):
            b = np.uint64((n * G + g) * S)
            for s in range(uS):
                acc += x[b + s]
        mean[g] = acc / m
        if want_var:
            mu = mean[g]
            acc = 0.0
            for n in range(N):
                b = np.uint64((n * G + g) * S)
                for s in range(uS):
                    d = x[b + s] - mu
                    acc += d * d
            var[g] = acc / m


@njit(cache=True, error_model="numpy")
def group_normalize(x, y, mean, std, groups, divide):
    """y = normalize(x, mean[g], std[g], divide); works in place."""
    N, G, S = groups
    uS = np.uint64(S)
    for row in range(N * G):                 # row n*G + g: S elements of group g
        g = row % G
        b = np.uint64(row * S)
        if divide:
            for s in range(uS):
                y[b + s] = normalize(x[b + s], mean[g], std[g], True)
        else:
            for s in range(uS):
                y[b + s] = normalize(x[b + s], mean[g], std[g], False)


@njit(cache=True, error_model="numpy", fastmath=_SUM, inline="always")
def _group_dot(a, b, groups, g, want_a):
    """(sum of a, sum of a*b) over group g's n, s, in float64 (the first 0 unless ``want_a``)."""
    N, G, S = groups
    uS = np.uint64(S)
    acc_a = 0.0
    acc_ab = 0.0
    for n in range(N):
        o = np.uint64((n * G + g) * S)
        for s in range(uS):
            v = a[o + s]
            if want_a:
                acc_a += v
            acc_ab += v * b[o + s]
    return acc_a, acc_ab


@njit(cache=True, error_model="numpy", fastmath=_SUM)
def group_sums(a, b, groups, sum_a, sum_ab):
    """sum_a[g] = sum of a, sum_ab[g] = sum of a*b over n, s (float64 sums)."""
    for g in range(groups.G):
        sum_a[g], sum_ab[g] = _group_dot(a, b, groups, g, True)


@njit(cache=True, error_model="numpy")
def group_norm_backward(dy, y, dx, sum_a, sum_ab, std, groups, inv_m, mode):
    """dx = normalize_grad(dy, y, sum_a[g], sum_ab[g], inv_m, std[g], mode).
    Element-wise after the sums, so dx may be dy (in place)."""
    N, G, S = groups
    uS = np.uint64(S)
    for n in range(N):
        for g in range(G):
            o = np.uint64((n * G + g) * S)
            a = sum_a[g]
            ab = sum_ab[g]
            sd = std[g]
            # the mode is tested outside the inner loops (then a constant in each: they vectorize)
            if mode == STATS_FIXED:
                for s in range(uS):
                    dx[o + s] = normalize_grad(dy[o + s], y[o + s], a, ab, inv_m, sd, STATS_FIXED)
            elif mode == STATS_MEAN_VAR:
                for s in range(uS):
                    dx[o + s] = normalize_grad(dy[o + s], y[o + s], a, ab, inv_m, sd, STATS_MEAN_VAR)
            else:
                for s in range(uS):
                    dx[o + s] = normalize_grad(dy[o + s], y[o + s], a, ab, inv_m, sd, STATS_MEAN)


@njit(cache=True, error_model="numpy")
def bn_stats(mean, var, std, b0, b1, b2, lam, bias_correction, eps, one, use_global):
    """Global: mean, var = b0 / s, b1 / s.  Else update the running sums from the batch's.
    Then std = sqrt(var + eps).  ``one``: 1 in the data's dtype (keeps float32 math in float32)."""
    C = mean.shape[0]
    if use_global:
        f = global_stats_factor(b2[0], one)
        for c in range(C):
            mean[c] = f * b0[c]
            var[c] = f * b1[c]
    else:
        b2[0] = running_sum(one, b2[0], lam)
        for c in range(C):
            b0[c] = running_sum(mean[c], b0[c], lam)
            b1[c] = running_sum(bias_correction * var[c], b1[c], lam)
    for c in range(C):
        std[c] = batch_norm_std(var[c], eps)


@njit(cache=True, error_model="numpy")
def mvn_stds(var, std, eps):
    for r in range(var.shape[0]):
        std[r] = mvn_std(var[r], eps)


@njit(cache=True, error_model="numpy")
def broadcast_scale(x, s, y, groups):
    """y[o, d, j] = x[o, d, j] * s[d] (flat (outer, dim, inner) = groups); works in place."""
    outer, dim, inner = groups
    uI = np.uint64(inner)
    for o in range(outer):
        for d in range(dim):
            f = s[d]
            b = np.uint64((o * dim + d) * inner)
            for j in range(uI):
                y[b + j] = x[b + j] * f


@njit(cache=True, error_model="numpy", fastmath=_SUM)
def broadcast_scale_grad(dy, x, out, groups, accumulate):
    """out[d] (+)= sum over o, j of dy * x (float64 sums) on the (outer, dim, inner) layout ``groups``."""
    for d in range(groups.G):
        acc = _group_dot(dy, x, groups, d, False)[1]
        if accumulate:
            out[d] += acc
        else:
            out[d] = acc


@njit(cache=True, error_model="numpy")
def lrn_across_forward(x, scale, y, p):
    """Caffe's CPU LRN, plane by plane: the first channel's scale is k + alpha/n x^2 summed over
    its window; each next one adds the entering channel's term and subtracts the leaving one's.
    (Unsigned indices: no wrap-around checks in the inner loops, which then vectorize.)"""
    C, HW, size, pre_pad, alpha_over_size = p.channels, p.plane, p.size, p.pre_pad, p.alpha_over_size
    uHW = np.uint64(HW)
    for n in range(p.num):
        base = np.uint64(n * C * HW)
        for i in range(uHW):
            scale[base + i] = p.k
        for j in range(size):                     # the first window: channels -pre_pad .. size-1-pre_pad
            c = j - pre_pad
            if 0 <= c < C:
                o = base + np.uint64(c * HW)
                for i in range(uHW):
                    scale[base + i] += lrn_term(x[o + i], alpha_over_size)
        for c in range(1, C):
            o = base + np.uint64(c * HW)
            prev = o - uHW
            for i in range(uHW):
                scale[o + i] = scale[prev + i]
            head = c + size - 1 - pre_pad
            if head < C:
                h = base + np.uint64(head * HW)
                for i in range(uHW):
                    scale[o + i] += lrn_term(x[h + i], alpha_over_size)
            tail = c - 1 - pre_pad
            if tail >= 0:
                t = base + np.uint64(tail * HW)
                for i in range(uHW):
                    scale[o + i] -= lrn_term(x[t + i], alpha_over_size)
    lrn_powers(scale, 0, x.shape[0], p.neg_beta, y)
    for i in range(np.uint64(x.shape[0])):
        y[i] = y[i] * x[i]                        # lrn_output: power x


@njit(cache=True, error_model="numpy")
def lrn_across_backward(x, scale, dy, dx, p):
    """dx = lrn_grad(...) plane by plane as Caffe's CPU code: the window sum of lrn_ratio runs over
    the channels; y is recomputed from x and scale exactly as forward did (same lrn_powers)."""
    C, HW, size, pre_pad, neg_beta = p.channels, p.plane, p.size, p.pre_pad, p.neg_beta
    uHW = np.uint64(HW)
    ratio = np.empty(C * HW, dx.dtype)
    power = np.empty(C * HW, dx.dtype)
    accum = np.empty(HW, dx.dtype)
    for n in range(p.num):
        base = np.uint64(n * C * HW)
        lrn_powers(scale, base, C * HW, neg_beta, power)
        for i in range(np.uint64(C * HW)):
            ratio[i] = lrn_ratio(dy[base + i], x[base + i], scale[base + i], power[i])
        for i in range(uHW):
            accum[i] = 0
        for j in range(size - 1):                 # padded positions 0 .. size-2
            c = j - pre_pad
            if 0 <= c < C:
                r = np.uint64(c * HW)
                for i in range(uHW):
                    accum[i] += ratio[r + i]
        for c in range(C):
            head = c + size - 1 - pre_pad
            if head < C:
                r = np.uint64(head * HW)
                for i in range(uHW):
                    accum[i] += ratio[r + i]
            r = np.uint64(c * HW)
            o = base + r
            for i in range(uHW):
                dx[o + i] = lrn_grad(dy[o + i], x[o + i], power[r + i], accum[i], p.cache_ratio)
            tail = c - pre_pad
            if tail >= 0:
                r = np.uint64(tail * HW)
                for i in range(uHW):
                    accum[i] -= ratio[r + i]


@njit(cache=True, error_model="numpy")
def lrn_within_backward(dy, power, x, d_square, dx):
    for i in range(np.uint64(dy.shape[0])):
        dx[i] = lrn_within_grad(dy[i], power[i], x[i], d_square[i])


class _OneToOneLayer(Layer):
    """BatchNorm, LRN, MVN: one bottom, one top."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE


# ---------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------

@register_layer("BatchNorm")
class BatchNormLayer(_OneToOneLayer):
    """Batch normalization (``batch_norm_param { use_global_stats moving_average_fraction eps }``)."""

    def setup(self, bottom, top):
        name = f"layer '{self.name}' (BatchNorm)"
        param = self.layer_param.batch_norm_param
        self.moving_average_fraction = float(param.moving_average_fraction)
        self.use_global_stats = self.phase == TEST
        if param.HasField("use_global_stats"):
            self.use_global_stats = bool(param.use_global_stats)
        self.eps = float(param.eps)
        if bottom[0].num_axes < 1:
            raise ConfigError(f"{name}: the bottom needs at least 1 axis")
        self.channels = self._channels(bottom[0])
        if self.blobs:
            if len(self.blobs) != 3:
                raise ConfigError(f"{name}: expected 3 statistics blobs (mean, variance, scale factor), "
                                  f"got {len(self.blobs)}")
            for i, want in enumerate((self.channels, self.channels, 1)):
                if self.blobs[i].count != want:
                    raise ConfigError(f"{name}: statistics blob {i} has {self.blobs[i].count} elements, "
                                      f"expected {want} for {self.channels} channels")
        else:
            self.blobs = [Blob(self.channels, dtype=self.dtype), Blob(self.channels, dtype=self.dtype),
                          Blob(1, dtype=self.dtype)]
        # Mask the statistics from optimization (Caffe's LayerSetUp): lr_mult 0 for each blob.
        specs = self.layer_param.param
        for i in range(len(self.blobs)):
            if len(specs) == i:
                spec = caffe_pb2.ParamSpec()
                spec.lr_mult = 0
                specs.append(spec)
            elif specs[i].lr_mult != 0:
                raise ConfigError(f"{name}: cannot configure batch normalization statistics as layer "
                                  f"parameters (param {i} has lr_mult {specs[i].lr_mult}; it must be 0)")
        self.param_propagate_down = [False] * len(self.blobs)
        self.mean = Blob(dtype=self.dtype)        # diff: scratch for backward sums
        self.variance = Blob(dtype=self.dtype)
        self.std = Blob(dtype=self.dtype)
        self.x_norm = Blob(dtype=self.dtype)

    @staticmethod
    def _channels(blob):
        return 1 if blob.num_axes == 1 else blob.shape[1]

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes < 1:
            raise ConfigError(f"layer '{self.name}' (BatchNorm): the bottom needs at least 1 axis")
        if self._channels(b) != self.channels:
            raise ConfigError(f"layer '{self.name}' (BatchNorm): bottom has {self._channels(b)} channels, "
                              f"the layer was set up for {self.channels}")
        top[0].reshape_like(b)
        for blob in (self.mean, self.variance, self.std):
            blob.reshape(self.channels)
        self.x_norm.reshape_like(b)
        num = b.shape[0]
        self.groups = Groups(num, self.channels, b.count // max(num * self.channels, 1))

    def stats_args(self, bottom):
        """bn_stats's constants, in the data's dtype: (lambda, m/(m-1), eps, 1)."""
        t = self.dtype.type
        m = bottom[0].count // self.channels
        return (t(self.moving_average_fraction), t(m / (m - 1) if m > 1 else 1.0), t(self.eps), t(1))

    def backward_args(self):
        """group_norm_backward's 1/m (m: the elements per channel) and mode."""
        N, _, S = self.groups
        return self.dtype.type(1.0 / max(N * S, 1)), STATS_FIXED if self.use_global_stats else STATS_MEAN_VAR

    def forward_cpu(self, bottom, top):
        x, y = flat(bottom[0].data), flat(top[0].data)
        mean, var, std = self.mean.data, self.variance.data, self.std.data
        if not self.use_global_stats:
            group_moments(x, self.groups, mean, var, True)
        bn_stats(mean, var, std, *(flat(b.data) for b in self.blobs), *self.stats_args(bottom),
                 self.use_global_stats)
        group_normalize(x, y, mean, std, self.groups, True)
        np.copyto(self.x_norm.data, top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx, xn = flat(top[0].diff), flat(bottom[0].diff), flat(self.x_norm.data)
        sum_a, sum_ab = self.mean.diff, self.variance.diff
        if not self.use_global_stats:
            group_sums(dy, xn, self.groups, sum_a, sum_ab)
        group_norm_backward(dy, xn, dx, sum_a, sum_ab, self.std.data, self.groups, *self.backward_args())


# ---------------------------------------------------------------------------
# Bias and Scale
# ---------------------------------------------------------------------------

def _broadcast_blob_shape(layer, kind, bottom, axis_param, num_axes):
    """The learned blob's shape: bottom[0]'s axes [axis, axis + num_axes) (num_axes -1: to the end)."""
    name = f"layer '{layer.name}' ({kind})"
    b = bottom[0]
    try:
        axis = b.canonical_axis(axis_param)
    except ConfigError as err:
        raise ConfigError(f"{name}: {err.message}") from None
    if num_axes < -1:
        raise ConfigError(f"{name}: num_axes must be non-negative, or -1 to extend to the end of bottom[0] "
                          f"(got {num_axes})")
    if num_axes >= 0 and b.num_axes < axis + num_axes:
        raise ConfigError(f"{name}: the {kind.lower()} blob's shape extends past bottom[0]'s shape "
                          f"{b.shape_string()} when applied starting with bottom[0] axis {axis}")
    return b.shape[axis:] if num_axes == -1 else b.shape[axis:axis + num_axes]


def _broadcast_groups(layer, kind, bottom, operand, axis_param):
    """Groups (outer, dim, inner) of bottom[0] around the operand's axes, with Caffe's checks."""
    name = f"layer '{layer.name}' ({kind})"
    b = bottom[0]
    if operand.num_axes == 0:
        axis = 0            # a scalar: any axis gives the same result; 0 is Caffe's choice
    else:
        try:
            axis = b.canonical_axis(axis_param)
        except ConfigError as err:
            raise ConfigError(f"{name}: {err.message}") from None
    if b.num_axes < axis + operand.num_axes:
        raise ConfigError(f"{name}: the {kind.lower()} blob's shape {operand.shape_string()} extends past "
                          f"bottom[0]'s shape {b.shape_string()} when applied starting with axis {axis}")
    for i in range(operand.num_axes):
        if b.shape[axis + i] != operand.shape[i]:
            raise ConfigError(f"{name}: dimension mismatch between bottom[0] axis {axis + i} "
                              f"(size {b.shape[axis + i]}) and the {kind.lower()} blob's axis {i} "
                              f"(size {operand.shape[i]}); bottom[0] is {b.shape_string()}, the "
                              f"{kind.lower()} blob {operand.shape_string()}")
    return Groups(b.count_range(0, axis), operand.count, b.count_range(axis + operand.num_axes))


class _BroadcastLayer(Layer):
    """Bias and Scale: bottom[0] with a learned blob or bottom[1] broadcast over it (``groups``:
    bottom[0] as (outer, dim, inner), dim the operand's count)."""

    min_bottom_blobs = 1
    max_bottom_blobs = 2
    exact_num_top_blobs = 1
    cuda_module = CUDA_MODULE

    def operand(self, bottom):
        return bottom[1] if len(bottom) > 1 else self.blobs[0]

    def wants_operand_grad(self, propagate_down, bottom):
        """The learned blob's gradient (if wanted), or bottom[1]'s (if propagated to)."""
        return param_down(self, 0) if len(bottom) == 1 else bool(propagate_down[1])


@register_layer("Bias")
class BiasLayer(_BroadcastLayer):
    """y = x + b, b broadcast over bottom[0]'s axes [axis, axis + num_axes).

    b is a learned blob (``bias_param { axis num_axes filler }``, filler
    default constant 0) or the second bottom (its own shape decides the axes).
    """

    def setup(self, bottom, top):
        param = self.layer_param.bias_param
        if len(bottom) == 1 and not self.blobs:
            shape = _broadcast_blob_shape(self, "Bias", bottom, param.axis, param.num_axes)
            self.blobs = [Blob(*shape, dtype=self.dtype) if shape else Blob(dtype=self.dtype)]
            fill(self.blobs[0], param.filler)

    def reshape(self, bottom, top):
        self.groups = _broadcast_groups(self, "Bias", bottom, self.operand(bottom), self.layer_param.bias_param.axis)
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        if top[0] is not bottom[0]:
            np.copyto(top[0].data, bottom[0].data)
        add_channel_bias(flat(top[0].data), flat(self.operand(bottom).data), *self.groups)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and top[0] is not bottom[0]:
            np.copyto(bottom[0].diff, top[0].diff)
        if self.wants_operand_grad(propagate_down, bottom):
            out = flat(self.operand(bottom).diff)
            if len(bottom) > 1:
                out[...] = 0
            channel_sum(flat(top[0].diff), *self.groups, out)


@register_layer("Scale")
class ScaleLayer(_BroadcastLayer):
    """y = x * s (+ b), s broadcast over bottom[0]'s axes [axis, axis + num_axes).

    s is a learned blob (``scale_param { axis num_axes filler (default
    constant 1) }``) or the second bottom.  ``bias_term`` adds a learned
    bias through an internal Bias layer (``bias_filler``), as Caffe does;
    its blob comes after the scale blob (or is the only blob with two
    bottoms).  In place, the input is kept for the scale's gradient.
    """

    def setup(self, bottom, top):
        param = self.layer_param.scale_param
        loaded = len(self.blobs)
        if len(bottom) == 1 and not self.blobs:
            shape = _broadcast_blob_shape(self, "Scale", bottom, param.axis, param.num_axes)
            self.blobs = [Blob(*shape, dtype=self.dtype) if shape else Blob(dtype=self.dtype)]
            if param.HasField("filler"):
                fill(self.blobs[0], param.filler)
            else:
                self.blobs[0].data[...] = 1          # the identity
        self.bias_layer = None
        if param.bias_term:
            bias_param = caffe_pb2.LayerParameter()
            bias_param.CopyFrom(self.layer_param)
            del bias_param.blobs[:]
            del bias_param.param[:]
            del bias_param.loss_weight[:]
            bias_param.type = "Bias"
            bias_param.bias_param.axis = param.axis
            bias_param.bias_param.num_axes = bottom[1].num_axes if len(bottom) > 1 else param.num_axes
            bias_param.bias_param.filler.CopyFrom(param.bias_filler)
            self.bias_layer = BiasLayer(bias_param, dtype=self.dtype)
            self.bias_layer.gpu = self.gpu
            if len(self.blobs) + len(bottom) >= 3:
                # the bias blob was loaded with the definition: the last blob
                self.bias_layer.blobs = [self.blobs[-1]]
            self.bias_layer.initialize([bottom[0]], top)
            if len(self.blobs) + len(bottom) < 3:
                self.blobs.append(self.bias_layer.blobs[0])
        want = (len(bottom) == 1) + (self.bias_layer is not None)
        if len(self.blobs) < want:
            raise ConfigError(f"layer '{self.name}' (Scale): expected {want} parameter blob(s), "
                              f"got {len(self.blobs)}{' (loaded with the definition)' if loaded else ''}")
        self.temp = Blob(dtype=self.dtype)

    def reshape(self, bottom, top):
        self.groups = _broadcast_groups(self, "Scale", bottom, self.operand(bottom), self.layer_param.scale_param.axis)
        if top[0] is bottom[0]:
            self.temp.reshape_like(bottom[0])
        else:
            top[0].reshape_like(bottom[0])
        if self.bias_layer is not None:
            self.bias_layer.reshape([top[0]], top)

    def scale_input(self, bottom, top):
        """The input the scale's gradient needs: a copy taken before an in-place forward."""
        return self.temp if top[0] is bottom[0] else bottom[0]

    def forward(self, bottom, top):
        super().forward(bottom, top)          # forward_cpu or the GPU code: the scale
        if self.bias_layer is not None:
            self.bias_layer.gpu = self.gpu
            self.bias_layer.forward([top[0]], top)

    def backward(self, top, propagate_down, bottom):
        # the bias gradient first: in place, the bottom diff overwrites the top diff
        if self.bias_layer is not None and param_down(self, len(self.blobs) - 1):
            self.bias_layer.gpu = self.gpu
            self.bias_layer.param_propagate_down = [True]
            self.bias_layer.backward(top, [False], [top[0]])
        super().backward(top, propagate_down, bottom)

    def forward_cpu(self, bottom, top):
        if top[0] is bottom[0]:
            np.copyto(self.temp.data, bottom[0].data)
        broadcast_scale(flat(bottom[0].data), flat(self.operand(bottom).data), flat(top[0].data), self.groups)

    def backward_cpu(self, top, propagate_down, bottom):
        operand = self.operand(bottom)
        if self.wants_operand_grad(propagate_down, bottom):
            broadcast_scale_grad(flat(top[0].diff), flat(self.scale_input(bottom, top).data), flat(operand.diff),
                                 self.groups, len(bottom) == 1)
        if propagate_down[0]:
            broadcast_scale(flat(top[0].diff), flat(operand.data), flat(bottom[0].diff), self.groups)


# ---------------------------------------------------------------------------
# LRN
# ---------------------------------------------------------------------------

@register_layer("LRN")
class LRNLayer(_OneToOneLayer):
    """Local response normalization (``lrn_param { local_size alpha beta norm_region k }``).

    ACROSS_CHANNELS: y = x (k + alpha/n sum over n channels of x^2)^-beta.
    WITHIN_CHANNEL: y = x (1 + alpha/n^2 sum over an n x n window of x^2)^-beta
    (k unused, zero padding), computed by Caffe's chain of layers.
    """

    allows_in_place = False

    def setup(self, bottom, top):
        name = f"layer '{self.name}' (LRN)"
        p = self.layer_param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1:
            raise ConfigError(f"{name}: LRN only supports odd values for local_size (got {self.size})")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        if p.norm_region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise ConfigError(f"{name}: unknown norm_region {p.norm_region}")
        self.across = p.norm_region == ACROSS_CHANNELS
        self.scale = Blob(dtype=self.dtype)       # ACROSS: the scale; WITHIN: the squares (diff: their gradient)
        self.pool = Blob(dtype=self.dtype)        # WITHIN: pooled squares (diff: their gradient)
        self.power = Blob(dtype=self.dtype)       # WITHIN: (1 + alpha pooled)^-beta (diff: its gradient)

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise ConfigError(f"layer '{self.name}' (LRN): input must have 4 axes (num, channels, height, "
                              f"width), got {b.shape_string()}")
        top[0].reshape_like(b)
        self.scale.reshape_like(b)
        if not self.across:
            self.pool.reshape_like(b)      # AVE pooling, kernel n, pad (n-1)/2, stride 1 keeps H x W
            self.power.reshape_like(b)
        self.N, self.C, self.H, self.W = b.shape
        t = self.dtype.type
        self.params = LRNParams(self.N, self.C, self.H * self.W, self.size, self.pre_pad, t(self.alpha / self.size),
                                t(self.k), t(-self.beta), t(2.0 * self.alpha * self.beta / self.size))
        # WITHIN_CHANNEL's AVE pooling: window n x n, pad (n-1)/2, stride 1
        self.pool_geometry = PoolGeometry(self.N * self.C, self.H, self.W, self.H, self.W, self.size, self.size,
                                          self.pre_pad, self.pre_pad, 1, 1)

    def power_args(self):
        """WITHIN_CHANNEL's Power layer: (power, scale, shift) = (-beta, alpha, 1)."""
        t = self.dtype.type
        return t(-self.beta), t(self.alpha), t(1)

    def forward_cpu(self, bottom, top):
        x, y = flat(bottom[0].data), flat(top[0].data)
        if self.across:
            lrn_across_forward(x, flat(self.scale.data), y, self.params)
            return
        sq, pool, pw = flat(self.scale.data), flat(self.pool.data), flat(self.power.data)
        multiply(x, x, sq)
        ave_pool_forward(sq, self.pool_geometry, pool)
        power_forward(pool, pw, *self.power_args())
        multiply(x, pw, y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dy, dx = flat(bottom[0].data), flat(top[0].diff), flat(bottom[0].diff)
        if self.across:
            lrn_across_backward(x, flat(self.scale.data), dy, dx, self.params)
            return
        pool, pw = flat(self.pool.data), flat(self.power.data)
        d_sq, d_pool, d_pw = flat(self.scale.diff), flat(self.pool.diff), flat(self.power.diff)
        multiply(x, dy, d_pw)
        power_backward(pool, pw, d_pw, d_pool, *self.power_args())
        ave_pool_backward(d_pool, self.pool_geometry, d_sq)
        lrn_within_backward(dy, pw, x, d_sq, dx)


# ---------------------------------------------------------------------------
# MVN
# ---------------------------------------------------------------------------

@register_layer("MVN")
class MVNLayer(_OneToOneLayer):
    """Mean-variance normalization (``mvn_param { normalize_variance across_channels eps }``).

    Rows are (image, channel) pairs, or images with ``across_channels``;
    y = (x - mean) / (sqrt(var) + eps), or x - mean.  The top has Caffe's
    legacy 4-D shape (num, channels, height, width) of the bottom.
    """

    def setup(self, bottom, top):
        p = self.layer_param.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self.mean = Blob(dtype=self.dtype)       # diff: scratch for backward sums
        self.variance = Blob(dtype=self.dtype)
        self.std = Blob(dtype=self.dtype)
        self.x_norm = Blob(dtype=self.dtype)     # the normalized output, kept for backward

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes > 4:
            raise ConfigError(f"layer '{self.name}' (MVN): works on blobs of at most 4 axes (num, channels, "
                              f"height, width), got {b.shape_string()}")
        top[0].reshape(b.num, b.channels, b.height, b.width)
        rows = b.num if self.across_channels else b.num * b.channels
        self.groups = Groups(1, rows, b.count // max(rows, 1))
        for blob in (self.mean, self.variance, self.std):
            blob.reshape(rows)
        if self.normalize_variance:
            self.x_norm.reshape_like(top[0])

    def backward_args(self):
        """group_norm_backward's 1/m (m: the elements per row) and mode."""
        return (self.dtype.type(1.0 / max(self.groups.S, 1)),
                STATS_MEAN_VAR if self.normalize_variance else STATS_MEAN)

    def forward_cpu(self, bottom, top):
        x, y = flat(bottom[0].data), flat(top[0].data)
        group_moments(x, self.groups, self.mean.data, self.variance.data, self.normalize_variance)
        if self.normalize_variance:
            mvn_stds(self.variance.data, self.std.data, self.dtype.type(self.eps))
        group_normalize(x, y, self.mean.data, self.std.data, self.groups, self.normalize_variance)
        if self.normalize_variance:
            np.copyto(flat(self.x_norm.data), y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = flat(top[0].diff), flat(bottom[0].diff)
        y = flat(self.x_norm.data) if self.normalize_variance else dy
        group_sums(dy, y, self.groups, self.mean.diff, self.variance.diff)
        group_norm_backward(dy, y, dx, self.mean.diff, self.variance.diff, self.std.data, self.groups,
                            *self.backward_args())
