"""Update rules: Caffe's SGDSolver family, each rule's math written once for the CPU and the GPU.

Per element and in Caffe's order, an update kernel does everything the
solver does to one learnable parameter between backward and ``Net::Update``:

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
sets ``flags[param_id]`` (the solver stops with an error).  Without
``apply``, :func:`apply_update` applies it later (for debug_info's
``[Update]`` lines, which show the weights before the update).  Every
scalar is passed in the arrays' dtype (the fields of :class:`GradientSteps`
and of the rule's record), so float32 training does float32 arithmetic as
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

Each step is a ``@formula`` below (:func:`gradient`, one per rule,
:func:`applied`), and the loop over the elements is written once
(:func:`update_loop`): here it is compiled with ``@njit`` over all elements,
in :mod:`dltrain.solvers.updates_cuda` with ``cuda.jit`` as a grid-stride kernel.
The two modules offer the same functions with the same arguments
(:func:`update`, :func:`apply_update`, :func:`sumsq_total`, the flags), on
host arrays here and on device arrays there.
"""
import math
from typing import NamedTuple

import numpy as np
from numba import njit

from dlcore.formula import formula

__all__ = ["REG_NONE", "REG_L2", "REG_L1", "GradientSteps", "SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta",
           "Adam", "RULES", "gradient", "sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "applied",
           "update_loop", "update", "apply_update", "sumsq", "sumsq_total", "new_flags", "reset_flags", "bad_params"]

# regularization_type, as the kernels see it (REG_NONE: no weight decay for this parameter)
REG_NONE, REG_L2, REG_L1 = 0, 1, 2


# --- the records: the kernels' scalars, in the data's dtype ----------------------------

class GradientSteps(NamedTuple):
    """Steps 1-3 of one parameter: clip, normalize, regularize."""
    clip_scale: float       # the global clip scale (applied when do_clip)
    do_clip: bool
    norm: float             # 1 / iter_size (applied when do_norm)
    do_norm: bool
    decay: float            # weight_decay * decay_mult
    reg: int                # REG_NONE, REG_L2 or REG_L1


class SGD(NamedTuple):
    local_rate: float       # rate * lr_mult
    momentum: float


class Nesterov(NamedTuple):
    local_rate: float
    momentum: float
    one_plus_momentum: float


class AdaGrad(NamedTuple):
    local_rate: float
    delta: float


class RMSProp(NamedTuple):
    local_rate: float
    rms_decay: float
    one_minus_decay: float
    delta: float


class AdaDelta(NamedTuple):
    local_rate: float
    momentum: float
    one_minus_momentum: float
    delta: float


class Adam(NamedTuple):
    rate_correction: float  # local_rate * sqrt(1 - beta2^t) / (1 - beta1^t)
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    eps_hat: float


# --- the formulas -----------------------------------------------------------------------

@formula
def gradient(g, w, steps):
    """Steps 1-3 for one element: the clipped, normalized, regularized gradient."""
    if steps.do_clip:
        g = g * steps.clip_scale
    if steps.do_norm:
        g = g * steps.norm
    if steps.reg == REG_L2:
        g = steps.decay * w + g
    elif steps.reg == REG_L1:
        if w > 0:
            g = steps.decay + g
        elif w < 0:
            g = -steps.decay + g
    return g


# Each rule: (the update value, the new history value(s)) from the gradient and the old history.

@formula
def sgd(g, h, r):
    h = r.momentum * h
    h = r.local_rate * g + h
    return h, h


@formula
def nesterov(g, h, r):
    new = r.momentum * h
    new = r.local_rate * g + new
    step_back = -r.momentum * h
    return r.one_plus_momentum * new + step_back, new


@formula
def adagrad(g, h, r):
    h = g * g + h
    u = math.sqrt(h) + r.delta
    u = g / u
    return r.local_rate * u, h


@formula
def rmsprop(g, h, r):
    h = r.rms_decay * h
    h = r.one_minus_decay * (g * g) + h
    u = math.sqrt(h) + r.delta
    u = g / u
    return r.local_rate * u, h


@formula
def adadelta(g, h, h2, r):
    h = r.momentum * h
    h = r.one_minus_momentum * (g * g) + h
    u = r.delta + h2
    t = r.delta + h
    u = u / t
    u = math.sqrt(u)
    g = g * u
    h2 = r.momentum * h2
    h2 = r.one_minus_momentum * (g * g) + h2
    return r.local_rate * g, h, h2


