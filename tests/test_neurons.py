"""Neuron layers: ReLU, Sigmoid, TanH, Dropout (after Caffe's test_neuron_layer.cpp)."""
import math

import numpy as np
import pytest

from dlcore import TEST, TRAIN, Blob, ConfigError, Layer, create_layer, set_random_seed
from dlcore.gradcheck import GradientChecker, make_blobs

SHAPE = (2, 3, 2, 2)


def layer_of(text, phase=TRAIN, dtype=np.float64):
    return create_layer(f'name: "n" {text}', phase=phase, dtype=dtype)


def run(layer, x, dtype=np.float64, in_place=False):
    """Forward x through layer; returns (bottom, top)."""
    bottom = Blob(*x.shape, dtype=dtype)
    bottom.data[...] = x
    top = bottom if in_place else Blob(dtype=dtype)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    return bottom, top


class InPlace(Layer):
    """Test harness: runs ``inner`` in place on a private blob, so the checker
    can perturb a bottom the layer never overwrites while the layer's
    in-place code path (top is bottom) is what gets checked."""

    def __init__(self, inner):
        super().__init__(inner.layer_param, dtype=inner.dtype)
        self.inner = inner
        self.work = Blob(dtype=inner.dtype)

    type = "InPlace"

    def setup(self, bottom, top):
        self.work.reshape_like(bottom[0])
        self.inner.initialize([self.work], [self.work])

    def reshape(self, bottom, top):
        self.work.reshape_like(bottom[0])
        top[0].reshape_like(bottom[0])
        self.inner.reshape([self.work], [self.work])

    def forward_cpu(self, bottom, top):
        self.work.data[...] = bottom[0].data
        self.inner.forward([self.work], [self.work])
        top[0].data[...] = self.work.data

    def backward_cpu(self, top, propagate_down, bottom):
        self.work.diff[...] = top[0].diff
        self.inner.backward([self.work], [propagate_down[0]], [self.work])
        bottom[0].diff[...] = self.work.diff


NEURONS = {
    "ReLU": ('type: "ReLU"', GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01)),
    "LeakyReLU": ('type: "ReLU" relu_param { negative_slope: 0.01 }', GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01)),
    "Sigmoid": ('type: "Sigmoid"', GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01)),
    "TanH": ('type: "TanH"', GradientChecker(1e-2, 1e-3)),
    "Dropout": ('type: "Dropout"', GradientChecker(1e-2, 1e-3)),
    "Dropout0.3": ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', GradientChecker(1e-2, 1e-3)),
}


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_gradient(name):
    text, checker = NEURONS[name]
    bottom = make_blobs([SHAPE])
    checker.check_gradient_eltwise(layer_of(text), bottom, [Blob(dtype=np.float64)])


@pytest.mark.parametrize("name", sorted(NEURONS))
def test_gradient_in_place(name):
    text, checker = NEURONS[name]
    bottom = make_blobs([SHAPE])
    checker.check_gradient_eltwise(InPlace(layer_of(text)), bottom, [Blob(dtype=np.float64)])


