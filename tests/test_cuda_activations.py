"""The CUDA kernels of layers/activations_cuda.py against the CPU code, on tiny shapes, float32 and float64.

Runs under Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) or on a real GPU
(``DLTRAIN_TEST_REAL_GPU=1``), as tests/cuda_support.py describes; skipped otherwise.
"""
import numpy as np
import pytest

from cuda_support import compare_layer, make_layer, needs_cuda, tolerance

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])


def test_every_activation_has_gpu_code():
    """Each layer runs kernels of its own on the GPU, not its CPU pair on host copies (which would pass the
    comparisons below trivially)."""
    from dlcore.registry import get_layer_class
    for name in ("PReLU", "ELU", "AbsVal", "Power", "Exp", "Log", "BNLL", "Threshold", "Swish", "Clip"):
        cls = get_layer_class(name)
        assert cls.has_gpu_forward() and cls.has_gpu_backward(), name


@BOTH
def test_prelu(dtype):
    compare_layer('type: "PReLU"', [(2, 3, 2, 2)], dtype)
    compare_layer('type: "PReLU" prelu_param { channel_shared: true }', [(2, 3, 5)], dtype)
    compare_layer('type: "PReLU"', [(3, 4)], dtype)


@BOTH
def test_elu_absval(dtype):
    compare_layer('type: "ELU" elu_param { alpha: 0.5 }', [(2, 3, 4)], dtype, fill=(-3, 3))
    compare_layer('type: "ELU"', [(7,)], dtype, fill=(-3, 3))
    compare_layer('type: "AbsVal"', [(2, 3, 4)], dtype)


@BOTH
def test_power(dtype):
    for text in ('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 2.4 }',      # general
                 'type: "Power" power_param { power: 0.37 scale: 0.83 }',                   # shift 0
                 'type: "Power" power_param { power: 2 scale: 0.34 shift: -2.4 }',          # power 2
                 'type: "Power" power_param { power: 1 scale: 0.83 shift: -2.4 }',          # power 1
                 'type: "Power" power_param { power: 0 shift: 3 }',                         # constant 1
                 'type: "Power" power_param { power: 2 scale: 0 shift: 3 }'):               # constant shift^2
        compare_layer(text, [(3, 7)], dtype, fill=(0.5, 2.0))


@BOTH
def test_exp_log_bnll(dtype):
    compare_layer('type: "Exp"', [(3, 7)], dtype)
    compare_layer('type: "Exp" exp_param { base: 2 scale: 3 shift: 1 }', [(3, 7)], dtype)
    compare_layer('type: "Log"', [(3, 7)], dtype, fill=(0.2, 3.0))
    compare_layer('type: "Log" log_param { base: 2 scale: 3 shift: 1 }', [(3, 7)], dtype, fill=(0.2, 3.0))
    compare_layer('type: "BNLL"', [(3, 7)], dtype, fill=(-60, 60))


@BOTH
def test_threshold_swish_clip(dtype):
    compare_layer('type: "Threshold" threshold_param { threshold: 0.2 }', [(3, 7)], dtype, backward=False)
    compare_layer('type: "Swish"', [(3, 7)], dtype, fill=(-4, 4))
    compare_layer('type: "Swish" swish_param { beta: 1.5 }', [(3, 7)], dtype, fill=(-4, 4))
    compare_layer('type: "Clip" clip_param { min: -1 max: 2 }', [(3, 7)], dtype, fill=(-3, 3),
                  bottom_data={0: np.linspace(-3, 3, 21).reshape(3, 7)})


IN_PLACE = ['type: "PReLU"', 'type: "ELU"', 'type: "ELU" elu_param { alpha: -0.5 }',
            'type: "Power" power_param { power: 0.5 scale: 2 shift: 3 }', 'type: "Exp"',
            'type: "Log" log_param { shift: 2 }', 'type: "BNLL"', 'type: "Swish"',
            'type: "Clip" clip_param { min: -0.5 max: 0.5 }']


@pytest.mark.parametrize("text", IN_PLACE)
def test_in_place_matches_cpu(text):
    """In place on the GPU: data, bottom diff (and PReLU's slope diff) equal the CPU's in-place run."""
    results = []
    for gpu in (False, True):
        layer, bottom, _ = make_layer(text, [(2, 3, 4)], F64, seed=3)
        layer.gpu = gpu
        dy = np.random.default_rng(4).uniform(-1, 1, (2, 3, 4))
        for blob in layer.blobs:
            blob.diff[...] = 0.5
        layer.reshape(bottom, bottom)
        layer.forward(bottom, bottom)
        y = bottom[0].data.copy()
        bottom[0].diff[...] = dy
        layer.backward(bottom, [True], bottom)
        results.append([y, bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs])
    for g, c in zip(results[1], results[0]):
        np.testing.assert_allclose(g, c, rtol=tolerance(F64), atol=1e-12)
