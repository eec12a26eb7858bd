"""Eltwise, Tile, Reduction, ArgMax: CUDA kernels against the CPU (simulator or real GPU; see tests/cuda_support.py)."""
import numpy as np
import pytest

from cuda_support import compare_layer, needs_cuda

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])
S3 = [(2, 3, 4)] * 3


def test_every_layer_has_gpu_code():
    """Each layer runs kernels of its own on the GPU, not its CPU pair on host copies (ArgMax has no backward)."""
    from dlcore.registry import get_layer_class
    for name in ("Eltwise", "Tile", "Reduction", "ArgMax"):
        cls = get_layer_class(name)
        assert cls.has_gpu_forward() and (cls.has_gpu_backward() or name == "ArgMax"), name


@BOTH
def test_eltwise(dtype):
    for params in ('operation: PROD', 'operation: PROD stable_prod_grad: false', 'operation: SUM',
                   'operation: SUM coeff: 1 coeff: -0.5 coeff: 2', 'operation: MAX'):
        compare_layer(f'type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" eltwise_param {{ {params} }}', S3, dtype)
    compare_layer('type: "Eltwise" bottom: "a" bottom: "b" eltwise_param { operation: MAX }', [(5, 3)] * 2, dtype,
                  propagate_down=[False, True])


def test_eltwise_max_ties_match_cpu():
    x = np.array([[1.0, 2.0, 5.0, 0.0]])
    compare_layer('type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" eltwise_param { operation: MAX }',
                  [(1, 4)] * 3, F64, bottom_data={0: x, 1: [[1.0, 3.0, 4.0, 0.0]], 2: [[1.0, 3.0, 5.0, -1.0]]})


@BOTH
def test_tile(dtype):
    compare_layer('type: "Tile" tile_param { tiles: 3 }', [(2, 3, 2)], dtype)
    compare_layer('type: "Tile" tile_param { axis: 0 tiles: 2 }', [(2, 5)], dtype)
    compare_layer('type: "Tile" tile_param { axis: -1 tiles: 4 }', [(3, 2)], dtype)


@BOTH
def test_reduction(dtype):
    for op in ("SUM", "ASUM", "SUMSQ", "MEAN"):
        compare_layer(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 1.5 }}', [(3, 4, 5)],
                      dtype)
    compare_layer('type: "Reduction"', [(2, 3)], dtype)                        # to a scalar
    compare_layer('type: "Reduction" reduction_param { operation: ASUM axis: 2 }', [(2, 3, 40)], dtype,
                  bottom_data={0: np.r_[np.zeros(10), np.linspace(-1, 1, 230)].reshape(2, 3, 40)})


@BOTH
def test_argmax(dtype):
    rounded = np.random.default_rng(5).uniform(-1, 1, (2, 3, 4, 5)).round(1)    # ties
    for params in ("", "out_max_val: true", "top_k: 4", "out_max_val: true top_k: 3", "axis: 1",
                   "axis: 2 top_k: 2", "axis: -1 top_k: 3 out_max_val: true"):
        compare_layer(f'type: "ArgMax" argmax_param {{ {params} }}', [(2, 3, 4, 5)], dtype,
                      bottom_data={0: rounded}, backward=False)
