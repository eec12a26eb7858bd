"""CUDA kernels of the normalization layers (BatchNorm, Scale, Bias, LRN, MVN): the GPU side of
layers/normalization.py.

Reductions use the CPU kernels' "group" layout (N, G, S): element (n, g, s)
at (n*G + g)*S + s, one block per group (grid-stride over groups), float64
partial sums in shared memory (as ``kernels_cuda.channel_sum``, which the
Bias gradient uses directly).  Element-wise passes are grid-stride.  LRN's
ACROSS_CHANNELS runs one thread per (image, pixel) with Caffe's running
window sum over channels; WITHIN_CHANNEL reuses the AVE pooling kernels of
layers/pooling_cuda.py and the Power kernels of layers/activations_cuda.py,
as Caffe builds it from those layers.
"""
import math

import numba
from numba import cuda

from . import activations_cuda as A
from . import kernels_cuda as K
from .kernels_cuda import MAX_BLOCKS, RED_TPB, grid, jit, scalar
from .pooling_cuda import _ave_backward, _ave_forward


def _blocks(groups):
    return max(1, min(int(groups), MAX_BLOCKS * 4))


# --- group reductions -------------------------------------------------------------

@jit
def _group_moments(x, N, G, S, mean, var, want_var):
    """mean[g] = E[x]; var[g] = E[(x - mean[g])^2] (with the mean rounded as stored)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    M = N * S
    for g in range(cuda.blockIdx.x, G, cuda.gridDim.x):
        acc = 0.0
        for i in range(tid, M, RED_TPB):
            n = i // S
            acc += numba.float64(x[(n * G + g) * S + i - n * S])
        part[tid] = acc
        K.block_sum(part, tid)
        if tid == 0:
            mean[g] = part[0] / M
        cuda.syncthreads()
        if want_var:
            mu = mean[g]
            acc = 0.0
            for i in range(tid, M, RED_TPB):
                n = i // S
                d = x[(n * G + g) * S + i - n * S] - mu
                acc += numba.float64(d * d)
            part[tid] = acc
            K.block_sum(part, tid)
            if tid == 0:
                var[g] = part[0] / M
            cuda.syncthreads()


@jit
def _group_sums(a, b, N, G, S, sum_a, sum_ab, want_a, accumulate):
    """sum_ab[g] (+)= sum of a*b; with want_a also sum_a[g] (+)= sum of a (over n, s)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    part2 = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    M = N * S
    for g in range(cuda.blockIdx.x, G, cuda.gridDim.x):
        acc = 0.0
        acc2 = 0.0
        for i in range(tid, M, RED_TPB):
            n = i // S
            o = (n * G + g) * S + i - n * S
            v = a[o]
            acc += numba.float64(v)
            acc2 += numba.float64(v * b[o])
        part[tid] = acc
        part2[tid] = acc2
        cuda.syncthreads()
        s = RED_TPB // 2
        while s > 0:
            if tid < s:
                part[tid] += part[tid + s]
                part2[tid] += part2[tid + s]
            cuda.syncthreads()
            s //= 2
        if tid == 0:
            if accumulate:
                sum_ab[g] += part2[0]
                if want_a:
                    sum_a[g] += part[0]
            else:
                sum_ab[g] = part2[0]
                if want_a:
                    sum_a[g] = part[0]
        cuda.syncthreads()


def group_moments(x, N, G, S, mean, var, want_var):
    if G > 0:
        _group_moments[_blocks(G), RED_TPB](x, N, G, S, mean, var, want_var)


def group_sums(a, b, N, G, S, sum_a, sum_ab, want_a=True, accumulate=False):
    if G > 0:
        _group_sums[_blocks(G), RED_TPB](a, b, N, G, S, sum_a if want_a else sum_ab, sum_ab, want_a, accumulate)


# --- element-wise passes ----------------------------------------------------------

