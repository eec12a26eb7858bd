"""HingeLoss, SigmoidCrossEntropyLoss, MultinomialLogisticLoss, ContrastiveLoss and InfogainLoss
(after Caffe's test_hinge_loss_layer.cpp, test_sigmoid_cross_entropy_loss_layer.cpp,
test_multinomial_logistic_loss_layer.cpp, test_contrastive_loss_layer.cpp, test_infogain_loss_layer.cpp).
"""
import math

import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer
from dlcore.gradcheck import GradientChecker
from dltrain.proto import caffe_pb2

THRESH = float(np.float32(1e-20))


def layer_of(text, dtype=np.float64):
    return create_layer(f'name: "l" {text}', dtype=dtype)


def blob_of(values, dtype=np.float64):
    values = np.asarray(values, dtype=np.float64)
    blob = Blob(*values.shape, dtype=dtype)
    blob.data[...] = values
    return blob


def run(text, bottoms, weight=1.0, propagate_down=None, tops=1, dtype=np.float64):
    layer = layer_of(text, dtype)
    bottom = [blob_of(b, dtype) for b in bottoms]
    top = [Blob(dtype=dtype) for _ in range(tops)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = weight
    if propagate_down is None:
        propagate_down = [True] + [False] * (len(bottom) - 1)
    layer.backward(top, propagate_down, bottom)
    return layer, bottom, top


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --- HingeLoss ------------------------------------------------------------------------------

HINGE_X = [[1.0, -2.0, 0.5], [0.2, 0.3, -1.5]]
HINGE_LABEL = [0, 2]


def test_hinge_l1_by_hand():
    # margins: row 0 (label 0): [1-1, 1-2, 1+0.5] -> [0, 0, 1.5]; row 1 (label 2): [1.2, 1.3, 1+1.5] -> 2.5
    _, bottom, top = run('type: "HingeLoss"', [HINGE_X, HINGE_LABEL])
    assert top[0].shape == ()
    assert float(top[0].data) == pytest.approx((1.5 + 1.2 + 1.3 + 2.5) / 2, rel=1e-14)
    np.testing.assert_allclose(bottom[0].diff, [[0, 0, 0.5], [0.5, 0.5, -0.5]], rtol=1e-14)


def test_hinge_l2_by_hand():
    _, bottom, top = run('type: "HingeLoss" hinge_loss_param { norm: L2 }', [HINGE_X, HINGE_LABEL], weight=2.0)
    assert float(top[0].data) == pytest.approx((1.5 ** 2 + 1.2 ** 2 + 1.3 ** 2 + 2.5 ** 2) / 2, rel=1e-14)
    # d/dx of sum(m^2)/N: 2 m (-+1) / N, times the loss weight 2
    np.testing.assert_allclose(bottom[0].diff, 2.0 * np.array([[0, 0, 1.5], [1.2, 1.3, -2.5]]), rtol=1e-14)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_against_numpy(norm):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (5, 4, 1, 1))
    labels = rng.integers(0, 4, 5).astype(np.float64)
    sign = np.ones((5, 4))
    sign[np.arange(5), labels.astype(int)] = -1
    margin = np.maximum(0, 1 + sign * x.reshape(5, 4))
    expected = (margin.sum() if norm == "L1" else (margin ** 2).sum()) / 5
    _, _, top = run(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x, labels])
    assert float(top[0].data) == pytest.approx(expected, rel=1e-13)


def hinge_blobs(rng_seed=1701, shape=(6, 5)):
    rng = np.random.default_rng(rng_seed)
    data = blob_of(rng.normal(0, 10, shape))     # Caffe fills with a Gaussian of std 10
    label = blob_of(rng.integers(0, shape[1], shape[0]))
    return [data, label]


def test_hinge_gradient_l1():
    layer = layer_of('type: "HingeLoss"')
    GradientChecker(1e-2, 2e-3, 1701, 1, 0.01).check_gradient_exhaustive(layer, hinge_blobs(), [Blob(dtype=np.float64)],
                                                                         0)


def test_hinge_gradient_l2():
    layer = layer_of('type: "HingeLoss" hinge_loss_param { norm: L2 }')
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(layer, hinge_blobs(), [Blob(dtype=np.float64)], 0)


