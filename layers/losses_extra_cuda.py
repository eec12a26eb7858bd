"""CUDA kernels of the loss layers in layers/losses_extra.py (HingeLoss,
SigmoidCrossEntropyLoss, MultinomialLogisticLoss, ContrastiveLoss, InfogainLoss).

Same scheme as layers/losses_cuda.py: a loss is reduced on the device by ONE
block, in float64 and in a fixed order (a run repeats bit for bit), into the
small "stats" array [loss sum, valid count, first bad label position or -1]
that the host reads back; the gradients are grid-stride element-wise
kernels.  The formulas are the CPU kernels' (layers/losses_extra.py).
"""
import math

import numba
from numba import cuda

from .kernels_cuda import DeviceWorkspace, grid, jit, scalar
from .losses_cuda import ONE_BLOCK, stats_array

_INT_LIMIT = 2147483648.0


def workspace(layer):
    """The layer's scratch device arrays (kept between calls)."""
    work = getattr(layer, "_gpu_work", None)
    if work is None:
        work = layer._gpu_work = DeviceWorkspace()
    return work


def stats(layer):
    """The layer's float64 stats array of 3 (see the module docstring)."""
    out = getattr(layer, "_gpu_stats", None)
    if out is None:
        out = layer._gpu_stats = stats_array(3)
    return out


def _read(out):
    host = out.copy_to_host()
    return float(host[0]), int(host[1]), int(host[2])


# --- one-block reductions (every thread of the block calls them) ------------------------------

