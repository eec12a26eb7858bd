"""Finite-difference gradient checking, with Caffe's GradientChecker semantics.

Central differences ``(f(x+h) - f(x-h)) / 2h``; the RNG is reseeded before
every forward so stochastic layers (Dropout) repeat; an element passes when
``|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1)``;
inputs within ``kink +- kink_range`` are skipped (non-smooth points such as
ReLU at 0).  The objective is 1/2 sum(top^2) (``check_gradient``) or
2 * top[i][j] for each output element in turn (``check_gradient_exhaustive``).
"""
import numpy as np

from .blob import Blob
from .rng import set_random_seed


class GradientCheckError(AssertionError):
    pass


class GradientChecker:
    def __init__(self, stepsize=1e-2, threshold=1e-3, seed=1701, kink=0.0, kink_range=-1.0):
        self.stepsize = stepsize
        self.threshold = threshold
        self.seed = seed
        self.kink = kink
        self.kink_range = kink_range

    # --- public entry points (Caffe's names) ---------------------------------
    @staticmethod
    def _set_up(layer, bottom, top):
        # A float32 blob in a float64 check would pass with float32 accuracy: refuse it.
        for blob in list(bottom) + list(top):
            if blob.dtype != layer.dtype:
                raise ValueError(f"gradient check of a {layer.dtype} layer given a {blob.dtype} blob")
        layer.set_up(bottom, top)

    def check_gradient(self, layer, bottom, top, check_bottom=-1):
        self._set_up(layer, bottom, top)
        self._check_single(layer, bottom, top, check_bottom, -1, -1)

    def check_gradient_exhaustive(self, layer, bottom, top, check_bottom=-1):
        self._set_up(layer, bottom, top)
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self._check_single(layer, bottom, top, check_bottom, i, j)

    def check_gradient_eltwise(self, layer, bottom, top):
        """For element-wise layers: each output depends on its own input only."""
        self._set_up(layer, bottom, top)
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self._check_single(layer, bottom, top, -1, i, j, element_wise=True)

    # --- the check -------------------------------------------------------------
    def _forward(self, layer, bottom, top):
        set_random_seed(self.seed)
        layer.reshape(bottom, top)
        layer.forward(bottom, top)

    @staticmethod
    def _objective(top, top_id, top_data_id):
        if top_id < 0:
            loss = 0.0
            for blob in top:
                loss += float(np.dot(blob.data.ravel(), blob.data.ravel()))
                blob.diff[...] = blob.data
            return loss / 2.0
        for blob in top:
            blob.diff[...] = 0
        weight = 2.0
        top[top_id].diff.reshape(-1)[top_data_id] = weight
        return float(top[top_id].data.reshape(-1)[top_data_id]) * weight

    def _check_single(self, layer, bottom, top, check_bottom, top_id, top_data_id, element_wise=False):
        to_check, names = [], []
        for i, blob in enumerate(layer.blobs):
            blob.diff[...] = 0
            to_check.append(blob)
            names.append(f"param {i}")
        propagate_down = [check_bottom == -1] * len(bottom)
        if check_bottom == -1:
            to_check += list(bottom)
            names += [f"bottom {i}" for i in range(len(bottom))]
        elif check_bottom >= 0:
            to_check.append(bottom[check_bottom])
            names.append(f"bottom {check_bottom}")
            propagate_down[check_bottom] = True
        if not to_check:
            raise ValueError("no blobs to check")
        if element_wise and layer.blobs:
            raise ValueError("element-wise checking is for layers without parameters")

        self._forward(layer, bottom, top)
        self._objective(top, top_id, top_data_id)
        layer.backward(top, propagate_down, bottom)
        analytic = [blob.diff.copy().ravel() for blob in to_check]

        failures = []
        for blob, name, computed in zip(to_check, names, analytic):
            flat = blob.data.reshape(-1)
            for k in range(blob.count):
                estimated = 0.0
                if not element_wise or k == top_data_id:
                    original = flat[k]
                    flat[k] = original + self.stepsize
                    self._forward(layer, bottom, top)
                    plus = self._objective(top, top_id, top_data_id)
                    flat[k] = original - self.stepsize
                    self._forward(layer, bottom, top)
                    minus = self._objective(top, top_id, top_data_id)
                    flat[k] = original
                    estimated = (plus - minus) / self.stepsize / 2.0
                feature = abs(float(flat[k]))
                if self.kink - self.kink_range <= feature <= self.kink + self.kink_range:
                    continue
                got = float(computed[k])
                scale = max(abs(got), abs(estimated), 1.0)
                if abs(got - estimated) > self.threshold * scale:
                    failures.append((abs(got - estimated) / scale, name, k, got, estimated))
        if failures:
            failures.sort(reverse=True)
            where = "" if top_id < 0 else f" (objective: top {top_id} element {top_data_id})"
            lines = [f"layer '{layer.name}' ({layer.type}): {len(failures)} gradient element(s) "
                     f"off by more than {self.threshold} relative{where}; worst:"]
            for err, name, k, got, est in failures[:10]:
                lines.append(f"  {name}[{k}]: analytic {got:.6g}, numeric {est:.6g}, relative error {err:.3g}")
            raise GradientCheckError("\n".join(lines))


def make_blobs(shapes, dtype=np.float64, rng=None, low=-1.0, high=1.0):
    """Bottom blobs of the given shapes, filled uniformly at random."""
    rng = rng or np.random.default_rng(1701)
    blobs = []
    for shape in shapes:
        blob = Blob(*shape, dtype=dtype)
        blob.data[...] = rng.uniform(low, high, shape)
        blobs.append(blob)
    return blobs
