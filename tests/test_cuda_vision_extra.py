"""Im2col, SPP, Deconvolution: CUDA kernels against the CPU (see tests/cuda_support.py)."""
import numpy as np
import pytest

from cuda_support import compare_layer, needs_cuda

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])


@BOTH
def test_im2col(dtype):
    compare_layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 }', [(2, 2, 5, 4)], dtype)
    compare_layer('type: "Im2col" convolution_param { kernel_h: 2 kernel_w: 3 pad: 1 dilation: 2 }', [(1, 2, 4, 5)],
                  dtype)


@BOTH
def test_spp(dtype):
    for params in ("pyramid_height: 3", "pyramid_height: 2 pool: AVE", "pyramid_height: 1",
                   "pyramid_height: 1 pool: AVE"):
        compare_layer(f'type: "SPP" spp_param {{ {params} }}', [(2, 2, 6, 7)], dtype)


@BOTH
def test_deconvolution(dtype):
    compare_layer('type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 3 stride: 2 }',
                  [(2, 2, 3, 2)], dtype)
    compare_layer('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 }',
                  [(2, 4, 3, 3)], dtype)


def test_deconvolution_two_bottoms_rectangular_dilated():
    compare_layer('type: "Deconvolution" bottom: "a" bottom: "b" top: "c" top: "d" convolution_param { num_output: 2 '
                  'kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 dilation: 2 bias_term: false }',
                  [(1, 3, 3, 3), (1, 3, 3, 3)], F64, propagate_down=[True, False])