def test_hinge_bad_label_and_label_shape():
    with pytest.raises(DLTrainError, match="label 3 at position 1 of bottom 1"):
        run('type: "HingeLoss"', [HINGE_X, [0, 3]])
    with pytest.raises(ConfigError, match="one label per item"):
        run('type: "HingeLoss"', [HINGE_X, [[0, 1], [1, 0]]])
    with pytest.raises(DLTrainError, match="cannot backpropagate to label"):
        run('type: "HingeLoss"', [HINGE_X, HINGE_LABEL], propagate_down=[True, True])


def test_hinge_float32():
    _, bottom, top = run('type: "HingeLoss"', [HINGE_X, HINGE_LABEL], dtype=np.float32)
    assert top[0].data.dtype == np.float32 and bottom[0].diff.dtype == np.float32
    assert float(top[0].data) == pytest.approx(3.25, rel=1e-6)


# --- SigmoidCrossEntropyLoss ------------------------------------------------------------------

def ref_sigmoid_ce(x, t, ignore=None):
    """Per-element loss and gradient (unnormalized) and the valid mask."""
    s = sigmoid(x)
    loss = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    valid = np.ones(x.shape, bool) if ignore is None else t.astype(int) != ignore
    return np.where(valid, loss, 0), np.where(valid, s - t, 0), valid


def test_sigmoid_ce_by_hand():
    # x = 0, t = 1: log 2; x = 2, t = 0: log(1 + e^2); x = -3, t = 0.5: 0.5 log(1+e^3) + 0.5 log(1+e^-3)
    x, t = [[0.0, 2.0, -3.0]], [[1.0, 0.0, 0.5]]
    expected = math.log(2) + math.log(1 + math.e ** 2) + 0.5 * math.log(1 + math.e ** 3) + 0.5 * math.log(
        1 + math.e ** -3)
    _, bottom, top = run('type: "SigmoidCrossEntropyLoss"', [x, t])
    assert float(top[0].data) == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(bottom[0].diff, [[0.5 - 1, sigmoid(2.0), sigmoid(-3.0) - 0.5]], rtol=1e-13)


MODES = [("", "BATCH_SIZE"),                      # SigmoidCrossEntropyLoss's own default
         ("normalization: VALID", "VALID"), ("normalization: FULL", "FULL"),
         ("normalization: BATCH_SIZE", "BATCH_SIZE"), ("normalization: NONE", "NONE"),
         ("normalize: true", "VALID"), ("normalize: false", "BATCH_SIZE")]


@pytest.mark.parametrize("text,mode", MODES)
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_ce_normalization(text, mode, ignore):
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, (3, 4))
    t = rng.uniform(0, 1, (3, 4))
    if ignore is not None:
        t.reshape(-1)[::3] = ignore
        text += f" ignore_label: {ignore}"
    loss, grad, valid = ref_sigmoid_ce(x, t, ignore)
    norm = {"FULL": 12, "VALID": valid.sum(), "BATCH_SIZE": 3, "NONE": 1}[mode]
    _, bottom, top = run(f'type: "SigmoidCrossEntropyLoss" loss_param {{ {text} }}', [x, t], weight=1.5)
    assert float(top[0].data) == pytest.approx(loss.sum() / norm, rel=1e-12)
    np.testing.assert_allclose(bottom[0].diff, 1.5 * grad / norm, rtol=1e-12, atol=1e-16)
    if ignore is not None:
        assert (bottom[0].diff.reshape(-1)[::3] == 0).all()


def test_sigmoid_ce_is_stable_for_large_inputs():
    _, bottom, top = run('type: "SigmoidCrossEntropyLoss"', [[[1000.0, -1000.0]], [[0.0, 1.0]]],
                         dtype=np.float32)
    assert float(top[0].data) == pytest.approx(2000.0, rel=1e-6)
    np.testing.assert_allclose(bottom[0].diff, [[1.0, -1.0]])


def test_sigmoid_ce_gradient():
    rng = np.random.default_rng(1701)
    bottom = [blob_of(rng.normal(0, 1, (5, 4))), blob_of(rng.uniform(0, 1, (5, 4)))]
    layer = layer_of('type: "SigmoidCrossEntropyLoss" loss_weight: 3')
    GradientChecker(1e-2, 1e-2, 1701).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], 0)


