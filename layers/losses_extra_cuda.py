"""GPU code of the loss layers in layers/losses_extra.py (HingeLoss,
SigmoidCrossEntropyLoss, MultinomialLogisticLoss, ContrastiveLoss; InfogainLoss
is SoftmaxWithLoss's, in losses_cuda.py).

Same scheme as layers/losses_cuda.py, whose pieces it uses: a loss is
reduced on the device by ONE block, in float64 and in a fixed order (a run
repeats bit for bit), into the small "stats" array [loss sum, valid count,
first bad label position or -1] that the host reads back; the gradients are
grid-stride element-wise kernels.  The formulas are the CPU's (``@formula``
in layers/losses_extra.py and layers/losses.py); MultinomialLogisticLoss's
forward is SoftmaxWithLoss's log-loss kernel.
"""
from numba import cuda

from dlcore.device import RED_TPB, fill, grid, jit
from dlcore.layer import gpu_backward, gpu_forward

from .losses import BAD_LABEL, ignored, label_class
from .losses_cuda import NO_BAD, log_loss_stats, no_matrix, one_block, store_stats
from .losses_extra import (LOG_THRESHOLD, ContrastiveLossLayer, HingeLossLayer, MultinomialLogisticLossLayer,
                           SigmoidCrossEntropyLossLayer, contrastive_coef, contrastive_pair, hinge, hinge_grad,
                           multinomial_grad, sigmoid_cross_entropy, sigmoid_cross_entropy_grad, similar)


# --- HingeLoss -------------------------------------------------------------------------------

@jit
def _hinge_forward(x, label, margin, labels, squared, stats):
    total = 0.0
    bad = NO_BAD
    for k in range(cuda.threadIdx.x, labels.outer * labels.channels, RED_TPB):
        i = k // labels.channels
        value = label_class(label[i], labels)
        if value == BAD_LABEL:
            bad = min(bad, i)
        else:
            m, term = hinge(x[k], k - i * labels.channels == value, squared)
            margin[k] = m
            total += term
    store_stats(stats, total, 0.0, bad)


@jit
def _hinge_backward(margin, label, dx, labels, squared, scale):
    for k in range(cuda.grid(1), labels.outer * labels.channels, cuda.gridsize(1)):
        i = k // labels.channels
        dx[k] = hinge_grad(margin[k], k - i * labels.channels == int(label[i]), squared, scale)


@gpu_forward(HingeLossLayer)
def hinge_loss_forward(layer, bottom, top):
    margin = layer.workspace.get("margin", bottom[0].count, layer.dtype)
    total, _, bad = one_block(layer, _hinge_forward, bottom[0].gpu_data(), bottom[1].gpu_data(), margin,
                              layer.labels, layer.squared)
    layer.set_loss(bottom, top, total, bad=bad)


@gpu_backward(HingeLossLayer)
def hinge_loss_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        n = bottom[0].count
        _hinge_backward[grid(n)](layer.workspace.get("margin", n, layer.dtype), bottom[1].gpu_data(),
                                 bottom[0].mutable_gpu_diff(), layer.labels, layer.squared, layer.grad_scale(top))


# --- SigmoidCrossEntropyLoss -------------------------------------------------------------------

@jit
def _sigmoid_ce_forward(x, target, n, labels, stats):
    loss = 0.0
    count = 0.0
    for i in range(cuda.threadIdx.x, n, RED_TPB):
        if not ignored(target[i], labels):
            loss -= sigmoid_cross_entropy(x[i], target[i])
            count += 1.0
    store_stats(stats, loss, count, NO_BAD)


@jit
def _sigmoid_ce_backward(x, target, dx, n, labels, scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[i] = 0 if ignored(target[i], labels) else sigmoid_cross_entropy_grad(x[i], target[i], scale)


@gpu_forward(SigmoidCrossEntropyLossLayer)
def sigmoid_ce_loss_forward(layer, bottom, top):
    loss, valid, _ = one_block(layer, _sigmoid_ce_forward, bottom[0].gpu_data(), bottom[1].gpu_data(),
                               bottom[0].count, layer.labels)
    layer.set_loss(bottom, top, loss, valid)


@gpu_backward(SigmoidCrossEntropyLossLayer)
def sigmoid_ce_loss_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        n = bottom[0].count
        _sigmoid_ce_backward[grid(n)](bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(), n,
                                      layer.labels, layer.loss_scale(top))


# --- MultinomialLogisticLoss --------------------------------------------------------------------

@jit
def _multinomial_backward(prob, label, dx, labels, threshold, scale):
    for k in range(cuda.grid(1), labels.outer * labels.channels, cuda.gridsize(1)):
        i = k // labels.channels
        dx[k] = multinomial_grad(prob[k], threshold, scale) if k - i * labels.channels == int(label[i]) else 0


@gpu_forward(MultinomialLogisticLossLayer)
def multinomial_loss_forward(layer, bottom, top):
    loss, _, bad = log_loss_stats(layer, bottom[0].gpu_data(), bottom[1].gpu_data(), no_matrix(layer), LOG_THRESHOLD)
    layer.set_loss(bottom, top, loss, bad=bad)


@gpu_backward(MultinomialLogisticLossLayer)
def multinomial_loss_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        n = bottom[0].count
        _multinomial_backward[grid(n)](bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[0].mutable_gpu_diff(),
                                       layer.labels, LOG_THRESHOLD, layer.loss_scale(top, -1.0))


# --- ContrastiveLoss ------------------------------------------------------------------------------

@jit
def _contrastive_forward(a, b, y, diff, dist_sq, pairs, stats):
    loss = 0.0
    for i in range(cuda.threadIdx.x, pairs.num, RED_TPB):
        loss += contrastive_pair(a, b, y, diff, dist_sq, i, pairs)
    store_stats(stats, loss, 0.0, NO_BAD)


@jit
def _contrastive_backward(diff, dist_sq, y, dx, pairs, alpha):
    for k in range(cuda.grid(1), pairs.num * pairs.channels, cuda.gridsize(1)):
        i = k // pairs.channels
        coef, active = contrastive_coef(dist_sq[i], similar(y[i]), pairs.margin, pairs.legacy, alpha)
        dx[k] = coef * diff[k] if active else 0


def _pair_buffers(layer):
    return (layer.workspace.get("diff", layer.pairs.num * layer.pairs.channels, layer.dtype),
            layer.workspace.get("dist_sq", layer.pairs.num, layer.dtype))


@gpu_forward(ContrastiveLossLayer)
def contrastive_loss_forward(layer, bottom, top):
    diff, dist_sq = _pair_buffers(layer)
    layer.set_loss(bottom, top, one_block(layer, _contrastive_forward, bottom[0].gpu_data(), bottom[1].gpu_data(),
                                          bottom[2].gpu_data(), diff, dist_sq, layer.pairs)[0])


@gpu_backward(ContrastiveLossLayer)
def contrastive_loss_backward(layer, top, propagate_down, bottom):
    diff, dist_sq = _pair_buffers(layer)
    for i, sign in ((0, 1.0), (1, -1.0)):
        if propagate_down[i]:
            _contrastive_backward[grid(diff.size)](diff, dist_sq, bottom[2].gpu_data(), bottom[i].mutable_gpu_diff(),
                                                   layer.pairs, layer.loss_scale(top, sign))
    if len(propagate_down) > 2 and propagate_down[2]:
        fill(bottom[2].mutable_gpu_diff(), 0)
