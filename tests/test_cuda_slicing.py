"""Slice, Crop, Filter, BatchReindex, Parameter: CUDA kernels against the CPU (see tests/cuda_support.py)."""
import numpy as np
import pytest

from cuda_support import compare_layer, make_layer, needs_cuda

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])


@BOTH
def test_slice(dtype):
    compare_layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { axis: 0 }', [(6, 2, 3)], dtype)
    compare_layer('type: "Slice" top: "a" top: "b" top: "c" slice_param { slice_point: 1 slice_point: 4 }',
                  [(2, 5, 3)], dtype)
    compare_layer('type: "Slice" top: "a" top: "b" slice_param { slice_dim: 2 slice_point: 1 }', [(2, 2, 3)], dtype)


def test_slice_one_top_shares():
    layer, bottom, top = make_layer('type: "Slice"', [(2, 3)], F64)
    layer.gpu = True
    layer.forward(bottom, top)
    assert top[0].shares_data_with(bottom[0]) and top[0].shares_diff_with(bottom[0])


@BOTH
def test_crop(dtype):
    compare_layer('type: "Crop" bottom: "a" bottom: "b" crop_param { offset: 1 }', [(2, 3, 5, 4), (2, 3, 3, 2)], dtype)
    compare_layer('type: "Crop" bottom: "a" bottom: "b" crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }',
                  [(2, 4, 3, 5), (1, 2, 2, 3)], dtype, propagate_down=[True, False])
    compare_layer('type: "Crop" bottom: "a" bottom: "b" crop_param { axis: 0 }', [(3, 4), (2, 2)], dtype)


@BOTH
def test_filter(dtype):
    selector = np.array([0, 1, 1, 0, 1.0]).reshape(5, 1)
    compare_layer('type: "Filter" bottom: "a" bottom: "b" bottom: "s" top: "x" top: "y"', [(5, 3, 2), (5,), (5, 1)],
                  dtype, bottom_data={2: selector}, propagate_down=[True, True, False])
    compare_layer('type: "Filter" bottom: "a" bottom: "s" top: "x"', [(3, 4), (3,)], dtype,
                  bottom_data={1: [0, 0, 0]}, propagate_down=[True, False])           # nothing selected


@BOTH
def test_batch_reindex(dtype):
    compare_layer('type: "BatchReindex" bottom: "a" bottom: "i"', [(4, 3, 2), (6,)], dtype,
                  bottom_data={1: [3, 0, 3, 1, 3, 0]}, propagate_down=[True, False])
    compare_layer('type: "BatchReindex" bottom: "a" bottom: "i"', [(3, 5), (2,)], dtype,
                  bottom_data={1: [2, 2]}, propagate_down=[True, False])              # rows never picked: 0


def test_parameter_on_gpu():
    layer, bottom, top = make_layer('type: "Parameter" parameter_param { shape { dim: 2 dim: 2 } }', [], F64)
    layer.gpu = True
    layer.forward(bottom, top)
    assert top[0].shares_data_with(layer.blobs[0]) and top[0].shares_diff_with(layer.blobs[0])
    np.testing.assert_array_equal(top[0].data, layer.blobs[0].data)
