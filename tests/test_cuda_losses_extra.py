"""The CUDA kernels of layers/losses_extra.py against the CPU code, on tiny shapes, float32 and float64.

Runs under Numba's CUDA simulator or on a real GPU (see tests/cuda_support.py);
skipped in the plain CPU run (.ci/run runs tests/test_cuda_*.py under the simulator).
"""
import numpy as np
import pytest

from cuda_support import compare_layer, make_layer, needs_cuda

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])


@BOTH
def test_hinge(dtype):
    compare_layer('type: "HingeLoss"', [(5, 4), (5,)], dtype, integer_bottoms={1: 4}, fill=(-3, 3))
    compare_layer('type: "HingeLoss" hinge_loss_param { norm: L2 }', [(3, 2, 2, 1), (3, 1, 1, 1)], dtype,
                  integer_bottoms={1: 4}, fill=(-3, 3))


@BOTH
def test_sigmoid_cross_entropy(dtype):
    rng = np.random.default_rng(0)
    targets = rng.uniform(0, 1, (4, 5))
    compare_layer('type: "SigmoidCrossEntropyLoss"', [(4, 5), (4, 5)], dtype, bottom_data={1: targets},
                  fill=(-5, 5), propagate_down=[True, False])
    targets.reshape(-1)[::3] = -1
    compare_layer('type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: -1 normalization: VALID }',
                  [(4, 5), (4, 5)], dtype, bottom_data={1: targets}, fill=(-5, 5), propagate_down=[True, False])


@BOTH
def test_multinomial_logistic(dtype):
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, (6, 3))
    p[0, :] = 0                                   # clamped at the threshold
    compare_layer('type: "MultinomialLogisticLoss"', [(6, 3), (6,)], dtype, bottom_data={0: p},
                  integer_bottoms={1: 3}, tol=1e-5 if dtype == F32 else None)


@BOTH
def test_contrastive(dtype):
    for legacy in ("false", "true"):
        compare_layer(f'type: "ContrastiveLoss" contrastive_loss_param {{ legacy_version: {legacy} margin: 1.5 }}',
                      [(7, 3), (7, 3), (7,)], dtype, integer_bottoms={2: 2})
    compare_layer('type: "ContrastiveLoss"', [(4, 2, 1, 1), (4, 2, 1, 1), (4, 1, 1, 1)], dtype,
                  integer_bottoms={2: 2}, propagate_down=[False, True, False])


@BOTH
def test_infogain(dtype):
    rng = np.random.default_rng(2)
    H = rng.uniform(0.1, 2, (1, 1, 5, 5))
    compare_layer('type: "InfogainLoss" infogain_loss_param { axis: 2 } top: "loss" top: "prob"',
                  [(2, 2, 5, 2), (2, 2, 1, 2), (1, 1, 5, 5)], dtype, integer_bottoms={1: 5}, bottom_data={2: H},
                  propagate_down=[True, False, False], fill=(-0.5, 2))
    labels = rng.integers(0, 4, (3, 2)).astype(float)
    labels[1, 1] = 9
    compare_layer('type: "InfogainLoss" loss_param { ignore_label: 9 normalization: FULL }',
                  [(3, 4, 2), (3, 2), (4, 4)], dtype, bottom_data={1: labels, 2: rng.uniform(0, 1, (4, 4))},
                  propagate_down=[True, False, False], fill=(-2, 2))


def test_infogain_matrix_from_file(tmp_path):
    from dltrain.proto import caffe_pb2
    H = np.random.default_rng(3).uniform(0.1, 2, (3, 3)).astype(np.float32)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 1, 3, 3])
    proto.data.extend(H.ravel().tolist())
    path = tmp_path / "H.binaryproto"
    path.write_bytes(proto.SerializeToString())
    compare_layer(f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}', [(4, 3), (4,)], F64,
                  integer_bottoms={1: 3})


@pytest.mark.parametrize("text,shapes,channels", [
    ('type: "HingeLoss"', [(3, 4), (3,)], 4),
    ('type: "MultinomialLogisticLoss"', [(3, 4), (3,)], 4),
    ('type: "InfogainLoss" infogain_loss_param { axis: 1 }', [(3, 4), (3,), (4, 4)], 4),
])
def test_bad_labels_are_errors_on_the_device(text, shapes, channels):
    from dlcore import DLTrainError
    data = {1: [0, channels, 1]}
    layer, bottom, top = make_layer(text, shapes, F32, bottom_data=data)
    layer.gpu = True
    with pytest.raises(DLTrainError, match=f"label {channels} at position 1 of bottom 1"):
        layer.forward(bottom, top)
