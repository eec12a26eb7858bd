"""Embed (after Caffe's test_embed_layer.cpp): shapes, lookup, gradients, bad indices."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer
from dlcore.gradcheck import GradientChecker


def layer_of(params, dtype=np.float64):
    return create_layer(f'name: "emb" type: "Embed" embed_param {{ {params} }}', dtype=dtype)


def indices_blob(values, dtype=np.float64):
    values = np.asarray(values, dtype=np.float64)
    blob = Blob(*values.shape, dtype=dtype)
    blob.data[...] = values
    return blob


FILLERS = 'weight_filler { type: "uniform" min: -10 max: 10 } bias_filler { type: "uniform" min: -10 max: 10 }'


def test_setup_shapes():
    layer = layer_of(f"num_output: 10 input_dim: 5 {FILLERS}")
    bottom, top = indices_blob(np.zeros((4, 1))), Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    assert top.shape == (4, 1, 10)
    assert layer.blobs[0].shape == (5, 10) and layer.blobs[1].shape == (10,)
    layer = layer_of("num_output: 3 input_dim: 7 bias_term: false")
    layer.initialize([indices_blob(np.zeros((2, 3, 4)))], [top])
    assert top.shape == (2, 3, 4, 3) and len(layer.blobs) == 1


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_is_numpy_indexing(bias, dtype):
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 6, (3, 4)).astype(np.float64)
    layer = layer_of(f"num_output: 5 input_dim: 6 bias_term: {str(bias).lower()} {FILLERS}", dtype)
    bottom, top = indices_blob(idx, dtype), Blob(dtype=dtype)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    expected = layer.blobs[0].data[idx.astype(int)]
    if bias:
        expected = expected + layer.blobs[1].data
    assert top.data.dtype == dtype
    np.testing.assert_array_equal(top.data, expected)


def test_backward_accumulates_rows():
    idx = np.array([[1, 1], [0, 3]], np.float64)
    layer = layer_of(f"num_output: 2 input_dim: 4 {FILLERS}")
    bottom, top = indices_blob(idx), Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    top.diff[...] = np.arange(8, dtype=np.float64).reshape(2, 2, 2)
    layer.blobs[0].diff[...] = 1.0                    # backward adds into param diffs
    layer.backward([top], [False], [bottom])
    expected = np.ones((4, 2))
    expected[1] += [0 + 2, 1 + 3]
    expected[0] += [4, 5]
    expected[3] += [6, 7]
    np.testing.assert_array_equal(layer.blobs[0].diff, expected)
    np.testing.assert_array_equal(layer.blobs[1].diff, [0 + 2 + 4 + 6, 1 + 3 + 5 + 7])


@pytest.mark.parametrize("bias", [True, False])
def test_gradient(bias):
    rng = np.random.default_rng(1)
    layer = layer_of(f"num_output: 4 input_dim: 5 bias_term: {str(bias).lower()} {FILLERS}")
    bottom = indices_blob(rng.integers(0, 5, (2, 3)).astype(np.float64))
    # Parameters only: the indices get no gradient (check_bottom=-2: none of the bottoms).
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, [bottom], [Blob(dtype=np.float64)],
                                                          check_bottom=-2)


@pytest.mark.parametrize("value", [5.0, -1.0, 2.5, float("nan"), 1e12])
def test_bad_index_is_an_error_naming_layer_value_and_position(value):
    idx = np.zeros((2, 3))
    idx[1, 2] = value
    layer = layer_of("num_output: 2 input_dim: 5")
    bottom, top = indices_blob(idx), Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    with pytest.raises(DLTrainError) as err:
        layer.forward([bottom], [top])
    message = str(err.value)
    assert "'emb'" in message and "(1, 2)" in message and f"{value:g}" in message and "[0, 5)" in message


def test_no_gradient_to_indices():
    layer = layer_of("num_output: 2 input_dim: 5")
    bottom, top = indices_blob([[0, 1]]), Blob(dtype=np.float64)
    layer.initialize([bottom], [top])
    layer.forward([bottom], [top])
    with pytest.raises(DLTrainError, match="indices"):
        layer.backward([top], [True], [bottom])
    assert layer.allow_force_backward(0) is False


def test_bad_parameters():
    for params, field in (("num_output: 0 input_dim: 5", "num_output"), ("num_output: 2", "input_dim")):
        with pytest.raises(ConfigError, match=field):
            layer_of(params).initialize([indices_blob([[0.0]])], [Blob(dtype=np.float64)])


def test_in_a_net_trains_only_the_used_rows():
    from dlcore import Net
    from dlcore.config import parse_text
    from dltrain.proto import caffe_pb2
    text = f"""
    layer {{ name: "in" type: "Input" top: "x" top: "y"
             input_param {{ shape {{ dim: 3 }} shape {{ dim: 3 dim: 2 }} }} }}
    layer {{ name: "emb" type: "Embed" bottom: "x" top: "e" embed_param {{ num_output: 2 input_dim: 4 {FILLERS} }} }}
    layer {{ name: "loss" type: "EuclideanLoss" bottom: "e" bottom: "y" top: "loss" }}
    """
    net = Net(parse_text(text, caffe_pb2.NetParameter), 0)
    net.blobs["x"].data[...] = [0, 2, 2]
    net.blobs["y"].data[...] = 0
    net.forward()
    net.backward()
    diff = net.params["emb"][0].diff
    assert np.all(diff[[1, 3]] == 0) and np.all(diff[[0, 2]] != 0)