def test_sigmoid_ce_count_mismatch():
    with pytest.raises(ConfigError, match="same count"):
        run('type: "SigmoidCrossEntropyLoss"', [np.zeros((2, 3)), np.zeros((2, 2))])


# --- MultinomialLogisticLoss -------------------------------------------------------------------

def test_multinomial_by_hand():
    p = [[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    _, bottom, top = run('type: "MultinomialLogisticLoss"', [p, [1, 2]], weight=2.0)
    assert float(top[0].data) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-14)
    np.testing.assert_allclose(bottom[0].diff, [[0, -2.0 / 2 / 0.5, 0], [0, 0, -2.0 / 2 / 0.8]], rtol=1e-14)


def test_multinomial_clamps_at_the_threshold():
    _, bottom, top = run('type: "MultinomialLogisticLoss"', [[[0.0, 1.0]], [0]])
    assert float(top[0].data) == pytest.approx(-math.log(THRESH), rel=1e-14)
    assert bottom[0].diff[0, 0] == pytest.approx(-1 / THRESH) and bottom[0].diff[0, 1] == 0


def test_multinomial_gradient():
    rng = np.random.default_rng(1701)
    p = rng.uniform(0, 1, (5, 4))
    p /= p.sum(axis=1, keepdims=True)               # Caffe: PositiveUnitballFiller
    bottom = [blob_of(p), blob_of(rng.integers(0, 4, 5))]
    layer = layer_of('type: "MultinomialLogisticLoss"')
    GradientChecker(1e-2, 2e-2, 1701, 0, 0.05).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], 0)


def test_multinomial_bad_label():
    with pytest.raises(DLTrainError, match="label -1 at position 0"):
        run('type: "MultinomialLogisticLoss"', [[[0.5, 0.5]], [-1]])


# --- ContrastiveLoss ----------------------------------------------------------------------------

CON_A = [[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]]
CON_B = [[0.0, 0.0], [0.3, 0.4], [0.0, 0.0]]
CON_Y = [1, 0, 0]


def test_contrastive_by_hand():
    # d^2 = [1, 0.25, 25]: similar adds 1; dissimilar max(1 - 0.5, 0)^2 = 0.25 and max(1 - 5, 0)^2 = 0
    _, bottom, top = run('type: "ContrastiveLoss"', [CON_A, CON_B, CON_Y], propagate_down=[True, True, False])
    assert float(top[0].data) == pytest.approx((1 + 0.25) / 3 / 2, rel=1e-14)
    alpha = 1 / 3
    beta = -alpha * 0.5 / (0.5 + 1e-4)
    expected = np.array([[alpha * 1, 0], [beta * -0.3, beta * -0.4], [0, 0]])
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-13)
    np.testing.assert_allclose(bottom[1].diff, -expected, rtol=1e-13)


def test_contrastive_legacy_by_hand():
    text = 'type: "ContrastiveLoss" contrastive_loss_param { legacy_version: true margin: 1.0 }'
    _, bottom, top = run(text, [CON_A, CON_B, CON_Y], propagate_down=[True, True, False])
    assert float(top[0].data) == pytest.approx((1 + 0.75) / 3 / 2, rel=1e-14)
    alpha = 1 / 3
    expected = np.array([[alpha, 0], [-alpha * -0.3, -alpha * -0.4], [0, 0]])
    np.testing.assert_allclose(bottom[0].diff, expected, rtol=1e-13)
    np.testing.assert_allclose(bottom[1].diff, -expected, rtol=1e-13)


def test_contrastive_margin_and_4d_bottoms():
    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (6, 3, 1, 1)), rng.uniform(-1, 1, (6, 3, 1, 1))
    y = np.array([1, 0, 1, 0, 0, 1], float).reshape(6, 1, 1, 1)
    d = np.sqrt(((a - b) ** 2).reshape(6, 3).sum(1))
    sim = y.reshape(-1) != 0
    expected = (np.where(sim, d ** 2, np.maximum(2.0 - d, 0) ** 2)).sum() / 6 / 2
    _, _, top = run('type: "ContrastiveLoss" contrastive_loss_param { margin: 2 }', [a, b, y],
                    propagate_down=[False, False, False])
    assert float(top[0].data) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("legacy", ["false", "true"])