@cuda.jit(device=True)
def _block_sum(part, tid):
    """part[0] = sum(part[:ONE_BLOCK])."""
    cuda.syncthreads()
    s = ONE_BLOCK // 2
    while s > 0:
        if tid < s:
            part[tid] += part[tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _block_min(part, tid):
    """part[0] = min(part[:ONE_BLOCK])."""
    cuda.syncthreads()
    s = ONE_BLOCK // 2
    while s > 0:
        if tid < s and part[tid + s] < part[tid]:
            part[tid] = part[tid + s]
        cuda.syncthreads()
        s //= 2


@cuda.jit(device=True)
def _relu(v):
    return v if v > 0 else v - v


@cuda.jit(device=True)
def _at_least(v, low):
    return v if v > low else low


@cuda.jit(device=True)
def _bad_label(raw, channels):
    return not (-_INT_LIMIT < raw < _INT_LIMIT) or int(raw) < 0 or int(raw) >= channels


# --- HingeLoss -------------------------------------------------------------------------------

@jit
def _hinge_forward(x, label, margin, num, dim, squared, out):
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    bad_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    bad = math.inf
    for t in range(tid, num * dim, ONE_BLOCK):
        i = t // dim
        j = t - i * dim
        raw = numba.float64(label[i])
        if _bad_label(raw, dim):
            if i < bad:
                bad = i
            continue
        v = numba.float64(x[t])
        if j == int(raw):
            v = -v
        m = _relu(1.0 + v)
        margin[t] = m
        if squared:
            acc += m * m
        else:
            acc += m
    loss_part[tid] = acc
    bad_part[tid] = bad
    _block_sum(loss_part, tid)
    _block_min(bad_part, tid)
    if tid == 0:
        out[0] = loss_part[0]
        out[1] = 0.0
        out[2] = bad_part[0] if bad_part[0] < math.inf else -1.0


@jit
def _hinge_backward(margin, label, dx, num, dim, squared, scale):
    for k in range(cuda.grid(1), num * dim, cuda.gridsize(1)):
        i = k // dim
        m = margin[k]
        if squared:
            g = m * scale
        elif m > 0:
            g = scale
        else:
            g = scale - scale
        if k - i * dim == int(label[i]):
            dx[k] = -g
        else:
            dx[k] = g


def hinge_forward(x, label, margin, num, dim, squared, out):
    """Fill ``margin``; returns (sum of margin or margin^2, bad position or -1)."""
    if num * dim == 0:
        return 0.0, -1
    _hinge_forward[1, ONE_BLOCK](x, label, margin, num, dim, bool(squared), out)
    total, _, bad = _read(out)
    return total, bad


def hinge_backward(margin, label, dx, num, dim, squared, scale):
    n = num * dim
    if n:
        _hinge_backward[grid(n)](margin, label, dx, num, dim, bool(squared), scalar(scale, dx.dtype))


# --- SigmoidCrossEntropyLoss -------------------------------------------------------------------

@cuda.jit(device=True)
def _ignored(t, has_ignore, ignore_label):
    return has_ignore and -_INT_LIMIT < t < _INT_LIMIT and int(t) == ignore_label


@jit
def _sigmoid_ce_forward(x, target, n, has_ignore, ignore_label, out):
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    count_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    loss = 0.0
    count = 0.0
    for i in range(tid, n, ONE_BLOCK):
        t = numba.float64(target[i])
        if _ignored(t, has_ignore, ignore_label):
            continue
        v = numba.float64(x[i])
        pos = 1.0 if v >= 0 else 0.0
        loss -= v * (t - pos) - math.log(1.0 + math.exp(v - 2.0 * v * pos))
        count += 1.0
    loss_part[tid] = loss
    count_part[tid] = count
    _block_sum(loss_part, tid)
    _block_sum(count_part, tid)
    if tid == 0:
        out[0] = loss_part[0]
        out[1] = count_part[0]
        out[2] = -1.0


@jit
def _sigmoid_ce_backward(x, target, dx, n, has_ignore, ignore_label, scale):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        t = numba.float64(target[i])
        if _ignored(t, has_ignore, ignore_label):
            dx[i] = 0
        else:
            s = 0.5 * math.tanh(0.5 * numba.float64(x[i])) + 0.5
            dx[i] = (s - t) * scale


def sigmoid_ce_forward(x, target, n, has_ignore, ignore_label, out):
    """Returns (loss sum, valid count)."""
    if n == 0:
        return 0.0, 0
    _sigmoid_ce_forward[1, ONE_BLOCK](x, target, n, bool(has_ignore), int(ignore_label), out)
    loss, valid, _ = _read(out)
    return loss, valid


def sigmoid_ce_backward(x, target, dx, n, has_ignore, ignore_label, scale):
    if n:
        _sigmoid_ce_backward[grid(n)](x, target, dx, n, bool(has_ignore), int(ignore_label), float(scale))


# --- MultinomialLogisticLoss --------------------------------------------------------------------

@jit
def _multinomial_forward(prob, label, num, dim, threshold, out):
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    bad_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    loss = 0.0
    bad = math.inf
    for i in range(tid, num, ONE_BLOCK):
        raw = numba.float64(label[i])
        if _bad_label(raw, dim):
            if i < bad:
                bad = i
            continue
        loss -= math.log(_at_least(numba.float64(prob[i * dim + int(raw)]), threshold))
    loss_part[tid] = loss
    bad_part[tid] = bad
    _block_sum(loss_part, tid)
    _block_min(bad_part, tid)
    if tid == 0:
        out[0] = loss_part[0]
        out[1] = 0.0
        out[2] = bad_part[0] if bad_part[0] < math.inf else -1.0


@jit
def _multinomial_backward(prob, label, dx, num, dim, threshold, scale):
    for k in range(cuda.grid(1), num * dim, cuda.gridsize(1)):
        i = k // dim
        if k - i * dim == int(label[i]):
            dx[k] = scale / _at_least(prob[k], threshold)
        else:
            dx[k] = 0


def multinomial_forward(prob, label, num, dim, threshold, out):
    """Returns (loss sum, bad position or -1)."""
    if num == 0:
        return 0.0, -1
    _multinomial_forward[1, ONE_BLOCK](prob, label, num, dim, float(threshold), out)
    loss, _, bad = _read(out)
    return loss, bad


def multinomial_backward(prob, label, dx, num, dim, threshold, scale):
    n = num * dim
    if n:
        _multinomial_backward[grid(n)](prob, label, dx, num, dim, scalar(threshold, dx.dtype),
                                       scalar(scale, dx.dtype))


# --- ContrastiveLoss ------------------------------------------------------------------------------

@cuda.jit(device=True)
def _similar(y):
    return not (-1 < y < 1)


@jit
def _contrastive_forward(a, b, y, diff, dist_sq, num, channels, margin, legacy, out):
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    loss = 0.0
    for i in range(tid, num, ONE_BLOCK):
        total = 0.0
        for c in range(channels):
            k = i * channels + c
            d = a[k] - b[k]
            diff[k] = d
            total += d * d
        dist_sq[i] = total
        d2 = numba.float64(dist_sq[i])
        if _similar(y[i]):
            loss += d2
        elif legacy:
            loss += _relu(margin - d2)
        else:
            m = _relu(margin - math.sqrt(d2))
            loss += m * m
    loss_part[tid] = loss
    _block_sum(loss_part, tid)
    if tid == 0:
        out[0] = loss_part[0]
        out[1] = 0.0
        out[2] = -1.0


@jit
def _contrastive_backward(diff, dist_sq, y, dx, num, channels, margin, legacy, alpha, eps):
    for k in range(cuda.grid(1), num * channels, cuda.gridsize(1)):
        i = k // channels
        if _similar(y[i]):
            dx[k] = alpha * diff[k]
        else:
            if legacy:
                mdist = margin - dist_sq[i]
                beta = -alpha
            else:
                dist = math.sqrt(dist_sq[i])
                mdist = margin - dist
                beta = -alpha * mdist / (dist + eps)
            if mdist > 0:
                dx[k] = beta * diff[k]          # Caffe's CUDA kernel drops diff[k] in the legacy case: a bug
            else:
                dx[k] = 0


def contrastive_forward(a, b, y, diff, dist_sq, num, channels, margin, legacy, out):
    """Fill ``diff`` (a - b) and ``dist_sq``; returns the summed loss (before / N / 2)."""
    if num == 0:
        return 0.0
    _contrastive_forward[1, ONE_BLOCK](a, b, y, diff, dist_sq, num, channels, float(margin), bool(legacy), out)
    return _read(out)[0]


def contrastive_backward(diff, dist_sq, y, dx, num, channels, margin, legacy, alpha, eps):
    n = num * channels
    if n:
        dt = dx.dtype
        _contrastive_backward[grid(n)](diff, dist_sq, y, dx, num, channels, scalar(margin, dt), bool(legacy),
                                       scalar(alpha, dt), scalar(eps, dt))


# --- InfogainLoss ---------------------------------------------------------------------------------

@jit
def _row_sums(H, n, out):
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        total = H[r * n] * 0
        for c in range(n):
            total += H[r * n + c]
        out[r] = total


@jit
def _infogain_forward(prob, label, H, outer, channels, inner, has_ignore, ignore_label, threshold, out):
    loss_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    count_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    bad_part = cuda.shared.array(ONE_BLOCK, numba.float64)
    tid = cuda.threadIdx.x
    dim = channels * inner
    loss = 0.0
    count = 0.0
    bad = math.inf
    for t in range(tid, outer * inner, ONE_BLOCK):
        raw = numba.float64(label[t])
        if -_INT_LIMIT < raw < _INT_LIMIT and has_ignore and int(raw) == ignore_label:
            continue
        if _bad_label(raw, channels):
            if t < bad:
                bad = t
            continue
        value = int(raw)
        i = t // inner
        j = t - i * inner
        for c in range(channels):
            p = numba.float64(prob[i * dim + c * inner + j])
            loss -= numba.float64(H[value * channels + c]) * math.log(_at_least(p, threshold))
        count += 1.0
    loss_part[tid] = loss
    count_part[tid] = count
    bad_part[tid] = bad
    _block_sum(loss_part, tid)
    _block_sum(count_part, tid)
    _block_min(bad_part, tid)
    if tid == 0:
        out[0] = loss_part[0]
        out[1] = count_part[0]
        out[2] = bad_part[0] if bad_part[0] < math.inf else -1.0


@jit
def _infogain_backward(prob, label, H, sum_rows, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    dim = channels * inner
    for k in range(cuda.grid(1), outer * dim, cuda.gridsize(1)):
        i = k // dim
        r = k - i * dim
        c = r // inner
        j = r - c * inner
        value = int(label[i * inner + j])
        if has_ignore and value == ignore_label:
            dx[k] = 0
        else:
            dx[k] = (prob[k] * sum_rows[value] - H[value * channels + c]) * scale


def row_sums(H, n, out):
    """out[r] = sum of row r of the n x n matrix H (flat device arrays)."""
    if n:
        _row_sums[grid(n)](H, n, out)


def infogain_forward(prob, label, H, outer, channels, inner, has_ignore, ignore_label, threshold, out):
    """Returns (loss sum, valid count, first bad label position or -1)."""
    if outer * inner == 0:
        return 0.0, 0, -1
    _infogain_forward[1, ONE_BLOCK](prob, label, H, outer, channels, inner, bool(has_ignore), int(ignore_label),
                                    float(threshold), out)
    return _read(out)


def infogain_backward(prob, label, H, sum_rows, dx, outer, channels, inner, has_ignore, ignore_label, scale):
    n = outer * channels * inner
    if n:
        _infogain_backward[grid(n)](prob, label, H, sum_rows, dx, outer, channels, inner, bool(has_ignore),
                                    int(ignore_label), scalar(scale, dx.dtype))
