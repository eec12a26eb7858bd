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
        self.report = CheckReport()

    # --- public entry points (Caffe's names) ---------------------------------
    @staticmethod
    def _initialize(layer, bottom, top):
        # A float32 blob in a float64 check would pass with float32 accuracy: refuse it.
        for blob in list(bottom) + list(top):
            if blob.dtype != layer.dtype:
                raise ValueError(f"gradient check of a {layer.dtype} layer given a {blob.dtype} blob")
        layer.initialize(bottom, top)

    def check_gradient(self, layer, bottom, top, check_bottom=-1):
        """Objective 1/2 sum(top^2).  ``check_bottom``: -1 for every bottom, an
        index, or a list of indices (parameters are always checked)."""
        self.report = CheckReport()
        self._initialize(layer, bottom, top)
        self._check_single(layer, bottom, top, check_bottom, -1, -1)

    def check_gradient_exhaustive(self, layer, bottom, top, check_bottom=-1):
        self.report = CheckReport()
        self._initialize(layer, bottom, top)
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self._check_single(layer, bottom, top, check_bottom, i, j)

    def check_gradient_eltwise(self, layer, bottom, top):
        """For element-wise layers: each output depends on its own input only."""
        self.report = CheckReport()
        self._initialize(layer, bottom, top)
        for i, blob in enumerate(top):
            for j in range(blob.count):
                self._check_single(layer, bottom, top, -1, i, j, element_wise=True)

    # --- the check -------------------------------------------------------------
    def _forward(self, layer, bottom, top):
        set_random_seed(self.seed)
        layer.run_reshape(bottom, top)
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
        if isinstance(check_bottom, (int, np.integer)):
            # Caffe's convention: -1 every bottom, i >= 0 bottom i, < -1 none.
            indices = range(len(bottom)) if check_bottom == -1 else [check_bottom] if check_bottom >= 0 else []
        else:
            indices = list(check_bottom)                          # a list of bottom indices
        propagate_down = [False] * len(bottom)
        for i in indices:
            to_check.append(bottom[i])
            names.append(f"bottom {i}")
            propagate_down[i] = True
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
            # blob.data is fetched again for every write: on the GPU a forward
            # makes the device side current, and a held host view would go stale.
            for k in range(blob.count):
                estimated = 0.0
                if not element_wise or k == top_data_id:
                    original = blob.data.reshape(-1)[k]
                    blob.data.reshape(-1)[k] = original + self.stepsize
                    self._forward(layer, bottom, top)
                    plus = self._objective(top, top_id, top_data_id)
                    blob.data.reshape(-1)[k] = original - self.stepsize
                    self._forward(layer, bottom, top)
                    minus = self._objective(top, top_id, top_data_id)
                    blob.data.reshape(-1)[k] = original
                    estimated = (plus - minus) / self.stepsize / 2.0
                feature = abs(float(blob.cpu_data().reshape(-1)[k]))
                if self.kink - self.kink_range <= feature <= self.kink + self.kink_range:
                    continue
                got = float(computed[k])
                scale = max(abs(got), abs(estimated), 1.0)
                relative = abs(got - estimated) / scale
                self.report.add(relative, name, _index(blob.shape, k), got, estimated)
                if abs(got - estimated) > self.threshold * scale:
                    failures.append((relative, name, k, got, estimated, _index(blob.shape, k)))
        if failures:
            failures.sort(key=lambda f: f[0], reverse=True)
            self.report.failures += len(failures)
            where = "" if top_id < 0 else f" (objective: top {top_id} element {top_data_id})"
            lines = [f"layer '{layer.name}' ({layer.type}): {len(failures)} gradient element(s) "
                     f"off by more than {self.threshold} relative{where}; worst:"]
            for err, name, k, got, est, index in failures[:10]:
                lines.append(f"  {name}[{k}] {index}: analytic {got:.6g}, numeric {est:.6g}, "
                             f"relative error {err:.3g}")
            raise GradientCheckError("\n".join(lines))


def _index(shape, k):
    """The N-D index of flat element ``k``, as '(0, 2, 1)'."""
    if not shape:
        return "()"
    return str(tuple(int(i) for i in np.unravel_index(k, shape)))


class CheckReport:
    """What a check compared: elements checked, the worst one, failures."""

    def __init__(self):
        self.checked = 0
        self.failures = 0
        self.worst = None            # (relative error, blob name, index, analytic, numeric)
        self.per_blob = {}           # blob name -> elements checked

    def add(self, relative, name, index, analytic, numeric):
        self.checked += 1
        self.per_blob[name] = self.per_blob.get(name, 0) + 1
        if self.worst is None or relative > self.worst[0]:
            self.worst = (relative, name, index, analytic, numeric)

    @property
    def passed(self):
        return self.failures == 0

    def __repr__(self):
        return f"CheckReport(checked={self.checked}, failures={self.failures}, worst={self.worst})"


def make_blobs(shapes, dtype=np.float64, rng=None, low=-1.0, high=1.0):
    """Bottom blobs of the given shapes, filled uniformly at random."""
    rng = rng or np.random.default_rng(1701)
    blobs = []
    for shape in shapes:
        blob = Blob(*shape, dtype=dtype)
        blob.data[...] = rng.uniform(low, high, shape)
        blobs.append(blob)
    return blobs


