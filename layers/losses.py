"""Loss layers: SoftmaxWithLoss and EuclideanLoss (Caffe's semantics), and what every loss layer shares.

A loss layer's first top is a scalar blob (shape ``()``); its loss weight,
which the net (or the gradient checker) stores in ``top[0].diff``, scales
the gradient.

Shared by the loss layers (here, in losses_extra.py and geoloc_loss.py) and
by Accuracy:

* :class:`LossLayer`: Caffe's LossLayer, plus the host-side ends of forward
  (label check, normalization, the scalar top: :meth:`LossLayer.set_loss`)
  and backward (:meth:`LossLayer.loss_scale`), the same on both devices;
* the labels: the record :class:`Labels` that the kernels take (where the
  labels sit in the scores, and the ignored label), and the formula
  :func:`label_class` (Caffe's ``static_cast<int>``, the ignore_label and
  the range check);
* normalization: Caffe's modes :data:`FULL`, :data:`VALID`,
  :data:`BATCH_SIZE`, :data:`NONE`, read by :func:`normalization_mode` and
  applied by :func:`normalizer` (Caffe's GetNormalizer).

Each element formula is written once (``@formula``) and used by the CPU
loops here and by the CUDA kernels in ``losses_cuda.py``.  A formula casts
with ``float64(x)`` (numba's cast; NumPy's float64 in plain Python) where the
CPU's typing (float32 with a float64 or an int) computes in float64 anyway:
it changes nothing compiled, and lets the CUDA simulator, which runs
formulas as plain Python with NumPy's float32 rules, compute what the
compiled code computes.  (``float(x)`` would not do: numba keeps a float32.)
"""
import math
from typing import NamedTuple

import numpy as np
from numba import float64, njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .neurons import flat
from .softmax import softmax_forward, softmax_geometry

FLT_MIN = 1.1754943508222875e-38   # Caffe clamps the probability here before the log
INT_LIMIT = 2147483648.0            # labels are cast to a C int

# Caffe's LossParameter.NormalizationMode
FULL = caffe_pb2.LossParameter.FULL                # by the number of positions (outer * inner)
VALID = caffe_pb2.LossParameter.VALID              # by the number of non-ignored labels
BATCH_SIZE = caffe_pb2.LossParameter.BATCH_SIZE    # by outer (the batch)
NONE = caffe_pb2.LossParameter.NONE                # not at all

# label_class's answers besides a class index
IGNORED = -1
BAD_LABEL = -2


class Labels(NamedTuple):
    """Where a loss's labels sit: scores (outer, channels, inner) around the class axis, one label
    per (outer, inner) position; and Caffe's ignore_label."""
    outer: int
    channels: int
    inner: int
    has_ignore: bool
    ignore_label: int


# --- formulas -----------------------------------------------------------------------------------

@formula
def ignored(raw, labels):
    """Caffe's ``has_ignore_label_ && static_cast<int>(label) == ignore_label_`` (never outside a C int)."""
    return labels.has_ignore and -INT_LIMIT < raw < INT_LIMIT and int(raw) == labels.ignore_label


@formula
def label_class(raw, labels):
    """The class a label (stored as a float) names, IGNORED, or BAD_LABEL (NaN, outside a C int,
    or outside [0, channels)).  Truncates, as static_cast<int>."""
    if not (-INT_LIMIT < raw < INT_LIMIT):
        return BAD_LABEL
    value = int(raw)
    if labels.has_ignore and value == labels.ignore_label:
        return IGNORED
    if value < 0 or value >= labels.channels:
        return BAD_LABEL
    return value


@formula
def clamped_log(p, floor):
    """log(max(p, floor)): Caffe's log of a probability (floor FLT_MIN, or kLOG_THRESHOLD)."""
    return math.log(max(p, floor))


@formula
def softmax_loss_grad(p, at_label, scale):
    """d loss / d score of one class: (p - 1) * scale at the label, p * scale elsewhere."""
    p = float64(p)
    return (p - 1) * scale if at_label else p * scale


