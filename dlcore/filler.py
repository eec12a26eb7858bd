"""Fillers: how a parameter blob gets its first values (Caffe's filler.hpp)."""
import math

import numpy as np

from .errors import ConfigError
from .rng import get_rng


def _fans(blob):
    # Caffe: fan_in = count / shape(0); fan_out = count / shape(1) (or count for 1-D).
    fan_in = blob.count // blob.shape[0]
    fan_out = blob.count // blob.shape[1] if blob.num_axes > 1 else blob.count
    return fan_in, fan_out


def _variance_n(blob, param):
    from dltrain.proto import caffe_pb2
    fan_in, fan_out = _fans(blob)
    norm = param.variance_norm
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def fill(blob, param, rng=None):
    """Fill ``blob.data`` as the FillerParameter ``param`` says."""
    rng = rng or get_rng()
    kind = param.type
    if blob.count == 0:
        raise ConfigError(f"filler '{kind}': cannot fill an empty blob")
    if kind != "gaussian" and param.sparse != -1:
        raise ConfigError(f"filler '{kind}': sparse is only supported by the gaussian filler")
    shape = blob.shape
    if kind == "constant":
        values = np.full(shape, param.value)
    elif kind == "uniform":
        if not (math.isfinite(param.min) and math.isfinite(param.max) and param.min <= param.max):
            # Caffe: CHECK_LE(a, b); NumPy refuses an infinite range.
            raise ConfigError(f"uniform filler: needs finite min <= max, got min {param.min:g}, max {param.max:g}")
        values = rng.uniform(param.min, param.max, shape)
    elif kind == "gaussian":
        if not (math.isfinite(param.mean) and math.isfinite(param.std) and param.std >= 0):
            raise ConfigError(f"gaussian filler: needs a finite mean and a finite std >= 0, got mean "
                              f"{param.mean:g}, std {param.std:g}")
        values = rng.normal(param.mean, param.std, shape)
        if param.sparse < -1:
            raise ConfigError(f"gaussian filler: sparse must be >= -1, got {param.sparse}")
        if param.sparse >= 0:
            # Keep each weight with probability sparse / num_outputs.
            keep = rng.random(shape) < param.sparse / shape[0]
            values = values * keep
    elif kind == "positive_unitball":
        values = rng.uniform(0.0, 1.0, shape).reshape(shape[0], -1)
        values /= values.sum(axis=1, keepdims=True)
        values = values.reshape(shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(blob, param))
        values = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        values = rng.normal(0.0, math.sqrt(2.0 / _variance_n(blob, param)), shape)
    elif kind == "bilinear":
        if blob.num_axes != 4 or shape[2] != shape[3]:
            raise ConfigError(f"bilinear filler needs a 4-D blob with square kernels, got {blob.shape_string()}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        t = 1 - np.abs(np.arange(k) / f - c)
        values = np.broadcast_to(np.outer(t, t), shape)
    else:
        raise ConfigError(f"unknown filler type '{kind}' (known: constant, uniform, gaussian, "
                          "positive_unitball, xavier, msra, bilinear)")
    blob.data[...] = values
    return blob
