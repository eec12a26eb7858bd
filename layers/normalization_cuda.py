"""GPU code of the normalization layers (BatchNorm, Scale, Bias, LRN, MVN): the CUDA side of
layers/normalization.py.

The arithmetic is the CPU's: the kernels call the very formulas the CPU
loops call (``@formula`` in normalization.py), and each launch function
here has the name and arguments of the CPU loop it stands for
(``group_moments(x, groups, mean, var, want_var)``...).

Reductions use the "group" layout (``Groups``: element (n, g, s) at
(n*G + g)*S + s), one block per group (grid-stride over groups), float64
partial sums in shared memory tree-summed by ``dlcore.device.block_sum``
(the Bias gradient uses ``kernels_cuda.channel_sum`` directly).
Element-wise passes are grid-stride.  LRN's ACROSS_CHANNELS runs one thread
per (image, pixel) with Caffe's running window sum over channels;
WITHIN_CHANNEL reuses the AVE pooling kernels of layers/pooling_cuda.py and
the Power kernels of layers/activations_cuda.py, as Caffe builds it from
those layers.
"""
import numba
import numpy as np
from numba import cuda

from dlcore.device import MAX_BLOCKS, RED_TPB, TPB, block_sum, copy, fill, grid, jit, map_formula, scalar
from dlcore.layer import gpu_backward, gpu_forward

from .activations_cuda import power_backward, power_forward
from .elementwise import product
from .kernels_cuda import channel_sum
from .normalization import (BatchNormLayer, BiasLayer, LRNLayer, MVNLayer, ScaleLayer, batch_norm_std,
                            global_stats_factor, lrn_grad, lrn_output, lrn_power, lrn_ratio, lrn_term,
                            lrn_within_grad, mvn_std, normalize, normalize_grad, running_sum)
from .pooling import AVE
from .pooling_cuda import pool_backward, pool_forward


def _group_blocks(groups):
    return max(1, min(int(groups), MAX_BLOCKS * 4))


# --- group reductions -------------------------------------------------------------

@jit(device=True)
def _group_element(i, g, groups):
    """Where the i-th element (of N*S) of group g is: (n*G + g)*S + s for i = n*S + s."""
    n = i // groups.S
    return (n * groups.G + g) * groups.S + i - n * groups.S


