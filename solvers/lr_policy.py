"""Learning-rate policies: Caffe's SGDSolver::GetLearningRate.

``iter`` is the number of updates done so far (the solver's ``iter``); the
rate returned is the one the update of that iteration uses.

==========  ===================================================================
fixed       ``base_lr``
step        ``base_lr * gamma ^ floor(iter / stepsize)``
exp         ``base_lr * gamma ^ iter``
inv         ``base_lr * (1 + gamma * iter) ^ (-power)``
multistep   ``base_lr * gamma ^ current_step``; ``current_step`` moves on by one
            (at most one per call) once ``iter >= stepvalue[current_step]``
poly        ``base_lr * (1 - iter / max_iter) ^ power``
sigmoid     ``base_lr / (1 + exp(-gamma * (iter - stepsize)))``
==========  ===================================================================

``step`` and ``multistep`` keep ``current_step``, which a ``.solverstate``
stores so a resumed run continues the schedule where it stopped.
"""
import math

from dlcore.errors import ConfigError

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

__all__ = ["POLICIES", "LearningRatePolicy", "learning_rate", "check_lr_policy"]


def check_lr_policy(param, where=None):
    """Raise ConfigError where Caffe's GetLearningRate would CHECK-fail.

    ``where(field)`` gives location keywords (path, line) for an error.
    """
    where = where or (lambda field: {})
    policy = param.lr_policy

    def fail(message, field):
        raise ConfigError(message, field=field, **where(field))

    if not param.HasField("lr_policy"):
        fail("lr_policy is not set; use one of " + ", ".join(POLICIES), "lr_policy")
    if policy not in POLICIES:
        fail(f"unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})", "lr_policy")
    if policy in ("step", "exp", "inv", "multistep") and param.gamma < 0:
        fail(f"lr_policy '{policy}' needs gamma >= 0 (got {param.gamma:g})", "gamma")
    if policy == "step" and param.stepsize <= 0:
        fail(f"lr_policy 'step' needs stepsize > 0 (got {param.stepsize})", "stepsize")


def _pow(base, exponent):
    """C's pow: NaN for a negative base with a fractional exponent, inf on overflow."""
    try:
        return math.pow(base, exponent)
    except ValueError:
        return math.nan
    except OverflowError:
        return math.inf


def _exp(x):
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def learning_rate(param, iter, current_step=0):
    """(rate, new current_step) at iteration ``iter``: a pure function of its inputs.

    ``current_step`` matters for ``multistep`` only (and is recomputed for
    ``step``); every other policy returns it unchanged.
    """
    policy = param.lr_policy
    base_lr = param.base_lr
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = iter // param.stepsize
        rate = base_lr * _pow(param.gamma, current_step)
    elif policy == "exp":
        rate = base_lr * _pow(param.gamma, iter)
    elif policy == "inv":
        rate = base_lr * _pow(1.0 + param.gamma * iter, -param.power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iter >= param.stepvalue[current_step]:
            current_step += 1
        rate = base_lr * _pow(param.gamma, current_step)
    elif policy == "poly":
        fraction = iter / param.max_iter if param.max_iter else math.inf
        rate = base_lr * _pow(1.0 - fraction, param.power)
    elif policy == "sigmoid":
        rate = base_lr * (1.0 / (1.0 + _exp(-param.gamma * (iter - param.stepsize))))
    else:
        raise ConfigError(f"unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})", field="lr_policy")
    return rate, current_step


class LearningRatePolicy:
    """The solver's schedule: ``rate(iter)`` once per iteration (it may move
    ``current_step`` on, as Caffe's does); ``peek(iter)`` without side effects."""

    def __init__(self, param, where=None):
        check_lr_policy(param, where)
        self.param = param
        self.current_step = 0

    def rate(self, iter):
        """The rate for the update of iteration ``iter``; returns (rate, log message or None)."""
        before = self.current_step
        rate, self.current_step = learning_rate(self.param, iter, self.current_step)
        message = None
        if self.param.lr_policy == "multistep" and self.current_step != before:
            message = f"MultiStep Status: Iteration {iter}, step = {self.current_step}"
        return rate, message

    def peek(self, iter):
        return learning_rate(self.param, iter, self.current_step)[0]
