"""BatchNorm, Scale, Bias, LRN, MVN (layers/normalization.py).

After Caffe's test_batch_norm_layer.cpp, test_scale_layer.cpp, test_bias_layer.cpp,
test_lrn_layer.cpp and test_mvn_layer.cpp: Caffe's forward checks, gradient checks
(float64, Caffe's checker settings; smaller shapes), BatchNorm's running statistics
against the formula, and the Net's view of BatchNorm's blobs.
"""
import numpy as np
import pytest

from dlcore import TEST, TRAIN, Blob, ConfigError, Layer, Net, create_layer
from dlcore.config import net_from_string
from dlcore.gradcheck import GradientChecker

LAMBDA = float(np.float32(0.999))        # moving_average_fraction as the float field holds it
EPS = float(np.float32(1e-5))


def layer_of(text, phase=TRAIN, dtype=np.float64):
    return create_layer(f'name: "n" {text}', phase=phase, dtype=dtype)


def blob_of(x, dtype=np.float64):
    x = np.asarray(x, dtype=np.float64)
    blob = Blob(*x.shape, dtype=dtype)
    blob.data[...] = x
    return blob


def gaussian(shape, seed=1701):
    return np.random.default_rng(seed).normal(size=shape)


def setup_run(layer, xs, dtype=np.float64, in_place=False):
    bottom = [blob_of(x, dtype) for x in xs]
    top = [bottom[0] if in_place else Blob(dtype=dtype)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return bottom, top


class Wrapped(Layer):
    """Test harness: runs ``inner`` (in place on a private blob with ``in_place``) and
    hides its blobs from the checker (``hide_blobs``: BatchNorm's statistics with
    use_global_stats, whose gradient the layer does not compute)."""

    type = "Wrapped"

    def __init__(self, inner, in_place=False, hide_blobs=False):
        super().__init__(inner.layer_param, dtype=inner.dtype)
        self.inner, self.in_place, self.hide = inner, in_place, hide_blobs
        self.work = Blob(dtype=inner.dtype)

    def _io(self, bottom, top):
        return ([self.work], [self.work]) if self.in_place else (bottom, top)

    def setup(self, bottom, top):
        self.work.reshape_like(bottom[0])
        self.inner.initialize(*self._io(bottom, top))
        self.blobs = [] if self.hide else self.inner.blobs

    def reshape(self, bottom, top):
        self.work.reshape_like(bottom[0])
        b, t = self._io(bottom, top)
        self.inner.reshape(b, t)
        top[0].reshape_like(t[0])

    def forward_cpu(self, bottom, top):
        if self.in_place:
            self.work.data[...] = bottom[0].data
        self.inner.forward(*self._io(bottom, top))
        if self.in_place:
            top[0].data[...] = self.work.data

    def backward_cpu(self, top, propagate_down, bottom):
        if self.in_place:
            self.work.diff[...] = top[0].diff
            self.inner.backward([self.work], [propagate_down[0]], [self.work])
            bottom[0].diff[...] = self.work.diff
        else:
            self.inner.backward(top, propagate_down, bottom)


# ============================================================================================
# BatchNorm
# ============================================================================================

def per_channel(y):
    """(mean, E[y^2]) per channel of an (N, C, ...) array, as Caffe's TestForward computes them."""
    axes = (0,) + tuple(range(2, y.ndim))
    return y.mean(axis=axes), (y * y).mean(axis=axes)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_forward_normalizes(in_place, dtype):
    # Caffe's TestForward / TestForwardInplace: zero mean, unit variance per channel
    x = gaussian((5, 2, 3, 4))
    _, top = setup_run(layer_of('type: "BatchNorm"', dtype=dtype), [x], dtype, in_place)
    mean, var = per_channel(top[0].data.astype(np.float64))
    np.testing.assert_allclose(mean, 0, atol=1e-3)
    np.testing.assert_allclose(var, 1, atol=1e-3)


def batch_stats(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.mean(axis=axes), x.var(axis=axes)


def test_batch_norm_train_forward_formula():
    x = gaussian((3, 4, 2, 5)) * 3 + 1
    _, top = setup_run(layer_of('type: "BatchNorm"'), [x])
    mean, var = batch_stats(x)
    expect = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_running_statistics(dtype):
    """After two TRAIN forwards: s = lambda + 1, mean = lambda mean1 + mean2,
    var = lambda m/(m-1) var1 + m/(m-1) var2 (Caffe's unbiased correction)."""
    x1, x2 = gaussian((4, 3, 2, 2), 1) * 2 + 0.5, gaussian((4, 3, 2, 2), 2) - 1
    layer = layer_of('type: "BatchNorm"', dtype=dtype)
    bottom, top = setup_run(layer, [x1], dtype)
    bottom[0].data[...] = x2
    layer.forward(bottom, top)
    m = x1.size // 3
    correction = m / (m - 1)
    (mean1, var1), (mean2, var2) = batch_stats(x1), batch_stats(x2)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.blobs[2].data, [LAMBDA * 1 + 1], **tol)
    np.testing.assert_allclose(layer.blobs[0].data, LAMBDA * mean1 + mean2, **tol)
    np.testing.assert_allclose(layer.blobs[1].data, LAMBDA * correction * var1 + correction * var2, **tol)
    assert [b.shape for b in layer.blobs] == [(3,), (3,), (1,)]


def test_batch_norm_moving_average_fraction_and_eps():
    x = gaussian((2, 2, 3))
    layer = layer_of('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 eps: 0.1 }')
    bottom, top = setup_run(layer, [x])
    layer.forward(bottom, top)
    mean, var = batch_stats(x)
    m = x.size // 2
    np.testing.assert_allclose(layer.blobs[2].data, [1.5])
    np.testing.assert_allclose(layer.blobs[0].data, 1.5 * mean)
    np.testing.assert_allclose(layer.blobs[1].data, 1.5 * var * m / (m - 1))
    eps = float(np.float32(0.1))
    np.testing.assert_allclose(top[0].data, (x - mean[None, :, None]) / np.sqrt(var[None, :, None] + eps))


def set_stats(layer, mean_sum, var_sum, s):
    layer.blobs[0].data[...] = mean_sum
    layer.blobs[1].data[...] = var_sum
    layer.blobs[2].data[...] = s


@pytest.mark.parametrize("text,phase", [('type: "BatchNorm"', TEST),
                                        ('type: "BatchNorm" batch_norm_param { use_global_stats: true }', TRAIN)])
def test_batch_norm_global_stats(text, phase):
    x = gaussian((2, 3, 2, 2))
    layer = layer_of(text, phase)
    bottom = [blob_of(x)]
    top = [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    assert layer.use_global_stats
    set_stats(layer, [2.0, -4.0, 0.0], [8.0, 2.0, 4.0], 2.0)
    layer.forward(bottom, top)
    mean, var = np.array([1.0, -2.0, 0.0]), np.array([4.0, 1.0, 2.0])
    expect = (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + EPS)
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-13)
    np.testing.assert_array_equal(layer.blobs[2].data, [2.0])              # not updated
    # backward: dy / sqrt(var + eps)
    dy = gaussian(x.shape, 7)
    top[0].diff[...] = dy
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dy / np.sqrt(var[None, :, None, None] + EPS), rtol=1e-13)
    # a zero scale factor: mean = var = 0, as Caffe
    set_stats(layer, 5.0, 5.0, 0.0)
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data, x / np.sqrt(EPS), rtol=1e-12)


