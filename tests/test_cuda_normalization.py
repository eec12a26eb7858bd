"""The CUDA kernels of layers/normalization_cuda.py (BatchNorm, Scale, Bias, LRN, MVN) against the CPU
code, on tiny shapes, float32 and float64.

Runs under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or on a real GPU
(``DLTRAIN_TEST_REAL_GPU=1``), as tests/cuda_support.py describes; skipped otherwise.
"""
import numpy as np
import pytest

from cuda_support import compare_layer, make_layer, needs_cuda, rel_err, tolerance

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])

STATS = ([0.5, -1.0, 2.0], [3.0, 0.5, 1.0], [1.5])


def _stats_recorder():
    """A ``reset`` for compare_layer: set BatchNorm's statistics before each pass and
    record what the previous pass left in them."""
    seen = []

    def reset(layer):
        if seen or getattr(reset, "started", False):
            seen.append([b.data.copy() for b in layer.blobs])
        reset.started = True
        for blob, values in zip(layer.blobs, STATS):
            blob.data[...] = np.asarray(values).reshape(blob.shape)
    return reset, seen


@BOTH
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_batch_norm(dtype, phase):
    reset, seen = _stats_recorder()
    layer = compare_layer(f'type: "BatchNorm" phase: {phase}', [(4, 3, 2, 2)], dtype, reset=reset, fill=(-2, 3))
    after_gpu = [b.data.copy() for b in layer.blobs]
    after_cpu = seen[0]
    for g, c in zip(after_gpu, after_cpu):
        assert rel_err(g, c) <= tolerance(dtype), (g, c)
    if phase == "TRAIN":
        assert after_cpu[2][0] == pytest.approx(1.5 * float(np.float32(0.999)) + 1)


@BOTH
def test_batch_norm_shapes(dtype):
    reset, _ = _stats_recorder()
    compare_layer('type: "BatchNorm" batch_norm_param { use_global_stats: false eps: 0.01 }', [(5, 3)], dtype,
                  reset=reset)
    compare_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 }', [(2, 3, 7)], dtype,
                  reset=reset)


def test_batch_norm_in_place():
    results = []
    for gpu in (False, True):
        layer, bottom, _ = make_layer('type: "BatchNorm"', [(3, 2, 5)], F64, seed=2)
        for blob, values in zip(layer.blobs, ([0.1, 0.2], [1.0, 2.0], [3.0])):
            blob.data[...] = values
        layer.gpu = gpu
        layer.reshape(bottom, bottom)
        layer.forward(bottom, bottom)
        y = bottom[0].data.copy()
        bottom[0].diff[...] = np.random.default_rng(5).uniform(-1, 1, (3, 2, 5))
        layer.backward(bottom, [True], bottom)
        results.append([y, bottom[0].diff.copy()] + [b.data.copy() for b in layer.blobs])
    for g, c in zip(results[1], results[0]):
        assert rel_err(g, c) <= tolerance(F64)


@BOTH
def test_scale(dtype):
    compare_layer('type: "Scale" bottom: "a" bottom: "b" top: "c"', [(2, 3, 2, 2), (3, 2)], dtype)
    compare_layer('type: "Scale" scale_param { axis: 0 } bottom: "a" bottom: "b" top: "c"', [(2, 3, 2), (2, 3, 2)],
                  dtype)
    compare_layer('type: "Scale" bottom: "a" bottom: "b" top: "c"', [(2, 3, 2), ()], dtype)
    compare_layer('type: "Scale" scale_param { num_axes: 2 bias_term: true }', [(2, 3, 2, 2)], dtype)
    compare_layer('type: "Scale" scale_param { bias_term: true } bottom: "a" bottom: "b" top: "c"', [(2, 3, 4), (3,)],
                  dtype, propagate_down=[True, False])
    compare_layer('type: "Scale" scale_param { num_axes: 0 }', [(3, 4)], dtype)


@BOTH
def test_bias(dtype):
    compare_layer('type: "Bias" bottom: "a" bottom: "b" top: "c"', [(2, 3, 2, 2), (3, 2)], dtype)
    compare_layer('type: "Bias" bias_param { axis: 2 }', [(2, 3, 4)], dtype)
    compare_layer('type: "Bias" bias_param { num_axes: 0 }', [(2, 5)], dtype)


@pytest.mark.parametrize("text", ['type: "Scale" scale_param { bias_term: true }',
                                  'type: "Scale" bottom: "a" bottom: "b" top: "c"',
                                  'type: "Bias" bias_param { axis: 2 }'])
def test_broadcast_in_place(text):
    results = []
    for gpu in (False, True):
        shapes = [(2, 3, 4)] + ([(3,)] if "bottom:" in text else [])
        layer, bottom, _ = make_layer(text, shapes, F64, seed=6)
        layer.gpu = gpu
        out = [bottom[0]]
        for blob in layer.blobs:
            blob.diff[...] = 0.25
        layer.reshape(bottom, out)
        layer.forward(bottom, out)
        y = out[0].data.copy()
        out[0].diff[...] = np.random.default_rng(7).uniform(-1, 1, (2, 3, 4))
        layer.backward(out, [True] * len(bottom), bottom)
        results.append([y] + [b.diff.copy() for b in bottom] + [b.diff.copy() for b in layer.blobs])
    for g, c in zip(results[1], results[0]):
        assert rel_err(g, c) <= tolerance(F64)


@BOTH
def test_lrn(dtype):
    compare_layer('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }', [(2, 5, 2, 3)], dtype,
                  fill=(-2, 2))
    compare_layer('type: "LRN"', [(1, 7, 2, 2)], dtype, fill=(-2, 2))
    compare_layer('type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }', [(2, 2, 3, 4)], dtype,
                  fill=(-2, 2))


@BOTH
def test_mvn(dtype):
    compare_layer('type: "MVN"', [(2, 3, 2, 2)], dtype, fill=(-2, 3))
    compare_layer('type: "MVN" mvn_param { normalize_variance: false }', [(2, 3, 2, 2)], dtype)
    compare_layer('type: "MVN" mvn_param { across_channels: true }', [(2, 3, 2, 2)], dtype, fill=(-2, 3))