def test_contrastive_gradient(legacy):
    rng = np.random.default_rng(1701)
    bottom = [blob_of(rng.uniform(-1, 1, (8, 2))), blob_of(rng.uniform(-1, 1, (8, 2))),
              blob_of(rng.integers(0, 2, 8))]
    layer = layer_of(f'type: "ContrastiveLoss" contrastive_loss_param {{ legacy_version: {legacy} }}')
    checker = GradientChecker(1e-2, 1e-2, 1701)
    checker.check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], 0)
    checker.check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], 1)


def test_contrastive_shape_errors():
    with pytest.raises(ConfigError, match="same N and C"):
        run('type: "ContrastiveLoss"', [np.zeros((2, 3)), np.zeros((2, 2)), np.zeros(2)])
    with pytest.raises(ConfigError, match="same N and C"):
        run('type: "ContrastiveLoss"', [np.zeros((2, 3, 2, 1)), np.zeros((2, 3, 2, 1)), np.zeros(2)])
    with pytest.raises(ConfigError, match="same N and C"):
        run('type: "ContrastiveLoss"', [np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(2)])
    with pytest.raises(ConfigError, match="one value per pair"):
        run('type: "ContrastiveLoss"', [np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2))])


# --- InfogainLoss ---------------------------------------------------------------------------------