def test_batch_norm_use_global_stats_false_in_test():
    x = gaussian((4, 2, 3))
    layer = layer_of('type: "BatchNorm" batch_norm_param { use_global_stats: false }', TEST)
    _, top = setup_run(layer, [x])
    mean, var = per_channel(top[0].data)
    np.testing.assert_allclose(mean, 0, atol=1e-12)
    assert layer.blobs[2].data[0] == 1.0


def test_batch_norm_shapes():
    # (N, C): channels are axis 1, spatial 1; (N,): one channel
    x = gaussian((6, 3))
    layer = layer_of('type: "BatchNorm"')
    _, top = setup_run(layer, [x])
    np.testing.assert_allclose(top[0].data, (x - x.mean(0)) / np.sqrt(x.var(0) + EPS), rtol=1e-12)
    x = gaussian((7,))
    layer = layer_of('type: "BatchNorm"')
    _, top = setup_run(layer, [x])
    assert [b.shape for b in layer.blobs] == [(1,), (1,), (1,)]
    np.testing.assert_allclose(top[0].data, (x - x.mean()) / np.sqrt(x.var() + EPS), rtol=1e-12)
    with pytest.raises(ConfigError, match="channels"):
        layer = layer_of('type: "BatchNorm"')
        bottom, top = setup_run(layer, [gaussian((2, 3))])
        bottom[0].reshape(2, 4)
        layer.reshape(bottom, top)


