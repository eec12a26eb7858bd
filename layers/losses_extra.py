"""More loss layers, with Caffe's semantics: HingeLoss, SigmoidCrossEntropyLoss,
InfogainLoss, ContrastiveLoss and MultinomialLogisticLoss.

They follow the conventions of :mod:`dltrain.layers.losses`: the first top is a
scalar (shape ``()``) whose loss weight, stored in ``top[0].diff`` by the
net, scales the gradient; labels are integers stored as floats; a label
outside the valid range is a DLTrainError naming the position (Caffe leaves
that undefined).  Normalization (``loss_param.normalization``) goes through
:func:`dltrain.layers.losses.normalizer`, Caffe's GetNormalizer.

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

Each element formula is written once (``@formula``) and used by the CPU
loops here and the CUDA kernels in ``losses_extra_cuda.py``; the label rules,
the log loss (InfogainLoss and MultinomialLogisticLoss share SoftmaxWithLoss's)
and the normalization are losses.py's.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import float64, njit

from dlcore.config import load_message
from dlcore.errors import ConfigError
from dlcore.formula import formula
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2

from .losses import (BAD_LABEL, BATCH_SIZE, LossLayer, SoftmaxWithLossLayer, flat, ignored, label_class,
                     log_loss_forward, row_sums, squared_difference)
from .neurons import sigmoid

__all__ = ["HingeLossLayer", "SigmoidCrossEntropyLossLayer", "InfogainLossLayer", "ContrastiveLossLayer",
           "MultinomialLogisticLossLayer", "LOG_THRESHOLD"]

# Caffe's kLOG_THRESHOLD (loss_layer.hpp) is the float 1e-20.
LOG_THRESHOLD = float(np.float32(1e-20))
CONTRASTIVE_EPS = 1e-4          # Caffe's Dtype(1e-4) in the non-legacy contrastive gradient


# --- formulas -------------------------------------------------------------------------------------

@formula
def hinge(x, at_label, squared):
    """(margin, loss term) of one score: margin = max(0, 1 -+ x) (minus at the label); the term is
    the margin (L1) or its square (L2)."""
    v = -x if at_label else x
    m = max(1 + v, 0)
    return m, m * m if squared else m


@formula
def hinge_grad(m, at_label, squared, scale):
    """d loss / d score from the stored margin: L1 [margin > 0], L2 margin; negated at the label; times scale."""
    m = float64(m)
    if not squared:
        m = 1 if m > 0 else 0
    return -m * scale if at_label else m * scale


@formula
def sigmoid_cross_entropy(x, t):
    """Caffe's stable x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])) (the loss subtracts it)."""
    x = float64(x)
    pos = 1 if x >= 0 else 0
    return x * (float64(t) - pos) - math.log(1 + math.exp(x - 2 * x * pos))


@formula
def sigmoid_cross_entropy_grad(x, t, scale):
    """(sigmoid(x) - t) * scale, with Caffe's Sigmoid layer form of the sigmoid."""
    return (sigmoid(float64(x)) - float64(t)) * scale


@formula
def multinomial_grad(p, threshold, scale):
    """scale / max(p, threshold): MultinomialLogisticLoss's gradient at the label (scale = -weight / N)."""
    return scale / max(float64(p), threshold)


@formula
def similar(y):
    """ContrastiveLoss's ``static_cast<int>(y) != 0``."""
    return not (-1 < y < 1)


@formula
def contrastive_term(d2, is_similar, margin, legacy):
    """One pair's loss (before / N / 2) from its squared distance: d^2 if similar, else
    max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)).  sqrt in the data's precision."""
    if is_similar:
        return d2
    if legacy:
        return max(margin - float64(d2), 0)
    m = max(margin - math.sqrt(d2), 0)
    return m * m


@formula
def contrastive_coef(d2, is_similar, margin, legacy, alpha):
    """(factor, active): one pair's gradient is factor * (a - b) where active, 0 elsewhere."""
    if is_similar:
        return alpha, True
    if legacy:
        mdist = margin - float64(d2)
        beta = -alpha
    else:
        dist = math.sqrt(d2)
        mdist = margin - dist
        beta = -alpha * mdist / (dist + CONTRASTIVE_EPS)
    return beta, mdist > 0


@formula(inline_cpu=True)
def contrastive_pair(a, b, y, diff, dist_sq, i, pairs):
    """Pair i: diff = a - b, dist_sq[i] = |a - b|^2 (summed in float64, stored in the data's
    dtype); returns the pair's loss term."""
    total = 0.0
    for c in range(pairs.channels):
        k = i * pairs.channels + c
        d, square = squared_difference(a[k], b[k])
        diff[k] = d
        total += square
    dist_sq[i] = total
    return contrastive_term(dist_sq[i], similar(y[i]), pairs.margin, pairs.legacy)


class Pairs(NamedTuple):
    """ContrastiveLoss's kernels' settings: num pairs of channels features, margin, legacy_version."""
    num: int
    channels: int
    margin: float
    legacy: bool