@jit
def _normalize(x, y, xnorm, mean, std, n, G, S, divide, keep):
    """y = (x - mean[g]) / std[g] (or x - mean[g]); ``keep``: xnorm = y too."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        g = (i // S) % G
        v = x[i] - mean[g]
        if divide:
            v = v / std[g]
        y[i] = v
        if keep:
            xnorm[i] = v


@jit
def _norm_backward(dy, y, dx, sum_a, sum_ab, std, n, G, S, inv_m, mode):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        g = (i // S) % G
        if mode == 0:
            dx[i] = dy[i] / std[g]
        elif mode == 1:
            dx[i] = (dy[i] - (sum_ab[g] * y[i] + sum_a[g]) * inv_m) / std[g]
        else:
            dx[i] = dy[i] - sum_a[g] * inv_m


@jit
def _bn_stats(mean, var, std, b0, b1, b2, C, lam, bias_correction, eps, one, use_global):
    """One block: the normalization statistics, and (TRAIN) the running sums' update."""
    tid = cuda.threadIdx.x
    if use_global:
        s = b2[0]
        f = s - s
        if s != 0:
            f = one / s
        for c in range(tid, C, cuda.blockDim.x):
            mean[c] = f * b0[c]
            var[c] = f * b1[c]
    else:
        if tid == 0:
            b2[0] = b2[0] * lam + one
        for c in range(tid, C, cuda.blockDim.x):
            b0[c] = mean[c] + lam * b0[c]
            b1[c] = bias_correction * var[c] + lam * b1[c]
    for c in range(tid, C, cuda.blockDim.x):
        std[c] = math.sqrt(var[c] + eps)


@jit
def _mvn_std(var, std, n, eps):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        std[i] = math.sqrt(var[i]) + eps


