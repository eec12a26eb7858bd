"""More loss layers, with Caffe's semantics: HingeLoss, SigmoidCrossEntropyLoss,
InfogainLoss, ContrastiveLoss and MultinomialLogisticLoss.

They follow the conventions of :mod:`layers.losses`: the first top is a
scalar (shape ``()``) whose loss weight, stored in ``top[0].diff`` by the
net, scales the gradient; labels are integers stored as floats; a label
outside the valid range is a DLTrainError naming the position (Caffe leaves
that undefined).  Normalization (``loss_param.normalization``) goes through
:func:`layers.losses.loss_normalizer`, Caffe's GetNormalizer.

What each computes (N = ``bottom[0].shape[0]``, as Caffe's ``num()``):

* **HingeLoss** (``hinge_loss_param.norm`` L1, default, or L2): for scores
  ``x`` (N x dim) and labels ``l``, ``m_nk = max(0, 1 - d_nk x_nk)`` with
  ``d = +1`` at the label and -1 elsewhere; loss ``sum(m) / N`` (L1) or
  ``sum(m^2) / N`` (L2).  Gradient ``-d (m > 0) / N`` or ``-2 d m / N``.
* **SigmoidCrossEntropyLoss**: ``-sum(t log s(x) + (1-t) log(1 - s(x)))``
  computed in Caffe's stable form ``x (t - [x>=0]) - log(1 + exp(x - 2x[x>=0]))``;
  targets may be any real value (probabilities).  ``loss_param.ignore_label``
  skips targets whose integer value equals it.  Its normalization defaults to
  **BATCH_SIZE** (unlike SoftmaxWithLoss's VALID): Caffe reads
  ``normalization`` if set, else the legacy ``normalize`` (true: VALID, false:
  BATCH_SIZE), else BATCH_SIZE.  Gradient ``(s(x) - t) / normalizer``.
* **InfogainLoss** (BVLC master's version): applies a softmax along
  ``infogain_loss_param.axis`` (default 1) to bottom 0, then
  ``loss = -sum_l H[label, l] log(max(p_l, 1e-20))`` over the positions,
  divided by the normalizer (``loss_param.normalization``, default VALID;
  the legacy ``normalize`` is refused, as Caffe does).  H (C x C) comes from
  ``infogain_loss_param.source`` (a BlobProto ``.binaryproto``) or from a
  third bottom.  Optional second top: the softmax probabilities.  Gradient
  ``p_l * sum_k H[label, k] - H[label, l]``, scaled.
* **ContrastiveLoss** (``contrastive_loss_param``: margin 1.0,
  legacy_version false): bottoms a, b (N x C) and the similarity y (N);
  ``d^2 = |a - b|^2``; similar pairs (``int(y) != 0``) add ``d^2``,
  dissimilar ones ``max(margin - d, 0)^2`` (legacy: ``max(margin - d^2, 0)``);
  loss = sum / N / 2.  The non-legacy gradient uses ``d + 1e-4`` in the
  denominator, as Caffe does.
* **MultinomialLogisticLoss**: probabilities in (N x dim);
  ``loss = -sum log(max(p[label], 1e-20)) / N``.

Deviations from Caffe: labels are range-checked (an error, not undefined
behaviour); ContrastiveLoss writes zeros into the similarity bottom's diff
if a gradient is ever asked for it (Caffe leaves it untouched).  On the GPU
every layer runs the same formulas as on the CPU; Caffe's own CUDA kernel of
the *legacy* ContrastiveLoss gradient forgets the ``a - b`` factor for
dissimilar pairs, dltrain does not copy that bug.
"""
import math

import numpy as np
from numba import njit

from dlcore.config import load_message
from dlcore.errors import ConfigError, DLTrainError
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .losses import _INT_LIMIT, LossLayer, _bad_label_error, loss_normalization, loss_normalizer
from .softmax import softmax_forward, softmax_geometry

__all__ = ["HingeLossLayer", "SigmoidCrossEntropyLossLayer", "InfogainLossLayer", "ContrastiveLossLayer",
           "MultinomialLogisticLossLayer", "LOG_THRESHOLD"]

