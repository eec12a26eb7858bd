"""Softmax, SoftmaxWithLoss, EuclideanLoss and Accuracy (after Caffe's tests)."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer
from dlcore.gradcheck import GradientChecker, make_blobs

FLT_MIN = float(np.finfo(np.float32).tiny)


def layer_of(text, dtype=np.float64):
    return create_layer(f'name: "l" {text}', dtype=dtype)


def blob_of(values, dtype=np.float64):
    values = np.asarray(values, dtype=np.float64)
    blob = Blob(*values.shape, dtype=dtype)
    blob.data[...] = values
    return blob


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --- Softmax ------------------------------------------------------------------

@pytest.mark.parametrize("axis,shape", [(1, (2, 5, 2, 3)), (-1, (3, 4)), (0, (4, 3)), (2, (2, 3, 4))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_forward(axis, shape, dtype):
    x = np.random.default_rng(1).normal(0, 3, shape)
    bottom, top = blob_of(x, dtype), Blob(dtype=dtype)
    layer = layer_of(f'type: "Softmax" softmax_param {{ axis: {axis} }}', dtype)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    assert top.shape == shape and top.data.dtype == dtype
    np.testing.assert_allclose(top.data.sum(axis=axis), 1.0, atol=1e-3)
    np.testing.assert_allclose(top.data, np_softmax(x, axis), atol=1e-4)
    if dtype == np.float64:
        np.testing.assert_allclose(top.data, np_softmax(x, axis), rtol=1e-13, atol=1e-15)


def test_softmax_is_stable_for_large_inputs():
    bottom, top = blob_of([[1000.0, 1001.0, -1000.0]], np.float32), Blob(dtype=np.float32)
    layer = layer_of('type: "Softmax"', np.float32)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    assert np.isfinite(top.data).all()
    np.testing.assert_allclose(top.data, [[1 / (1 + np.e), np.e / (1 + np.e), 0.0]], rtol=1e-6)


@pytest.mark.parametrize("axis,shape", [(1, (2, 3, 2)), (-1, (2, 4))])
def test_softmax_gradient(axis, shape):
    layer = layer_of(f'type: "Softmax" softmax_param {{ axis: {axis} }}')
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, make_blobs([shape]), [Blob(dtype=np.float64)])


def test_softmax_in_place():
    x = np.random.default_rng(2).normal(size=(3, 4))
    dy = np.random.default_rng(3).normal(size=(3, 4))
    results = []
    for in_place in (False, True):
        bottom = blob_of(x)
        top = bottom if in_place else Blob(dtype=np.float64)
        layer = layer_of('type: "Softmax"')
        layer.initialize([bottom], [top])
        layer.forward([bottom], [top])
        y = top.data.copy()
        top.diff[...] = dy
        layer.backward([top], [True], [bottom])
        results.append((y, bottom.diff.copy()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-14)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-14)


# --- SoftmaxWithLoss --------------------------------------------------------------

def ref_softmax_loss(x, labels, axis=1, ignore=None, mode="VALID"):
    """NumPy reference: (loss, d loss / d x) for loss weight 1."""
    prob = np_softmax(x, axis)
    p = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    lab = labels.reshape(-1).astype(int)
    valid = np.ones(len(lab), bool) if ignore is None else lab != ignore
    picked = p[np.arange(len(lab)), np.where(valid, lab, 0)]
    loss = -np.log(np.maximum(picked, FLT_MIN))[valid].sum()
    outer = int(np.prod(x.shape[:axis]))
    norm = {"FULL": len(lab), "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    norm = max(1.0, float(norm))
    grad = p.copy()
    grad[np.arange(len(lab))[valid], lab[valid]] -= 1
    grad[~valid] = 0
    grad = np.moveaxis(grad.reshape(np.moveaxis(prob, axis, -1).shape), -1, axis)
    return loss / norm, grad / norm


def softmax_loss_case(rng, shape=(2, 3, 2, 2), axis=1, ignore=None):
    x = rng.normal(0, 2, shape)
    label_shape = shape[:axis] + shape[axis + 1:]
    labels = rng.integers(0, shape[axis], label_shape).astype(np.float64)
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return x, labels


def run_softmax_loss(text, x, labels, weight=1.0, tops=1, dtype=np.float64):
    layer = layer_of(f'type: "SoftmaxWithLoss" {text}', dtype)
    bottom = [blob_of(x, dtype), blob_of(labels, dtype)]
    top = [Blob(dtype=dtype) for _ in range(tops)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = weight
    layer.backward(top, [True, False], bottom)
    return layer, bottom, top


NORMALIZATIONS = [   # loss_param contents -> the mode in force
    ("", "VALID"),
    ("normalization: VALID", "VALID"),
    ("normalization: FULL", "FULL"),
    ("normalization: BATCH_SIZE", "BATCH_SIZE"),
    ("normalization: NONE", "NONE"),
    ("normalize: true", "VALID"),
    ("normalize: false", "BATCH_SIZE"),
    ("normalize: false normalization: FULL", "FULL"),   # normalization wins
]


@pytest.mark.parametrize("text,mode", NORMALIZATIONS)
@pytest.mark.parametrize("ignore", [None, 1, -1])
def test_softmax_loss_against_numpy(text, mode, ignore):
    rng = np.random.default_rng(7)
    x, labels = softmax_loss_case(rng, ignore=ignore)
    if ignore is not None:
        text += f" ignore_label: {ignore}"
    loss, grad = ref_softmax_loss(x, labels, ignore=ignore, mode=mode)
    _, bottom, top = run_softmax_loss(f"loss_param {{ {text} }}", x, labels, weight=3.0)
    assert top[0].shape == ()
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, 3.0 * grad, rtol=1e-12, atol=1e-15)


def test_softmax_loss_other_axis():
    rng = np.random.default_rng(8)
    x, labels = softmax_loss_case(rng, shape=(2, 2, 3), axis=2)
    loss, grad = ref_softmax_loss(x, labels, axis=2)
    _, bottom, top = run_softmax_loss("softmax_param { axis: 2 }", x, labels)
    np.testing.assert_allclose(top[0].data, loss, rtol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, grad, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("text", ["", "loss_param { ignore_label: 2 normalization: FULL }",
                                  "loss_param { normalization: BATCH_SIZE }", "loss_param { normalize: false }"])
def test_softmax_loss_gradient(text):
    rng = np.random.default_rng(9)
    x, labels = softmax_loss_case(rng, shape=(2, 4, 2, 1))
    labels.reshape(-1)[0] = 2
    bottom = [blob_of(x), blob_of(labels)]
    layer = layer_of(f'type: "SoftmaxWithLoss" {text}')
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)], check_bottom=0)


def test_softmax_loss_float32_and_clamp():
    # The label's probability underflows to 0 in float32: Caffe clamps it at FLT_MIN.
    x = np.array([[0.0, 200.0]])
    _, _, top = run_softmax_loss("", x, np.array([0.0]), dtype=np.float32)
    assert top[0].data.dtype == np.float32
    np.testing.assert_allclose(top[0].data, -np.log(FLT_MIN), rtol=1e-6)


def test_softmax_loss_all_ignored_is_zero():
    x = np.zeros((2, 3))
    _, bottom, top = run_softmax_loss("loss_param { ignore_label: 0 }", x, np.zeros(2))
    assert top[0].data == 0.0
    np.testing.assert_array_equal(bottom[0].diff, 0.0)


def test_softmax_loss_second_top_is_probability():
    rng = np.random.default_rng(10)
    x, labels = softmax_loss_case(rng)
    layer, _, top = run_softmax_loss("", x, labels, tops=2)
    assert layer.loss_weights == [1.0, 0.0]
    np.testing.assert_allclose(top[1].data, np_softmax(x, 1), rtol=1e-13)


@pytest.mark.parametrize("bad", [3.0, -1.0, 7.5, float("nan"), 1e12])
def test_softmax_loss_bad_label(bad):
    labels = np.array([0.0, bad])
    layer = layer_of('type: "SoftmaxWithLoss" loss_param { ignore_label: 255 }')
    bottom, top = [blob_of(np.zeros((2, 3))), blob_of(labels)], [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    with pytest.raises(DLTrainError, match="layer 'l'.*label"):
        layer.forward(bottom, top)


def test_softmax_loss_label_count_mismatch():
    layer = layer_of('type: "SoftmaxWithLoss"')
    with pytest.raises(ConfigError, match="number of labels"):
        layer.initialize([blob_of(np.zeros((2, 3, 2))), blob_of(np.zeros((2, 1)))], [Blob(dtype=np.float64)])


def test_softmax_loss_refuses_label_backprop():
    layer, bottom, top = run_softmax_loss("", np.zeros((2, 3)), np.zeros(2))
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)
    with pytest.raises(DLTrainError, match="label"):
        layer.backward(top, [True, True], bottom)


# --- EuclideanLoss ----------------------------------------------------------------

def test_euclidean_forward_backward():
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 4))
    layer = layer_of('type: "EuclideanLoss"')
    bottom, top = [blob_of(a), blob_of(b)], [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    assert layer.loss_weights == [1.0] and top[0].shape == ()
    layer.forward(bottom, top)
    d = a.reshape(3, 4) - b
    np.testing.assert_allclose(top[0].data, (d ** 2).sum() / 3 / 2, rtol=1e-13)
    top[0].diff[...] = 2.5
    layer.backward(top, [True, True], bottom)
    np.testing.assert_allclose(bottom[0].diff.reshape(3, 4), 2.5 * d / 3, rtol=1e-13)
    np.testing.assert_allclose(bottom[1].diff, -2.5 * d / 3, rtol=1e-13)


def test_euclidean_gradient():
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(
        layer_of('type: "EuclideanLoss"'), make_blobs([(3, 2), (3, 2)]), [Blob(dtype=np.float64)])


def test_euclidean_shape_mismatch():
    with pytest.raises(ConfigError, match="same dimension"):
        layer_of('type: "EuclideanLoss"').initialize(make_blobs([(3, 2), (3, 3)]), [Blob(dtype=np.float64)])


# --- Accuracy -----------------------------------------------------------------

def run_accuracy(text, scores, labels, tops=1):
    layer = layer_of(f'type: "Accuracy" {text}')
    bottom = [blob_of(scores), blob_of(labels)]
    top = [Blob(dtype=np.float64) for _ in range(tops)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def ref_accuracy(scores, labels, top_k, axis=1, ignore=None):
    s = np.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis])
    lab = labels.reshape(-1).astype(int)
    keep = np.ones(len(lab), bool) if ignore is None else lab != ignore
    s, lab = s[keep], lab[keep]
    true = s[np.arange(len(lab)), lab]
    better = (s >= true[:, None]).sum(axis=1) - 1     # Caffe: ties count as better
    correct = better < top_k
    per_class = np.array([correct[lab == c].mean() if (lab == c).any() else 0.0
                          for c in range(scores.shape[axis])])
    return correct.mean() if len(lab) else 0.0, per_class


def test_accuracy_hand_computed():
    scores = np.array([[0.1, 0.7, 0.2],    # label 1: top-1 correct
                       [0.5, 0.3, 0.2],    # label 2: rank 3
                       [0.2, 0.3, 0.5],    # label 1: rank 2
                       [0.6, 0.1, 0.3]])   # label 0: top-1 correct
    labels = np.array([1, 2, 1, 0])
    _, _, top = run_accuracy("", scores, labels, tops=2)
    assert top[0].shape == () and top[1].shape == (3,)
    assert top[0].data == pytest.approx(0.5)
    np.testing.assert_allclose(top[1].data, [1.0, 0.5, 0.0])
    _, _, top = run_accuracy("accuracy_param { top_k: 2 }", scores, labels, tops=2)
    assert top[0].data == pytest.approx(0.75)
    np.testing.assert_allclose(top[1].data, [1.0, 1.0, 0.0])
    _, _, top = run_accuracy("accuracy_param { top_k: 3 }", scores, labels)
    assert top[0].data == 1.0


def test_accuracy_ties_count_against():
    scores = np.array([[1.0, 1.0, 0.0],
                       [1.0, 1.0, 0.0],
                       [0.0, 2.0, 2.0]])
    labels = np.array([0, 1, 1])
    _, _, top = run_accuracy("", scores, labels)
    assert top[0].data == 0.0                         # a tie for first place is not a top-1 hit
    _, _, top = run_accuracy("accuracy_param { top_k: 2 }", scores, labels)
    assert top[0].data == 1.0


def test_accuracy_ignore_label_and_empty_class():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.3, 0.7, 0.0]])
    labels = np.array([0, -1, 0])
    _, _, top = run_accuracy("accuracy_param { ignore_label: -1 }", scores, labels, tops=2)
    assert top[0].data == pytest.approx(0.5)
    np.testing.assert_allclose(top[1].data, [0.5, 0.0, 0.0])   # classes never seen give 0
    _, _, top = run_accuracy("accuracy_param { ignore_label: 0 }", scores, np.zeros(3))
    assert top[0].data == 0.0                                 # nothing counted


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_accuracy_random_spatial(top_k):
    rng = np.random.default_rng(12)
    scores = rng.integers(0, 4, (3, 5, 2, 2)).astype(np.float64)    # small integers: many ties
    labels = rng.integers(0, 5, (3, 2, 2)).astype(np.float64)
    labels[0, 0, 0] = 4
    _, _, top = run_accuracy(f"accuracy_param {{ top_k: {top_k} ignore_label: 4 }}", scores, labels, tops=2)
    acc, per_class = ref_accuracy(scores, labels, top_k, ignore=4)
    assert top[0].data == pytest.approx(acc)
    np.testing.assert_allclose(top[1].data, per_class)


def test_accuracy_axis():
    rng = np.random.default_rng(13)
    scores = rng.normal(size=(2, 3, 4))
    labels = rng.integers(0, 4, (2, 3)).astype(np.float64)
    _, _, top = run_accuracy("accuracy_param { axis: -1 }", scores, labels)
    assert top[0].data == pytest.approx(ref_accuracy(scores, labels, 1, axis=2)[0])


def test_accuracy_errors():
    scores, labels = np.zeros((2, 3)), np.array([0.0, 1.0])
    with pytest.raises(ConfigError, match="top_k"):
        run_accuracy("accuracy_param { top_k: 4 }", scores, labels)
    with pytest.raises(DLTrainError, match="layer 'l'.*label"):
        run_accuracy("", scores, np.array([0.0, 3.0]))
    layer, bottom, top = run_accuracy("", scores, labels)
    with pytest.raises(DLTrainError, match="backward"):
        layer.backward(top, [True, False], bottom)
    layer.backward(top, [False, False], bottom)            # nothing asked: fine


def test_float32_losses_match_float64():
    rng = np.random.default_rng(14)
    a, b = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    labels = np.array([0.0, 3.0, 1.0])
    results = {}
    for dtype in (np.float32, np.float64):
        out = []
        for text, second in (('type: "EuclideanLoss"', b), ('type: "SoftmaxWithLoss"', labels),
                             ('type: "Accuracy"', labels)):
            layer = layer_of(text, dtype)
            bottom, top = [blob_of(a, dtype), blob_of(second, dtype)], [Blob(dtype=dtype)]
            layer.initialize(bottom, top)
            layer.forward(bottom, top)
            assert top[0].data.dtype == dtype
            out.append(float(top[0].data))
            if layer.type != "Accuracy":
                top[0].diff[...] = 1.0
                layer.backward(top, [True, False], bottom)
                assert bottom[0].diff.dtype == dtype
                out.extend(bottom[0].diff.ravel())
        results[dtype] = np.array(out)
    np.testing.assert_allclose(results[np.float32], results[np.float64], rtol=1e-5, atol=1e-6)


def test_bad_axis_names_the_layer():
    for text in ('type: "Softmax" softmax_param { axis: 2 }', 'type: "Accuracy" accuracy_param { axis: -3 }'):
        layer = layer_of(text)
        bottom = make_blobs([(2, 3), (2,)])[:layer.exact_num_bottom_blobs]
        with pytest.raises(ConfigError, match="layer 'l'.*axis"):
            layer.initialize(bottom, [Blob(dtype=np.float64)])
