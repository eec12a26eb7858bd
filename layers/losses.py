"""Loss layers: SoftmaxWithLoss and EuclideanLoss (Caffe's semantics).

A loss layer's first top is a scalar blob (shape ``()``); its loss weight,
which the net (or the gradient checker) stores in ``top[0].diff``, scales
the gradient.
"""
import math

import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .softmax import softmax_forward, softmax_geometry

FLT_MIN = 1.1754943508222875e-38   # Caffe clamps the probability here before the log
_INT_LIMIT = 2147483648.0           # labels are cast to a C int


class LossLayer(Layer):
    """Caffe's LossLayer: two bottoms, a scalar first top, loss weight 1."""

    exact_num_bottom_blobs = 2
    exact_num_top_blobs = 1
    auto_top_blobs = True
    is_loss = True

    def reshape(self, bottom, top):
        if bottom[0].shape[:1] != bottom[1].shape[:1]:
            raise ConfigError(f"layer '{self.name}' ({self.type}): the data and label should have the same "
                              f"first dimension, got {bottom[0].shape_string()} and {bottom[1].shape_string()}")
        top[0].reshape(())


# --- SoftmaxWithLoss --------------------------------------------------------

@njit(cache=True)
def softmax_loss_forward(prob, label, outer, channels, inner, has_ignore, ignore_label):
    """Sum of -log(max(prob[label], FLT_MIN)) over the non-ignored labels.

    Returns (loss, valid count, index of the first bad label or -1).
    """
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            raw = label[i * inner + j]
            if not (-_INT_LIMIT < raw < _INT_LIMIT):   # NaN and out of int range
                return loss, count, i * inner + j
            value = int(raw)                            # truncates, as static_cast<int>
            if has_ignore and value == ignore_label:
                continue
            if value < 0 or value >= channels:
                return loss, count, i * inner + j
            p = prob[i * dim + value * inner + j]
            loss -= math.log(max(p, FLT_MIN))
            count += 1
    return loss, count, -1


@njit(cache=True)
def softmax_loss_backward(prob, label, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    """dx = (prob - onehot(label)) * scale; zero where the label is ignored."""
    dim = channels * inner
    for i in range(outer):
        for j in range(inner):
            value = int(label[i * inner + j])
            if has_ignore and value == ignore_label:
                for c in range(channels):
                    dx[i * dim + c * inner + j] = 0
            else:
                for c in range(channels):
                    k = i * dim + c * inner + j
                    if c == value:
                        dx[k] = (prob[k] - 1) * scale
                    else:
                        dx[k] = prob[k] * scale


def _bad_label_error(layer, labels, index, channels):
    value = labels.reshape(-1)[index]
    return DLTrainError(
        f"layer '{layer.name}' ({layer.type}): label {float(value):g} at position {index} of bottom 1 "
        f"(shape {labels.shape}) is outside [0, {channels})"
        + (f" and is not the ignore_label {layer.ignore_label}" if layer.has_ignore_label else ""))


def loss_normalization(loss_param):
    """The NormalizationMode in force, honouring the legacy ``normalize`` bool."""
    Mode = caffe_pb2.LossParameter
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return Mode.VALID if loss_param.normalize else Mode.BATCH_SIZE
    return loss_param.normalization


def loss_normalizer(mode, outer, inner, valid_count):
    """Caffe's LossLayer::GetNormalizer (valid_count -1: unknown); at least 1."""
    Mode = caffe_pb2.LossParameter
    if mode == Mode.FULL:
        normalizer = outer * inner
    elif mode == Mode.VALID:
        normalizer = outer * inner if valid_count == -1 else valid_count
    elif mode == Mode.BATCH_SIZE:
        normalizer = outer
    elif mode == Mode.NONE:
        normalizer = 1
    else:
        raise ConfigError(f"unknown loss normalization mode {mode}")
    return max(1.0, float(normalizer))


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLossLayer(LossLayer):
    """Softmax over ``softmax_param.axis`` then multinomial logistic loss.

    Bottoms: scores (N x C x ...), labels (N x ..., integers stored as
    floats).  Tops: the loss, and optionally the probabilities (loss weight
    0 unless given).
    """

    exact_num_top_blobs = None
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.has_ignore_label = loss_param.HasField("ignore_label")
        self.ignore_label = int(loss_param.ignore_label)
        self.normalization = loss_normalization(loss_param)
        self.prob = np.zeros(0, self.dtype)
        self.valid_count = 0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, self.outer, self.channels, self.inner = softmax_geometry(
            self, bottom[0], self.layer_param.softmax_param.axis)
        if self.outer * self.inner != bottom[1].count:
            raise ConfigError(
                f"layer '{self.name}' (SoftmaxWithLoss): number of labels must match number of predictions: "
                f"scores {bottom[0].shape_string()} with softmax axis {self.axis} need "
                f"{self.outer * self.inner} labels, bottom 1 has {bottom[1].count}")
        if self.prob.shape != bottom[0].shape:
            self.prob = np.zeros(bottom[0].shape, self.dtype)
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        prob = self.prob.reshape(-1)
        softmax_forward(bottom[0].data.reshape(-1), prob, self.outer, self.channels, self.inner)
        loss, count, bad = softmax_loss_forward(prob, bottom[1].data.reshape(-1), self.outer, self.channels,
                                                self.inner, self.has_ignore_label, self.ignore_label)
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].data, bad, self.channels)
        self.valid_count = count
        top[0].data[...] = loss / loss_normalizer(self.normalization, self.outer, self.inner, count)
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward_cpu(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise DLTrainError(f"layer '{self.name}' (SoftmaxWithLoss) cannot backpropagate to label inputs")
        if propagate_down[0]:
            weight = float(top[0].diff.flat[0])
            scale = weight / loss_normalizer(self.normalization, self.outer, self.inner, self.valid_count)
            softmax_loss_backward(self.prob.reshape(-1), bottom[1].data.reshape(-1), bottom[0].diff.reshape(-1),
                                  self.outer, self.channels, self.inner, self.has_ignore_label,
                                  self.ignore_label, scale)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def forward_gpu(self, bottom, top):
        from . import kernels_cuda as K
        from . import losses_cuda as C
        from . import softmax_cuda as S
        count = bottom[0].count
        if getattr(self, "_gpu_prob", None) is None or self._gpu_prob.size != max(count, 1):
            self._gpu_prob = K.device_array(count, self.dtype)
            self._gpu_stats = C.stats_array()
        S.softmax_forward(bottom[0].gpu_data(), self._gpu_prob, self.outer, self.channels, self.inner)
        loss, valid, bad = C.softmax_loss_forward(self._gpu_prob, bottom[1].gpu_data(), self.outer, self.channels,
                                                  self.inner, self.has_ignore_label, self.ignore_label,
                                                  self._gpu_stats)
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].cpu_data(), bad, self.channels)
        self.valid_count = valid
        top[0].data[...] = loss / loss_normalizer(self.normalization, self.outer, self.inner, valid)
        if len(top) == 2:
            K.copy(self._gpu_prob, top[1].mutable_gpu_data(), count)

    def backward_gpu(self, top, propagate_down, bottom):
        if len(propagate_down) > 1 and propagate_down[1]:
            raise DLTrainError(f"layer '{self.name}' (SoftmaxWithLoss) cannot backpropagate to label inputs")
        if propagate_down[0]:
            from . import losses_cuda as C
            weight = float(top[0].cpu_diff().flat[0])
            scale = weight / loss_normalizer(self.normalization, self.outer, self.inner, self.valid_count)
            C.softmax_loss_backward(self._gpu_prob, bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(),
                                    self.outer, self.channels, self.inner, self.has_ignore_label,
                                    self.ignore_label, scale)


