"""The solver types: SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam.

Each is Caffe's class of the same name: the loop of :class:`Solver` with
the update rule of :mod:`solvers.updates`.  ``history`` holds Caffe's
history blobs in Caffe's order (Adam: all first moments, then all second
moments; AdaDelta: all squared-gradient averages, then all squared-update
averages), so ``.solverstate`` files are interchangeable with Caffe's.
"""
import math

from .solver import Solver

__all__ = ["SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver",
           "SOLVERS"]


class SGDSolver(Solver):
    """Stochastic gradient descent with momentum: ``h = m*h + lr*g; w -= h``."""

    type = "SGD"

    def _local_rate(self, param_id, rate):
        dt = self.dtype.type
        return dt(dt(rate) * dt(self.net.params_lr[param_id]))

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        return self._run_update("sgd", param_id, clip_scale, apply, [self.history[param_id]],
                                (self._local_rate(param_id, rate), dt(self.param.momentum)))


class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient: ``h' = m*h + lr*g; w -= (1+m)*h' - m*h``."""

    type = "Nesterov"

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        momentum = dt(self.param.momentum)
        return self._run_update("nesterov", param_id, clip_scale, apply, [self.history[param_id]],
                                (self._local_rate(param_id, rate), momentum, dt(dt(1) + momentum)))


class AdaGradSolver(SGDSolver):
    """AdaGrad: ``h += g^2; w -= lr * g / (sqrt(h) + delta)``."""

    type = "AdaGrad"

    def check_solver_param(self):
        if self.param.momentum != 0:
            self._fail("momentum cannot be used with AdaGrad (set it to 0 or leave it out)", "momentum")

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        return self._run_update("adagrad", param_id, clip_scale, apply, [self.history[param_id]],
                                (self._local_rate(param_id, rate), dt(self.param.delta)))


class RMSPropSolver(SGDSolver):
    """RMSProp: ``h = d*h + (1-d)*g^2; w -= lr * g / (sqrt(h) + delta)`` (d = rms_decay)."""

    type = "RMSProp"

    def check_solver_param(self):
        if self.param.momentum != 0:
            self._fail("momentum cannot be used with RMSProp (set it to 0 or leave it out)", "momentum")
        if not 0 <= self.param.rms_decay <= 1:
            self._fail(f"rms_decay must lie between 0 and 1 (got {self.param.rms_decay:g})", "rms_decay")

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        decay = dt(self.param.rms_decay)
        return self._run_update("rmsprop", param_id, clip_scale, apply, [self.history[param_id]],
                                (self._local_rate(param_id, rate), decay, dt(dt(1) - decay), dt(self.param.delta)))


class AdaDeltaSolver(SGDSolver):
    """AdaDelta (Zeiler 2012) with Caffe's ``momentum`` as the decay and ``delta`` as epsilon."""

    type = "AdaDelta"
    history_sets = 2

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        n = len(self.net.learnable_params)
        momentum = dt(self.param.momentum)
        return self._run_update("adadelta", param_id, clip_scale, apply,
                                [self.history[param_id], self.history[n + param_id]],
                                (self._local_rate(param_id, rate), momentum, dt(dt(1) - momentum),
                                 dt(self.param.delta)))


class AdamSolver(SGDSolver):
    """Adam (Kingma & Ba 2014): ``momentum`` is beta1, ``momentum2`` beta2, ``delta`` epsilon."""

    type = "Adam"
    history_sets = 2

    def compute_update_value(self, param_id, rate, clip_scale=1.0, apply=False):
        dt = self.dtype.type
        n = len(self.net.learnable_params)
        beta1, beta2 = dt(self.param.momentum), dt(self.param.momentum2)
        t = self.iter + 1
        denominator = 1.0 - math.pow(float(beta1), t)
        numerator = math.sqrt(max(1.0 - math.pow(float(beta2), t), 0.0))
        correction = dt(numerator / denominator if denominator else math.inf)
        return self._run_update("adam", param_id, clip_scale, apply,
                                [self.history[param_id], self.history[n + param_id]],
                                (dt(self._local_rate(param_id, rate) * correction), beta1, dt(dt(1) - beta1), beta2,
                                 dt(dt(1) - beta2), dt(self.param.delta)))


SOLVERS = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver,
                                     AdamSolver)}
