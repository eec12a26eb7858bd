"""Fillers: Caffe's definitions of each filler's distribution and fans."""
import math

import numpy as np
import pytest

from dlcore import Blob, ConfigError, set_random_seed
from dlcore.filler import fill
from dltrain.proto import caffe_pb2


def filled(shape, **kw):
    set_random_seed(1701)
    blob = Blob(*shape, dtype=np.float64)
    return fill(blob, caffe_pb2.FillerParameter(**kw)).data


def test_default_filler_is_constant_zero():
    assert caffe_pb2.FillerParameter().type == "constant"
    assert np.all(filled((2, 3)) == 0)
    assert np.all(filled((2, 3), value=1.5) == 1.5)


def test_uniform_and_gaussian_moments():
    u = filled((200, 100), type="uniform", min=-2, max=3)
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean() - 0.5) < 0.05
    g = filled((200, 100), type="gaussian", mean=1.0, std=2.0)
    assert abs(g.mean() - 1.0) < 0.05 and abs(g.std() - 2.0) < 0.05


def test_gaussian_sparse_keeps_sparse_over_num_outputs():
    g = filled((100, 1000), type="gaussian", std=1.0, sparse=10)
    assert abs((g != 0).mean() - 0.1) < 0.01


def test_positive_unitball_rows_sum_to_one():
    p = filled((4, 3, 2, 2), type="positive_unitball")
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.reshape(4, -1).sum(axis=1), 1.0)


@pytest.mark.parametrize("norm, n", [("FAN_IN", 3 * 4 * 5), ("FAN_OUT", 20 * 4 * 5), ("AVERAGE", (60 + 400) / 2)])
def test_xavier_and_msra_use_caffe_fans(norm, n):
    shape = (20, 3, 4, 5)       # fan_in = count / shape[0], fan_out = count / shape[1]
    norm = caffe_pb2.FillerParameter.VarianceNorm.Value(norm)
    x = filled(shape, type="xavier", variance_norm=norm)
    scale = math.sqrt(3.0 / n)
    assert np.abs(x).max() <= scale and np.abs(x).max() > 0.9 * scale
    m = filled((200,) + shape[1:], type="msra", variance_norm=norm)
    n_m = {"0": 60, "1": 200 * 4 * 5, "2": (60 + 4000) / 2}[str(norm)]
    assert abs(m.std() - math.sqrt(2.0 / n_m)) < 0.05 * math.sqrt(2.0 / n_m)


def test_bilinear_matches_the_upsampling_kernel():
    b = filled((2, 1, 4, 4), type="bilinear")
    t = np.array([0.25, 0.75, 0.75, 0.25])     # factor 2: kernel 4
    np.testing.assert_allclose(b[0, 0], np.outer(t, t))
    np.testing.assert_allclose(b[1, 0], np.outer(t, t))
    b5 = filled((1, 1, 5, 5), type="bilinear")    # factor 3: kernel 5
    t5 = np.array([1, 2, 3, 2, 1]) / 3.0
    np.testing.assert_allclose(b5[0, 0], np.outer(t5, t5))


def test_bad_filler_names_the_problem():
    with pytest.raises(ConfigError, match="unknown filler type 'bogus'"):
        filled((2, 2), type="bogus")
    with pytest.raises(ConfigError, match="sparse"):
        filled((2, 2), type="uniform", sparse=2)
