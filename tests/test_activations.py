"""PReLU, ELU, AbsVal, Power, Exp, Log, BNLL, Threshold, Swish, Clip (layers/activations.py).

After Caffe's test_neuron_layer.cpp, test_power_layer.cpp and test_threshold_layer.cpp:
gradient checks with Caffe's checker settings (float64), hand-computed forward
values, in-place runs, and Caffe's special cases.
"""
import math

import numpy as np
import pytest

from dlcore import TRAIN, Blob, ConfigError, DLTrainError, Layer, create_layer, set_random_seed
from dlcore.gradcheck import GradientChecker

SHAPE = (2, 3, 2, 2)


def layer_of(text, phase=TRAIN, dtype=np.float64):
    return create_layer(f'name: "a" {text}', phase=phase, dtype=dtype)


def blob_of(x, dtype=np.float64):
    x = np.asarray(x, dtype=np.float64)
    blob = Blob(*x.shape, dtype=dtype)
    blob.data[...] = x
    return blob


def run(layer, x, dtype=np.float64, in_place=False, dy=None):
    """Forward x (and, with dy, backward); returns (bottom, top)."""
    bottom = blob_of(x, dtype)
    top = bottom if in_place else Blob(dtype=dtype)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    if dy is not None:
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
    return bottom, top


class InPlace(Layer):
    """Test harness: runs ``inner`` in place on a private blob, so the checker can
    perturb a bottom the layer never overwrites while the in-place code path runs.
    The inner layer's parameter blobs are the harness's."""

    type = "InPlace"

    def __init__(self, inner):
        super().__init__(inner.layer_param, dtype=inner.dtype)
        self.inner = inner
        self.work = Blob(dtype=inner.dtype)

    def setup(self, bottom, top):
        self.work.reshape_like(bottom[0])
        self.inner.initialize([self.work], [self.work])
        self.blobs = self.inner.blobs

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


def gaussian(shape=SHAPE, seed=1701):
    return np.random.default_rng(seed).normal(size=shape)