# --- EuclideanLoss ----------------------------------------------------------

@njit(cache=True)
def euclidean_forward(a, b, diff):
    """diff = a - b; returns sum(diff^2)."""
    total = 0.0
    for i in range(a.shape[0]):
        d = a[i] - b[i]
        diff[i] = d
        total += d * d
    return total


@njit(cache=True)
def scaled_copy(x, y, alpha):
    for i in range(x.shape[0]):
        y[i] = alpha * x[i]


@register_layer("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """loss = sum((a - b)^2) / N / 2, with N = bottom[0].shape[0]."""

    def setup(self, bottom, top):
        self.diff = np.zeros(0, self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count_range(1) != bottom[1].count_range(1):
            raise ConfigError(f"layer '{self.name}' (EuclideanLoss): inputs must have the same dimension, got "
                              f"{bottom[0].shape_string()} and {bottom[1].shape_string()}")
        if self.diff.shape != bottom[0].shape:
            self.diff = np.zeros(bottom[0].shape, self.dtype)

    def forward_cpu(self, bottom, top):
        dot = euclidean_forward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), self.diff.reshape(-1))
        top[0].data[...] = dot / bottom[0].shape[0] / 2.0

    def backward_cpu(self, top, propagate_down, bottom):
        weight = float(top[0].diff.flat[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * weight / bottom[i].shape[0]
                scaled_copy(self.diff.reshape(-1), bottom[i].diff.reshape(-1), alpha)

    def forward_gpu(self, bottom, top):
        from . import kernels_cuda as K
        from . import losses_cuda as C
        count = bottom[0].count
        if getattr(self, "_gpu_diff", None) is None or self._gpu_diff.size != max(count, 1):
            self._gpu_diff = K.device_array(count, self.dtype)
            self._gpu_stats = C.stats_array(1)
        dot = C.euclidean_forward(bottom[0].gpu_data(), bottom[1].gpu_data(), self._gpu_diff, count,
                                  self._gpu_stats)
        top[0].data[...] = dot / bottom[0].shape[0] / 2.0

    def backward_gpu(self, top, propagate_down, bottom):
        from . import kernels_cuda as K
        weight = float(top[0].cpu_diff().flat[0])
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * weight / bottom[i].shape[0]
                K.scale(self._gpu_diff, bottom[i].mutable_gpu_diff(), alpha, bottom[i].count)