@formula
def adam(g, m, v, r):
    m = r.beta1 * m
    m = r.one_minus_beta1 * g + m
    v = r.beta2 * v
    v = r.one_minus_beta2 * (g * g) + v
    t = math.sqrt(v) + r.eps_hat
    t = m / t
    return r.rate_correction * t, m, v


@formula
def applied(w, u, apply):
    """Net::Update of one element: (whether the update value ``u`` is finite, the weight).

    The weight becomes ``w - u`` with ``apply``; a non-finite ``u`` is never
    applied (the caller flags the parameter)."""
    finite = math.isfinite(u)
    if finite and apply:
        w = w - u
    return finite, w


# rule name -> (formula, record, history blobs per parameter)
RULES = {"sgd": (sgd, SGD, 1), "nesterov": (nesterov, Nesterov, 1), "adagrad": (adagrad, AdaGrad, 1),
         "rmsprop": (rmsprop, RMSProp, 1), "adadelta": (adadelta, AdaDelta, 2), "adam": (adam, Adam, 2)}


# --- the loop, written once ---------------------------------------------------------------

def update_loop(rule, first, stride):
    """The update kernel of ``rule`` as a plain function, to compile for a device.

    ``kernel(w, g, h1, h2, n, flags, param_id, apply, steps, hyper)`` runs
    elements ``first(), first() + stride(), ...`` below ``n`` (the CPU: all of
    them; a CUDA grid: this thread's).  ``h2`` is the second history (a rule
    with one history ignores it: pass ``h1`` again; ``two`` is a constant of
    the closure, so Numba drops the branch not taken); ``steps`` a
    :class:`GradientSteps`, ``hyper`` the rule's record, both passed as plain
    tuples (:func:`update` converts them).  The weight is read
    once and written only where the update value is finite (a branch: an
    unconditional select-and-store made the CPU loop of Adam 5x slower).
    """
    fn, record, histories = RULES[rule]
    two = histories == 2

    def kernel(w, g, h1, h2, n, flags, param_id, apply, steps, hyper):
        # The records arrive as plain tuples (a NamedTuple argument costs Numba's dispatch ~4 us a call).
        steps = GradientSteps(*steps)
        hyper = record(*hyper)
        for i in range(first(), n, stride()):
            wi = w[i]
            gi = gradient(g[i], wi, steps)
            if two:
                u, h1[i], h2[i] = fn(gi, h1[i], h2[i], hyper)
            else:
                u, h1[i] = fn(gi, h1[i], hyper)
            g[i] = u
            finite, wi = applied(wi, u, apply)
            if finite:
                w[i] = wi
            else:
                flags[param_id] = 1
    kernel.__qualname__ = kernel.__name__ = f"{rule}_update"     # names the kernel and its cache files
    return kernel


@formula
def _first():
    return 0


@formula
def _stride():
    return 1


KERNELS = {rule: njit(cache=True)(update_loop(rule, _first, _stride)) for rule in RULES}


# --- what the solver calls (updates_cuda has the same functions for device arrays) ----------

def update(rule, w, g, histories, n, flags, param_id, apply, steps, hyper):
    """Run ``rule`` over a parameter's ``n`` elements (flat arrays ``w``, ``g``, its 1 or 2 histories)."""
    if n:
        KERNELS[rule](w, g, histories[0], histories[-1], n, flags, param_id, apply, tuple(steps), tuple(hyper))


@njit(cache=True)
def _subtract(w, g):
    for i in range(w.size):
        w[i] = w[i] - g[i]


def apply_update(w, g, n):
    """Net::Update for one parameter: ``w -= g``."""
    if n:
        _subtract(w[:n], g[:n])


@njit(cache=True)
def sumsq(a):
    """Sum of squares, accumulated in float64."""
    s = 0.0
    for i in range(a.size):
        x = np.float64(a[i])
        s += x * x
    return s


def sumsq_total(arrays_and_counts):
    """The sum of squares of several arrays, as one Python float."""
    total = 0.0
    for array, n in arrays_and_counts:
        total += sumsq(array[:n])
    return total


def new_flags(count):
    """One int32 per parameter: set by the kernels when an update value is not finite."""
    return np.zeros(max(count, 1), np.int32)


def reset_flags(flags):
    flags[:] = 0


def bad_params(flags, count):
    """The parameter ids whose update was not finite."""
    return [int(i) for i in np.flatnonzero(flags[:count])]
