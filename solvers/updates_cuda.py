"""The update rules on the GPU: solvers/updates.py's kernels as CUDA kernels.

Same steps, same order, same arithmetic as the CPU kernels (clip scale,
1/iter_size, L2 or L1 regularization, then the rule; every scalar in the
data's dtype), one thread per element, on the parameter's, its gradient's
and its history's device arrays, which never leave the device.  A
non-finite update value is never applied; the kernel then sets
``flags[param_id]`` and the solver, which reads the flags once per
iteration, stops with its usual error.  The gradient norm of
clip_gradients is a device reduction (float64) read back as one number.
"""
import math

from numba import cuda

from dlcore import device as K
from dlcore.device import grid, jit

__all__ = ["RULES", "update", "apply_update", "sumsq_total", "new_flags", "reset_flags", "bad_params"]


@cuda.jit(device=True, inline=True)
def _gradient(g, w, clip_scale, do_clip, norm, do_norm, decay, reg):
    if do_clip:
        g = g * clip_scale
    if do_norm:
        g = g * norm
    if reg == 1:
        g = decay * w + g
    elif reg == 2:
        if w > 0:
            g = decay + g
        elif w < 0:
            g = -decay + g
    return g


@cuda.jit(device=True, inline=True)
def _finite(x):
    return not (math.isinf(x) or math.isnan(x))


@cuda.jit(device=True, inline=True)
def _store(w, g, i, u, apply, flags, pid):
    """Keep the update value in the diff (as Caffe does) and subtract it from the
    weight when ``apply``; a non-finite value is never applied, it flags the parameter."""
    g[i] = u
    if _finite(u):
        if apply:
            w[i] = w[i] - u
    else:
        flags[pid] = 1


@jit
def _sgd(w, g, h, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, momentum):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = momentum * h[i]
        hi = local_rate * gi + hi
        h[i] = hi
        _store(w, g, i, hi, apply, flags, pid)


@jit
def _nesterov(w, g, h, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, momentum,
              one_plus_momentum):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        old = h[i]
        hi = momentum * old
        hi = local_rate * gi + hi
        h[i] = hi
        step_back = -momentum * old
        u = one_plus_momentum * hi + step_back
        _store(w, g, i, u, apply, flags, pid)


@jit
def _adagrad(w, g, h, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, delta):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = gi * gi + h[i]
        h[i] = hi
        u = math.sqrt(hi) + delta
        u = gi / u
        u = local_rate * u
        _store(w, g, i, u, apply, flags, pid)


@jit
def _rmsprop(w, g, h, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, rms_decay,
             one_minus_decay, delta):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = rms_decay * h[i]
        hi = one_minus_decay * (gi * gi) + hi
        h[i] = hi
        u = math.sqrt(hi) + delta
        u = gi / u
        u = local_rate * u
        _store(w, g, i, u, apply, flags, pid)


@jit
def _adadelta(w, g, h, h2, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate,
              momentum, one_minus_momentum, delta):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = momentum * h[i]
        hi = one_minus_momentum * (gi * gi) + hi
        h[i] = hi
        u = delta + h2[i]
        t = delta + hi
        u = u / t
        u = math.sqrt(u)
        gi = gi * u
        h2i = momentum * h2[i]
        h2i = one_minus_momentum * (gi * gi) + h2i
        h2[i] = h2i
        gi = local_rate * gi
        _store(w, g, i, gi, apply, flags, pid)


@jit
def _adam(w, g, m, v, n, flags, pid, apply, clip_scale, do_clip, norm, do_norm, decay, reg, rate_correction, beta1,
          one_minus_beta1, beta2, one_minus_beta2, eps_hat):
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        mi = beta1 * m[i]
        mi = one_minus_beta1 * gi + mi
        m[i] = mi
        vi = beta2 * v[i]
        vi = one_minus_beta2 * (gi * gi) + vi
        v[i] = vi
        t = math.sqrt(vi) + eps_hat
        t = mi / t
        u = rate_correction * t
        _store(w, g, i, u, apply, flags, pid)


RULES = {"sgd": _sgd, "nesterov": _nesterov, "adagrad": _adagrad, "rmsprop": _rmsprop, "adadelta": _adadelta,
         "adam": _adam}


def update(rule, w, g, histories, n, flags, param_id, common, extra):
    """Run one rule's kernel over a parameter's ``n`` elements (device arrays w, g, histories).

    ``common``: (apply, clip_scale, do_clip, norm, do_norm, decay, reg) as the
    CPU kernels take them; ``extra``: the rule's own scalars.
    """
    if n:
        RULES[rule][grid(n)](w, g, *histories, n, flags, param_id, *common, *extra)


def apply_update(w, g, n):
    """Net::Update for one parameter: w -= g."""
    K.axpby(-1.0, g, 1.0, w, n)


def sumsq_total(arrays_and_counts):
    """The sum of squares of several device arrays, as one Python float (one copy back)."""
    out = K.device_zeros(1, "float64")
    for array, n in arrays_and_counts:
        K.reduce_sum(array, out, 0, n, squares=True)
    return float(out.copy_to_host()[0])


def new_flags(count):
    return K.device_zeros(max(count, 1), "int32")


def reset_flags(flags):
    K.fill(flags, 0)


def bad_params(flags, count):
    """The parameter ids whose update was not finite."""
    host = flags.copy_to_host()[:count]
    return [int(i) for i in host.nonzero()[0]]