def away_from(x, kinks, margin=0.05):
    """Move values within ``margin`` of a kink out of the way (finite differences straddle kinks)."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, 2, -2) * margin
    return x


def power_input(power, scale, shift, shape=SHAPE):
    # inputs where shift + scale x lies in [0.5, 2.5] (Caffe's test reflects them into the valid region)
    u = np.random.default_rng(5).uniform(0.5, 2.5, shape)
    return (u - shift) / scale


# --- gradient checks (float64, Caffe's checker settings) ---------------------------------------

KINKED = GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01)

ELTWISE = {
    "ELU": ('type: "ELU" elu_param { alpha: 0.5 }', KINKED, gaussian()),
    "ELUasReLU": ('type: "ELU" elu_param { alpha: 0 }', KINKED, gaussian()),
    "AbsVal": ('type: "AbsVal"', KINKED, gaussian()),
    "Power": ('type: "Power" power_param { power: 0.37 scale: 0.83 shift: -2.4 }',
              GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), power_input(0.37, 0.83, -2.4)),
    "PowerShiftZero": ('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 0 }',
                       GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), power_input(0.37, 0.83, 0.0)),
    "PowerZero": ('type: "Power" power_param { power: 0 scale: 0.83 shift: -2.4 }',
                  GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), gaussian()),
    "PowerOne": ('type: "Power" power_param { power: 1 scale: 0.83 shift: -2.4 }',
                 GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), gaussian()),
    "PowerTwo": ('type: "Power" power_param { power: 2 scale: 0.34 shift: -2.4 }',
                 GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), gaussian()),
    "PowerTwoScaleHalfShiftOne": ('type: "Power" power_param { power: 2 scale: 0.5 shift: -1 }',
                                  GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), gaussian()),
    "PowerNegative": ('type: "Power" power_param { power: -1.5 scale: 2 shift: 1 }',
                      GradientChecker(1e-2, 1e-2, 1701, 0.0, 0.01), power_input(-1.5, 2.0, 1.0)),
    "Exp": ('type: "Exp"', GradientChecker(1e-2, 1e-3), gaussian()),
    "ExpBase2": ('type: "Exp" exp_param { base: 2 }', GradientChecker(1e-2, 1e-3), gaussian()),
    "ExpBase2Shift1": ('type: "Exp" exp_param { base: 2 shift: 1 }', GradientChecker(1e-2, 1e-3), gaussian()),
    "ExpBase2Scale3": ('type: "Exp" exp_param { base: 2 scale: 3 }', GradientChecker(1e-2, 1e-3), gaussian()),
    "ExpBase2Shift1Scale3": ('type: "Exp" exp_param { base: 2 shift: 1 scale: 3 }', GradientChecker(1e-2, 1e-3),
                             gaussian()),
    "Log": ('type: "Log"', GradientChecker(1e-2, 1e-2), np.exp(gaussian())),
    "LogBase2": ('type: "Log" log_param { base: 2 }', GradientChecker(1e-2, 1e-2), np.exp(gaussian())),
    "LogBase2Shift1": ('type: "Log" log_param { base: 2 shift: 1 }', GradientChecker(1e-2, 1e-2),
                       np.exp(gaussian())),
    "LogBase2Scale3": ('type: "Log" log_param { base: 2 scale: 3 }', GradientChecker(1e-2, 1e-2),
                       np.exp(gaussian())),
    "LogBase2Shift1Scale3": ('type: "Log" log_param { base: 2 shift: 1 scale: 3 }', GradientChecker(1e-2, 1e-2),
                             np.exp(gaussian())),
    "BNLL": ('type: "BNLL"', GradientChecker(1e-2, 1e-3), gaussian()),
    "Swish": ('type: "Swish"', KINKED, gaussian()),
    "SwishWithBeta": ('type: "Swish" swish_param { beta: 1.5 }', KINKED, gaussian()),
    "SwishAsLinear": ('type: "Swish" swish_param { beta: 0 }', KINKED, gaussian()),
    "Clip": ('type: "Clip" clip_param { min: -1 max: 2 }', GradientChecker(1e-2, 1e-3),
             away_from(3 * gaussian(), (-1.0, 2.0))),
}


@pytest.mark.parametrize("name", sorted(ELTWISE))
def test_gradient(name):
    text, checker, x = ELTWISE[name]
    checker.check_gradient_eltwise(layer_of(text), [blob_of(x)], [Blob(dtype=np.float64)])


IN_PLACE_OK = sorted(n for n in ELTWISE if n != "AbsVal")


@pytest.mark.parametrize("name", IN_PLACE_OK)
def test_gradient_in_place(name):
    text, checker, x = ELTWISE[name]
    checker.check_gradient_eltwise(InPlace(layer_of(text)), [blob_of(x)], [Blob(dtype=np.float64)])


@pytest.mark.parametrize("name", IN_PLACE_OK)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_matches_out_of_place(name, dtype):
    text, _, x = ELTWISE[name]
    dy = np.random.default_rng(4).uniform(-1, 1, x.shape)
    results = []
    for in_place in (False, True):
        layer = layer_of(text, dtype=dtype)
        bottom, top = run(layer, x, dtype, in_place, dy)
        results.append((top.data.copy(), bottom.diff.copy()))
        assert top.data.dtype == dtype and bottom.diff.dtype == dtype
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("name", sorted(ELTWISE))
def test_float32_matches_float64(name):
    text, _, x = ELTWISE[name]
    dy = np.random.default_rng(4).uniform(-1, 1, x.shape)
    out = {}
    for dtype in (np.float32, np.float64):
        bottom, top = run(layer_of(text, dtype=dtype), x.astype(dtype), dtype, dy=dy)
        out[dtype] = (top.data.astype(np.float64), bottom.diff.astype(np.float64))
    for a, b in zip(out[np.float32], out[np.float64]):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", sorted(ELTWISE))
def test_formulas_run_as_python(name):
    """The CUDA simulator runs the formulas as plain Python: they give what the compiled CPU loops gave."""
    text, _, x = ELTWISE[name]
    layer = layer_of(text)
    bottom, top = run(layer, x, dy=np.random.default_rng(4).uniform(-1, 1, x.shape))
    for m, params in ((layer.forward_map, layer.forward_params()), (layer.backward_map, layer.backward_params())):
        arrays = {}
        for operand in m.reads + m.writes:
            blob, diff = layer.operand(operand, [bottom], [top])
            arrays[operand] = (blob.diff if diff else blob.data).reshape(-1)
        for i in range(x.size):
            got = m.formula(*(arrays[r][i] for r in m.reads), *params)
            np.testing.assert_allclose(got if isinstance(got, tuple) else (got,), [arrays[w][i] for w in m.writes],
                                       rtol=1e-14, err_msg=f"{name}: {m.formula.__name__}")


def test_backward_respects_propagate_down():
    for text in ('type: "ELU"', 'type: "Power" power_param { power: 2 }', 'type: "Clip" clip_param { min: 0 max: 1 }',
                 'type: "AbsVal"', 'type: "Exp"', 'type: "BNLL"', 'type: "Swish"'):
        layer = layer_of(text)
        bottom, top = run(layer, np.full((2, 3), 0.5))
        bottom.diff[...] = 7.0
        top.diff[...] = 1.0
        layer.backward([top], [False], [bottom])
        np.testing.assert_array_equal(bottom.diff, 7.0, err_msg=text)


# --- PReLU ------------------------------------------------------------------------------------

def prelu_reference(x, slopes, shared):
    c = np.zeros(x.shape[1], int) if shared else np.arange(x.shape[1])
    a = np.asarray(slopes).reshape(-1)[c].reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def test_prelu_default_filler_and_shapes():
    layer = layer_of('type: "PReLU"')
    run(layer, gaussian())
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0.25)
    shared = layer_of('type: "PReLU" prelu_param { channel_shared: true }')
    run(shared, gaussian())
    assert shared.blobs[0].shape == () and shared.blobs[0].count == 1
    np.testing.assert_array_equal(shared.blobs[0].data, 0.25)
    filled = layer_of('type: "PReLU" prelu_param { filler { type: "constant" value: 0.5 } }')
    run(filled, gaussian())
    np.testing.assert_array_equal(filled.blobs[0].data, 0.5)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward(shared):
    text = 'type: "PReLU"' + (' prelu_param { channel_shared: true }' if shared else '')
    layer = layer_of(text)
    x = gaussian()
    bottom = blob_of(x)
    top = Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    layer.blobs[0].data[...] = np.random.default_rng(2).normal(size=layer.blobs[0].shape)
    layer.forward([bottom], [top])
    np.testing.assert_array_equal(top.data, prelu_reference(x, layer.blobs[0].data, shared))


def test_prelu_hand_computed():
    layer = layer_of('type: "PReLU"')
    x = np.array([[-2.0, 3.0], [4.0, -1.0]])           # (N=2, C=2)
    bottom = blob_of(x)
    top = Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    layer.blobs[0].data[...] = [0.5, -0.1]
    layer.forward([bottom], [top])
    np.testing.assert_allclose(top.data, [[-1.0, 3.0], [4.0, 0.1]])
    top.diff[...] = [[1.0, 2.0], [3.0, 4.0]]
    layer.blobs[0].diff[...] = [10.0, 20.0]            # accumulates, as Caffe master
    layer.backward([top], [True], [bottom])
    np.testing.assert_allclose(bottom.diff, [[0.5, 2.0], [3.0, -0.4]])
    np.testing.assert_allclose(layer.blobs[0].diff, [10.0 - 2.0, 20.0 - 4.0])


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient(shared):
    text = 'type: "PReLU"' + (' prelu_param { channel_shared: true }' if shared else '')
    layer = layer_of(text)
    bottom = [blob_of(gaussian())]
    top = [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.blobs[0].data[...] = np.random.default_rng(3).normal(size=layer.blobs[0].shape)
    GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01).check_gradient_exhaustive(layer, bottom, top)


def test_prelu_gradient_in_place():
    layer = InPlace(layer_of('type: "PReLU" prelu_param { filler { type: "gaussian" } }'))
    GradientChecker(1e-2, 1e-3, 1701, 0.0, 0.01).check_gradient_exhaustive(layer, [blob_of(gaussian())],
                                                                            [Blob(dtype=np.float64)])


def test_prelu_consistency_with_relu():
    x = gaussian()
    dy = gaussian(seed=9)
    prelu = layer_of('type: "PReLU"')
    b1, t1 = run(prelu, x, dy=dy)
    relu = layer_of('type: "ReLU" relu_param { negative_slope: 0.25 }')
    b2, t2 = run(relu, x, dy=dy)
    np.testing.assert_array_equal(t1.data, t2.data)
    np.testing.assert_array_equal(b1.diff, b2.diff)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prelu_in_place_matches(dtype):
    # Caffe's TestPReLUInPlace: data, bottom diff and slope diff identical in and out of place
    x = gaussian()
    dy = gaussian(seed=8)
    results = []
    for in_place in (False, True):
        layer = layer_of('type: "PReLU" prelu_param { filler { type: "gaussian" } }', dtype=dtype)
        set_random_seed(5)
        bottom = blob_of(x, dtype)
        top = bottom if in_place else Blob(dtype=dtype)
        layer.initialize([bottom], [top])
        layer.blobs[0].data[...] = [0.3, -0.2, 0.7]
        layer.forward([bottom], [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((y, bottom.diff.copy(), layer.blobs[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_prelu_errors():
    with pytest.raises(ConfigError, match="at least 2 axes"):
        run(layer_of('type: "PReLU"'), np.ones(4))
    layer = create_layer('name: "p" type: "PReLU" blobs { shape { dim: 2 } data: 1 data: 2 }', dtype=np.float64)
    with pytest.raises(ConfigError, match="inconsistent"):
        run(layer, np.ones((2, 3)))


def test_prelu_loaded_slopes_not_refilled():
    layer = create_layer('name: "p" type: "PReLU" blobs { shape { dim: 3 } data: 1 data: 2 data: 3 }',
                         dtype=np.float64)
    _, top = run(layer, -np.ones((1, 3)))
    np.testing.assert_array_equal(top.data, [[-1.0, -2.0, -3.0]])


# --- ELU, AbsVal ------------------------------------------------------------------------------

def test_elu_forward_backward():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    layer = layer_of('type: "ELU" elu_param { alpha: 0.5 }')
    bottom, top = run(layer, x, dy=np.ones(5))
    expect = np.where(x > 0, x, 0.5 * (np.exp(x) - 1))
    np.testing.assert_allclose(top.data, expect, rtol=1e-15)
    np.testing.assert_allclose(bottom.diff, np.where(x > 0, 1.0, 0.5 + expect), rtol=1e-15)
    # default alpha 1; alpha 0 is ReLU
    _, top = run(layer_of('type: "ELU"'), x)
    np.testing.assert_allclose(top.data, np.where(x > 0, x, np.exp(x) - 1), rtol=1e-15)
    _, top = run(layer_of('type: "ELU" elu_param { alpha: 0 }'), x)
    np.testing.assert_array_equal(top.data, np.maximum(x, 0))


def test_elu_negative_alpha_in_place_keeps_input():
    x = np.array([-2.0, 0.5])
    for in_place in (False, True):
        bottom, top = run(layer_of('type: "ELU" elu_param { alpha: -0.5 }'), x, in_place=in_place, dy=np.ones(2))
        np.testing.assert_allclose(bottom.diff, [-0.5 + -0.5 * (math.exp(-2) - 1), 1.0])


def test_absval():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    bottom, top = run(layer_of('type: "AbsVal"'), x, dy=np.full(5, 2.0))
    np.testing.assert_array_equal(top.data, np.abs(x))
    np.testing.assert_array_equal(bottom.diff, [-2.0, -2.0, 0.0, 2.0, 2.0])     # sign(0) = 0
    with pytest.raises(ConfigError, match="in-place"):
        run(layer_of('type: "AbsVal"'), x, in_place=True)


# --- Power --------------------------------------------------------------------------------------

@pytest.mark.parametrize("power,scale,shift", [(0.37, 0.83, -2.4), (0.0, 0.83, -2.4), (1.0, 0.83, -2.4),
                                               (2.0, 0.34, -2.4), (2.0, 0.5, -1.0), (3.0, 1.0, 0.0),
                                               (0.5, 0.0, 4.0)])
def test_power_forward(power, scale, shift):
    # Caffe's TestPowerForward: (shift + scale x)^power; NaN where Caffe's pow gives NaN
    x = gaussian((2, 3, 4, 5))
    text = f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'
    _, top = run(layer_of(text), x)
    p, s, h = (float(np.float32(v)) for v in (power, scale, shift))   # proto floats
    with np.errstate(invalid="ignore"):
        expect = np.ones_like(x) if p == 0 else np.power(h + s * x, p)
    np.testing.assert_allclose(top.data, expect, rtol=1e-12)
    assert np.array_equal(np.isnan(top.data), np.isnan(expect))


def test_power_special_cases():
    x = np.array([-1.0, 0.0, 2.0])
    # power 0: 1 everywhere, zero gradient (Caffe sets the diff without the top diff)
    bottom, top = run(layer_of('type: "Power" power_param { power: 0 shift: -3 }'), x, dy=np.full(3, 5.0))
    np.testing.assert_array_equal(top.data, 1.0)
    np.testing.assert_array_equal(bottom.diff, 0.0)
    # scale 0: shift^power everywhere
    bottom, top = run(layer_of('type: "Power" power_param { power: 2 scale: 0 shift: 3 }'), x, dy=np.ones(3))
    np.testing.assert_array_equal(top.data, 9.0)
    np.testing.assert_array_equal(bottom.diff, 0.0)
    # identity by default
    bottom, top = run(layer_of('type: "Power"'), x, dy=np.full(3, 2.0))
    np.testing.assert_array_equal(top.data, x)
    np.testing.assert_array_equal(bottom.diff, 2.0)
    # power 2: 2 scale (shift + scale x)
    bottom, top = run(layer_of('type: "Power" power_param { power: 2 scale: 3 shift: 1 }'), x, dy=np.ones(3))
    np.testing.assert_array_equal(top.data, (1 + 3 * x) ** 2)
    np.testing.assert_array_equal(bottom.diff, 6 * (1 + 3 * x))
    # shift 0 uses power y / x: NaN at x = 0 as in Caffe
    with np.errstate(invalid="ignore", divide="ignore"):
        bottom, top = run(layer_of('type: "Power" power_param { power: 3 }'), x, dy=np.ones(3))
    np.testing.assert_allclose(top.data, x ** 3)
    np.testing.assert_allclose(bottom.diff[[0, 2]], [3.0, 12.0])
    assert np.isnan(bottom.diff[1])


# --- Exp, Log, BNLL -----------------------------------------------------------------------------

@pytest.mark.parametrize("base,scale,shift", [(-1, 1, 0), (2, 1, 0), (2, 1, 1), (2, 3, 0), (2, 3, 1), (0.5, -2, 0.5)])
def test_exp_forward(base, scale, shift):
    x = gaussian((2, 3, 4, 5))
    _, top = run(layer_of(f'type: "Exp" exp_param {{ base: {base} scale: {scale} shift: {shift} }}'), x)
    p = np.exp(shift + scale * x) if base == -1 else np.power(float(np.float32(base)), shift + scale * x)
    np.testing.assert_allclose(top.data, p, rtol=1e-6)       # Caffe's kDelta is 2e-4 absolute


@pytest.mark.parametrize("base,scale,shift", [(-1, 1, 0), (2, 1, 0), (2, 1, 1), (2, 3, 0), (2, 3, 1), (10, 0.5, 2)])
def test_log_forward(base, scale, shift):
    x = np.exp(gaussian((2, 3, 4, 5)))
    _, top = run(layer_of(f'type: "Log" log_param {{ base: {base} scale: {scale} shift: {shift} }}'), x)
    expect = np.log(shift + scale * x)
    if base != -1:
        expect = expect / math.log(base)
    np.testing.assert_allclose(top.data, expect, rtol=1e-6, atol=1e-12)


def test_exp_log_hand_computed():
    _, top = run(layer_of('type: "Exp" exp_param { base: 2 scale: 1 shift: 1 }'), np.array([0.0, 1.0, 3.0]))
    np.testing.assert_allclose(top.data, [2.0, 4.0, 16.0])
    bottom, top = run(layer_of('type: "Log" log_param { base: 2 }'), np.array([1.0, 2.0, 8.0]), dy=np.ones(3))
    np.testing.assert_allclose(top.data, [0.0, 1.0, 3.0])
    np.testing.assert_allclose(bottom.diff, 1 / (np.array([1.0, 2.0, 8.0]) * math.log(2)))


def test_exp_log_bad_base():
    for kind in ("Exp", "Log"):
        with pytest.raises(ConfigError, match="strictly positive"):
            run(layer_of(f'type: "{kind}" {kind.lower()}_param {{ base: -2 }}'), np.ones(2))
        with pytest.raises(ConfigError, match="strictly positive"):
            run(layer_of(f'type: "{kind}" {kind.lower()}_param {{ base: 0 }}'), np.ones(2))


def test_bnll():
    x = np.concatenate([gaussian().ravel(), [-100.0, -60.0, 0.0, 60.0, 100.0]])
    bottom, top = run(layer_of('type: "BNLL"'), x, dy=np.ones(x.size))
    assert (top.data >= 0).all() and (top.data >= x).all()               # Caffe's TestBNLL
    np.testing.assert_allclose(top.data, np.logaddexp(0, x), rtol=1e-14, atol=1e-15)  # log(1 + exp(x)): 0 far left
    assert np.isfinite(top.data).all() and np.isfinite(bottom.diff).all()
    # the gradient saturates at exp(50) / (exp(50) + 1)
    e = math.exp(50)
    np.testing.assert_allclose(bottom.diff[-2:], e / (e + 1))
    np.testing.assert_allclose(bottom.diff[:-5], 1 / (1 + np.exp(-x[:-5])), rtol=1e-14)


# --- Threshold ----------------------------------------------------------------------------------

@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_threshold(threshold):
    x = np.concatenate([gaussian().ravel(), [threshold]])
    text = 'type: "Threshold"' + (f' threshold_param {{ threshold: {threshold} }}' if threshold else '')
    bottom, top = run(layer_of(text), x)
    assert top.shape == bottom.shape
    np.testing.assert_array_equal(top.data, (x > threshold).astype(float))      # x == threshold gives 0


def test_threshold_has_no_backward():
    layer = layer_of('type: "Threshold"')
    bottom, top = run(layer, np.ones(3))
    with pytest.raises(DLTrainError, match="no backward"):
        layer.backward([top], [True], [bottom])
    layer.backward([top], [False], [bottom])        # nothing asked: nothing done


def test_threshold_in_net_without_backward():
    from dlcore import Net
    from dlcore.config import net_from_string
    net = Net(net_from_string('''
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: 0.1 } }
    '''), TRAIN, dtype=np.float64)
    net.blobs["x"].data[...] = [[0.0, 0.2, -1.0], [0.1, 0.5, 2.0]]
    net.forward()
    np.testing.assert_array_equal(net.blobs["y"].data, [[0, 1, 0], [0, 1, 1]])
    net.backward()


# --- Swish, Clip --------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [1.0, 1.5, 0.0])
def test_swish_forward(beta):
    x = gaussian((2, 3, 4, 5))
    text = 'type: "Swish"' + (f' swish_param {{ beta: {beta} }}' if beta != 1 else '')
    bottom, top = run(layer_of(text), x, dy=np.ones(x.shape))
    s = 1 / (1 + np.exp(-beta * x))
    np.testing.assert_allclose(top.data, x * s, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bottom.diff, s + beta * x * s * (1 - s), rtol=1e-13)
    if beta == 0:
        np.testing.assert_allclose(top.data, x / 2)           # Caffe's TestSwishAsLinear


def test_clip():
    x = np.array([-3.0, -1.0, -0.5, 0.0, 2.0, 2.5])
    bottom, top = run(layer_of('type: "Clip" clip_param { min: -1 max: 2 }'), x, dy=np.full(6, 3.0))
    np.testing.assert_array_equal(top.data, [-1.0, -1.0, -0.5, 0.0, 2.0, 2.0])
    # the gradient passes where min <= x <= max: both ends included (Caffe's rule)
    np.testing.assert_array_equal(bottom.diff, [0.0, 3.0, 3.0, 3.0, 3.0, 0.0])
    # in place: the input is kept, so the ends still decide
    bottom, top = run(layer_of('type: "Clip" clip_param { min: -1 max: 2 }'), x, in_place=True,
                      dy=np.full(6, 3.0))
    np.testing.assert_array_equal(bottom.diff, [0.0, 3.0, 3.0, 3.0, 3.0, 0.0])


def test_clip_needs_min_and_max():
    with pytest.raises(ConfigError, match="clip_param.max"):
        run(layer_of('type: "Clip" clip_param { min: -1 }'), np.ones(2))
    with pytest.raises(ConfigError, match="clip_param.min and clip_param.max"):
        run(layer_of('type: "Clip"'), np.ones(2))


def test_registered():
    from dlcore import layer_types
    assert {"PReLU", "ELU", "AbsVal", "Power", "Exp", "Log", "BNLL", "Threshold", "Swish", "Clip"} <= \
        set(layer_types())