# Caffe's kLOG_THRESHOLD (loss_layer.hpp) is the float 1e-20.
LOG_THRESHOLD = float(np.float32(1e-20))
CONTRASTIVE_EPS = 1e-4          # Caffe's Dtype(1e-4) in the non-legacy contrastive gradient


def flat(array):
    return array.reshape(-1)


def _label_channels_error(layer, bottom, what="labels"):
    return ConfigError(f"layer '{layer.name}' ({layer.type}): bottom 1 must hold one label per item "
                       f"({bottom[0].shape[0] if bottom[0].num_axes else 1} {what} for scores "
                       f"{bottom[0].shape_string()}), got {bottom[1].shape_string()}")


def _no_label_backward(layer, propagate_down, index=1, what="label"):
    if len(propagate_down) > index and propagate_down[index]:
        raise DLTrainError(f"layer '{layer.name}' ({layer.type}) cannot backpropagate to {what} inputs")


class _PerItemLoss(LossLayer):
    """Scores (N x dim) and one label per item: Caffe's num()/count()/num layout."""

    def setup(self, bottom, top):
        self.has_ignore_label = False      # what _bad_label_error reads
        self.ignore_label = 0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // self.num if self.num else 0
        if bottom[1].count != self.num:
            raise _label_channels_error(self, bottom)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1


# --- HingeLoss ------------------------------------------------------------------------

@njit(cache=True)
def hinge_forward(x, label, margin, num, dim, squared):
    """margin = max(0, 1 -+ x) (minus at the label); returns (sum of margin or margin^2, bad position or -1)."""
    total = 0.0
    for i in range(num):
        raw = label[i]
        if not (-_INT_LIMIT < raw < _INT_LIMIT):
            return total, i
        value = int(raw)
        if value < 0 or value >= dim:
            return total, i
        for j in range(dim):
            k = i * dim + j
            v = x[k]
            if j == value:
                v = -v
            m = max(1 + v, 0)
            margin[k] = m
            if squared:
                total += m * m
            else:
                total += m
    return total, -1


@njit(cache=True)
def hinge_backward(margin, label, dx, num, dim, squared, scale):
    """L1: dx = sign(+-margin) * scale; L2: dx = +-margin * scale (minus at the label)."""
    for i in range(num):
        value = int(label[i])
        for j in range(dim):
            k = i * dim + j
            m = margin[k]
            if not squared:
                m = 1 if m > 0 else 0
            if j == value:
                dx[k] = -m * scale
            else:
                dx[k] = m * scale


@register_layer("HingeLoss")
class HingeLossLayer(_PerItemLoss):
    """One-versus-all hinge loss, L1 or L2 (``hinge_loss_param.norm``)."""

    def setup(self, bottom, top):
        super().setup(bottom, top)
        Norm = caffe_pb2.HingeLossParameter
        norm = self.layer_param.hinge_loss_param.norm
        if norm not in (Norm.L1, Norm.L2):
            raise ConfigError(f"layer '{self.name}' (HingeLoss): unknown hinge_loss_param.norm {norm}")
        self.squared = norm == Norm.L2
        self.margin = np.zeros(0, self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.margin.size != bottom[0].count:
            self.margin = np.zeros(bottom[0].count, self.dtype)

    def forward_cpu(self, bottom, top):
        total, bad = hinge_forward(flat(bottom[0].data), flat(bottom[1].data), self.margin, self.num, self.dim,
                                   self.squared)
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].data, bad, self.dim)
        top[0].data[...] = total / self.num if self.num else 0.0

    def _scale(self, top):
        weight = float(top[0].cpu_diff().flat[0])
        return (2.0 if self.squared else 1.0) * weight / max(self.num, 1)

    def backward_cpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            hinge_backward(self.margin, flat(bottom[1].data), flat(bottom[0].diff), self.num, self.dim, self.squared,
                           self._scale(top))

    def forward_gpu(self, bottom, top):
        from . import losses_extra_cuda as C
        ws = C.workspace(self)
        margin = ws.get("margin", bottom[0].count, self.dtype)
        total, bad = C.hinge_forward(bottom[0].gpu_data(), bottom[1].gpu_data(), margin, self.num, self.dim,
                                     self.squared, C.stats(self))
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].cpu_data(), bad, self.dim)
        top[0].data[...] = total / self.num if self.num else 0.0

    def backward_gpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            from . import losses_extra_cuda as C
            margin = C.workspace(self).get("margin", bottom[0].count, self.dtype)
            C.hinge_backward(margin, bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(), self.num, self.dim,
                             self.squared, self._scale(top))


