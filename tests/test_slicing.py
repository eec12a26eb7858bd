"""Slice, Crop, Filter, BatchReindex, Parameter (after Caffe's test_slice_layer.cpp, test_crop_layer.cpp,
test_filter_layer.cpp, test_batch_reindex_layer.cpp)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import dlcore
from dlcore import Blob, ConfigError, DLTrainError, Net, create_layer
from dlcore.config import net_from_string
from dlcore.gradcheck import GradientChecker, make_blobs


def layer_of(text, dtype=np.float64):
    return create_layer(f'name: "l" {text}', dtype=dtype)


def blobs_of(arrays, dtype=np.float64):
    out = []
    for a in arrays:
        a = np.asarray(a, dtype)
        blob = Blob(*a.shape, dtype=dtype)
        blob.data[...] = a
        out.append(blob)
    return out


def run(text, arrays, n_top=1, dtype=np.float64):
    layer = layer_of(text, dtype)
    bottom = blobs_of(arrays, dtype)
    top = [Blob(dtype=dtype) for _ in range(n_top)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


X = np.random.default_rng(0).uniform(-1, 1, (6, 5, 2, 3))


# --- Slice --------------------------------------------------------------------

def test_slice_equal_parts_and_points():
    _, _, top = run('type: "Slice" slice_param { axis: 0 }', [X], n_top=3)
    for i, t in enumerate(top):
        np.testing.assert_array_equal(t.data, X[2 * i:2 * i + 2])
    _, _, top = run('type: "Slice" slice_param { slice_point: 1 slice_point: 4 }', [X], n_top=3)   # axis 1
    for t, part in zip(top, np.split(X, [1, 4], axis=1)):
        np.testing.assert_array_equal(t.data, part)
    _, _, top = run('type: "Slice" slice_param { axis: -1 slice_point: 2 }', [X], n_top=2)
    np.testing.assert_array_equal(top[0].data, X[..., :2])
    np.testing.assert_array_equal(top[1].data, X[..., 2:])


def test_slice_legacy_slice_dim():
    _, _, top = run('type: "Slice" slice_param { slice_dim: 2 }', [X], n_top=2)
    np.testing.assert_array_equal(top[1].data, X[:, :, 1:])


def test_slice_backward_and_trivial():
    layer, bottom, top = run('type: "Slice" slice_param { slice_point: 2 }', [X], n_top=2)
    top[0].diff[...] = 1.0
    top[1].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[:, :2], 1.0)
    np.testing.assert_array_equal(bottom[0].diff[:, 2:], 2.0)
    layer, bottom, top = run('type: "Slice"', [X], n_top=1)                    # one top shares the bottom
    assert top[0].shares_data_with(bottom[0]) and top[0].shares_diff_with(bottom[0])
    np.testing.assert_array_equal(top[0].data, X)


@pytest.mark.parametrize("params,n_top", [("axis: 0", 2), ("slice_point: 1 slice_point: 3", 3)])
def test_slice_gradient(params, n_top):
    bottom = make_blobs([(4, 4, 2)])
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(
        layer_of(f'type: "Slice" slice_param {{ {params} }}'), bottom, [Blob(dtype=np.float64) for _ in range(n_top)])


def test_slice_errors():
    with pytest.raises(ConfigError, match="not both"):
        run('type: "Slice" slice_param { axis: 1 slice_dim: 1 }', [X], n_top=2)
    with pytest.raises(ConfigError, match="evenly divide"):
        run('type: "Slice"', [X], n_top=2)
    with pytest.raises(ConfigError, match="slice_point"):
        run('type: "Slice" slice_param { slice_point: 2 }', [X], n_top=3)
    with pytest.raises(ConfigError, match="increasing"):
        run('type: "Slice" slice_param { slice_point: 3 slice_point: 2 }', [X], n_top=3)
    with pytest.raises(ConfigError, match="beyond"):
        run('type: "Slice" slice_param { slice_point: 5 }', [X], n_top=2)


# --- Crop ---------------------------------------------------------------------

def test_crop_default_axis_2():
    ref = np.zeros((6, 5, 1, 2))
    _, _, top = run('type: "Crop"', [X, ref])
    np.testing.assert_array_equal(top[0].data, X[:, :, :1, :2])


def test_crop_offsets():
    ref = np.zeros((6, 5, 1, 2))
    _, _, top = run('type: "Crop" crop_param { offset: 1 }', [X, ref])
    np.testing.assert_array_equal(top[0].data, X[:, :, 1:2, 1:3])
    _, _, top = run('type: "Crop" crop_param { axis: 2 offset: 1 offset: 0 }', [X, ref])
    np.testing.assert_array_equal(top[0].data, X[:, :, 1:2, 0:2])
    ref = np.zeros((3, 2, 1, 1))
    _, _, top = run('type: "Crop" crop_param { axis: 0 offset: 2 offset: 1 offset: 1 offset: 2 }', [X, ref])
    np.testing.assert_array_equal(top[0].data, X[2:5, 1:3, 1:2, 2:3])
    _, _, top = run('type: "Crop" crop_param { axis: -1 offset: 1 }', [X, np.zeros((1, 1, 1, 2))])
    np.testing.assert_array_equal(top[0].data, X[..., 1:3])


def test_crop_5d_and_backward():
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 4, 5, 3))
    layer, bottom, top = run('type: "Crop" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 offset: 1 }',
                             [x, np.zeros((2, 2, 4, 3, 2))])
    np.testing.assert_array_equal(top[0].data, x[:, 1:3, 0:4, 2:5, 1:3])
    top[0].diff[...] = 1.0
    bottom[0].diff[...] = 5.0
    layer.backward(top, [True, False], bottom)
    expect = np.zeros_like(x)
    expect[:, 1:3, 0:4, 2:5, 1:3] = 1.0
    np.testing.assert_array_equal(bottom[0].diff, expect)


def test_crop_gradient():
    bottom = make_blobs([(2, 3, 4, 3), (2, 3, 2, 2)])
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(
        layer_of('type: "Crop" crop_param { offset: 1 }'), bottom, [Blob(dtype=np.float64)], check_bottom=0)


def test_crop_errors():
    with pytest.raises(ConfigError, match="out-of-bounds"):
        run('type: "Crop" crop_param { offset: 2 }', [X, np.zeros((6, 5, 1, 2))])
    with pytest.raises(ConfigError, match="number of offset values"):
        run('type: "Crop" crop_param { offset: 0 offset: 0 offset: 0 }', [X, np.zeros((6, 5, 1, 2))])


# --- Filter -------------------------------------------------------------------

def test_filter_forward_backward():
    data = np.random.default_rng(2).uniform(-1, 1, (4, 3, 2, 2))
    labels = np.arange(4.0).reshape(4, 1, 1, 1)
    selector = np.array([0.0, 1.0, 1.0, 0.0]).reshape(4, 1, 1, 1)
    layer, bottom, top = run('type: "Filter"', [data, labels, selector], n_top=2)
    # the first reshape (setup) keeps the batch size, as Caffe's; the forward's own reshape filters
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 3, 2, 2) and top[1].shape == (2, 1, 1, 1)
    np.testing.assert_array_equal(top[0].data, data[[1, 2]])
    np.testing.assert_array_equal(top[1].data.ravel(), [1, 2])
    top[0].diff[...] = 3.0
    bottom[0].diff[...] = np.nan
    layer.backward(top, [True, False, False], bottom)
    expect = np.zeros_like(data)
    expect[[1, 2]] = 3.0
    np.testing.assert_array_equal(bottom[0].diff, expect)
    with pytest.raises(DLTrainError, match="cannot backpropagate to the filter index"):
        layer.backward(top, [True, False, True], bottom)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(2)


def test_filter_setup_keeps_batch_then_nothing_selected():
    data = np.ones((3, 2))
    layer, bottom, top = run('type: "Filter"', [data, np.zeros((3, 1))])
    assert top[0].shape == (3, 2)
    layer.reshape(bottom, top)
    assert top[0].shape == (0, 2)
    layer.forward(bottom, top)
    bottom[0].diff[...] = 7
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_filter_gradient():
    bottom = make_blobs([(4, 3, 2), (4, 2)])
    selector = Blob(4, 1, 1, 1, dtype=np.float64)
    selector.data.ravel()[:] = [1, 0, 1, 1]
    # (the 1/2 sum-of-squares objective: the exhaustive one would walk the tops at their
    # first-reshape size, the full batch, while every forward filters them)
    GradientChecker(1e-2, 1e-3).check_gradient(
        layer_of('type: "Filter"'), bottom + [selector], [Blob(dtype=np.float64), Blob(dtype=np.float64)],
        check_bottom=[0, 1])


def test_filter_errors():
    with pytest.raises(ConfigError, match="singletons"):
        run('type: "Filter"', [np.zeros((3, 2)), np.zeros((3, 2))])
    with pytest.raises(ConfigError, match="0th dimension"):
        run('type: "Filter"', [np.zeros((2, 2)), np.zeros((3, 1))])
    with pytest.raises(ConfigError, match="one top per filtered bottom"):
        run('type: "Filter"', [np.zeros((3, 2)), np.zeros((3, 1))], n_top=2)


# --- BatchReindex -------------------------------------------------------------

def test_batch_reindex_forward_backward():
    x = np.random.default_rng(3).uniform(-1, 1, (5, 4, 3, 2))
    perm = np.array([4.0, 0.0, 4.0, 2.0, 1.0, 4.0])
    layer, bottom, top = run('type: "BatchReindex"', [x, perm])
    np.testing.assert_array_equal(top[0].data, x[perm.astype(int)])
    top[0].diff[...] = np.arange(6.0).reshape(6, 1, 1, 1)
    layer.backward(top, [True, False], bottom)
    expect = np.zeros(5)
    np.add.at(expect, perm.astype(int), np.arange(6.0))
    np.testing.assert_array_equal(bottom[0].diff, np.broadcast_to(expect.reshape(5, 1, 1, 1), x.shape))
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    with pytest.raises(DLTrainError, match="cannot backpropagate to the indices"):
        layer.backward(top, [True, True], bottom)


def test_batch_reindex_bad_indices():
    with pytest.raises(DLTrainError, match="index 5 at position 1"):
        run('type: "BatchReindex"', [np.zeros((5, 2)), [0, 5]])
    with pytest.raises(DLTrainError, match="index -0.5"):
        run('type: "BatchReindex"', [np.zeros((5, 2)), [-0.5]])
    with pytest.raises(ConfigError, match="1 axis"):
        run('type: "BatchReindex"', [np.zeros((5, 2)), np.zeros((2, 1))])
    _, _, top = run('type: "BatchReindex"', [np.arange(10.0).reshape(5, 2), [2.7]])   # truncated, as C
    np.testing.assert_array_equal(top[0].data, [[4, 5]])


def test_batch_reindex_gradient():
    bottom = make_blobs([(4, 2, 3)])
    index = Blob(5, dtype=np.float64)
    index.data[...] = [2, 0, 2, 3, 2]
    GradientChecker(1e-4, 1e-2).check_gradient_exhaustive(
        layer_of('type: "BatchReindex"'), bottom + [index], [Blob(dtype=np.float64)], check_bottom=0)


# --- Parameter ----------------------------------------------------------------

def test_parameter_layer_shares_its_blob():
    layer = layer_of('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }')
    top = [Blob(dtype=np.float64)]
    layer.initialize([], top)
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    np.testing.assert_array_equal(layer.blobs[0].data, 0)                 # Caffe: no filler, zeros
    layer.blobs[0].data[...] = np.arange(6.0).reshape(2, 3)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, np.arange(6.0).reshape(2, 3))
    assert top[0].shares_diff_with(layer.blobs[0])


def test_parameter_layer_learns_in_a_net():
    text = """
    layer { name: "input" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "target" top: "loss" }
    """
    net = Net(net_from_string(text), dlcore.TRAIN, dtype=np.float64)
    target = np.random.default_rng(4).uniform(-1, 1, (2, 3))
    net.blobs["target"].data[...] = target
    net.params["p"][0].data[...] = 0.5
    loss = net.forward_backward()
    np.testing.assert_allclose(loss, ((0.5 - target) ** 2).sum() / 4)
    np.testing.assert_allclose(net.params["p"][0].diff, (0.5 - target) / 2)


def test_parameter_layer_keeps_stored_blob():
    from dltrain.proto import caffe_pb2
    from google.protobuf import text_format
    param = text_format.Parse('name: "p" type: "Parameter" parameter_param { shape { dim: 3 } } '
                              'blobs { shape { dim: 3 } data: 1 data: 2 data: 3 }', caffe_pb2.LayerParameter())
    layer = create_layer(param, dtype=np.float64)
    top = [Blob(dtype=np.float64)]
    layer.initialize([], top)
    layer.forward([], top)
    np.testing.assert_array_equal(top[0].data, [1, 2, 3])


# --- the CUDA kernels under the simulator (tests/test_cuda_slicing.py), in a process of its own ----------

@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"), reason="already simulating")
def test_cuda_kernels_under_the_simulator():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    tests = ["tests/test_cuda_slicing.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