GRAD_BN = GradientChecker(1e-2, 1e-4)     # Caffe's TestGradient


def test_batch_norm_gradient_train():
    layer = layer_of('type: "BatchNorm"')
    GRAD_BN.check_gradient_exhaustive(layer, [blob_of(gaussian((3, 2, 2, 3)))], [Blob(dtype=np.float64)])
    assert GRAD_BN.report.per_blob["bottom 0"] > 0


def test_batch_norm_gradient_train_in_place():
    layer = Wrapped(layer_of('type: "BatchNorm"'), in_place=True)
    GRAD_BN.check_gradient_exhaustive(layer, [blob_of(gaussian((3, 2, 2, 2)))], [Blob(dtype=np.float64)])


@pytest.mark.parametrize("in_place", [False, True])
def test_batch_norm_gradient_global_stats(in_place):
    inner = layer_of('type: "BatchNorm"', TEST)
    layer = Wrapped(inner, in_place=in_place, hide_blobs=True)
    bottom, top = [blob_of(gaussian((2, 3, 2, 2)))], [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    set_stats(inner, [0.5, -1.0, 2.0], [3.0, 0.5, 1.0], 1.5)
    GRAD_BN.check_gradient_exhaustive(layer, bottom, top)


@pytest.mark.parametrize("use_global", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_norm_in_place_matches(use_global, dtype):
    x = gaussian((3, 2, 4))
    dy = gaussian(x.shape, 3)
    results = []
    for in_place in (False, True):
        layer = layer_of(f'type: "BatchNorm" batch_norm_param {{ use_global_stats: {str(use_global).lower()} }}',
                         dtype=dtype)
        bottom = [blob_of(x, dtype)]
        top = [bottom[0] if in_place else Blob(dtype=dtype)]
        layer.initialize(bottom, top)
        set_stats(layer, [0.3, -0.2], [1.5, 0.7], 1.2)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy(), [b.data.copy() for b in layer.blobs]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    for a, b in zip(results[0][2], results[1][2]):
        np.testing.assert_array_equal(a, b)


def test_batch_norm_backward_uses_kept_output():
    # a later in-place layer may overwrite the top: backward uses the kept normalized output
    x = gaussian((4, 2, 3))
    layer = layer_of('type: "BatchNorm"')
    bottom, top = setup_run(layer, [x])
    top[0].diff[...] = gaussian(x.shape, 5)
    layer.backward(top, [True], bottom)
    expect = bottom[0].diff.copy()
    top[0].data[...] = 123.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, expect)


def test_batch_norm_param_specs_and_net():
    """Setup adds param { lr_mult: 0 } per blob (Caffe's LayerSetUp); the Net reads the
    specs after setup, so the statistics are not learned and get no gradient."""
    layer = layer_of('type: "BatchNorm"')
    setup_run(layer, [gaussian((2, 3))])
    assert [p.lr_mult for p in layer.layer_param.param] == [0, 0, 0]
    net = Net(net_from_string('''
        force_backward: false
        layer { name: "in" type: "Input" top: "x" top: "t"
                input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "h" top: "h" }
        layer { name: "sc" type: "Scale" bottom: "h" top: "h" scale_param { bias_term: true } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
    '''), TRAIN, dtype=np.float64)
    bn = net.layer_dict["bn"]
    assert bn.param_propagate_down == [False, False, False]
    ids = [net.learnable_params.index(b) for b in bn.blobs]
    assert [net.params_lr[i] for i in ids] == [0, 0, 0]
    net.blobs["x"].data[...] = gaussian((4, 3), 1)
    net.blobs["t"].data[...] = gaussian((4, 3), 2)
    net.forward()
    net.backward()
    assert bn.blobs[2].data[0] == 1.0
    np.testing.assert_array_equal(bn.blobs[0].diff, 0)
    assert np.abs(net.layer_dict["ip"].blobs[0].diff).sum() > 0


def test_batch_norm_param_spec_errors_and_loaded_blobs():
    with pytest.raises(ConfigError, match="cannot configure batch normalization statistics"):
        setup_run(layer_of('type: "BatchNorm" param { lr_mult: 1 }'), [gaussian((2, 3))])
    # explicit lr_mult 0 specs are fine (what Caffe-era prototxts carry)
    layer = layer_of('type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 }')
    setup_run(layer, [gaussian((2, 3))])
    assert len(layer.layer_param.param) == 3
    # loaded statistics are used as they are
    text = ('type: "BatchNorm" blobs { shape { dim: 2 } data: 2 data: 4 } blobs { shape { dim: 2 } data: 8 data: 2 } '
            'blobs { shape { dim: 1 } data: 2 }')
    layer = layer_of(text, TEST)
    x = gaussian((3, 2))
    _, top = setup_run(layer, [x])
    np.testing.assert_allclose(top[0].data, (x - [1.0, 2.0]) / np.sqrt(np.array([4.0, 1.0]) + EPS))
    with pytest.raises(ConfigError, match="statistics blob 0"):
        setup_run(layer_of(text, TEST), [gaussian((3, 5))])


# ============================================================================================
# Scale and Bias
# ============================================================================================

SHAPE = (2, 3, 4, 5)
SMALL = (2, 3, 2, 2)


def broadcast(operand, shape, axis):
    return operand.reshape((1,) * axis + operand.shape + (1,) * (len(shape) - axis - operand.ndim))


SCALE_CASES = {   # name: (definition, second bottom shape or None, axis)
    "Eltwise": ('type: "Scale" scale_param { axis: 0 }', SHAPE, 0),
    "BroadcastBegin": ('type: "Scale" scale_param { axis: 0 }', SHAPE[:2], 0),
    "BroadcastMiddle": ('type: "Scale"', SHAPE[1:3], 1),
    "BroadcastEnd": ('type: "Scale" scale_param { axis: 2 }', SHAPE[2:], 2),
    "Scalar": ('type: "Scale"', (), 0),
    "ScalarAxis2": ('type: "Scale" scale_param { axis: 2 }', (), 0),
    "NegativeAxis": ('type: "Scale" scale_param { axis: -2 }', SHAPE[2:], 2),
}


@pytest.mark.parametrize("name", sorted(SCALE_CASES))
@pytest.mark.parametrize("op", ["Scale", "Bias"])
def test_broadcast_forward_two_bottoms(name, op):
    text, shape, axis = SCALE_CASES[name]
    if op == "Bias":
        text = text.replace("Scale", op).replace("scale_param", "bias_param")
    x, s = gaussian(SHAPE, 1), gaussian(shape, 2)
    for in_place in (False, True):
        _, top = setup_run(layer_of(text), [x, s], in_place=in_place)
        b = broadcast(np.asarray(s), SHAPE, axis)
        np.testing.assert_allclose(top[0].data, x * b if op == "Scale" else x + b, rtol=1e-15)


def test_scale_forward_with_param_and_bias():
    x = gaussian(SHAPE)
    layer = layer_of('type: "Scale" scale_param { axis: 1 num_axes: 2 filler { type: "gaussian" } '
                     'bias_term: true bias_filler { type: "gaussian" } }')
    _, top = setup_run(layer, [x])
    assert [b.shape for b in layer.blobs] == [(3, 4), (3, 4)]
    s, b = (broadcast(blob.data, SHAPE, 1) for blob in layer.blobs)
    np.testing.assert_allclose(top[0].data, x * s + b, rtol=1e-14)


def test_scale_defaults():
    # learned scale defaults to 1 (identity); bias_filler defaults to constant 0; num_axes -1: to the end
    layer = layer_of('type: "Scale" scale_param { bias_term: true }')
    x = gaussian(SHAPE)
    _, top = setup_run(layer, [x])
    assert [b.shape for b in layer.blobs] == [(3,), (3,)]
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    np.testing.assert_array_equal(top[0].data, x)
    layer = layer_of('type: "Scale" scale_param { axis: 1 num_axes: -1 }')
    setup_run(layer, [x])
    assert layer.blobs[0].shape == SHAPE[1:]
    layer = layer_of('type: "Scale" scale_param { num_axes: 0 }')
    setup_run(layer, [x])
    assert layer.blobs[0].shape == () and layer.blobs[0].count == 1
    layer = layer_of('type: "Bias" bias_param { axis: 2 }')
    setup_run(layer, [x])
    assert layer.blobs[0].shape == (4,)
    np.testing.assert_array_equal(layer.blobs[0].data, 0)


def test_scale_two_bottoms_with_bias():
    # blobs: just the bias (after the second bottom's shape)
    x, s = gaussian(SHAPE, 1), gaussian((3, 4), 2)
    layer = layer_of('type: "Scale" scale_param { bias_term: true bias_filler { type: "constant" value: 0.5 } }')
    _, top = setup_run(layer, [x, s])
    assert [b.shape for b in layer.blobs] == [(3, 4)]
    np.testing.assert_allclose(top[0].data, x * broadcast(s, SHAPE, 1) + 0.5, rtol=1e-15)


def test_scale_hand_computed_backward():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    s = np.array([2.0, -1.0])
    layer = layer_of('type: "Scale" scale_param { axis: 1 }')
    bottom = [blob_of(x)]
    top = [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.blobs[0].data[...] = s
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data, [[2.0, -2.0], [6.0, -4.0]])
    top[0].diff[...] = [[1.0, 1.0], [0.5, 2.0]]
    layer.blobs[0].diff[...] = [100.0, 100.0]
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[2.0, -1.0], [1.0, -2.0]])
    np.testing.assert_array_equal(layer.blobs[0].diff, [100.0 + 1 + 1.5, 100.0 + 2 + 8])   # accumulated
    # from a second bottom: its diff is written, not accumulated
    layer = layer_of('type: "Scale"')
    bottom = [blob_of(x), blob_of(s)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = [[1.0, 1.0], [0.5, 2.0]]
    bottom[1].diff[...] = 100.0
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[1].diff, [2.5, 10.0])