# --- SigmoidCrossEntropyLoss -------------------------------------------------------------

@njit(cache=True)
def _ignored(t, has_ignore, ignore_label):
    return has_ignore and -_INT_LIMIT < t < _INT_LIMIT and int(t) == ignore_label


@njit(cache=True)
def sigmoid_ce_forward(x, target, has_ignore, ignore_label):
    """Caffe's stable sum of the cross-entropy over the non-ignored targets; returns (loss, valid count)."""
    loss = 0.0
    valid = 0
    for i in range(x.shape[0]):
        t = target[i]
        if _ignored(t, has_ignore, ignore_label):
            continue
        v = x[i]
        pos = 1 if v >= 0 else 0
        loss -= v * (t - pos) - math.log(1 + math.exp(v - 2 * v * pos))
        valid += 1
    return loss, valid


@njit(cache=True)
def sigmoid_ce_backward(x, target, dx, has_ignore, ignore_label, scale):
    """dx = (sigmoid(x) - t) * scale, zero where the target is ignored."""
    for i in range(x.shape[0]):
        t = target[i]
        if _ignored(t, has_ignore, ignore_label):
            dx[i] = 0
        else:
            s = 0.5 * math.tanh(0.5 * x[i]) + 0.5      # Caffe's Sigmoid layer form
            dx[i] = (s - t) * scale