@formula
def infogain_term(h, p, threshold):
    """H[label, c] * log(max(p_c, threshold)) (InfogainLoss; the loss subtracts it)."""
    return float64(h) * clamped_log(p, threshold)


@formula
def infogain_grad(p, row_sum, h, scale):
    """(p_c * sum_k H[label, k] - H[label, c]) * scale (InfogainLoss)."""
    return float64(p * row_sum - h) * scale


@formula
def squared_difference(a, b):
    """(a - b, (a - b)^2), in the data's precision (EuclideanLoss)."""
    d = a - b
    return d, d * d


# --- the shared layer ---------------------------------------------------------------------------

def normalization_mode(loss_param, default=VALID):
    """The NormalizationMode in force: ``normalization`` if set, else the legacy ``normalize``
    (true: VALID, false: BATCH_SIZE), else ``default``."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return VALID if loss_param.normalize else BATCH_SIZE
    return default


def normalizer(mode, outer, inner, valid_count):
    """Caffe's LossLayer::GetNormalizer (valid_count -1: unknown); at least 1."""
    if mode == FULL:
        count = outer * inner
    elif mode == VALID:
        count = outer * inner if valid_count == -1 else valid_count
    elif mode == BATCH_SIZE:
        count = outer
    elif mode == NONE:
        count = 1
    else:
        raise ConfigError(f"unknown loss normalization mode {mode}")
    return max(1.0, float(count))


