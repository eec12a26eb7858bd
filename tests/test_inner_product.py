"""InnerProduct: Caffe's forward test, transpose equivalence, axis, gradients, errors."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer
from dlcore.gradcheck import GradientChecker, make_blobs

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def ip_layer(params, dtype=np.float64, fillers=FILLERS):
    return create_layer(f'name: "ip" type: "InnerProduct" inner_product_param {{ {params} {fillers} }}', dtype=dtype)


@pytest.mark.parametrize("transpose", ["false", "true"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_positive_weights_and_bias_in_1_2(transpose, dtype):
    # Caffe's TestForward: inputs and weights uniform in [0, 1], bias uniform in [1, 2]
    # => every output is at least 1.
    layer = ip_layer(f"num_output: 10 transpose: {transpose}", dtype,
                     'weight_filler { type: "uniform" } bias_filler { type: "uniform" min: 1 max: 2 }')
    bottom, top = make_blobs([(2, 3, 4, 5)], dtype, low=0.0, high=1.0), [Blob(dtype=dtype)]
    layer.initialize(bottom, top)
    assert top[0].shape == (2, 10)
    assert layer.blobs[0].shape == ((60, 10) if transpose == "true" else (10, 60))
    assert np.all((layer.blobs[1].data >= 1) & (layer.blobs[1].data <= 2))
    layer.forward(bottom, top)
    assert np.all(top[0].data >= 1.0)
    w = layer.blobs[0].data if transpose == "true" else layer.blobs[0].data.T
    np.testing.assert_allclose(top[0].data, bottom[0].data.reshape(2, 60) @ w + layer.blobs[1].data,
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_transpose_is_equivalent():
    # Caffe's TestForwardTranspose / TestBackwardTranspose: same results with W^T stored.
    bottom, top = make_blobs([(2, 3, 4, 5)], np.float64), [Blob(dtype=np.float64)]
    plain = ip_layer("num_output: 7")
    plain.initialize(bottom, top)
    plain.forward(bottom, top)
    out_plain = top[0].data.copy()
    top[0].diff[...] = np.sin(np.arange(top[0].count)).reshape(top[0].shape)
    plain.backward(top, [True], bottom)
    dx_plain = bottom[0].diff.copy()

    trans = ip_layer("num_output: 7 transpose: true")
    trans.blobs = [Blob(60, 7, dtype=np.float64), Blob(7, dtype=np.float64)]
    trans.blobs[0].data[...] = plain.blobs[0].data.T
    trans.blobs[1].data[...] = plain.blobs[1].data
    top2 = [Blob(dtype=np.float64)]
    trans.initialize(bottom, top2)
    trans.forward(bottom, top2)
    np.testing.assert_allclose(top2[0].data, out_plain, rtol=1e-12)
    top2[0].diff[...] = top[0].diff
    bottom[0].diff[...] = 0
    trans.backward(top2, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, dx_plain, rtol=1e-12)
    np.testing.assert_allclose(trans.blobs[0].diff, plain.blobs[0].diff.T, rtol=1e-12)
    np.testing.assert_allclose(trans.blobs[1].diff, plain.blobs[1].diff, rtol=1e-12)


def test_axis_keeps_leading_shape():
    layer = ip_layer("num_output: 4 axis: 2")
    bottom, top = make_blobs([(2, 3, 4, 5)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    assert top[0].shape == (2, 3, 4) and layer.blobs[0].shape == (4, 20)
    layer.forward(bottom, top)
    expected = bottom[0].data.reshape(6, 20) @ layer.blobs[0].data.T + layer.blobs[1].data
    np.testing.assert_allclose(top[0].data.reshape(6, 4), expected, rtol=1e-12)
    # Negative axis counts from the end.
    layer = ip_layer("num_output: 4 axis: -1")
    layer.initialize(bottom, top)
    assert top[0].shape == (2, 3, 4, 4) and layer.blobs[0].shape == (4, 5)


@pytest.mark.parametrize("params", ["num_output: 5", "num_output: 5 transpose: true",
                                    "num_output: 3 axis: 2", "num_output: 4 bias_term: false"])
def test_gradient(params):
    layer = ip_layer(params)
    bottom, top = make_blobs([(2, 3, 2, 3)], np.float64), [Blob(dtype=np.float64)]
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_backward_accumulates_params_and_respects_propagate_down():
    layer = ip_layer("num_output: 3")
    bottom, top = make_blobs([(4, 6)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    for blob in layer.blobs:
        blob.diff[...] = 0
    bottom[0].diff[...] = 5.0
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 5.0)
    np.testing.assert_allclose(layer.blobs[0].diff, np.ones((3, 4)) @ bottom[0].data)
    np.testing.assert_allclose(layer.blobs[1].diff, [4, 4, 4])
    layer.backward(top, [True], bottom)
    np.testing.assert_allclose(layer.blobs[1].diff, [8, 8, 8])
    np.testing.assert_allclose(bottom[0].diff, np.ones((4, 3)) @ layer.blobs[0].data)


@pytest.mark.parametrize("rows", [3, 64, 65])
@pytest.mark.parametrize("bias", ["true", "false"])
def test_forward_small_and_large_batches(rows, bias):
    # up to SMALL_BATCH rows the product is computed transposed (y^T = W x^T), above it directly
    layer = ip_layer(f"num_output: 7 bias_term: {bias}")
    bottom, top = make_blobs([(rows, 2, 3)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    expected = bottom[0].data.reshape(rows, 6) @ layer.blobs[0].data.T
    if bias == "true":
        expected += layer.blobs[1].data
    np.testing.assert_allclose(top[0].data, expected, atol=1e-12)


@pytest.mark.parametrize("cblas", [True, False])
@pytest.mark.parametrize("transpose", ["false", "true"])
def test_weight_gradient_accumulates(monkeypatch, transpose, cblas):
    # Added once on top of what the diff held, by NumPy's BLAS with beta = 1 or, without it
    # (DLTRAIN_NO_CBLAS), through a work array.
    if cblas:
        from dltrain.layers import kernels
        assert kernels._numpy_cblas().get(np.dtype(np.float64)) is not None, "NumPy's BLAS has no cblas_dgemm"
        monkeypatch.delenv("DLTRAIN_NO_CBLAS", raising=False)
    else:
        monkeypatch.setenv("DLTRAIN_NO_CBLAS", "1")
    layer = ip_layer(f"num_output: 10 transpose: {transpose}")
    bottom, top = make_blobs([(4, 5)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    dy = np.random.default_rng(2).normal(size=(4, 10))
    top[0].diff[...] = dy
    start = np.random.default_rng(3).normal(size=layer.blobs[0].shape)
    layer.blobs[0].diff[...] = start
    layer.backward(top, [True], bottom)
    grad = dy.T @ bottom[0].data
    np.testing.assert_allclose(layer.blobs[0].diff, start + (grad.T if transpose == "true" else grad), atol=1e-12)


def test_accumulating_product_on_views():
    # out += a @ b for transposed and sliced operands, float32 and float64, against NumPy.
    from dltrain.layers import kernels
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        big = rng.normal(size=(9, 12)).astype(dtype)
        for a, b in [(big[:4, :5], big[2:7, 3:9]), (big[:5, :4].T, big[1:6, :6]), (big[:4, :5], big[2:8, 1:6].T),
                     (big[:6, :3].T, big[:6, 4:11])]:
            out = rng.normal(size=(a.shape[0], b.shape[1])).astype(dtype)
            expected = out + a @ b
            kernels.matmul(a, b, out, accumulate=True)
            np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_errors():
    with pytest.raises(ConfigError, match="num_output") as err:
        ip_layer("num_output: 0").initialize(make_blobs([(2, 3)], np.float64), [Blob(dtype=np.float64)])
    assert "'ip'" in str(err.value)
    layer = ip_layer("num_output: 2")
    bottom, top = make_blobs([(2, 3)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    bottom[0].reshape(2, 4)
    with pytest.raises(ConfigError, match="incompatible"):
        layer.reshape(bottom, top)
    # A batch-size change is fine.
    bottom[0].reshape(5, 3)
    layer.reshape(bottom, top)
    assert top[0].shape == (5, 2)
    layer = ip_layer("num_output: 2")
    layer.blobs = [Blob(3, 2, dtype=np.float64), Blob(2, dtype=np.float64)]
    with pytest.raises(ConfigError, match="weight shape"):
        layer.initialize(make_blobs([(2, 3)], np.float64), [Blob(dtype=np.float64)])
