"""Structural layers (Flatten, Reshape, Split, Concat, Silence) and the
source-less data layers (Input, DummyData), after Caffe's tests."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer, set_random_seed
from dlcore.gradcheck import GradientChecker, make_blobs


def layer_of(text, dtype=np.float64):
    return create_layer(f'name: "s" {text}', dtype=dtype)


def setup_forward(text, bottom, ntop=1, dtype=np.float64):
    layer = layer_of(text, dtype)
    top = [Blob(dtype=dtype) for _ in range(ntop)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return layer, top


def shares(a, b):
    return np.shares_memory(a, b)


# --- Flatten ------------------------------------------------------------------

@pytest.mark.parametrize("params,shape", [
    ("", (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 20)),
    ("flatten_param { end_axis: -2 }", (2, 12, 5)),
    ("flatten_param { axis: 0 end_axis: 1 }", (6, 4, 5)),
    ("flatten_param { axis: -1 }", (2, 3, 4, 5)),
])
def test_flatten(params, shape):
    bottom = make_blobs([(2, 3, 4, 5)])
    layer, top = setup_forward(f'type: "Flatten" {params}', bottom)
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data.reshape(-1), bottom[0].data.reshape(-1))
    assert shares(top[0].data, bottom[0].data) and shares(top[0].diff, bottom[0].diff)
    top[0].diff[...] = 3.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 3.0)


def test_flatten_gradient_and_in_place():
    GradientChecker(1e-2, 1e-3).check_gradient(layer_of('type: "Flatten"'), make_blobs([(2, 3, 2)]),
                                               [Blob(dtype=np.float64)])
    bottom = make_blobs([(2, 3)])
    with pytest.raises(ConfigError, match="in-place"):
        layer_of('type: "Flatten"').initialize(bottom, bottom)


# --- Reshape ------------------------------------------------------------------

@pytest.mark.parametrize("params,shape", [
    ("shape { dim: 0 dim: -1 }", (2, 90)),                                 # flatten
    ("shape { dim: -1 }", (180,)),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", (2, 3, 6, 5)),                # copy every dim
    ("shape { dim: 0 dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),             # inference
    ("shape { dim: 6 dim: 0 dim: -1 }", (6, 3, 10)),
    ("axis: 1 num_axes: 3 shape { dim: 3 dim: 10 dim: -1 }", (2, 3, 10, 3)),
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 18, 5)),                  # flatten the middle
    ("axis: 0 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (1, 1, 1, 2, 3, 6, 5)),
    ("axis: 2 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (2, 3, 1, 1, 1, 6, 5)),
    ("axis: -1 num_axes: 0 shape { dim: 1 dim: 1 dim: 1 }", (2, 3, 6, 5, 1, 1, 1)),
    ("axis: -2 shape { dim: 5 dim: 1 }", (2, 3, 6, 5, 1)),                 # replaces the last axis
    ("axis: 1 num_axes: 1 shape { dim: 0 }", (2, 3, 6, 5)),
    ("axis: 2 num_axes: 1 shape { dim: 2 dim: -1 }", (2, 3, 2, 3, 5)),
])
def test_reshape(params, shape):
    bottom = make_blobs([(2, 3, 6, 5)])
    layer, top = setup_forward(f'type: "Reshape" reshape_param {{ {params} }}', bottom)
    assert top[0].shape == shape
    np.testing.assert_array_equal(top[0].data.reshape(-1), bottom[0].data.reshape(-1))
    assert shares(top[0].data, bottom[0].data) and shares(top[0].diff, bottom[0].diff)


@pytest.mark.parametrize("params,message", [
    ("shape { dim: -1 dim: -1 }", "multiple -1"),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 dim: 0 }", "no corresponding bottom axis"),
    ("shape { dim: 7 dim: -1 }", "divisible"),
    ("shape { dim: 2 dim: 2 }", "count"),
    ("axis: 5 shape { dim: 1 }", "out of range"),
    ("axis: 2 num_axes: 3 shape { dim: 1 }", "out of range"),
])
def test_reshape_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        setup_forward(f'type: "Reshape" reshape_param {{ {params} }}', make_blobs([(2, 3, 6, 5)]))


def test_reshape_follows_bottom_reshape():
    bottom = make_blobs([(2, 3, 2)])
    layer, top = setup_forward('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', bottom)
    bottom[0].reshape(4, 3, 2)
    bottom[0].data[...] = 5.0
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (4, 6)
    np.testing.assert_array_equal(top[0].data, 5.0)
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2.0)


def test_reshape_gradient():
    GradientChecker(1e-2, 1e-3).check_gradient(
        layer_of('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }'), make_blobs([(2, 3, 2)]),
        [Blob(dtype=np.float64)])


# --- Split --------------------------------------------------------------------

def test_split():
    bottom = make_blobs([(2, 3)])
    layer, top = setup_forward('type: "Split"', bottom, ntop=3)
    for blob in top:
        assert blob.shape == (2, 3) and shares(blob.data, bottom[0].data)
    for k, blob in enumerate(top):
        blob.diff[...] = k + 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 6.0)
    bottom[0].diff[...] = -1.0
    layer.backward(top, [False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, -1.0)


def test_split_gradient():
    GradientChecker(1e-2, 1e-3).check_gradient(layer_of('type: "Split"'), make_blobs([(2, 3)]),
                                               [Blob(dtype=np.float64), Blob(dtype=np.float64)])


# --- Concat -------------------------------------------------------------------

@pytest.mark.parametrize("params,axis", [("", 1), ("concat_param { axis: 0 }", 0), ("concat_param { axis: -1 }", 2),
                                         ("concat_param { concat_dim: 0 }", 0)])
def test_concat(params, axis):
    shapes = [[2, 3, 2], [2, 3, 2], [2, 3, 2]]
    for k, shape in enumerate(shapes):
        shape[axis] = k + 1
    bottom = make_blobs([tuple(s) for s in shapes])
    layer, top = setup_forward(f'type: "Concat" {params}', bottom)
    expected = np.concatenate([b.data for b in bottom], axis=axis)
    np.testing.assert_array_equal(top[0].data, expected)
    dy = np.random.default_rng(1).normal(size=expected.shape)
    top[0].diff[...] = dy
    for b in bottom:
        b.diff[...] = 9.0
    layer.backward(top, [True, False, True], bottom)
    parts = np.split(dy, np.cumsum([s[axis] for s in shapes])[:-1], axis=axis)
    np.testing.assert_array_equal(bottom[0].diff, parts[0])
    np.testing.assert_array_equal(bottom[1].diff, 9.0)              # not asked: untouched
    np.testing.assert_array_equal(bottom[2].diff, parts[2])


@pytest.mark.parametrize("axis", [0, 1])
def test_concat_gradient(axis):
    shapes = [(2, 3, 2), (2, 3, 2)]
    shapes[1] = tuple(1 if k == axis else d for k, d in enumerate(shapes[1]))
    GradientChecker(1e-2, 1e-3).check_gradient(
        layer_of(f'type: "Concat" concat_param {{ axis: {axis} }}'), make_blobs(shapes), [Blob(dtype=np.float64)])


def test_concat_single_bottom_shares():
    bottom = make_blobs([(2, 3)])
    _, top = setup_forward('type: "Concat"', bottom)
    assert shares(top[0].data, bottom[0].data) and shares(top[0].diff, bottom[0].diff)


def test_concat_errors():
    with pytest.raises(ConfigError, match="same shape"):
        setup_forward('type: "Concat"', make_blobs([(2, 3), (3, 3)]))
    with pytest.raises(ConfigError, match="not both"):
        setup_forward('type: "Concat" concat_param { axis: 0 concat_dim: 0 }', make_blobs([(2, 3), (2, 3)]))
    with pytest.raises(ConfigError, match="out of range"):
        setup_forward('type: "Concat" concat_param { concat_dim: 2 }', make_blobs([(2, 3), (2, 3)]))


# --- Silence ------------------------------------------------------------------

def test_silence():
    bottom = make_blobs([(2, 3), (4,)])
    layer = layer_of('type: "Silence"')
    layer.initialize(bottom, [])
    layer.forward(bottom, [])
    for b in bottom:
        b.diff[...] = 5.0
    layer.backward([], [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0.0)
    np.testing.assert_array_equal(bottom[1].diff, 5.0)


# --- Input --------------------------------------------------------------------

def test_input_shapes():
    _, top = setup_forward('type: "Input" input_param { shape { dim: 2 dim: 3 } }', [], ntop=2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    _, top = setup_forward('type: "Input" input_param { shape { dim: 2 } shape { dim: 4 dim: 1 } }', [], ntop=2)
    assert [t.shape for t in top] == [(2,), (4, 1)]
    with pytest.raises(ConfigError, match="shape"):
        setup_forward('type: "Input" input_param { shape { dim: 2 } shape { dim: 2 } }', [], ntop=3)


def test_input_reshape_keeps_user_shape():
    layer, top = setup_forward('type: "Input" input_param { shape { dim: 2 dim: 3 } }', [])
    top[0].reshape(5, 3)
    top[0].data[...] = 1.5
    layer.reshape([], top)
    layer.forward([], top)
    assert top[0].shape == (5, 3)
    np.testing.assert_array_equal(top[0].data, 1.5)


# --- DummyData ----------------------------------------------------------------

def test_dummy_data_default_zero_and_constant_filled_once():
    layer, top = setup_forward('type: "DummyData" dummy_data_param { shape { dim: 2 dim: 3 } }', [], ntop=2)
    assert [t.shape for t in top] == [(2, 3), (2, 3)]
    np.testing.assert_array_equal(top[0].data, 0.0)
    layer, top = setup_forward('type: "DummyData" dummy_data_param { shape { dim: 4 } '
                               'data_filler { type: "constant" value: 7 } }', [])
    np.testing.assert_array_equal(top[0].data, 7.0)
    top[0].data[...] = -1.0
    layer.forward([], top)                       # constant fillers are not refilled
    np.testing.assert_array_equal(top[0].data, -1.0)


def test_dummy_data_refills_random():
    set_random_seed(3)
    layer, top = setup_forward('type: "DummyData" dummy_data_param { shape { dim: 50 } '
                               'data_filler { type: "uniform" min: 1 max: 2 } }', [])
    first = top[0].data.copy()
    assert ((first >= 1) & (first <= 2)).all()
    layer.forward([], top)
    assert not np.array_equal(first, top[0].data)


def test_dummy_data_per_top_fillers_and_legacy_shape():
    layer, top = setup_forward(
        'type: "DummyData" dummy_data_param { num: 2 channels: 3 channels: 1 height: 4 width: 5 '
        'data_filler { type: "constant" value: 1 } data_filler { type: "gaussian" std: 0.1 } }', [], ntop=2)
    assert [t.shape for t in top] == [(2, 3, 4, 5), (2, 1, 4, 5)]
    np.testing.assert_array_equal(top[0].data, 1.0)
    assert top[1].data.std() > 0.01


@pytest.mark.parametrize("params,message", [
    ("shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1", "both shape and legacy"),
    ("num: 2 channels: 1 height: 1", "width"),
    ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "shape"),
    ("shape { dim: 2 } data_filler { } data_filler { } data_filler { }", "fillers"),
    ("shape { dim: 2 } data_filler { type: \"nonsense\" }", "nonsense"),
])
def test_dummy_data_errors(params, message):
    with pytest.raises(ConfigError, match=message):
        setup_forward(f'type: "DummyData" dummy_data_param {{ {params} }}', [], ntop=2)


def test_float32():
    bottom = make_blobs([(2, 3), (2, 1)], dtype=np.float32)
    layer, top = setup_forward('type: "Concat"', bottom, dtype=np.float32)
    assert top[0].data.dtype == np.float32
    np.testing.assert_array_equal(top[0].data, np.concatenate([b.data for b in bottom], axis=1))
    top[0].diff[...] = 1.0
    layer.backward(top, [True, True], bottom)
    layer, tops = setup_forward('type: "Split"', bottom[:1], ntop=2, dtype=np.float32)
    for t in tops:
        t.diff[...] = 0.5
    layer.backward(tops, [True], bottom[:1])
    np.testing.assert_array_equal(bottom[0].diff, np.float32(1.0))
