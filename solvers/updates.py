"""Update rules: Caffe's SGDSolver family, one Numba kernel per rule.

Each kernel does, per element and in Caffe's order, everything the solver
does to one learnable parameter between backward and ``Net::Update``:

1. clip: ``g *= clip_scale`` (the global-L2-norm scale of ClipGradients,
   applied when it is < 1);
2. Normalize: ``g *= 1/iter_size`` (only when iter_size > 1);
3. Regularize: L2 ``g = local_decay*w + g``, L1 ``g = local_decay*sign(w) + g``
   (``local_decay = weight_decay * decay_mult``; skipped when 0);
4. ComputeUpdateValue: the rule below writes the update value into ``g``
   (the param's diff) and updates the history in place.

With ``apply`` the kernel also applies the update (``w -= g``, Caffe's
``Net::Update``) in the same pass: elements are independent, so this is
exactly Caffe's "compute every update value, then update" and saves a pass
over memory.  A non-finite update value is never applied; the kernel then
returns True (the solver stops with an error).  Without ``apply``,
:func:`apply_update` applies it later (for debug_info's ``[Update]``
lines, which show the weights before the update).  Every scalar is passed
in the arrays' dtype, so float32 training does float32 arithmetic as
Caffe's ``Dtype`` code does.

Rules (``lr = rate * lr_mult``; history blobs in Caffe's order: the
second set, where there is one, follows the first for all parameters):

- SGD:      ``h = m*h + lr*g;  g = h``
- Nesterov: ``h' = m*h + lr*g;  g = (1+m)*h' - m*h``
- AdaGrad:  ``h += g^2;  g = lr * g / (sqrt(h) + delta)``
- RMSProp:  ``h = d*h + (1-d)*g^2;  g = lr * g / (sqrt(h) + delta)``
- AdaDelta: ``h1 = m*h1 + (1-m)*g^2;  u = g * sqrt((h2 + delta) / (h1 + delta));
  h2 = m*h2 + (1-m)*u^2;  g = lr*u``
- Adam:     ``m1 = b1*m1 + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
  g = lr * sqrt(1-b2^t)/(1-b1^t) * m1 / (sqrt(v) + delta)``, ``t = iter + 1``
"""
import numpy as np
from numba import njit

__all__ = ["REG_NONE", "REG_L2", "REG_L1", "sgd_update", "nesterov_update", "adagrad_update",
           "rmsprop_update", "adadelta_update", "adam_update", "apply_update", "sumsq"]

REG_NONE, REG_L2, REG_L1 = 0, 1, 2


@njit(cache=True, inline="always")
def _gradient(g, w, clip_scale, do_clip, norm, do_norm, decay, reg):
    """Steps 1-3 for one element: the regularized, normalized, clipped gradient."""
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


@njit(cache=True)
def sgd_update(w, g, h, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, momentum):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = momentum * h[i]
        hi = local_rate * gi + hi
        h[i] = hi
        g[i] = hi
        if np.isfinite(hi):
            if apply:
                w[i] = w[i] - hi
        else:
            bad = True
    return bad


@njit(cache=True)
def nesterov_update(w, g, h, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, momentum,
                    one_plus_momentum):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        old = h[i]
        hi = momentum * old
        hi = local_rate * gi + hi
        h[i] = hi
        step_back = -momentum * old
        u = one_plus_momentum * hi + step_back
        g[i] = u
        if np.isfinite(u):
            if apply:
                w[i] = w[i] - u
        else:
            bad = True
    return bad


@njit(cache=True)
def adagrad_update(w, g, h, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, delta):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = gi * gi + h[i]
        h[i] = hi
        u = np.sqrt(hi) + delta
        u = gi / u
        u = local_rate * u
        g[i] = u
        if np.isfinite(u):
            if apply:
                w[i] = w[i] - u
        else:
            bad = True
    return bad


@njit(cache=True)
def rmsprop_update(w, g, h, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, rms_decay,
                   one_minus_decay, delta):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = rms_decay * h[i]
        hi = one_minus_decay * (gi * gi) + hi
        h[i] = hi
        u = np.sqrt(hi) + delta
        u = gi / u
        u = local_rate * u
        g[i] = u
        if np.isfinite(u):
            if apply:
                w[i] = w[i] - u
        else:
            bad = True
    return bad


@njit(cache=True)
def adadelta_update(w, g, h, h2, apply, clip_scale, do_clip, norm, do_norm, decay, reg, local_rate, momentum,
                    one_minus_momentum, delta):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        hi = momentum * h[i]
        hi = one_minus_momentum * (gi * gi) + hi
        h[i] = hi
        u = delta + h2[i]
        t = delta + hi
        u = u / t
        u = np.sqrt(u)
        gi = gi * u
        h2i = momentum * h2[i]
        h2i = one_minus_momentum * (gi * gi) + h2i
        h2[i] = h2i
        gi = local_rate * gi
        g[i] = gi
        if np.isfinite(gi):
            if apply:
                w[i] = w[i] - gi
        else:
            bad = True
    return bad


@njit(cache=True)
def adam_update(w, g, m, v, apply, clip_scale, do_clip, norm, do_norm, decay, reg, rate_correction, beta1,
                one_minus_beta1, beta2, one_minus_beta2, eps_hat):
    bad = False
    for i in range(w.size):
        gi = _gradient(g[i], w[i], clip_scale, do_clip, norm, do_norm, decay, reg)
        mi = beta1 * m[i]
        mi = one_minus_beta1 * gi + mi
        m[i] = mi
        vi = beta2 * v[i]
        vi = one_minus_beta2 * (gi * gi) + vi
        v[i] = vi
        t = np.sqrt(vi) + eps_hat
        t = mi / t
        u = rate_correction * t
        g[i] = u
        if np.isfinite(u):
            if apply:
                w[i] = w[i] - u
        else:
            bad = True
    return bad


@njit(cache=True)
def apply_update(w, g):
    """Net::Update for one parameter: ``w -= g``."""
    for i in range(w.size):
        w[i] = w[i] - g[i]


@njit(cache=True)
def sumsq(a):
    """Sum of squares, accumulated in float64."""
    s = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        s += x * x
    return s