@pytest.mark.parametrize("name", sorted(NEURONS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_matches_out_of_place(name, dtype):
    text, _ = NEURONS[name]
    x = np.random.default_rng(3).uniform(-2, 2, SHAPE)
    dy = np.random.default_rng(4).uniform(-1, 1, SHAPE)
    results = []
    for in_place in (False, True):
        set_random_seed(11)
        layer = layer_of(text, dtype=dtype)
        bottom, top = run(layer, x, dtype, in_place)
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((y, bottom.diff.copy()))
        assert y.dtype == dtype and bottom.diff.dtype == dtype
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_relu_forward():
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    _, top = run(layer_of('type: "ReLU"'), x)
    np.testing.assert_array_equal(top.data, [[0, 0, 0, 0.5, 3.0]])
    assert not np.signbit(top.data).any()          # no negative zeros
    _, top = run(layer_of('type: "ReLU" relu_param { negative_slope: 0.25 }'), x)
    np.testing.assert_allclose(top.data, [[-0.5, -0.125, 0, 0.5, 3.0]])


def test_relu_backward_uses_sign():
    layer = layer_of('type: "ReLU" relu_param { negative_slope: 0.5 }')
    bottom, top = run(layer, np.array([-1.0, 2.0, 0.0]))
    top.diff[...] = [4.0, 4.0, 4.0]
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, [2.0, 4.0, 2.0])   # x <= 0 takes the slope, as Caffe


def test_backward_respects_propagate_down():
    layer = layer_of('type: "TanH"')
    bottom, top = run(layer, np.ones(4))
    bottom.diff[...] = 7.0
    top.diff[...] = 1.0
    layer.backward([top], [False], [bottom])
    np.testing.assert_array_equal(bottom.diff, 7.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_tanh_forward(dtype):
    x = np.linspace(-30, 30, 13)
    _, top = run(layer_of('type: "Sigmoid"', dtype=dtype), x, dtype)
    assert top.data.dtype == dtype
    tight = 1e-14 if dtype == np.float64 else 1e-6   # float64 must not be computed in float32
    np.testing.assert_allclose(top.data, 1 / (1 + np.exp(-x)), rtol=tight, atol=tight)
    _, top = run(layer_of('type: "TanH"', dtype=dtype), x, dtype)
    np.testing.assert_allclose(top.data, np.tanh(x), rtol=tight, atol=tight)


def _dropout_check(ratio, n=2000, seed=1701):
    set_random_seed(seed)
    x = np.random.default_rng(seed).uniform(1.0, 2.0, n)      # nonzero: a zero output means dropped
    layer = layer_of(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}')
    bottom, top = run(layer, x)
    kept = top.data != 0
    p = float(np.float32(ratio))       # dropout_ratio is a float field, as in Caffe
    np.testing.assert_allclose(top.data[kept], x[kept] / (1 - p), rtol=1e-12)
    drop_rate = 1 - kept.mean()
    std_error = math.sqrt(ratio * (1 - ratio) / n)
    assert abs(drop_rate - ratio) <= 1.96 * std_error, (drop_rate, ratio)
    return layer, bottom, top, kept


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.8])
def test_dropout_forward_train(ratio):
    _dropout_check(ratio)


def test_dropout_backward_uses_mask():
    layer, bottom, top, kept = _dropout_check(0.5, n=200)
    top.diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, np.where(kept, 2.0, 0.0))


def test_dropout_test_phase_is_identity():
    x = np.random.default_rng(0).uniform(-1, 1, SHAPE)
    layer = layer_of('type: "Dropout" dropout_param { dropout_ratio: 0.7 }', phase=TEST)
    bottom, top = run(layer, x)
    np.testing.assert_array_equal(top.data, x)
    top.diff[...] = 3.0
    layer.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, 3.0)


def test_dropout_repeats_after_reseed():
    x = np.ones(50)
    outs = []
    for _ in range(2):
        set_random_seed(5)
        outs.append(run(layer_of('type: "Dropout"'), x)[1].data.copy())
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_dropout_bad_ratio(ratio):
    with pytest.raises(ConfigError, match="dropout_ratio"):
        run(layer_of(f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}'), np.ones(3))


def test_dropout_without_scale_train():
    # BVLC's schema has no scale_train (some forks do): the layer honours it
    # when present; set the attribute directly to exercise that path.
    x = np.random.default_rng(6).uniform(1.0, 2.0, 400)
    set_random_seed(2)
    layer = layer_of('type: "Dropout" dropout_param { dropout_ratio: 0.25 }')
    bottom, top = Blob(400, dtype=np.float64), Blob(dtype=np.float64)
    bottom.data[...] = x
    layer.initialize([bottom], [top])
    layer.scale_train = False
    layer.forward([bottom], [top])
    kept = top.data != 0
    np.testing.assert_array_equal(top.data[kept], x[kept])              # kept, not scaled
    layer.phase = TEST
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data, x * 0.75, rtol=1e-12)          # TEST scales by 1 - p
    top.diff[...] = 1.0
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(bottom.diff, 0.75, rtol=1e-12)
