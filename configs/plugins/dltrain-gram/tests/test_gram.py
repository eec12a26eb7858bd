"""Tests of the Gram plugin: values, gradients (function and command), parameters.

Run with `python -m pytest configs/plugins/dltrain-gram/tests` (installed or not).
"""
import os
import sys

import numpy as np
import pytest

try:
    import dltrain_gram.gram  # noqa: F401
except ImportError:       # not installed: use the source tree beside this file
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dltrain_gram.gram  # noqa: F401

from dltrain.cli.main import main
from dlcore import Blob, ConfigError, create_layer
from dlcore.gradcheck import GradientCheckError, check_layer

HERE = os.path.dirname(os.path.abspath(__file__))
LAYER_FILE = os.path.join(HERE, "..", "..", "gram_layer.prototxt")


def gram(param_str="", shape=(2, 3, 4, 5), dtype=np.float64, seed=0):
    layer = create_layer(f'name: "g" type: "Gram" python_param {{ param_str: "{param_str}" }}', dtype=dtype)
    x = np.random.default_rng(seed).normal(size=shape)
    bottom, top = Blob(*shape, dtype=dtype), Blob(dtype=dtype)
    bottom.data[...] = x
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    return layer, x, bottom, top


@pytest.mark.parametrize("normalize, norm", [("none", 1), ("spatial", 20), ("all", 60)])
def test_forward_is_the_gram_matrix(normalize, norm):
    _, x, _, top = gram(f"normalize: {normalize}\\nscale: 3")
    f = x.reshape(2, 3, 20)
    expected = 3 * np.einsum("nim,njm->nij", f, f) / norm
    np.testing.assert_allclose(top.data, expected, rtol=1e-12)
    assert top.shape == (2, 3, 3)


def test_float32_forward_and_backward():
    _, x, bottom, top = gram(dtype=np.float32)
    f = x.reshape(2, 3, 20)
    np.testing.assert_allclose(top.data, np.einsum("nim,njm->nij", f, f) / 20, rtol=1e-5)


def test_backward_by_hand():
    layer, x, bottom, top = gram("normalize: none")
    dy = np.random.default_rng(1).normal(size=top.shape)
    top.diff[...] = dy
    layer.backward([top], [True], [bottom])
    f = x.reshape(2, 3, 20)
    expected = np.einsum("nij,njm->nim", dy + dy.transpose(0, 2, 1), f).reshape(x.shape)
    np.testing.assert_allclose(bottom.diff, expected, rtol=1e-12)


@pytest.mark.parametrize("param_str", ["", "normalize: none", "normalize: all\\nscale: 0.5"])
def test_gradient_check(param_str):
    report = check_layer(f'type: "Gram" python_param {{ param_str: "{param_str}" }}', [(2, 3, 3, 2)])
    assert report.passed and report.checked == 36


def test_gradient_check_exhaustive_on_a_2d_bottom():
    assert check_layer('type: "Gram"', [(3, 4)], exhaustive=True).passed


def test_gradcheck_command(capsys):
    code = main(["gradcheck", LAYER_FILE, "--bottom", "2,3,4,5", "--plugin", "dltrain_gram.gram"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.startswith("gradcheck passed: layer 'gram' (Gram), 120 gradient elements checked")


@pytest.mark.parametrize("param_str, message", [
    ("scale: -1", "parameter 'scale': -1.0 must be positive"),
    ("scale: big", "parameter 'scale': expected a number, got 'big'"),
    ("normalize: rows", "parameter 'normalize': 'rows' is not one of: none, spatial, all"),
    ("normalise: all", "unknown parameter 'normalise' in param_str (known parameters: normalize, scale)"),
    ("[1, 2]", "param_str must be a YAML mapping"),
])
def test_bad_parameters_name_the_layer_and_the_parameter(param_str, message):
    with pytest.raises(ConfigError) as info:
        gram(param_str)
    assert str(info.value).startswith("layer 'g' (Gram): ")
    assert message in str(info.value)


def test_a_wrong_gradient_is_caught():
    # Break the backward on purpose: the checker must notice.
    from dltrain_gram import gram as module
    original = module.GramLayer.backward_cpu

    def half(self, top, propagate_down, bottom):
        original(self, top, propagate_down, bottom)
        bottom[0].diff[...] *= 0.5

    module.GramLayer.backward_cpu = half
    try:
        with pytest.raises(GradientCheckError):
            check_layer('type: "Gram"', [(2, 3, 2, 2)])
    finally:
        module.GramLayer.backward_cpu = original
