"""The shared CUDA kernels (layers/kernels_cuda.py) against NumPy: the matrix product in every mode and
tile configuration, reductions, col2im, element-wise helpers.

Runs under Numba's CUDA simulator or on a real GPU (see tests/cuda_support.py);
skipped in the plain CPU run.
"""
import numpy as np
import pytest

from cuda_support import check_device, needs_cuda, rel_err

pytestmark = needs_cuda


@pytest.fixture(autouse=True)
def _device():
    check_device()


def _k():
    from dltrain.layers import kernels_cuda
    return kernels_cuda


def _gemm_case(M, N, K, ta, tb, batch=1, alpha=1.0, beta=0.0, bias_mode=0, atomic=False, ksplit=1,
               dtype=np.float64, config=None, seed=0):
    from numba import cuda
    KC = _k()
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, K, M) if ta else (batch, M, K)).astype(dtype)
    B = rng.standard_normal((batch, N, K) if tb else (batch, K, N)).astype(dtype)
    C = rng.standard_normal((batch, M, N)).astype(dtype)
    bias = rng.standard_normal(batch * (M if bias_mode == 1 else N)).astype(dtype)
    opA = A.transpose(0, 2, 1) if ta else A
    opB = B.transpose(0, 2, 1) if tb else B
    ref = alpha * (opA.astype(np.float64) @ opB)
    if atomic:
        ref = ref + C
    else:
        ref = ref + beta * C
        if bias_mode == 1:
            ref += bias.reshape(batch, M, 1)
        if bias_mode == 2:
            ref += bias.reshape(batch, 1, N)
    dA, dB, dC = (cuda.to_device(x.ravel()) for x in (A, B, C))
    KC.gemm(M, N, K, dA, dB, dC, ta=ta, tb=tb, alpha=alpha, beta=beta, batch=batch, a_bs=M * K, b_bs=K * N,
            c_bs=M * N, bias=cuda.to_device(bias) if bias_mode else None, bias_mode=bias_mode,
            cmode=KC.ATOMIC if atomic else KC.STORE, ksplit=ksplit, config=config)
    err = rel_err(dC.copy_to_host().reshape(batch, M, N), ref)
    assert err < (1e-5 if dtype == np.float32 else 1e-12), (M, N, K, ta, tb, err)


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_transposes(ta, tb):
    _gemm_case(19, 23, 21, ta, tb)


def test_gemm_batch_alpha_beta_bias_float32():
    _gemm_case(19, 13, 21, 0, 1, batch=3, alpha=0.5, beta=2.0, dtype=np.float32)
    _gemm_case(17, 9, 30, 1, 0, bias_mode=1, batch=2)
    _gemm_case(17, 9, 30, 0, 0, bias_mode=2, dtype=np.float32)


def test_gemm_atomic_split_k():
    _gemm_case(17, 9, 70, 0, 0, atomic=True, ksplit=3)
    _gemm_case(9, 17, 45, 1, 1, atomic=True, ksplit=2, batch=2, dtype=np.float32)


@pytest.mark.parametrize("config", ["CONFIG_MEDIUM", "CONFIG_LARGE", "CONFIG_WIDE", "CONFIG_TALL", "CONFIG_SMALL",
                                    (32, 16, 8, 4, 2)])
def test_gemm_tile_configurations(config):
    # the real-GPU configurations, on shapes that leave partial tiles on every side
    KC = _k()
    config = getattr(KC, config) if isinstance(config, str) else config
    big = config[0] * config[1] >= 128 * 32
    _gemm_case(config[0] + 3 if not big else config[0] + 2, config[1] + 5 if not big else 7, 2 * config[2] + 3, 1, 0,
               bias_mode=2, config=config, dtype=np.float32)
    if not big:
        _gemm_case(config[0] - 3, config[1] + 1, 3 * config[2] + 1, 0, 1, atomic=True, ksplit=2, config=config)


def test_bad_tile_configuration_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        _k()._check_config((16, 16, 8, 3, 2))


def test_reductions_and_elementwise():
    # dlcore.device: the plumbing layers and solvers share; kernels_cuda: layer math
    from numba import cuda
    from dlcore import device as D
    KC = _k()
    rng = np.random.default_rng(1)
    x = rng.standard_normal(1000).astype(np.float32)
    d = cuda.to_device(x)
    np.testing.assert_allclose(D.sum_host(d), x.astype(np.float64).sum(), rtol=1e-9)
    np.testing.assert_allclose(D.sum_host(d, squares=True), (x.astype(np.float64) ** 2).sum(), rtol=1e-9)
    assert D.max_host(d) == x.max()
    data = rng.standard_normal((3, 4, 5))
    out = cuda.to_device(np.ones(4))
    KC.channel_sum(cuda.to_device(data.ravel()), 3, 4, 5, out)
    np.testing.assert_allclose(out.copy_to_host(), 1 + data.sum(axis=(0, 2)), rtol=1e-12)
    y = cuda.to_device(np.arange(6.0))
    D.axpby(2.0, cuda.to_device(np.ones(6)), -1.0, y)
    np.testing.assert_allclose(y.copy_to_host(), 2 - np.arange(6.0))
    m = rng.standard_normal((2, 3, 4))
    t = cuda.device_array(24)
    KC.transpose(cuda.to_device(m.ravel()), t, 2, 3, 4)
    np.testing.assert_array_equal(t.copy_to_host().reshape(2, 4, 3), m.transpose(0, 2, 1))
    z = D.device_zeros(5, np.float32)
    D.fill(z, 3, n=2, off=1)
    D.copy(cuda.to_device(np.array([9.0, 8.0], np.float32)), z, n=2, d_off=3)
    np.testing.assert_array_equal(z.copy_to_host(), [0, 3, 3, 9, 8])


def test_col2im_is_the_adjoint_of_im2col():
    # <im2col(x), c> == <x, col2im(c)> for random x, c (the CPU im2col is the reference), in both layouts
    from numba import cuda

    from dltrain.layers import kernels as CPU
    KC = _k()
    rng = np.random.default_rng(2)
    N = 2
    g = CPU.conv_geometry(3, 6, 5, kernel=(3, 2), pad=(1, 0), stride=(2, 1), dilation=(1, 2))
    P = g.OH * g.OW
    x = rng.standard_normal(N * g.C * g.H * g.W)
    for strides in ((N * P, P), (P, g.C * g.kh * g.kw * P)):      # the batch and the image layouts
        col = np.empty(g.C * g.kh * g.kw * N * P)
        CPU.im2col(x, N, g, col, *strides)
        c = rng.standard_normal(col.size)
        out = cuda.device_array(x.size)
        KC.col2im(cuda.to_device(c), N, g, out, *strides)
        np.testing.assert_allclose(np.dot(col, c), np.dot(x, out.copy_to_host()), rtol=1e-12)
        # and the GPU's im2col is the CPU's
        dcol = cuda.device_array(col.size)
        KC.im2col(cuda.to_device(x), N, g, dcol, *strides)
        np.testing.assert_array_equal(dcol.copy_to_host(), col)