def sigmoid_ce_normalization(loss_param):
    """SigmoidCrossEntropyLoss's mode: normalization if set, else the legacy normalize, else BATCH_SIZE."""
    if loss_param.HasField("normalization") or loss_param.HasField("normalize"):
        return loss_normalization(loss_param)
    return caffe_pb2.LossParameter.BATCH_SIZE


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(bottom 0) against targets in bottom 1 (same count)."""

    def setup(self, bottom, top):
        loss_param = self.layer_param.loss_param
        self.has_ignore_label = loss_param.HasField("ignore_label")
        self.ignore_label = int(loss_param.ignore_label)
        self.normalization = sigmoid_ce_normalization(loss_param)
        self.normalizer = 1.0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise ConfigError(f"layer '{self.name}' (SigmoidCrossEntropyLoss): inputs must have the same count, "
                              f"got {bottom[0].shape_string()} and {bottom[1].shape_string()}")
        self.outer = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.inner = bottom[0].count_range(1)

    def forward_cpu(self, bottom, top):
        loss, valid = sigmoid_ce_forward(flat(bottom[0].data), flat(bottom[1].data), self.has_ignore_label,
                                         self.ignore_label)
        self.normalizer = loss_normalizer(self.normalization, self.outer, self.inner, valid)
        top[0].data[...] = loss / self.normalizer

    def backward_cpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            scale = float(top[0].diff.flat[0]) / self.normalizer
            sigmoid_ce_backward(flat(bottom[0].data), flat(bottom[1].data), flat(bottom[0].diff),
                                self.has_ignore_label, self.ignore_label, scale)

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1

    def forward_gpu(self, bottom, top):
        from . import losses_extra_cuda as C
        loss, valid = C.sigmoid_ce_forward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[0].count,
                                           self.has_ignore_label, self.ignore_label, C.stats(self))
        self.normalizer = loss_normalizer(self.normalization, self.outer, self.inner, valid)
        top[0].data[...] = loss / self.normalizer

    def backward_gpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            from . import losses_extra_cuda as C
            scale = float(top[0].cpu_diff().flat[0]) / self.normalizer
            C.sigmoid_ce_backward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(),
                                  bottom[0].count, self.has_ignore_label, self.ignore_label, scale)


# --- MultinomialLogisticLoss ---------------------------------------------------------------

@njit(cache=True)
def multinomial_forward(prob, label, num, dim, threshold):
    """Sum of -log(max(p[label], threshold)); returns (loss, bad position or -1)."""
    loss = 0.0
    for i in range(num):
        raw = label[i]
        if not (-_INT_LIMIT < raw < _INT_LIMIT):
            return loss, i
        value = int(raw)
        if value < 0 or value >= dim:
            return loss, i
        loss -= math.log(max(prob[i * dim + value], threshold))
    return loss, -1


@njit(cache=True)
def multinomial_backward(prob, label, dx, num, dim, threshold, scale):
    """dx = scale / max(p, threshold) at the label, 0 elsewhere (scale = -weight / N)."""
    for i in range(num):
        value = int(label[i])
        for j in range(dim):
            k = i * dim + j
            if j == value:
                dx[k] = scale / max(prob[k], threshold)
            else:
                dx[k] = 0


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_PerItemLoss):
    """Negative log of the probability given to the label (bottom 0 holds probabilities)."""

    def forward_cpu(self, bottom, top):
        loss, bad = multinomial_forward(flat(bottom[0].data), flat(bottom[1].data), self.num, self.dim,
                                        LOG_THRESHOLD)
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].data, bad, self.dim)
        top[0].data[...] = loss / self.num if self.num else 0.0

    def backward_cpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            scale = -float(top[0].diff.flat[0]) / max(self.num, 1)
            multinomial_backward(flat(bottom[0].data), flat(bottom[1].data), flat(bottom[0].diff), self.num,
                                 self.dim, LOG_THRESHOLD, scale)

    def forward_gpu(self, bottom, top):
        from . import losses_extra_cuda as C
        loss, bad = C.multinomial_forward(bottom[0].gpu_data(), bottom[1].gpu_data(), self.num, self.dim,
                                          LOG_THRESHOLD, C.stats(self))
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].cpu_data(), bad, self.dim)
        top[0].data[...] = loss / self.num if self.num else 0.0

    def backward_gpu(self, top, propagate_down, bottom):
        _no_label_backward(self, propagate_down)
        if propagate_down[0]:
            from . import losses_extra_cuda as C
            scale = -float(top[0].cpu_diff().flat[0]) / max(self.num, 1)
            C.multinomial_backward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(),
                                   self.num, self.dim, LOG_THRESHOLD, scale)


# --- ContrastiveLoss -----------------------------------------------------------------------

@njit(cache=True)
def _similar(y):
    # static_cast<int>(y) != 0
    return not (-1 < y < 1)


@njit(cache=True)
def contrastive_forward(a, b, y, diff, dist_sq, num, channels, margin, legacy):
    """diff = a - b, dist_sq per item; returns the summed (not yet halved or averaged) loss."""
    loss = 0.0
    for i in range(num):
        total = 0.0
        for c in range(channels):
            k = i * channels + c
            d = a[k] - b[k]
            diff[k] = d
            total += d * d
        dist_sq[i] = total
        d2 = dist_sq[i]
        if _similar(y[i]):
            loss += d2
        elif legacy:
            loss += max(margin - d2, 0)
        else:
            m = max(margin - math.sqrt(d2), 0)
            loss += m * m
    return loss


@njit(cache=True)
def contrastive_backward(diff, dist_sq, y, dx, num, channels, margin, legacy, alpha, eps):
    """Caffe's ContrastiveLoss gradient for one of the two inputs (alpha = +-weight / N)."""
    for i in range(num):
        if _similar(y[i]):
            for c in range(channels):
                k = i * channels + c
                dx[k] = alpha * diff[k]
            continue
        if legacy:
            mdist = margin - dist_sq[i]
            beta = -alpha
        else:
            dist = math.sqrt(dist_sq[i])
            mdist = margin - dist
            beta = -alpha * mdist / (dist + eps)
        for c in range(channels):
            k = i * channels + c
            if mdist > 0:
                dx[k] = beta * diff[k]
            else:
                dx[k] = 0


def legacy_dims(layer, blob, index):
    """Caffe's (num, channels, height, width) of a blob of at most 4 axes."""
    try:
        return blob.num, blob.channels, blob.height, blob.width
    except ValueError:
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): bottom {index} has {blob.num_axes} axes "
                          f"({blob.shape_string()}); at most 4 are allowed") from None