def bad_label_error(layer, labels, index, channels):
    """The error for the label at flat ``index`` of the host array ``labels``."""
    value = labels.reshape(-1)[index]
    return DLTrainError(
        f"layer '{layer.name}' ({layer.type}): label {float(value):g} at position {index} of bottom 1 "
        f"(shape {labels.shape}) is outside [0, {channels})"
        + (f" and is not the ignore_label {layer.ignore_label}" if layer.has_ignore_label else ""))


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms, a scalar first top, loss weight 1.

    What the loss layers share on both devices: a subclass sets ``outer``
    and ``inner`` (and ``labels``, if it takes labels) in ``reshape``; its
    forward ends in :meth:`set_loss`, its backward scales by
    :meth:`loss_scale`.  ``normalization`` is BATCH_SIZE (Caffe's num()
    average) unless the layer reads ``loss_param`` (:meth:`read_loss_param`).
    """

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True
    is_loss = True
    normalization = BATCH_SIZE
    has_ignore_label = False
    ignore_label = 0
    labels = None                    # a Labels record, for the losses that take class labels
    valid_count = -1                 # the last forward's count of non-ignored labels (-1: unknown)
    refused_bottoms = ()             # (index, what): bottoms a gradient may not be asked for, nor forced (labels)

    allows_in_place = False          # the scalar loss (or the probabilities) would resize an input under it

    def read_loss_param(self, default=VALID):
        """ignore_label and the normalization mode from ``loss_param``."""
        loss_param = self.layer_param.loss_param
        self.has_ignore_label = loss_param.HasField("ignore_label")
        self.ignore_label = int(loss_param.ignore_label)
        self.normalization = normalization_mode(loss_param, default)

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise ConfigError(f"layer '{self.name}' ({self.type}): the data and label should have the same "
                              f"first dimension, got {bottom[0].shape_string()} and {bottom[1].shape_string()}")
        top[0].reshape(())

    def set_labels(self, outer, channels, inner):
        self.outer, self.inner = outer, inner
        self.labels = Labels(outer, channels, inner, self.has_ignore_label, self.ignore_label)

    def normalizer(self, count=-1):
        return normalizer(self.normalization, self.outer, self.inner, count)

    def normalized(self, loss, count):
        """The value of the loss top, from the summed loss and the count of valid labels."""
        return loss / self.normalizer(count)

    def set_loss(self, bottom, top, loss, count=-1, bad=-1):
        """The end of a forward, on the host: raise for a bad label (``bad``: its flat position, or
        -1), keep the valid count, write the normalized loss into the scalar top."""
        if bad >= 0:
            raise bad_label_error(self, bottom[1].cpu_data(), bad, self.labels.channels)
        self.valid_count = count
        with np.errstate(over="ignore"):      # a loss past float32's range is inf, as in Caffe: the solver says so
            top[0].data[...] = self.normalized(loss, count)

    def loss_scale(self, top, factor=1.0):
        """factor * the loss weight / the normalizer: what backward scales the gradient by."""
        return factor * float(top[0].cpu_diff().flat[0]) / self.normalizer(self.valid_count)

    def allow_force_backward(self, bottom_index):
        return all(bottom_index != index for index, _ in self.refused_bottoms)

    def backward(self, top, propagate_down, bottom):
        for index, what in self.refused_bottoms:
            if len(propagate_down) > index and propagate_down[index]:
                raise DLTrainError(f"layer '{self.name}' ({self.type}) cannot backpropagate to {what} inputs")
        super().backward(top, propagate_down, bottom)


# --- SoftmaxWithLoss --------------------------------------------------------

@formula(inline_cpu=True)
def subtract_log_loss(loss, prob, base, value, H, labels, threshold):
    """``loss`` minus the log loss of the position labelled ``value`` whose class 0 is at ``base``.

    With a matrix H (channels x channels; InfogainLoss) the loss is sum_c H[value, c] log(max(p_c,
    threshold)), subtracted class by class (Caffe's order); with none (H empty: SoftmaxWithLoss,
    MultinomialLogisticLoss, as with H the identity) it is log(max(p_value, threshold)).
    """
    if H.shape[0] == 0:
        return loss - clamped_log(prob[base + value * labels.inner], threshold)
    for c in range(labels.channels):
        loss -= infogain_term(H[value * labels.channels + c], prob[base + c * labels.inner], threshold)
    return loss


@formula
def log_loss_grad(p, c, value, H, row_sums, labels, scale):
    """d loss / d score of class ``c`` at a position labelled ``value`` (H empty: the softmax loss's)."""
    if H.shape[0] == 0:
        return softmax_loss_grad(p, c == value, scale)
    return infogain_grad(p, row_sums[value], H[value * labels.channels + c], scale)


@formula(inline_cpu=True)
def row_sum(H, r, n):
    """sum_c H[r * n + c] (InfogainLoss's), in float64."""
    total = 0.0
    for c in range(n):
        total += H[r * n + c]
    return total


@njit(cache=True)
def row_sums(H, n, out):
    """out[r] = sum_c H[r * n + c]."""
    for r in range(n):
        out[r] = row_sum(H, r, n)


@njit(cache=True)
def log_loss_forward(prob, label, H, labels, threshold):
    """The summed log loss over the non-ignored labels (see subtract_log_loss).

    Returns (loss, valid count, index of the first bad label or -1).
    """
    loss = 0.0
    count = 0
    for i in range(labels.outer):
        for j in range(labels.inner):
            value = label_class(label[i * labels.inner + j], labels)
            if value == BAD_LABEL:
                return loss, count, i * labels.inner + j
            if value != IGNORED:
                loss = subtract_log_loss(loss, prob, i * labels.channels * labels.inner + j, value, H, labels,
                                         threshold)
                count += 1
    return loss, count, -1


@njit(cache=True)
def log_loss_backward(prob, label, H, row_sums, dx, labels, scale):
    """dx = the log loss's gradient * scale; zero where the label is ignored.  Without H:
    (prob - onehot(label)) * scale; with H: (p_c * row_sums[label] - H[label, c]) * scale."""
    for i in range(labels.outer):
        for j in range(labels.inner):
            value = int(label[i * labels.inner + j])          # checked by the forward pass
            skip = labels.has_ignore and value == labels.ignore_label
            for c in range(labels.channels):
                k = (i * labels.channels + c) * labels.inner + j
                dx[k] = 0 if skip else log_loss_grad(prob[k], c, value, H, row_sums, labels, scale)


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Softmax over ``softmax_param.axis`` then multinomial logistic loss: the log loss with no
    matrix H (InfogainLoss, a subclass, has one).

    Bottoms: scores (N x C x ...), labels (N x ..., integers stored as
    floats).  Tops: the loss, and optionally the probabilities (loss weight
    0 unless given).
    """

    exact_num_top_blobs = None
    min_top_blobs = 1
    max_top_blobs = 2
    cuda_module = ".losses_cuda"
    refused_bottoms = ((1, "label"),)
    axis_param = "softmax_param"     # where the class axis is set
    threshold = FLT_MIN              # the log loss's clamp
    infogain = None                  # InfogainLoss: H as read from its source file

    def setup(self, bottom, top):
        self.read_loss_param()
        self.prob = np.zeros(0, self.dtype)
        self.no_matrix = np.zeros(0, self.dtype)      # the log loss's H (and row sums): none

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, outer, self.channels, inner = softmax_geometry(
            self, bottom[0], getattr(self.layer_param, self.axis_param).axis)
        if outer * inner != bottom[1].count:
            raise ConfigError(
                f"layer '{self.name}' ({self.type}): number of labels must match number of predictions: scores "
                f"{bottom[0].shape_string()} with {self.axis_param}.axis {self.axis} need {outer * inner} labels "
                f"(integers in 0..{self.channels - 1}), bottom 1 has {bottom[1].count}")
        self.set_labels(outer, self.channels, inner)
        if self.prob.shape != bottom[0].shape:
            self.prob = np.zeros(bottom[0].shape, self.dtype)
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def matrix(self, bottom):
        """The log loss's H (flat C x C) on the host: none."""
        return self.no_matrix

    def matrix_row_sums(self, bottom):
        """sum_c H[r, c] per row r, on the host (backward only)."""
        return self.no_matrix

    def forward_cpu(self, bottom, top):
        prob = flat(self.prob)
        softmax_forward(flat(bottom[0].data), prob, self.outer, self.channels, self.inner)
        self.set_loss(bottom, top, *log_loss_forward(prob, flat(bottom[1].data), self.matrix(bottom), self.labels,
                                                     self.threshold))
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            log_loss_backward(flat(self.prob), flat(bottom[1].data), self.matrix(bottom), self.matrix_row_sums(bottom),
                              flat(bottom[0].diff), self.labels, self.loss_scale(top))


# --- EuclideanLoss ----------------------------------------------------------

@njit(cache=True, fastmath={"reassoc"})
def euclidean_forward(a, b, diff):
    """diff = a - b; returns sum(diff^2), accumulated in float64 (reassoc lets the sum vectorize: the
    LSTM bench's 164K-value loss 0.14 -> 0.02 ms)."""
    total = 0.0
    for i in range(a.shape[0]):
        d, square = squared_difference(a[i], b[i])
        diff[i] = d
        total += square
    return total


@njit(cache=True)
def scaled_copy(x, y, alpha):
    for i in range(x.shape[0]):
        y[i] = alpha * x[i]


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / N / 2, with N = bottom[0].shape[0]."""

    cuda_module = ".losses_cuda"

    def setup(self, bottom, top):
        self.diff = np.zeros(0, self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise ConfigError(f"layer '{self.name}' (EuclideanLoss): inputs must have the same dimension, got "
                              f"{bottom[0].shape_string()} and {bottom[1].shape_string()}")
        self.outer, self.inner = bottom[0].shape[0], bottom[0].count_range(1)
        if self.diff.shape != bottom[0].shape:
            self.diff = np.zeros(bottom[0].shape, self.dtype)

    def normalized(self, loss, count):
        return super().normalized(loss, count) / 2.0

    def forward_cpu(self, bottom, top):
        self.set_loss(bottom, top, euclidean_forward(flat(bottom[0].data), flat(bottom[1].data), flat(self.diff)))

    def backward_cpu(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                scaled_copy(flat(self.diff), flat(bottom[i].diff), self.loss_scale(top, sign))