@jit
def _broadcast_scale(x, s, y, n, dim, inner):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = x[i] * s[(i // inner) % dim]


@jit
def _broadcast_bias(x, b, y, n, dim, inner):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        y[i] = x[i] + b[(i // inner) % dim]


# --- BatchNorm ----------------------------------------------------------------------

def batch_norm_forward(layer, bottom, top):
    dt = layer.dtype
    n = bottom[0].count
    N, C, S = layer.num, layer.channels, layer.spatial
    x = bottom[0].gpu_data()
    mean, var, std = layer.mean.mutable_gpu_data(), layer.variance.mutable_gpu_data(), layer.std.mutable_gpu_data()
    if not layer.use_global_stats:
        group_moments(x, N, C, S, mean, var, True)
    b0, b1, b2 = (b.mutable_gpu_data() if not layer.use_global_stats else b.gpu_data() for b in layer.blobs)
    _bn_stats[1, K.TPB](mean, var, std, b0, b1, b2, C, scalar(layer.moving_average_fraction, dt),
                        scalar(layer._bias_correction(bottom), dt), scalar(layer.eps, dt), scalar(1, dt),
                        layer.use_global_stats)
    if n:
        _normalize[grid(n)](x, top[0].mutable_gpu_data(), layer.x_norm.mutable_gpu_data(), mean, std, n, C, S,
                            True, True)


def batch_norm_backward(layer, top, bottom):
    n = bottom[0].count
    if not n:
        return
    N, C, S = layer.num, layer.channels, layer.spatial
    dy, xn = top[0].gpu_diff(), layer.x_norm.gpu_data()
    sum_a, sum_ab = layer.mean.mutable_gpu_diff(), layer.variance.mutable_gpu_diff()
    if not layer.use_global_stats:
        group_sums(dy, xn, N, C, S, sum_a, sum_ab)
    _norm_backward[grid(n)](dy, xn, bottom[0].mutable_gpu_diff(), sum_a, sum_ab, layer.std.gpu_data(), n, C, S,
                            scalar(1.0 / max(N * S, 1), layer.dtype), 0 if layer.use_global_stats else 1)


# --- MVN ------------------------------------------------------------------------------

def mvn_forward(layer, bottom, top):
    R, D = layer.rows, layer.dim
    n = bottom[0].count
    x = bottom[0].gpu_data()
    mean, var, std = layer.mean.mutable_gpu_data(), layer.variance.mutable_gpu_data(), layer.std.mutable_gpu_data()
    group_moments(x, 1, R, D, mean, var, layer.normalize_variance)
    if layer.normalize_variance and R:
        _mvn_std[grid(R)](var, std, R, scalar(layer.eps, layer.dtype))
    if n:
        xnorm = layer.x_norm.mutable_gpu_data() if layer.normalize_variance else mean
        _normalize[grid(n)](x, top[0].mutable_gpu_data(), xnorm, mean, std, n, R, D, layer.normalize_variance,
                            layer.normalize_variance)


def mvn_backward(layer, top, bottom):
    R, D = layer.rows, layer.dim
    n = bottom[0].count
    if not n:
        return
    dy = top[0].gpu_diff()
    y = layer.x_norm.gpu_data() if layer.normalize_variance else dy
    sum_a, sum_ab = layer.mean.mutable_gpu_diff(), layer.variance.mutable_gpu_diff()
    group_sums(dy, y, 1, R, D, sum_a, sum_ab)
    _norm_backward[grid(n)](dy, y, bottom[0].mutable_gpu_diff(), sum_a, sum_ab, layer.std.gpu_data(), n, R, D,
                            scalar(1.0 / max(D, 1), layer.dtype), 1 if layer.normalize_variance else 2)


# --- Bias and Scale -----------------------------------------------------------------

def bias_forward(layer, bottom, top):
    n = bottom[0].count
    if n:
        _broadcast_bias[grid(n)](bottom[0].gpu_data(), layer._operand(bottom).gpu_data(), top[0].mutable_gpu_data(),
                                 n, layer.dim, layer.inner)


def bias_backward(layer, top, propagate_down, bottom):
    from .normalization import _param_down
    n = bottom[0].count
    if propagate_down[0] and top[0] is not bottom[0]:
        K.copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)
    learned = len(bottom) == 1
    if (learned and _param_down(layer, 0)) or (not learned and propagate_down[1]):
        K.channel_sum(top[0].gpu_diff(), layer.outer, layer.dim, layer.inner,
                      layer._operand(bottom).mutable_gpu_diff(), accumulate=learned)


def scale_forward(layer, bottom, top):
    n = bottom[0].count
    if not n:
        return
    if top[0] is bottom[0]:
        K.copy(bottom[0].gpu_data(), layer.temp.mutable_gpu_data(), n)
    _broadcast_scale[grid(n)](bottom[0].gpu_data(), layer._operand(bottom).gpu_data(), top[0].mutable_gpu_data(), n,
                              layer.dim, layer.inner)


def scale_backward(layer, top, propagate_down, bottom):
    n = bottom[0].count
    operand = layer._operand(bottom)
    if layer._wants_scale_grad(propagate_down, bottom):
        x = (layer.temp if top[0] is bottom[0] else bottom[0]).gpu_data()
        out = operand.mutable_gpu_diff()
        if n:
            group_sums(top[0].gpu_diff(), x, layer.outer, layer.dim, layer.inner, None, out, want_a=False,
                       accumulate=len(bottom) == 1)
        elif len(bottom) > 1:
            K.fill(out, 0)
    if propagate_down[0] and n:
        _broadcast_scale[grid(n)](top[0].gpu_diff(), operand.gpu_data(), bottom[0].mutable_gpu_diff(), n, layer.dim,
                                  layer.inner)


# --- LRN --------------------------------------------------------------------------------

@jit
def _lrn_across_forward(x, scale, y, N, C, HW, size, pre_pad, alpha_over_size, k, neg_beta):
    for t in range(cuda.grid(1), N * HW, cuda.gridsize(1)):
        n = t // HW
        p = t - n * HW
        base = n * C * HW + p
        acc = k
        for j in range(size):
            c = j - pre_pad
            if c >= 0 and c < C:
                v = x[base + c * HW]
                acc += alpha_over_size * (v * v)
        scale[base] = acc
        for c in range(1, C):
            head = c + size - 1 - pre_pad
            if head < C:
                v = x[base + head * HW]
                acc += alpha_over_size * (v * v)
            tail = c - 1 - pre_pad
            if tail >= 0:
                v = x[base + tail * HW]
                acc -= alpha_over_size * (v * v)
            scale[base + c * HW] = acc
        for c in range(C):
            o = base + c * HW
            y[o] = math.pow(scale[o], neg_beta) * x[o]


@jit
def _lrn_across_backward(x, scale, dy, dx, N, C, HW, size, pre_pad, neg_beta, cache_ratio, zero):
    # the window sum of dy * y / scale in the data's dtype (as Caffe's accum_ratio), its terms
    # recomputed on the fly (y as forward computed it)
    for t in range(cuda.grid(1), N * HW, cuda.gridsize(1)):
        n = t // HW
        p = t - n * HW
        base = n * C * HW + p
        acc = zero
        for j in range(size - 1):
            c = j - pre_pad
            if c >= 0 and c < C:
                o = base + c * HW
                s = scale[o]
                acc += dy[o] * (math.pow(s, neg_beta) * x[o]) / s
        for c in range(C):
            head = c + size - 1 - pre_pad
            if head < C:
                o = base + head * HW
                s = scale[o]
                acc += dy[o] * (math.pow(s, neg_beta) * x[o]) / s
            o = base + c * HW
            dx[o] = dy[o] * math.pow(scale[o], neg_beta) - cache_ratio * (x[o] * acc)
            tail = c - pre_pad
            if tail >= 0:
                o = base + tail * HW
                s = scale[o]
                acc -= dy[o] * (math.pow(s, neg_beta) * x[o]) / s


@jit
def _square(x, y, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = x[i]
        y[i] = v * v


@jit
def _multiply(a, b, out, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@jit
def _lrn_within_grad(dy, pw, x, dsq, dx, n):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[i] = dy[i] * pw[i] + (2 * x[i]) * dsq[i]


def lrn_forward(layer, bottom, top):
    dt = layer.dtype
    n = bottom[0].count
    if not n:
        return
    x, y = bottom[0].gpu_data(), top[0].mutable_gpu_data()
    if layer.across:
        HW = layer.H * layer.W
        _lrn_across_forward[grid(layer.N * HW)](x, layer.scale.mutable_gpu_data(), y, layer.N, layer.C, HW, layer.size,
                                                layer.pre_pad, scalar(layer.alpha / layer.size, dt),
                                                scalar(layer.k, dt), scalar(-layer.beta, dt))
        return
    sq, pool, pw = layer.scale.mutable_gpu_data(), layer.pool.mutable_gpu_data(), layer.power.mutable_gpu_data()
    _square[grid(n)](x, sq, n)
    _ave_forward[grid(n)](sq, *layer._pool_geometry(), pool)
    A.power_forward(pool, pw, n, -layer.beta, layer.alpha, 1.0)
    _multiply[grid(n)](x, pw, y, n)


def lrn_backward(layer, top, bottom):
    dt = layer.dtype
    n = bottom[0].count
    if not n:
        return
    x, dy, dx = bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff()
    if layer.across:
        HW = layer.H * layer.W
        _lrn_across_backward[grid(layer.N * HW)](x, layer.scale.gpu_data(), dy, dx, layer.N, layer.C, HW, layer.size,
                                                 layer.pre_pad, scalar(-layer.beta, dt),
                                                 scalar(2.0 * layer.alpha * layer.beta / layer.size, dt),
                                                 scalar(0, dt))
        return
    pool, pw = layer.pool.gpu_data(), layer.power.gpu_data()
    d_sq, d_pool, d_pw = layer.scale.mutable_gpu_diff(), layer.pool.mutable_gpu_diff(), layer.power.mutable_gpu_diff()
    _multiply[grid(n)](x, dy, d_pw, n)
    A.power_backward(pool, pw, d_pw, d_pool, n, -layer.beta, layer.alpha, 1.0)
    _ave_backward[grid(n)](d_pool, *layer._pool_geometry(), d_sq)
    _lrn_within_grad[grid(n)](dy, pw, x, d_sq, dx, n)