@register_layer("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Hadsell-Chopra-LeCun contrastive loss of two feature blobs and a similarity label."""

    exact_num_bottom_blobs = 3

    def setup(self, bottom, top):
        p = self.layer_param.contrastive_loss_param
        self.margin = float(p.margin)
        self.legacy = bool(p.legacy_version)
        self.diff = np.zeros(0, self.dtype)
        self.dist_sq = np.zeros(0, self.dtype)

    def reshape(self, bottom, top):
        (n0, c0, h0, w0), (n1, c1, h1, w1), (n2, c2, h2, w2) = (legacy_dims(self, b, i) for i, b in enumerate(bottom))
        if n0 != n1 or c0 != c1 or (h0, w0, h1, w1) != (1, 1, 1, 1):
            raise ConfigError(f"layer '{self.name}' (ContrastiveLoss): bottoms 0 and 1 must be N x C (x 1 x 1) "
                              f"with the same N and C, got {bottom[0].shape_string()} and {bottom[1].shape_string()}")
        if (c2, h2, w2) != (1, 1, 1) or n2 != n0:
            raise ConfigError(f"layer '{self.name}' (ContrastiveLoss): bottom 2 (the similarity) must hold one "
                              f"value per pair ({n0}), got {bottom[2].shape_string()}")
        top[0].reshape(())
        self.num, self.channels = n0, c0
        if self.diff.size != n0 * c0:
            self.diff = np.zeros(n0 * c0, self.dtype)
        if self.dist_sq.size != n0:
            self.dist_sq = np.zeros(n0, self.dtype)

    def forward_cpu(self, bottom, top):
        loss = contrastive_forward(flat(bottom[0].data), flat(bottom[1].data), flat(bottom[2].data), self.diff,
                                   self.dist_sq, self.num, self.channels, self.margin, self.legacy)
        top[0].data[...] = loss / self.num / 2.0 if self.num else 0.0

    def _alpha(self, top, i):
        return (1.0 if i == 0 else -1.0) * float(top[0].cpu_diff().flat[0]) / max(self.num, 1)

    def backward_cpu(self, top, propagate_down, bottom):
        for i in (0, 1):
            if propagate_down[i]:
                contrastive_backward(self.diff, self.dist_sq, flat(bottom[2].data), flat(bottom[i].diff), self.num,
                                     self.channels, self.margin, self.legacy, self._alpha(top, i), CONTRASTIVE_EPS)
        if len(propagate_down) > 2 and propagate_down[2]:
            bottom[2].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def forward_gpu(self, bottom, top):
        from . import losses_extra_cuda as C
        ws = C.workspace(self)
        diff = ws.get("diff", self.num * self.channels, self.dtype)
        dist_sq = ws.get("dist_sq", self.num, self.dtype)
        loss = C.contrastive_forward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[2].gpu_data(), diff, dist_sq,
                                     self.num, self.channels, self.margin, self.legacy, C.stats(self))
        top[0].data[...] = loss / self.num / 2.0 if self.num else 0.0

    def backward_gpu(self, top, propagate_down, bottom):
        from . import kernels_cuda as K
        from . import losses_extra_cuda as C
        ws = C.workspace(self)
        diff = ws.get("diff", self.num * self.channels, self.dtype)
        dist_sq = ws.get("dist_sq", self.num, self.dtype)
        for i in (0, 1):
            if propagate_down[i]:
                C.contrastive_backward(diff, dist_sq, bottom[2].gpu_data(), bottom[i].mutable_gpu_diff(), self.num,
                                       self.channels, self.margin, self.legacy, self._alpha(top, i), CONTRASTIVE_EPS)
        if len(propagate_down) > 2 and propagate_down[2]:
            K.fill(bottom[2].mutable_gpu_diff(), 0)


# --- InfogainLoss ---------------------------------------------------------------------------

@njit(cache=True)
def row_sums(H, n, out):
    """out[r] = sum_c H[r * n + c]."""
    for r in range(n):
        total = 0.0
        for c in range(n):
            total += H[r * n + c]
        out[r] = total