def _label_channels_error(layer, bottom, what="labels"):
    return ConfigError(f"layer '{layer.name}' ({layer.type}): bottom 1 must hold one label per item "
                       f"({bottom[0].shape[0] if bottom[0].num_axes else 1} {what} for scores "
                       f"{bottom[0].shape_string()}), got {bottom[1].shape_string()}")


class _PerItemLoss(LossLayer):
    """Scores (N x dim) and one label per item: Caffe's num()/count()/num layout, loss / N."""

    refused_bottoms = ((1, "label"),)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        self.num = bottom[0].shape[0] if bottom[0].num_axes else 1
        self.dim = bottom[0].count // self.num if self.num else 0
        if bottom[1].count != self.num:
            raise _label_channels_error(self, bottom)
        self.set_labels(self.num, self.dim, 1)


# --- HingeLoss ------------------------------------------------------------------------

@njit(cache=True)
def hinge_forward(x, label, margin, labels, squared):
    """margin = max(0, 1 -+ x) (minus at the label); returns (sum of margin or margin^2, bad position or -1)."""
    total = 0.0
    for i in range(labels.outer):
        value = label_class(label[i], labels)
        if value == BAD_LABEL:
            return total, i
        for j in range(labels.channels):
            k = i * labels.channels + j
            m, term = hinge(x[k], j == value, squared)
            margin[k] = m
            total += term
    return total, -1


@njit(cache=True)
def hinge_backward(margin, label, dx, labels, squared, scale):
    """L1: dx = sign(+-margin) * scale; L2: dx = +-margin * scale (minus at the label)."""
    for i in range(labels.outer):
        value = int(label[i])                   # checked by the forward pass
        for j in range(labels.channels):
            k = i * labels.channels + j
            dx[k] = hinge_grad(margin[k], j == value, squared, scale)


@register_layer("HingeLoss")
class HingeLossLayer(_PerItemLoss):
    """One-versus-all hinge loss, L1 or L2 (``hinge_loss_param.norm``)."""

    cuda_module = ".losses_extra_cuda"

    def setup(self, bottom, top):
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
        total, bad = hinge_forward(flat(bottom[0].data), flat(bottom[1].data), self.margin, self.labels,
                                   self.squared)
        self.set_loss(bottom, top, total, bad=bad)

    def grad_scale(self, top):
        return self.loss_scale(top, 2.0 if self.squared else 1.0)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            hinge_backward(self.margin, flat(bottom[1].data), flat(bottom[0].diff), self.labels, self.squared,
                           self.grad_scale(top))


# --- SigmoidCrossEntropyLoss -------------------------------------------------------------

@njit(cache=True)
def sigmoid_ce_forward(x, target, labels):
    """Caffe's stable sum of the cross-entropy over the non-ignored targets; returns (loss, valid count)."""
    loss = 0.0
    valid = 0
    for i in range(x.shape[0]):
        if not ignored(target[i], labels):
            loss -= sigmoid_cross_entropy(x[i], target[i])
            valid += 1
    return loss, valid


@njit(cache=True)
def sigmoid_ce_backward(x, target, dx, labels, scale):
    """dx = (sigmoid(x) - t) * scale, zero where the target is ignored."""
    for i in range(x.shape[0]):
        dx[i] = 0 if ignored(target[i], labels) else sigmoid_cross_entropy_grad(x[i], target[i], scale)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(LossLayer):
    """Cross-entropy of sigmoid(bottom 0) against targets in bottom 1 (same count)."""

    cuda_module = ".losses_extra_cuda"
    refused_bottoms = ((1, "label"),)

    def setup(self, bottom, top):
        # normalization if set, else the legacy normalize, else BATCH_SIZE (not VALID)
        self.read_loss_param(default=BATCH_SIZE)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise ConfigError(f"layer '{self.name}' (SigmoidCrossEntropyLoss): inputs must have the same count, "
                              f"got {bottom[0].shape_string()} and {bottom[1].shape_string()}")
        self.set_labels(bottom[0].shape[0] if bottom[0].num_axes else 1, 1, bottom[0].count_range(1))

    def forward_cpu(self, bottom, top):
        self.set_loss(bottom, top, *sigmoid_ce_forward(flat(bottom[0].data), flat(bottom[1].data), self.labels))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            sigmoid_ce_backward(flat(bottom[0].data), flat(bottom[1].data), flat(bottom[0].diff), self.labels,
                                self.loss_scale(top))


# --- MultinomialLogisticLoss ---------------------------------------------------------------