def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def infogain_case(seed=1701):
    """Caffe's test: data 4x2x5x2 in U(-0.5, 2), labels 4x2x1x2 in 0..4, H 1x1x5x5 in U(0.1, 2), axis 2."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.5, 2, (4, 2, 5, 2)), rng.integers(0, 5, (4, 2, 1, 2)).astype(float), \
        rng.uniform(0.1, 2, (1, 1, 5, 5))


def ref_infogain(x, labels, H, axis, ignore=None):
    """(loss sum, gradient sum, valid count, prob) with the class axis moved last."""
    prob = np_softmax(x, axis)
    p = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    lab = labels.reshape(-1).astype(int)
    Hm = H.reshape(x.shape[axis], x.shape[axis])
    valid = np.ones(len(lab), bool) if ignore is None else lab != ignore
    safe = np.where(valid, lab, 0)
    loss = -(Hm[safe] * np.log(np.maximum(p, THRESH)))[valid].sum()
    grad = p * Hm[safe].sum(axis=1, keepdims=True) - Hm[safe]
    grad[~valid] = 0
    grad = np.moveaxis(grad.reshape(np.moveaxis(prob, axis, -1).shape), -1, axis)
    return loss, grad, valid.sum(), prob


def test_infogain_caffe_case_with_prob_top():
    x, labels, H = infogain_case()
    text = 'type: "InfogainLoss" infogain_loss_param { axis: 2 } loss_weight: 1 loss_weight: 0'
    _, bottom, top = run(text, [x, labels, H], tops=2)
    loss, grad, count, prob = ref_infogain(x, labels, H, 2)
    assert top[1].shape == x.shape
    np.testing.assert_allclose(top[1].data, prob, rtol=1e-13)
    assert float(top[0].data) == pytest.approx(loss / (4 * 2 * 2), rel=1e-12)
    np.testing.assert_allclose(bottom[0].diff, grad / (4 * 2 * 2), rtol=1e-12, atol=1e-16)


def write_matrix(path, H, legacy=False):
    proto = caffe_pb2.BlobProto()
    if legacy:
        proto.num, proto.channels, proto.height, proto.width = H.shape
    else:
        proto.shape.dim.extend(H.shape)
    proto.data.extend(H.ravel().tolist())
    path.write_bytes(proto.SerializeToString())
    return str(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_infogain_matrix_from_file_matches_third_bottom(tmp_path, legacy):
    x, labels, H = infogain_case(3)
    H = H.astype(np.float32).astype(np.float64)      # .binaryproto stores floats
    source = write_matrix(tmp_path / "H.binaryproto", H, legacy)
    _, b3, t3 = run('type: "InfogainLoss" infogain_loss_param { axis: 2 }', [x, labels, H])
    _, b2, t2 = run(f'type: "InfogainLoss" infogain_loss_param {{ axis: 2 source: "{source}" }}', [x, labels])
    assert float(t2[0].data) == float(t3[0].data)
    np.testing.assert_array_equal(b2[0].diff, b3[0].diff)


@pytest.mark.parametrize("mode", ["VALID", "FULL", "BATCH_SIZE", "NONE"])
def test_infogain_ignore_label_and_normalization(mode):
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2, (3, 4, 2))
    labels = rng.integers(0, 4, (3, 2)).astype(float)
    labels[0, 1] = labels[2, 0] = 7          # ignored (out of range otherwise)
    H = rng.uniform(0, 1, (4, 4))
    loss, grad, count, _ = ref_infogain(x, labels, H, 1, ignore=7)
    norm = {"VALID": count, "FULL": 6, "BATCH_SIZE": 3, "NONE": 1}[mode]
    text = f'type: "InfogainLoss" loss_param {{ ignore_label: 7 normalization: {mode} }}'
    _, bottom, top = run(text, [x, labels, H], weight=0.5)
    assert float(top[0].data) == pytest.approx(loss / norm, rel=1e-12)
    np.testing.assert_allclose(bottom[0].diff, 0.5 * grad / norm, rtol=1e-12, atol=1e-16)


def test_infogain_identity_matrix_is_softmax_loss():
    rng = np.random.default_rng(6)
    x = rng.normal(0, 1, (5, 3))
    labels = rng.integers(0, 3, 5).astype(float)
    _, b1, t1 = run('type: "InfogainLoss"', [x, labels, np.eye(3)])
    _, b2, t2 = run('type: "SoftmaxWithLoss"', [x, labels])
    assert float(t1[0].data) == pytest.approx(float(t2[0].data), rel=1e-13)
    np.testing.assert_allclose(b1[0].diff, b2[0].diff, rtol=1e-12, atol=1e-16)


def test_infogain_gradient():
    x, labels, H = infogain_case()
    layer = layer_of('type: "InfogainLoss" infogain_loss_param { axis: 2 }')
    bottom = [blob_of(x), blob_of(labels), blob_of(H)]
    GradientChecker(1e-4, 2e-2, 1701).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], 0)


def test_infogain_errors(tmp_path):
    x, labels, H = infogain_case()
    with pytest.raises(ConfigError, match="infogain matrix H must be given"):
        run('type: "InfogainLoss"', [x, labels])
    with pytest.raises(ConfigError, match="normalize is deprecated"):
        run('type: "InfogainLoss" loss_param { normalize: true }', [x, labels, H])
    with pytest.raises(ConfigError, match="H must be 2 x 2"):
        run('type: "InfogainLoss"', [x, np.zeros((4, 5, 2)), H])   # axis 1: 2 labels, H is 5 x 5
    with pytest.raises(ConfigError, match="number of labels must match"):
        run('type: "InfogainLoss" infogain_loss_param { axis: 2 }', [x, labels[:, :1], H])
    with pytest.raises(ConfigError, match="cannot read"):
        run(f'type: "InfogainLoss" infogain_loss_param {{ source: "{tmp_path}/none.binaryproto" axis: 2 }}',
            [x, labels])
    with pytest.raises(DLTrainError, match="cannot backpropagate to infogain"):
        run('type: "InfogainLoss" infogain_loss_param { axis: 2 }', [x, labels, H],
            propagate_down=[True, False, True])
    bad = labels.copy()
    bad.reshape(-1)[3] = 5
    with pytest.raises(DLTrainError, match="label 5 at position 3 of bottom 1"):
        run('type: "InfogainLoss" infogain_loss_param { axis: 2 }', [x, bad, H])


# --- in a net ---------------------------------------------------------------------------------------

def test_losses_in_a_net_default_to_loss_weight_one():
    from dlcore import Net
    from dlcore.config import net_from_string
    text = """
    layer { name: "d" type: "DummyData" top: "x" top: "t" top: "l"
            dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } shape { dim: 4 }
                               data_filler { type: "uniform" } data_filler { type: "uniform" }
                               data_filler { type: "constant" value: 1 } } }
    layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "sce" }
    layer { name: "hinge" type: "HingeLoss" bottom: "t" bottom: "l" top: "hinge" }
    """
    net = Net(net_from_string(text), phase=0)
    net.forward()
    x, t = net.blobs["x"].data, net.blobs["t"].data
    loss, _, _ = ref_sigmoid_ce(x.astype(np.float64), t.astype(np.float64))
    assert float(net.blobs["sce"].data) == pytest.approx(loss.sum() / 4, rel=1e-5)
    assert net.layer_dict["sce"].loss_weights == [1.0] and net.layer_dict["hinge"].loss_weights == [1.0]
