"""The solver types: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Each is Caffe's class of the same name: the loop of :class:`Solver` with
the update rule of :mod:`dltrain.solvers.updates` (``rule``) and that rule's
scalars (``hyper_parameters``: its record, in the param's dtype).
``history`` holds Caffe's history blobs in Caffe's order (Adam: all first
moments, then all second moments; AdaDelta: all squared-gradient averages,
then all squared-update averages), so ``.solverstate`` files are
interchangeable with Caffe's.
"""
import math

from . import updates
from .solver import Solver

__all__ = ["SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "SOLVERS"]


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: ``h = m*h + lr*g; w -= h``."""

    type = "SGD"
    rule = "sgd"
    takes_momentum = True       # AdaGrad and RMSProp refuse a momentum (Caffe's constructor_sanity_check)

    uses_delta = False          # AdaGrad, RMSProp, AdaDelta, Adam divide by a term that delta keeps off zero

    def check_solver_param(self):
        if not self.takes_momentum and self.param.momentum != 0:
            self._fail(f"momentum cannot be used with {self.type} (set it to 0 or leave it out)", "momentum")
        if self.uses_delta and not self.param.delta > 0:
            self._fail(f"delta must be positive for {self.type} (got {self.param.delta:g}): it keeps the update's "
                       "denominator off zero", "delta")

    def _local_rate(self, param_id, rate):
        """rate * lr_mult, in the dtype."""
        dt = self.dtype.type
        return dt(dt(rate) * dt(self.net.params_lr[param_id]))

    def _one_minus(self, x):
        """1 - x, in the dtype."""
        dt = self.dtype.type
        return dt(dt(1) - x)

    def _with_decay(self, record, param_id, rate, decay):
        """``record(local_rate, decay, 1 - decay, delta)``: RMSProp's and AdaDelta's scalars."""
        decay = self._cast(decay)
        return record(self._local_rate(param_id, rate), decay, self._one_minus(decay), self._cast(self.param.delta))

    def hyper_parameters(self, param_id, rate):
        return updates.SGD(self._local_rate(param_id, rate), self._cast(self.param.momentum))


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: ``h' = m*h + lr*g; w -= (1+m)*h' - m*h``."""

    type = "Nesterov"
    rule = "nesterov"

    def hyper_parameters(self, param_id, rate):
        dt = self.dtype.type
        momentum = dt(self.param.momentum)
        return updates.Nesterov(self._local_rate(param_id, rate), momentum, dt(dt(1) + momentum))


class AdaGradSolver(SGDSolver):
    """AdaGrad: ``h += g^2; w -= lr * g / (sqrt(h) + delta)``."""

    type = "AdaGrad"
    uses_delta = True
    rule = "adagrad"
    takes_momentum = False

    def hyper_parameters(self, param_id, rate):
        return updates.AdaGrad(self._local_rate(param_id, rate), self._cast(self.param.delta))


class RMSPropSolver(SGDSolver):
    """RMSProp: ``h = d*h + (1-d)*g^2; w -= lr * g / (sqrt(h) + delta)`` (d = rms_decay)."""

    type = "RMSProp"
    uses_delta = True
    rule = "rmsprop"
    takes_momentum = False

    def check_solver_param(self):
        super().check_solver_param()
        if not 0 <= self.param.rms_decay <= 1:
            self._fail(f"rms_decay must lie between 0 and 1 (got {self.param.rms_decay:g})", "rms_decay")

    def hyper_parameters(self, param_id, rate):
        return self._with_decay(updates.RMSProp, param_id, rate, self.param.rms_decay)


class AdaDeltaSolver(SGDSolver):
    """AdaDelta (Zeiler 2012) with Caffe's ``momentum`` as the decay and ``delta`` as epsilon."""

    type = "AdaDelta"
    uses_delta = True
    rule = "adadelta"

    def hyper_parameters(self, param_id, rate):
        return self._with_decay(updates.AdaDelta, param_id, rate, self.param.momentum)


class AdamSolver(SGDSolver):
    """Adam (Kingma & Ba 2014): ``momentum`` is beta1, ``momentum2`` beta2, ``delta`` epsilon."""

    type = "Adam"
    uses_delta = True
    rule = "adam"

    def hyper_parameters(self, param_id, rate):
        beta1, beta2 = self._cast(self.param.momentum), self._cast(self.param.momentum2)
        t = self.iter + 1
        denominator = 1.0 - math.pow(float(beta1), t)
        numerator = math.sqrt(max(1.0 - math.pow(float(beta2), t), 0.0))
        correction = self._cast(numerator / denominator if denominator else math.inf)
        return updates.Adam(self._cast(self._local_rate(param_id, rate) * correction), beta1, self._one_minus(beta1),
                            beta2, self._one_minus(beta2), self._cast(self.param.delta))


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                                     AdamSolver)}