def test_bias_hand_computed_backward():
    layer = layer_of('type: "Bias"')
    x, b = np.zeros((2, 2, 3)), np.array([1.0, -2.0])
    bottom = [blob_of(x), blob_of(b)]
    top = [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[:, 0], 1.0)
    np.testing.assert_array_equal(top[0].data[:, 1], -2.0)
    dy = gaussian((2, 2, 3), 3)
    top[0].diff[...] = dy
    bottom[1].diff[...] = 50.0
    layer.backward(top, [True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, dy)
    np.testing.assert_allclose(bottom[1].diff, dy.sum(axis=(0, 2)))
    learned = layer_of('type: "Bias"')
    bottom = [blob_of(x)]
    learned.initialize(bottom, top)
    learned.forward(bottom, top)
    learned.blobs[0].diff[...] = 50.0
    learned.backward(top, [False], bottom)
    np.testing.assert_allclose(learned.blobs[0].diff, 50.0 + dy.sum(axis=(0, 2)))


GRAD = GradientChecker(1e-2, 1e-3)


@pytest.mark.parametrize("name", sorted(SCALE_CASES))
@pytest.mark.parametrize("op", ["Scale", "Bias"])
def test_broadcast_gradient_two_bottoms(name, op):
    text, shape, axis = SCALE_CASES[name]
    if op == "Bias":
        text = text.replace("Scale", op).replace("scale_param", "bias_param")
    shape = SMALL if shape == SHAPE else tuple(SMALL[axis:axis + len(shape)])
    GRAD.check_gradient_exhaustive(layer_of(text), [blob_of(gaussian(SMALL, 1)), blob_of(gaussian(shape, 2))],
                                   [Blob(dtype=np.float64)])


PARAM_CASES = [
    'type: "Scale" scale_param { axis: 0 num_axes: -1 filler { type: "gaussian" } }',          # eltwise
    'type: "Scale" scale_param { num_axes: 2 filler { type: "gaussian" } }',
    'type: "Scale" scale_param { num_axes: 2 filler { type: "gaussian" } bias_term: true '
    'bias_filler { type: "gaussian" } }',
    'type: "Scale" scale_param { num_axes: 0 filler { type: "gaussian" } bias_term: true }',
    'type: "Bias" bias_param { axis: 2 filler { type: "gaussian" } }',
    'type: "Bias" bias_param { num_axes: 0 filler { type: "gaussian" } }',
]


@pytest.mark.parametrize("text", PARAM_CASES)
@pytest.mark.parametrize("in_place", [False, True])
def test_broadcast_gradient_with_param(text, in_place):
    layer = layer_of(text)
    if in_place:
        layer = Wrapped(layer, in_place=True)
    GRAD.check_gradient_exhaustive(layer, [blob_of(gaussian(SMALL, 1))], [Blob(dtype=np.float64)])


@pytest.mark.parametrize("text,second", [(PARAM_CASES[2], None), ('type: "Scale"', (3, 2)),
                                         ('type: "Scale" scale_param { bias_term: true }', (3,)),
                                         ('type: "Bias"', (3, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_broadcast_in_place_matches(text, second, dtype):
    # Caffe's TestBackwardEltwiseInPlace / TestBackwardBroadcastMiddleInPlace
    x, dy = gaussian(SMALL, 1), gaussian(SMALL, 3)
    results = []
    for in_place in (False, True):
        layer = layer_of(text, dtype=dtype)
        bottom = [blob_of(x, dtype)] + ([blob_of(gaussian(second, 2), dtype)] if second else [])
        top = [bottom[0] if in_place else Blob(dtype=dtype)]
        layer.initialize(bottom, top)
        for i, blob in enumerate(layer.blobs):
            blob.data[...] = gaussian(blob.shape, 10 + i)
        layer.forward(bottom, top)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True] * len(bottom), bottom)
        results.append([y] + [b.diff.copy() for b in bottom] + [b.diff.copy() for b in layer.blobs])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_broadcast_errors():
    with pytest.raises(ConfigError, match="dimension mismatch"):
        setup_run(layer_of('type: "Scale"'), [gaussian(SHAPE), gaussian((3, 5))])
    with pytest.raises(ConfigError, match="extends past"):
        setup_run(layer_of('type: "Bias" bias_param { axis: 3 }'), [gaussian(SHAPE), gaussian((5, 2))])
    with pytest.raises(ConfigError, match="num_axes"):
        setup_run(layer_of('type: "Scale" scale_param { num_axes: -2 }'), [gaussian(SHAPE)])
    with pytest.raises(ConfigError, match="extends past"):
        setup_run(layer_of('type: "Scale" scale_param { axis: 2 num_axes: 3 }'), [gaussian(SHAPE)])


def test_scale_loaded_blobs_not_refilled():
    text = ('type: "Scale" scale_param { bias_term: true } blobs { shape { dim: 2 } data: 2 data: 3 } '
            'blobs { shape { dim: 2 } data: 10 data: 20 }')
    layer = layer_of(text)
    _, top = setup_run(layer, [np.ones((1, 2))])
    np.testing.assert_array_equal(top[0].data, [[12.0, 23.0]])
    assert layer.bias_layer.blobs[0] is layer.blobs[1]


# ============================================================================================
# LRN
# ============================================================================================

def reference_lrn(x, size=5, alpha=1.0, beta=0.75, k=1.0, within=False):
    """Caffe's ReferenceLRNForward (test_lrn_layer.cpp)."""
    alpha, beta, k = (float(np.float32(v)) for v in (alpha, beta, k))
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    y = np.empty_like(x)
    for n in range(N):
        for c in range(C):
            for h in range(H):
                for w in range(W):
                    if within:
                        h0, w0 = max(h - pre, 0), max(w - pre, 0)
                        h1, w1 = min(h - pre + size, H), min(w - pre + size, W)
                        s = 1 + alpha / (size * size) * (x[n, c, h0:h1, w0:w1] ** 2).sum()
                    else:
                        c0, c1 = max(c - pre, 0), min(c - pre + size, C)
                        s = k + alpha / size * (x[n, c0:c1, h, w] ** 2).sum()
                    y[n, c, h, w] = x[n, c, h, w] * s ** -beta
    return y


LRN_CASES = {
    "AcrossChannels": ('type: "LRN"', dict()),
    "AcrossChannelsLargeRegion": ('type: "LRN" lrn_param { local_size: 15 }', dict(size=15)),
    "AcrossChannelsParams": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }',
                             dict(size=3, alpha=0.5, beta=0.6, k=2.0)),
    "WithinChannel": ('type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }',
                      dict(size=3, within=True)),
    "WithinChannel5": ('type: "LRN" lrn_param { local_size: 5 alpha: 2 beta: 0.5 k: 7 norm_region: WITHIN_CHANNEL }',
                       dict(size=5, alpha=2.0, beta=0.5, within=True)),    # k is not used within a channel
}


@pytest.mark.parametrize("name", sorted(LRN_CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_forward(name, dtype):
    text, ref = LRN_CASES[name]
    x = gaussian((2, 7, 3, 3))
    _, top = setup_run(layer_of(text, dtype=dtype), [x], dtype)
    assert top[0].shape == (2, 7, 3, 3)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(top[0].data, reference_lrn(x, **ref), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(LRN_CASES))
def test_lrn_gradient(name):
    text, _ = LRN_CASES[name]
    shape = (1, 7, 2, 2) if "Across" in name else (1, 2, 4, 4)
    GradientChecker(1e-2, 1e-2).check_gradient_exhaustive(layer_of(text), [blob_of(gaussian(shape))],
                                                          [Blob(dtype=np.float64)])


def test_lrn_backward_independent_of_top_data():
    # a later in-place layer may overwrite the top; LRN's backward recomputes what it needs
    for text, _ in LRN_CASES.values():
        layer = layer_of(text)
        bottom, top = setup_run(layer, [gaussian((1, 4, 3, 3))])
        top[0].diff[...] = gaussian((1, 4, 3, 3), 2)
        layer.backward(top, [True], bottom)
        expect = bottom[0].diff.copy()
        top[0].data[...] = 0
        layer.backward(top, [True], bottom)
        np.testing.assert_array_equal(bottom[0].diff, expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lrn_power_075_error_bound(dtype):
    # beta = 0.75 takes 1 / (sqrt(s) sqrt(sqrt(s))) instead of pow: within LRN_POWER_075_ULPS units
    # in the last place of s ** -0.75 (computed in long double), over scales from k = 1 up and
    # tiny to huge; other betas keep pow.
    from dltrain.layers.normalization import LRN_POWER_075_ULPS, lrn_powers
    rng = np.random.default_rng(5)
    scale = np.concatenate([1 + rng.random(20000) * 10, 10.0 ** rng.uniform(-30, 30, 20000)]).astype(dtype)
    exact = scale.astype(np.longdouble) ** np.longdouble(-0.75)
    out = np.empty_like(scale)
    lrn_powers(scale, 0, scale.size, dtype(-0.75), out)
    ulps = np.abs(out - exact) / np.spacing(exact.astype(dtype))
    assert ulps.max() <= LRN_POWER_075_ULPS
    assert ulps.max() > 0.5          # not pow's correctly rounded values: the other route ran
    lrn_powers(scale, 0, scale.size, dtype(-0.6), out)
    exact = scale.astype(np.longdouble) ** np.longdouble(dtype(-0.6))
    assert (np.abs(out - exact) / np.spacing(exact.astype(dtype))).max() <= 1      # pow


def test_lrn_errors():
    with pytest.raises(ConfigError, match="odd"):
        setup_run(layer_of('type: "LRN" lrn_param { local_size: 4 }'), [gaussian((1, 3, 2, 2))])
    with pytest.raises(ConfigError, match="4 axes"):
        setup_run(layer_of('type: "LRN"'), [gaussian((3, 2))])
    with pytest.raises(ConfigError, match="in-place"):
        setup_run(layer_of('type: "LRN"'), [gaussian((1, 3, 2, 2))], in_place=True)


# ============================================================================================
# MVN
# ============================================================================================

@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mvn_forward(across, dtype):
    # Caffe's TestForward / TestForwardAcrossChannels: zero mean, unit variance per row
    x = gaussian(SHAPE) * 2 + 3
    text = 'type: "MVN"' + (' mvn_param { across_channels: true }' if across else '')
    _, top = setup_run(layer_of(text, dtype=dtype), [x], dtype)
    y = top[0].data.astype(np.float64).reshape((2, -1) if across else (6, -1))
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-3)
    np.testing.assert_allclose((y * y).mean(axis=1), 1, atol=1e-3)
    rows = x.reshape(y.shape)
    eps = float(np.float32(1e-9))
    expect = (rows - rows.mean(1, keepdims=True)) / (rows.std(1, keepdims=True) + eps)   # eps on the std
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expect, rtol=tol, atol=tol)


def test_mvn_mean_only_and_eps():
    x = gaussian(SHAPE)
    _, top = setup_run(layer_of('type: "MVN" mvn_param { normalize_variance: false }'), [x])
    np.testing.assert_allclose(top[0].data, x - x.mean(axis=(2, 3), keepdims=True), atol=1e-14)
    x = np.array([[[[1.0, 3.0]]]])
    _, top = setup_run(layer_of('type: "MVN" mvn_param { eps: 0.5 }'), [x])
    np.testing.assert_allclose(top[0].data, [[[[-1 / 1.5, 1 / 1.5]]]])     # (x - 2) / (1 + 0.5)


def test_mvn_legacy_shape():
    _, top = setup_run(layer_of('type: "MVN"'), [gaussian((3, 4))])
    assert top[0].shape == (3, 4, 1, 1)                     # Caffe reshapes to (num, channels, height, width)
    np.testing.assert_allclose(top[0].data, 0, atol=1e-12)  # one value per row: x - mean
    with pytest.raises(ConfigError, match="at most 4 axes"):
        setup_run(layer_of('type: "MVN"'), [gaussian((1, 2, 2, 2, 2))])


MVN_CASES = ['type: "MVN"', 'type: "MVN" mvn_param { normalize_variance: false }',
             'type: "MVN" mvn_param { across_channels: true }']


@pytest.mark.parametrize("text", MVN_CASES)
def test_mvn_gradient(text):
    GRAD.check_gradient_exhaustive(layer_of(text), [blob_of(gaussian(SMALL))], [Blob(dtype=np.float64)])


@pytest.mark.parametrize("text", MVN_CASES)
def test_mvn_in_place(text):
    x, dy = gaussian(SMALL), gaussian(SMALL, 4)
    results = []
    for in_place in (False, True):
        layer = layer_of(text)
        bottom, top = setup_run(layer, [x], in_place=in_place)
        y = top[0].data.copy()
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        results.append((y, bottom[0].diff.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-14, atol=1e-15)
    GRAD.check_gradient_exhaustive(Wrapped(layer_of(text), in_place=True), [blob_of(x)], [Blob(dtype=np.float64)])


def test_registered():
    from dlcore import layer_types
    assert {"BatchNorm", "Scale", "Bias", "LRN", "MVN"} <= set(layer_types())


def test_batch_norm_statistics_untouched_by_the_solver():
    """SGD with momentum and weight decay moves the learned weights but not BatchNorm's
    statistics (lr_mult 0): after two iterations s = 1 + lambda exactly; the TEST net
    (sharing the trained blobs) normalizes with the global statistics."""
    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    net = '''
        layer { name: "data" type: "DummyData" top: "x" top: "t"
                dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 2 }
                                   data_filler { type: "gaussian" } data_filler { type: "gaussian" } } }
        layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "h" top: "h" }
        layer { name: "sc" type: "Scale" bottom: "h" top: "h" scale_param { bias_term: true } }
        layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "t" top: "loss" }
    '''
    solver = get_solver(solver_from_string(
        f'net_param {{ {net} }} base_lr: 0.1 momentum: 0.9 weight_decay: 0.5 lr_policy: "fixed" max_iter: 2 '
        'display: 0 test_iter: 1 test_interval: 100 test_initialization: false random_seed: 3'), dtype=np.float64)
    bn = solver.net.layer_dict["bn"]
    w0 = solver.net.layer_dict["ip"].blobs[0].data.copy()
    solver.step(2)
    assert bn.blobs[2].data[0] == LAMBDA + 1
    assert not np.array_equal(solver.net.layer_dict["ip"].blobs[0].data, w0)
    solver.test(0)                                  # shares the trained blobs, as Caffe's Test
    test_bn = solver.test_nets[0].layer_dict["bn"]
    assert test_bn.use_global_stats and not bn.use_global_stats
    np.testing.assert_array_equal(test_bn.blobs[0].data, bn.blobs[0].data)
    assert bn.blobs[2].data[0] == LAMBDA + 1        # a TEST forward does not update them