@jit
def _group_moments(x, groups, mean, var, want_var):
    """mean[g] = E[x]; var[g] = E[(x - mean[g])^2] (with the mean rounded as stored)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    m = groups.N * groups.S
    for g in range(cuda.blockIdx.x, groups.G, cuda.gridDim.x):
        acc = 0.0
        for i in range(tid, m, RED_TPB):
            acc += numba.float64(x[_group_element(i, g, groups)])
        part[tid] = acc
        block_sum(part, tid)
        if tid == 0:
            mean[g] = part[0] / m
        cuda.syncthreads()
        if want_var:
            mu = mean[g]
            acc = 0.0
            for i in range(tid, m, RED_TPB):
                d = x[_group_element(i, g, groups)] - mu
                acc += numba.float64(d * d)
            part[tid] = acc
            block_sum(part, tid)
            if tid == 0:
                var[g] = part[0] / m
            cuda.syncthreads()


@jit
def _group_sums(a, b, groups, sum_a, sum_ab, want_a, accumulate):
    """sum_ab[g] (+)= sum of a*b; with want_a also sum_a[g] (+)= sum of a (over n, s)."""
    part_a = cuda.shared.array(RED_TPB, numba.float64)
    part_ab = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    for g in range(cuda.blockIdx.x, groups.G, cuda.gridDim.x):
        acc_a = 0.0
        acc_ab = 0.0
        for i in range(tid, groups.N * groups.S, RED_TPB):
            o = _group_element(i, g, groups)
            v = a[o]
            acc_a += numba.float64(v)
            acc_ab += numba.float64(v * b[o])
        part_a[tid] = acc_a
        part_ab[tid] = acc_ab
        block_sum(part_a, tid)
        block_sum(part_ab, tid)
        if tid == 0:
            if accumulate:
                sum_ab[g] += part_ab[0]
                if want_a:
                    sum_a[g] += part_a[0]
            else:
                sum_ab[g] = part_ab[0]
                if want_a:
                    sum_a[g] = part_a[0]
        cuda.syncthreads()


def group_moments(x, groups, mean, var, want_var):
    if groups.G > 0:
        _group_moments[_group_blocks(groups.G), RED_TPB](x, groups, mean, var, want_var)


def group_sums(a, b, groups, sum_a, sum_ab):
    if groups.G > 0:
        _group_sums[_group_blocks(groups.G), RED_TPB](a, b, groups, sum_a, sum_ab, True, False)


def broadcast_scale_grad(dy, x, out, groups, accumulate):
    """out[d] (+)= sum over o, j of dy * x."""
    if groups.G > 0:
        _group_sums[_group_blocks(groups.G), RED_TPB](dy, x, groups, out, out, False, accumulate)


# --- element-wise passes ----------------------------------------------------------

@jit
def _group_normalize(x, y, x_norm, mean, std, groups, divide, keep):
    """y = normalize(x, mean[g], std[g], divide); ``keep``: x_norm = y too."""
    G, S = groups.G, groups.S
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        g = (i // S) % G
        v = normalize(x[i], mean[g], std[g], divide)
        y[i] = v
        if keep:
            x_norm[i] = v


@jit
def _group_norm_backward(dy, y, dx, sum_a, sum_ab, std, groups, inv_m, mode):
    G, S = groups.G, groups.S
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        g = (i // S) % G
        dx[i] = normalize_grad(dy[i], y[i], sum_a[g], sum_ab[g], inv_m, std[g], mode)


def group_normalize(x, y, mean, std, groups, divide):
    """y = normalize(x, mean[g], std[g], divide)."""
    if y.size:
        _group_normalize[grid(y.size)](x, y, y, mean, std, groups, divide, False)


def group_normalize_keeping(x, y, x_norm, mean, std, groups, divide):
    """y = x_norm = normalize(x, mean[g], std[g], divide) (the CPU's group_normalize and a copy, in one pass)."""
    if y.size:
        _group_normalize[grid(y.size)](x, y, x_norm, mean, std, groups, divide, True)


def group_norm_backward(dy, y, dx, sum_a, sum_ab, std, groups, inv_m, mode):
    if dx.size:
        _group_norm_backward[grid(dx.size)](dy, y, dx, sum_a, sum_ab, std, groups, inv_m, mode)


@jit
def _bn_stats(mean, var, std, b0, b1, b2, lam, bias_correction, eps, one, use_global):
    """One block: the normalization statistics, and (TRAIN) the running sums' update."""
    tid = cuda.threadIdx.x
    C = mean.size
    if use_global:
        f = global_stats_factor(b2[0], one)
        for c in range(tid, C, cuda.blockDim.x):
            mean[c] = f * b0[c]
            var[c] = f * b1[c]
    else:
        if tid == 0:
            b2[0] = running_sum(one, b2[0], lam)
        for c in range(tid, C, cuda.blockDim.x):
            b0[c] = running_sum(mean[c], b0[c], lam)
            b1[c] = running_sum(bias_correction * var[c], b1[c], lam)
    for c in range(tid, C, cuda.blockDim.x):
        std[c] = batch_norm_std(var[c], eps)


def bn_stats(mean, var, std, b0, b1, b2, lam, bias_correction, eps, one, use_global):
    _bn_stats[1, TPB](mean, var, std, b0, b1, b2, lam, bias_correction, eps, one, use_global)


@jit
def _mvn_stds(var, std, eps):
    for i in range(cuda.grid(1), var.size, cuda.gridsize(1)):
        std[i] = mvn_std(var[i], eps)


def mvn_stds(var, std, eps):
    if var.size:
        _mvn_stds[grid(var.size)](var, std, eps)


@jit
def _broadcast(x, s, y, groups, add):
    """y = x * s[d] (or x + s[d]) on the (outer, dim, inner) layout ``groups``."""
    G, S = groups.G, groups.S
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        v = s[(i // S) % G]
        y[i] = x[i] + v if add else x[i] * v


def broadcast_scale(x, s, y, groups):
    """y[o, d, j] = x[o, d, j] * s[d]."""
    if y.size:
        _broadcast[grid(y.size)](x, s, y, groups, False)


def broadcast_bias(x, b, y, groups):
    """y[o, d, j] = x[o, d, j] + b[d]."""
    if y.size:
        _broadcast[grid(y.size)](x, b, y, groups, True)


# --- BatchNorm ----------------------------------------------------------------------

@gpu_forward(BatchNormLayer)
def batch_norm_forward(layer, bottom, top):
    x, groups = bottom[0].gpu_data(), layer.groups
    mean, var, std = layer.mean.mutable_gpu_data(), layer.variance.mutable_gpu_data(), layer.std.mutable_gpu_data()
    if not layer.use_global_stats:
        group_moments(x, groups, mean, var, True)
    stats = (b.gpu_data() if layer.use_global_stats else b.mutable_gpu_data() for b in layer.blobs)
    bn_stats(mean, var, std, *stats, *layer.stats_args(bottom), layer.use_global_stats)
    group_normalize_keeping(x, top[0].mutable_gpu_data(), layer.x_norm.mutable_gpu_data(), mean, std, groups, True)


@gpu_backward(BatchNormLayer)
def batch_norm_backward(layer, top, propagate_down, bottom):
    if not (propagate_down[0] and bottom[0].count):
        return
    dy, xn = top[0].gpu_diff(), layer.x_norm.gpu_data()
    sum_a, sum_ab = layer.mean.mutable_gpu_diff(), layer.variance.mutable_gpu_diff()
    if not layer.use_global_stats:
        group_sums(dy, xn, layer.groups, sum_a, sum_ab)
    group_norm_backward(dy, xn, bottom[0].mutable_gpu_diff(), sum_a, sum_ab, layer.std.gpu_data(), layer.groups,
                        *layer.backward_args())


# --- MVN ------------------------------------------------------------------------------

@gpu_forward(MVNLayer)
def mvn_forward(layer, bottom, top):
    x, divide = bottom[0].gpu_data(), layer.normalize_variance
    mean, var, std = layer.mean.mutable_gpu_data(), layer.variance.mutable_gpu_data(), layer.std.mutable_gpu_data()
    group_moments(x, layer.groups, mean, var, divide)
    if divide:
        mvn_stds(var, std, scalar(layer.eps, layer.dtype))
    if divide:
        group_normalize_keeping(x, top[0].mutable_gpu_data(), layer.x_norm.mutable_gpu_data(), mean, std,
                                layer.groups, True)
    else:
        group_normalize(x, top[0].mutable_gpu_data(), mean, std, layer.groups, False)


@gpu_backward(MVNLayer)
def mvn_backward(layer, top, propagate_down, bottom):
    if not (propagate_down[0] and bottom[0].count):
        return
    dy = top[0].gpu_diff()
    y = layer.x_norm.gpu_data() if layer.normalize_variance else dy
    sum_a, sum_ab = layer.mean.mutable_gpu_diff(), layer.variance.mutable_gpu_diff()
    group_sums(dy, y, layer.groups, sum_a, sum_ab)
    group_norm_backward(dy, y, bottom[0].mutable_gpu_diff(), sum_a, sum_ab, layer.std.gpu_data(), layer.groups,
                        *layer.backward_args())


# --- Bias and Scale -----------------------------------------------------------------

@gpu_forward(BiasLayer)
def bias_forward(layer, bottom, top):
    broadcast_bias(bottom[0].gpu_data(), layer.operand(bottom).gpu_data(), top[0].mutable_gpu_data(), layer.groups)


@gpu_backward(BiasLayer)
def bias_backward(layer, top, propagate_down, bottom):
    if propagate_down[0] and top[0] is not bottom[0]:
        copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)
    if layer.wants_operand_grad(propagate_down, bottom):
        channel_sum(top[0].gpu_diff(), *layer.groups, layer.operand(bottom).mutable_gpu_diff(),
                    accumulate=len(bottom) == 1)


@gpu_forward(ScaleLayer)
def scale_forward(layer, bottom, top):
    # (the bias, if any, is added by ScaleLayer.forward, on either device)
    if top[0] is bottom[0]:
        copy(bottom[0].gpu_data(), layer.temp.mutable_gpu_data(), bottom[0].count)
    broadcast_scale(bottom[0].gpu_data(), layer.operand(bottom).gpu_data(), top[0].mutable_gpu_data(), layer.groups)


@gpu_backward(ScaleLayer)
def scale_backward(layer, top, propagate_down, bottom):
    operand = layer.operand(bottom)
    if layer.wants_operand_grad(propagate_down, bottom):
        out = operand.mutable_gpu_diff()
        if bottom[0].count:
            broadcast_scale_grad(top[0].gpu_diff(), layer.scale_input(bottom, top).gpu_data(), out, layer.groups,
                                 len(bottom) == 1)
        elif len(bottom) > 1:
            fill(out, 0)
    if propagate_down[0]:
        broadcast_scale(top[0].gpu_diff(), operand.gpu_data(), bottom[0].mutable_gpu_diff(), layer.groups)


# --- LRN --------------------------------------------------------------------------------

@jit
def _lrn_across_forward(x, scale, y, p):
    C, HW, size, pre_pad = p.channels, p.plane, p.size, p.pre_pad
    for t in range(cuda.grid(1), p.num * HW, cuda.gridsize(1)):
        n = t // HW
        base = n * C * HW + t - n * HW
        acc = p.k
        for j in range(size):
            c = j - pre_pad
            if c >= 0 and c < C:
                acc += lrn_term(x[base + c * HW], p.alpha_over_size)
        scale[base] = acc
        for c in range(1, C):
            head = c + size - 1 - pre_pad
            if head < C:
                acc += lrn_term(x[base + head * HW], p.alpha_over_size)
            tail = c - 1 - pre_pad
            if tail >= 0:
                acc -= lrn_term(x[base + tail * HW], p.alpha_over_size)
            scale[base + c * HW] = acc
        for c in range(C):
            o = base + c * HW
            y[o] = lrn_output(x[o], scale[o], p.neg_beta)


@jit(device=True)
def _lrn_ratio_at(x, scale, dy, o, neg_beta):
    s = scale[o]
    return lrn_ratio(dy[o], x[o], s, lrn_power(s, neg_beta))


@jit
def _lrn_across_backward(x, scale, dy, dx, p):
    # the window sum of lrn_ratio in the data's dtype (as Caffe's accum_ratio), its terms
    # recomputed on the fly (y as forward computed it)
    C, HW, size, pre_pad = p.channels, p.plane, p.size, p.pre_pad
    for t in range(cuda.grid(1), p.num * HW, cuda.gridsize(1)):
        n = t // HW
        base = n * C * HW + t - n * HW
        acc = dx.dtype.type(0)
        for j in range(size - 1):
            c = j - pre_pad
            if c >= 0 and c < C:
                acc += _lrn_ratio_at(x, scale, dy, base + c * HW, p.neg_beta)
        for c in range(C):
            head = c + size - 1 - pre_pad
            if head < C:
                acc += _lrn_ratio_at(x, scale, dy, base + head * HW, p.neg_beta)
            o = base + c * HW
            dx[o] = lrn_grad(dy[o], x[o], lrn_power(scale[o], p.neg_beta), acc, p.cache_ratio)
            tail = c - pre_pad
            if tail >= 0:
                acc -= _lrn_ratio_at(x, scale, dy, base + tail * HW, p.neg_beta)


def lrn_across_forward(x, scale, y, p):
    if p.num * p.plane:
        _lrn_across_forward[grid(p.num * p.plane)](x, scale, y, p)


def lrn_across_backward(x, scale, dy, dx, p):
    if p.num * p.plane:
        _lrn_across_backward[grid(p.num * p.plane)](x, scale, dy, dx, p)


@jit
def _lrn_within_backward(dy, power, x, d_square, dx):
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        dx[i] = lrn_within_grad(dy[i], power[i], x[i], d_square[i])


def multiply(a, b, out):
    """out = a * b (a may be b: the squares)."""
    map_formula(product, out.size, [a, b], [out])


def lrn_within_backward(dy, power, x, d_square, dx):
    if dx.size:
        _lrn_within_backward[grid(dx.size)](dy, power, x, d_square, dx)


def _no_mask(layer):
    """AVE pooling keeps no argmax mask: an unused int32 element (as the Pooling layer's AVE passes)."""
    return layer.workspace.get("mask", 1, np.int32)


@gpu_forward(LRNLayer)
def lrn_forward(layer, bottom, top):
    x, y = bottom[0].gpu_data(), top[0].mutable_gpu_data()
    if layer.across:
        lrn_across_forward(x, layer.scale.mutable_gpu_data(), y, layer.params)
        return
    n = bottom[0].count
    sq, pool, pw = layer.scale.mutable_gpu_data(), layer.pool.mutable_gpu_data(), layer.power.mutable_gpu_data()
    multiply(x, x, sq)
    pool_forward(AVE, layer.pool_geometry, sq, pool, _no_mask(layer))
    power_forward(pool, pw, n, *layer.power_args())
    multiply(x, pw, y)


@gpu_backward(LRNLayer)
def lrn_backward(layer, top, propagate_down, bottom):
    if not propagate_down[0]:
        return
    x, dy, dx = bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff()
    if layer.across:
        lrn_across_backward(x, layer.scale.gpu_data(), dy, dx, layer.params)
        return
    n = bottom[0].count
    pool, pw = layer.pool.gpu_data(), layer.power.gpu_data()
    d_sq, d_pool, d_pw = layer.scale.mutable_gpu_diff(), layer.pool.mutable_gpu_diff(), layer.power.mutable_gpu_diff()
    multiply(x, dy, d_pw)
    power_backward(pool, pw, d_pw, d_pool, n, *layer.power_args())
    pool_backward(AVE, layer.pool_geometry, d_pool, _no_mask(layer), d_sq)
    lrn_within_backward(dy, pw, x, d_sq, dx)