@njit(cache=True)
def multinomial_backward(prob, label, dx, labels, threshold, scale):
    """dx = scale / max(p, threshold) at the label, 0 elsewhere (scale = -weight / N)."""
    dx[:] = 0
    for i in range(labels.outer):
        k = i * labels.channels + int(label[i])      # checked by the forward pass
        dx[k] = multinomial_grad(prob[k], threshold, scale)


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_PerItemLoss):
    """Negative log of the probability given to the label (bottom 0 holds probabilities): the log
    loss of losses.py with no softmax and Caffe's kLOG_THRESHOLD."""

    cuda_module = ".losses_extra_cuda"

    def setup(self, bottom, top):
        self.no_matrix = np.zeros(0, self.dtype)      # log_loss_forward's H: none

    def forward_cpu(self, bottom, top):
        loss, _, bad = log_loss_forward(flat(bottom[0].data), flat(bottom[1].data), self.no_matrix, self.labels,
                                        LOG_THRESHOLD)
        self.set_loss(bottom, top, loss, bad=bad)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            multinomial_backward(flat(bottom[0].data), flat(bottom[1].data), flat(bottom[0].diff), self.labels,
                                 LOG_THRESHOLD, self.loss_scale(top, -1.0))


# --- ContrastiveLoss -----------------------------------------------------------------------

@njit(cache=True)
def contrastive_forward(a, b, y, diff, dist_sq, pairs):
    """diff = a - b, dist_sq per pair; returns the summed (not yet halved or averaged) loss."""
    loss = 0.0
    for i in range(pairs.num):
        loss += contrastive_pair(a, b, y, diff, dist_sq, i, pairs)
    return loss


@njit(cache=True)
def contrastive_backward(diff, dist_sq, y, dx, pairs, alpha):
    """Caffe's ContrastiveLoss gradient for one of the two inputs (alpha = +-weight / N)."""
    for i in range(pairs.num):
        coef, active = contrastive_coef(dist_sq[i], similar(y[i]), pairs.margin, pairs.legacy, alpha)
        for c in range(pairs.channels):
            k = i * pairs.channels + c
            dx[k] = coef * diff[k] if active else 0


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
    cuda_module = ".losses_extra_cuda"

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
        self.outer, self.inner = n0, c0
        self.pairs = Pairs(n0, c0, self.margin, self.legacy)
        if self.diff.size != n0 * c0:
            self.diff = np.zeros(n0 * c0, self.dtype)
        if self.dist_sq.size != n0:
            self.dist_sq = np.zeros(n0, self.dtype)

    def normalized(self, loss, count):
        return super().normalized(loss, count) / 2.0

    def forward_cpu(self, bottom, top):
        self.set_loss(bottom, top, contrastive_forward(flat(bottom[0].data), flat(bottom[1].data),
                                                       flat(bottom[2].data), self.diff, self.dist_sq, self.pairs))

    def backward_cpu(self, top, propagate_down, bottom):
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                contrastive_backward(self.diff, self.dist_sq, flat(bottom[2].data), flat(bottom[i].diff), self.pairs,
                                     self.loss_scale(top, sign))
        if len(propagate_down) > 2 and propagate_down[2]:
            bottom[2].diff[...] = 0

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2


# --- InfogainLoss ---------------------------------------------------------------------------

@register_layer("InfogainLoss")
class InfogainLossLayer(SoftmaxWithLossLayer):
    """Softmax + infogain-weighted log loss (BVLC master); H from a file or a third bottom.

    SoftmaxWithLoss with a matrix: the same kernels on both devices (H = I
    would give SoftmaxWithLoss's loss, with kLOG_THRESHOLD for FLT_MIN).
    """

    exact_num_bottom_blobs = None
    min_bottom_blobs = 2
    max_bottom_blobs = 3
    refused_bottoms = ((1, "label"), (2, "infogain"))
    axis_param = "infogain_loss_param"
    threshold = LOG_THRESHOLD

    def setup(self, bottom, top):
        lp = self.layer_param
        if lp.loss_param.HasField("normalize"):
            raise ConfigError(f"layer '{self.name}' (InfogainLoss): loss_param.normalize is deprecated; use "
                              "loss_param.normalization (VALID, BATCH_SIZE, FULL or NONE)",
                              field="loss_param.normalize")
        super().setup(bottom, top)
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
        self.sum_rows = np.zeros(0, self.dtype)

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        count = self.infogain.size if len(bottom) < 3 else bottom[2].count
        if count != self.channels * self.channels:
            where = f"the matrix in '{self.infogain_source}'" if len(bottom) < 3 else "bottom 2"
            raise ConfigError(f"layer '{self.name}' (InfogainLoss): H must be {self.channels} x {self.channels} "
                              f"(the number of labels along axis {self.axis}); {where} has {count} values")
        if self.sum_rows.size != self.channels:
            self.sum_rows = np.zeros(self.channels, self.dtype)
        if len(bottom) < 3:
            row_sums(self.infogain, self.channels, self.sum_rows)     # H is fixed: summed once

    def matrix(self, bottom):
        return self.infogain if len(bottom) < 3 else flat(bottom[2].data)

    def matrix_row_sums(self, bottom):
        if len(bottom) == 3:
            row_sums(flat(bottom[2].data), self.channels, self.sum_rows)      # H may change: summed every time
        return self.sum_rows