@njit(cache=True)
def infogain_forward(prob, label, H, outer, channels, inner, has_ignore, ignore_label, threshold):
    """Sum over non-ignored positions of -sum_l H[label, l] log(max(p_l, threshold)).

    Returns (loss, valid count, index of the first bad label or -1).
    """
    dim = channels * inner
    loss = 0.0
    count = 0
    for i in range(outer):
        for j in range(inner):
            raw = label[i * inner + j]
            if not (-_INT_LIMIT < raw < _INT_LIMIT):
                return loss, count, i * inner + j
            value = int(raw)
            if has_ignore and value == ignore_label:
                continue
            if value < 0 or value >= channels:
                return loss, count, i * inner + j
            for c in range(channels):
                loss -= H[value * channels + c] * math.log(max(prob[i * dim + c * inner + j], threshold))
            count += 1
    return loss, count, -1


@njit(cache=True)
def infogain_backward(prob, label, H, sum_rows, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    """dx = (p_l * sum_rows[label] - H[label, l]) * scale; zero where the label is ignored."""
    dim = channels * inner
    for i in range(outer):
        for j in range(inner):
            value = int(label[i * inner + j])
            ignored = has_ignore and value == ignore_label
            for c in range(channels):
                k = i * dim + c * inner + j
                if ignored:
                    dx[k] = 0
                else:
                    dx[k] = (prob[k] * sum_rows[value] - H[value * channels + c]) * scale


@register_layer("InfogainLoss")
class InfogainLossLayer(LossLayer):
    """Softmax + infogain-weighted log loss (BVLC master); H from a file or a third bottom."""

    exact_num_bottom_blobs = None
    min_bottom_blobs = 2
    max_bottom_blobs = 3
    exact_num_top_blobs = None
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom, top):
        lp = self.layer_param
        loss_param = lp.loss_param
        self.has_ignore_label = loss_param.HasField("ignore_label")
        self.ignore_label = int(loss_param.ignore_label)
        if loss_param.HasField("normalize"):
            raise ConfigError(f"layer '{self.name}' (InfogainLoss): loss_param.normalize is deprecated; use "
                              "loss_param.normalization (VALID, BATCH_SIZE, FULL or NONE)",
                              field="loss_param.normalize")
        self.normalization = loss_param.normalization
        self.axis_param = lp.infogain_loss_param.axis
        self.infogain = None
        if len(bottom) < 3:
            source = lp.infogain_loss_param.source
            if not lp.infogain_loss_param.HasField("source") or not source:
                raise ConfigError(f"layer '{self.name}' (InfogainLoss): the infogain matrix H must be given, in "
                                  "infogain_loss_param.source or as a third bottom", field="infogain_loss_param.source")
            try:
                proto = load_message(source, caffe_pb2.BlobProto)
            except ConfigError as err:
                raise ConfigError(f"layer '{self.name}' (InfogainLoss): infogain_loss_param.source: {err}",
                                  field="infogain_loss_param.source") from None
            values = proto.double_data if len(proto.double_data) else proto.data
            self.infogain = np.asarray(values, dtype=self.dtype).reshape(-1)
            self.infogain_source = source
        self.prob = np.zeros(0, self.dtype)
        self.sum_rows = np.zeros(0, self.dtype)
        self.valid_count = 0
        self._gpu_infogain = None

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.axis, self.outer, self.channels, self.inner = softmax_geometry(self, bottom[0], self.axis_param)
        if self.outer * self.inner != bottom[1].count:
            raise ConfigError(
                f"layer '{self.name}' (InfogainLoss): number of labels must match number of predictions: scores "
                f"{bottom[0].shape_string()} with infogain axis {self.axis} need {self.outer * self.inner} labels "
                f"(integers in 0..{self.channels - 1}), bottom 1 has {bottom[1].count}")
        H = self.infogain if len(bottom) < 3 else bottom[2]
        count = H.size if len(bottom) < 3 else H.count
        if count != self.channels * self.channels:
            where = f"the matrix in '{self.infogain_source}'" if len(bottom) < 3 else "bottom 2"
            raise ConfigError(f"layer '{self.name}' (InfogainLoss): H must be {self.channels} x {self.channels} "
                              f"(the number of labels along axis {self.axis}); {where} has {count} values")
        if self.sum_rows.size != self.channels:
            self.sum_rows = np.zeros(self.channels, self.dtype)
        if len(bottom) < 3:
            row_sums(self.infogain, self.channels, self.sum_rows)     # H is fixed: summed once
        if self.prob.shape != bottom[0].shape:
            self.prob = np.zeros(bottom[0].shape, self.dtype)
        if len(top) >= 2:
            top[1].reshape_like(bottom[0])

    def _matrix(self, bottom):
        return self.infogain if len(bottom) < 3 else flat(bottom[2].data)

    def _check_backward(self, propagate_down):
        _no_label_backward(self, propagate_down)
        _no_label_backward(self, propagate_down, 2, "infogain")

    def forward_cpu(self, bottom, top):
        prob = flat(self.prob)
        softmax_forward(flat(bottom[0].data), prob, self.outer, self.channels, self.inner)
        loss, count, bad = infogain_forward(prob, flat(bottom[1].data), self._matrix(bottom), self.outer,
                                            self.channels, self.inner, self.has_ignore_label, self.ignore_label,
                                            LOG_THRESHOLD)
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].data, bad, self.channels)
        self.valid_count = count
        top[0].data[...] = loss / loss_normalizer(self.normalization, self.outer, self.inner, count)
        if len(top) == 2:
            top[1].data[...] = self.prob

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        if propagate_down[0]:
            H = self._matrix(bottom)
            if len(bottom) == 3:
                row_sums(H, self.channels, self.sum_rows)              # H may change: summed every time
            scale = float(top[0].diff.flat[0]) / loss_normalizer(self.normalization, self.outer, self.inner,
                                                                  self.valid_count)
            infogain_backward(flat(self.prob), flat(bottom[1].data), H, self.sum_rows, flat(bottom[0].diff),
                              self.outer, self.channels, self.inner, self.has_ignore_label, self.ignore_label, scale)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    # --- GPU ---
    def _gpu_matrix(self, bottom):
        from . import kernels_cuda as K
        if len(bottom) == 3:
            return bottom[2].gpu_data()
        if self._gpu_infogain is None:
            self._gpu_infogain = (K.to_device(self.infogain), K.to_device(self.sum_rows))
        return self._gpu_infogain[0]

    def forward_gpu(self, bottom, top):
        from . import kernels_cuda as K
        from . import losses_extra_cuda as C
        from . import softmax_cuda as S
        count = bottom[0].count
        prob = C.workspace(self).get("prob", count, self.dtype)
        S.softmax_forward(bottom[0].gpu_data(), prob, self.outer, self.channels, self.inner)
        loss, valid, bad = C.infogain_forward(prob, bottom[1].gpu_data(), self._gpu_matrix(bottom), self.outer,
                                              self.channels, self.inner, self.has_ignore_label, self.ignore_label,
                                              LOG_THRESHOLD, C.stats(self))
        if bad >= 0:
            raise _bad_label_error(self, bottom[1].cpu_data(), bad, self.channels)
        self.valid_count = valid
        top[0].data[...] = loss / loss_normalizer(self.normalization, self.outer, self.inner, valid)
        if len(top) == 2:
            K.copy(prob, top[1].mutable_gpu_data(), count)

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_backward(propagate_down)
        if propagate_down[0]:
            from . import losses_extra_cuda as C
            ws = C.workspace(self)
            H = self._gpu_matrix(bottom)
            if len(bottom) == 3:
                sum_rows = ws.get("sum_rows", self.channels, self.dtype)
                C.row_sums(H, self.channels, sum_rows)
            else:
                sum_rows = self._gpu_infogain[1]
            scale = float(top[0].cpu_diff().flat[0]) / loss_normalizer(self.normalization, self.outer, self.inner,
                                                                        self.valid_count)
            C.infogain_backward(ws.get("prob", bottom[0].count, self.dtype), bottom[1].gpu_data(), H, sum_rows,
                                bottom[0].mutable_gpu_diff(), self.outer, self.channels, self.inner,
                                self.has_ignore_label, self.ignore_label, scale)