# --- checking one layer from its definition ----------------------------------------------------
def layer_param_from(definition, fmt=None, layer_name=None, source=None):
    """A LayerParameter from prototxt/YAML text, a file path, a LayerParameter,
    or a NetParameter (or ``layer { ... }`` text) holding one layer (or the
    one named ``layer_name``).  Returns (LayerParameter, path or None)."""
    import os
    import re

    from dltrain.proto import caffe_pb2

    from .config import message_from_string
    from .errors import ConfigError
    path = source
    if isinstance(definition, os.PathLike) or (
            isinstance(definition, str) and "\n" not in definition and os.path.isfile(definition)):
        path = os.fspath(definition)
        with open(path, encoding="utf-8") as f:
            definition = f.read()
        if fmt is None:
            fmt = "yaml" if path.endswith((".yaml", ".yml")) else "prototxt"
    fmt = fmt or "prototxt"
    if isinstance(definition, caffe_pb2.LayerParameter):
        return definition, path
    if isinstance(definition, caffe_pb2.NetParameter):
        net = definition
    else:
        name = path or "<layer definition>"
        # A whole net (or `layer { ... }`) has a top-level `layer` key; a bare layer has `type`.
        if not re.search(r"^\s*layers?\s*[:{]", definition, re.MULTILINE) or \
                re.search(r"^type\s*:", definition, re.MULTILINE):
            return message_from_string(definition, caffe_pb2.LayerParameter, fmt, filename=name), path
        net = message_from_string(definition, caffe_pb2.NetParameter, fmt, filename=name)
    layers = [lp for lp in net.layer if layer_name is None or lp.name == layer_name]
    if layer_name is not None and not layers:
        raise ConfigError(f"no layer named '{layer_name}' (layers: {', '.join(lp.name for lp in net.layer)})",
                          path=path)
    if len(layers) != 1:
        raise ConfigError(f"expected one layer definition, found {len(layers)}"
                          + ("; name one with layer_name / --layer" if layers else ""), path=path)
    if not layers[0].type:
        raise ConfigError("the layer definition has no type", path=path)
    return layers[0], path


def check_layer(definition, bottom_shapes, stepsize=1e-2, threshold=1e-3, seed=1701, kink=0.0,
                kink_range=-1.0, exhaustive=False, check_bottom=None, integer_bottoms=None,
                fill=(-1.0, 1.0), phase=None, fmt=None, layer_name=None, source=None, bottom_data=None):
    """Check a layer's gradients by finite differences, in float64, as Caffe's GradientChecker.

    ``definition``: the layer as prototxt or YAML text (``type: "Gram"
    python_param { ... }``, or wrapped in ``layer { }``), a file path, or
    a LayerParameter.  ``bottom_shapes``: one shape per bottom.  Bottoms are
    filled uniformly in ``fill`` (from ``seed``), except those in
    ``integer_bottoms`` ({index: n}: integers 0..n-1, labels), which are not
    checked; ``bottom_data`` ({index: array}) gives values outright.
    ``check_bottom``: None for every non-integer bottom, or a list of indices.
    Parameters (``layer.blobs``) are always checked.  ``exhaustive`` checks
    each output element's gradient in turn (Caffe's CheckGradientExhaustive).

    Returns a :class:`CheckReport`; raises :class:`GradientCheckError`
    (listing the worst elements) when an element is off by more than
    ``threshold * max(|analytic|, |numeric|, 1)``.  Python layers are looked
    up beside ``source`` (the definition's file) as beside a net file.
    """
    from dltrain.proto import caffe_pb2

    from .errors import ConfigError
    from .layer import TRAIN
    from .registry import get_layer_class
    param, path = layer_param_from(definition, fmt, layer_name, source)
    copy = caffe_pb2.LayerParameter()
    copy.CopyFrom(param)
    param = copy
    if phase is not None:
        param.phase = phase
    elif not param.HasField("phase"):
        param.phase = TRAIN
    if not param.name:
        param.name = param.type.lower()
    integer_bottoms = dict(integer_bottoms or {})
    bottom_data = dict(bottom_data or {})
    shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
    if param.bottom and len(param.bottom) != len(shapes):
        raise ConfigError(f"layer '{param.name}' names {len(param.bottom)} bottoms; {len(shapes)} bottom shapes "
                          "were given", path=path)
    for i in list(integer_bottoms) + list(bottom_data):
        if not 0 <= i < len(shapes):
            raise ConfigError(f"bottom index {i} out of range ({len(shapes)} bottoms)", path=path)
    cls = get_layer_class(param.type)
    layer = cls(param, dtype=np.float64)
    layer.net_source = path
    rng = np.random.default_rng(seed)
    bottom = []
    for i, shape in enumerate(shapes):
        blob = Blob(*shape, dtype=np.float64)
        if i in bottom_data:
            blob.data[...] = np.asarray(bottom_data[i], dtype=np.float64).reshape(shape)
        elif i in integer_bottoms:
            blob.data[...] = rng.integers(0, int(integer_bottoms[i]), size=shape)
        else:
            blob.data[...] = rng.uniform(fill[0], fill[1], size=shape)
        bottom.append(blob)
    n_top = len(param.top) or max(cls.exact_num_top_blobs or 0, cls.min_top_blobs or 0, 1)
    top = [Blob(dtype=np.float64) for _ in range(n_top)]
    if check_bottom is None:
        check_bottom = [i for i in range(len(shapes)) if i not in integer_bottoms]
    checker = GradientChecker(stepsize, threshold, seed, kink, kink_range)
    if exhaustive:
        checker.check_gradient_exhaustive(layer, bottom, top, check_bottom)
    else:
        checker.check_gradient(layer, bottom, top, check_bottom)
    report = checker.report
    report.layer = layer
    return report
