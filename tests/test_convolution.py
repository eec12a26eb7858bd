"""Convolution: naive-loop reference (forward and backward), Sobel, gradient checks, errors."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer
from dlcore.gradcheck import GradientChecker, make_blobs


def conv_layer(params, dtype=np.float64, blobs=None, bias_filler='bias_filler { type: "gaussian" std: 0.5 }'):
    text = (f'name: "conv" type: "Convolution" convolution_param {{ {params} '
            f'weight_filler {{ type: "gaussian" std: 0.5 }} {bias_filler} }}')
    layer = create_layer(text, dtype=dtype)
    if blobs is not None:
        layer.blobs = blobs
    return layer


def reference_conv(x, w, b, stride, pad, dilation, group):
    """Caffe's caffe_conv: the plain definition, one output element at a time."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    oh = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    Mg = M // group
    y = np.zeros((N, M, oh, ow))
    for n in range(N):
        for m in range(M):
            g = m // Mg
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0 if b is None else b[m]
                    for c in range(Cg):
                        for ki in range(kh):
                            for kj in range(kw):
                                iy = oy * sh - ph + ki * dh
                                ix = ox * sw - pw + kj * dw
                                if 0 <= iy < H and 0 <= ix < W:
                                    acc += x[n, g * Cg + c, iy, ix] * w[m, c, ki, kj]
                    y[n, m, oy, ox] = acc
    return y


def reference_conv_backward(x, w, dy, stride, pad, dilation, group):
    """Gradients of reference_conv: (dx, dw, db), accumulated element by element."""
    N, C, H, W = x.shape
    M, Cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw_) = stride, pad, dilation
    Mg = M // group
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), dy.sum(axis=(0, 2, 3))
    for n in range(N):
        for m in range(M):
            g = m // Mg
            for oy in range(dy.shape[2]):
                for ox in range(dy.shape[3]):
                    d = dy[n, m, oy, ox]
                    for c in range(Cg):
                        for ki in range(kh):
                            for kj in range(kw):
                                iy = oy * sh - ph + ki * dh
                                ix = ox * sw - pw + kj * dw_
                                if 0 <= iy < H and 0 <= ix < W:
                                    dx[n, g * Cg + c, iy, ix] += d * w[m, c, ki, kj]
                                    dw[m, c, ki, kj] += d * x[n, g * Cg + c, iy, ix]
    return dx, dw, db


CASES = [
    # params, bottom shape, stride, pad, dilation, group
    ("num_output: 4 kernel_size: 3", (2, 3, 6, 5), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 4 kernel_size: 3 stride: 2", (2, 3, 6, 5), (2, 2), (0, 0), (1, 1), 1),
    ("num_output: 3 kernel_size: 3 pad: 1 group: 3", (2, 3, 6, 5), (1, 1), (1, 1), (1, 1), 3),
    ("num_output: 4 kernel_size: 2 dilation: 2 pad: 1", (2, 3, 6, 5), (1, 1), (1, 1), (2, 2), 1),
    ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
     (2, 3, 6, 5), (2, 1), (1, 0), (1, 1), 1),
    ("num_output: 6 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2 pad: 0 pad: 1 group: 2 dilation: 2",
     (2, 4, 7, 5), (1, 2), (0, 1), (2, 1), 2),
    ("num_output: 4 kernel_size: 1", (2, 3, 4, 3), (1, 1), (0, 0), (1, 1), 1),
    ("num_output: 6 kernel_size: 1 group: 2", (3, 4, 5, 3), (1, 1), (0, 0), (1, 1), 2),
    ("num_output: 4 kernel_size: 1 stride: 2", (2, 3, 5, 4), (2, 2), (0, 0), (1, 1), 1),
    ("num_output: 2 kernel_size: 3 stride: 3 pad: 2", (1, 2, 5, 5), (3, 3), (2, 2), (1, 1), 1),
]


@pytest.fixture(params=["batch", "image"])
def layout(request, monkeypatch):
    """Run a test with each column layout (whole-batch GEMM / per-image GEMMs)."""
    import dltrain.layers.convolution as conv
    monkeypatch.setattr(conv, "IMAGE_LAYOUT_MIN_PIXELS", 1 << 30 if request.param == "batch" else 0)
    return request.param


@pytest.mark.parametrize("params,shape,stride,pad,dilation,group", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference_forward_and_backward(params, shape, stride, pad, dilation, group, dtype, layout):
    layer = conv_layer(params, dtype)
    bottom, top = make_blobs([shape], dtype), [Blob(dtype=dtype)]
    layer.initialize(bottom, top)
    x = bottom[0].data.astype(np.float64)
    w = layer.blobs[0].data.astype(np.float64)
    b = layer.blobs[1].data.astype(np.float64)
    expected = reference_conv(x, w, b, stride, pad, dilation, group)
    layer.forward(bottom, top)
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert top[0].shape == expected.shape
    np.testing.assert_allclose(top[0].data, expected, rtol=tol, atol=tol)

    dy = np.random.default_rng(3).uniform(-1, 1, expected.shape)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 0
    layer.blobs[1].diff[...] = 0
    layer.backward(top, [True], bottom)
    dx, dw, db = reference_conv_backward(x, w, dy, stride, pad, dilation, group)
    np.testing.assert_allclose(bottom[0].diff, dx, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.blobs[0].diff, dw, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.blobs[1].diff, db, rtol=tol, atol=tol)


def test_simple_convolution_shapes_and_two_bottoms(layout):
    # Caffe's TestSetup / TestSimpleConvolution: two bottoms share the weights.
    layer = conv_layer("num_output: 4 kernel_size: 3 stride: 2", np.float32)
    bottom = make_blobs([(2, 3, 6, 4), (2, 3, 6, 4)], np.float32)
    top = [Blob(), Blob()]
    layer.initialize(bottom, top)
    assert top[0].shape == (2, 4, 2, 1) and top[1].shape == (2, 4, 2, 1)
    assert layer.blobs[0].shape == (4, 3, 3, 3) and layer.blobs[1].shape == (4,)
    layer.forward(bottom, top)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    for i in range(2):
        np.testing.assert_allclose(top[i].data, reference_conv(bottom[i].data, w, b, (2, 2), (0, 0), (1, 1), 1),
                                   rtol=1e-4, atol=1e-4)
    # Backward: the weight gradient sums over both bottoms.
    dys = [np.full(top[0].shape, 1.0), np.full(top[1].shape, 2.0)]
    for t, d in zip(top, dys):
        t.diff[...] = d
    layer.blobs[0].diff[...] = 0
    layer.blobs[1].diff[...] = 0
    layer.backward(top, [True, True], bottom)
    expect_dw = sum(reference_conv_backward(bottom[i].data.astype(np.float64), w.astype(np.float64), dys[i],
                                            (2, 2), (0, 0), (1, 1), 1)[1] for i in range(2))
    np.testing.assert_allclose(layer.blobs[0].diff, expect_dw, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.blobs[1].diff, np.full(4, 4 * 1.0 + 4 * 2.0), rtol=1e-6)   # 4 outputs per channel


def test_sobel_equals_separable_filters():
    # Caffe's TestSobelConvolution: 3x3 Sobel G_x with stride 2 == [1 2 1]^T then [-1 0 1].
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 6, 4))
    sobel = Blob(1, 3, 3, 3, dtype=np.float64)
    sobel.data[...] = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
    full = conv_layer("num_output: 1 kernel_size: 3 stride: 2 bias_term: false", blobs=[sobel], bias_filler="")
    bottom, top = [Blob(*x.shape, dtype=np.float64)], [Blob(dtype=np.float64)]
    bottom[0].data[...] = x
    full.initialize(bottom, top)
    full.forward(bottom, top)

    col = Blob(1, 3, 3, 1, dtype=np.float64)
    col.data[...] = np.array([1, 2, 1], dtype=np.float64).reshape(3, 1)
    first = conv_layer("num_output: 1 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 bias_term: false",
                       blobs=[col], bias_filler="")
    mid = [Blob(dtype=np.float64)]
    first.initialize(bottom, mid)
    first.forward(bottom, mid)
    row = Blob(1, 1, 1, 3, dtype=np.float64)
    row.data[...] = np.array([-1, 0, 1], dtype=np.float64)
    second = conv_layer("num_output: 1 kernel_h: 1 kernel_w: 3 stride_h: 1 stride_w: 2 bias_term: false",
                        blobs=[row], bias_filler="")
    out = [Blob(dtype=np.float64)]
    second.initialize(mid, out)
    second.forward(mid, out)
    assert top[0].shape == out[0].shape == (2, 1, 2, 1)
    np.testing.assert_allclose(top[0].data, out[0].data, atol=1e-4)


GRAD_CASES = [
    ("num_output: 3 kernel_size: 3", (2, 3, 6, 5)),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 4, 6, 5)),
    ("num_output: 2 kernel_size: 2 dilation: 2", (2, 3, 6, 5)),
    ("num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 0 pad_w: 1", (2, 3, 6, 5)),
    ("num_output: 2 kernel_size: 1 bias_term: false", (2, 3, 4, 3)),
    ("num_output: 4 kernel_size: 1 group: 2", (2, 4, 3, 3)),
]


@pytest.mark.parametrize("params,shape", GRAD_CASES)
def test_gradient(params, shape, layout):
    layer = conv_layer(params)
    bottom, top = make_blobs([shape], np.float64), [Blob(dtype=np.float64)]
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_gradient_two_bottoms(layout):
    layer = conv_layer("num_output: 2 kernel_size: 3 stride: 2")
    bottom = make_blobs([(2, 3, 6, 4), (2, 3, 6, 4)], np.float64)
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    GradientChecker(1e-2, 1e-3).check_gradient(layer, bottom, top)


def test_channel_axis_and_leading_axes():
    # axis: 2 on a 5-D blob: axes before the channel axis all count as "num".
    layer = create_layer('name: "c" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 axis: 2 '
                         'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }', dtype=np.float64)
    bottom, top = make_blobs([(2, 2, 3, 5, 4)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (2, 2, 2, 3, 2)
    expected = reference_conv(bottom[0].data.reshape(4, 3, 5, 4), layer.blobs[0].data, layer.blobs[1].data,
                              (1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(top[0].data.reshape(4, 2, 3, 2), expected, atol=1e-10)


def test_chunked_batch_equals_whole_batch(monkeypatch, layout):
    import dltrain.layers.convolution as conv
    shape = (5, 3, 6, 5)
    results = []
    # 27*9 column elements per image; room for 4 images gives equal chunks of 3 + 2, not 4 + 1
    for limit, chunk in ((conv.COL_BUFFER_LIMIT, 5), (27 * 9 * 2, 2), (27 * 9 * 4, 3)):
        monkeypatch.setattr(conv, "COL_BUFFER_LIMIT", limit)
        layer = conv_layer("num_output: 4 kernel_size: 3 pad: 1 stride: 2")
        layer.blobs = [Blob(4, 3, 3, 3, dtype=np.float64), Blob(4, dtype=np.float64)]
        layer.blobs[0].data[...] = np.linspace(-1, 1, 108).reshape(4, 3, 3, 3)
        layer.blobs[1].data[...] = [0.1, 0.2, 0.3, 0.4]
        bottom, top = make_blobs([shape], np.float64), [Blob(dtype=np.float64)]
        layer.initialize(bottom, top)
        assert layer.chunk == chunk
        layer.forward(bottom, top)
        top[0].diff[...] = np.cos(np.arange(top[0].count)).reshape(top[0].shape)
        layer.backward(top, [True], bottom)
        results.append((top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy(),
                        layer.blobs[1].diff.copy()))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(a, b, atol=1e-12)


def test_backward_accumulates_params_and_respects_propagate_down(layout):
    layer = conv_layer("num_output: 2 kernel_size: 3")
    bottom, top = make_blobs([(2, 2, 5, 5)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    top[0].diff[...] = 1.0
    for blob in layer.blobs:
        blob.diff[...] = 0
    bottom[0].diff[...] = 7.0
    layer.backward(top, [False], bottom)
    assert np.all(bottom[0].diff == 7.0)          # not propagated: untouched
    once = [blob.diff.copy() for blob in layer.blobs]
    layer.backward(top, [False], bottom)
    for blob, d in zip(layer.blobs, once):
        np.testing.assert_allclose(blob.diff, 2 * d)   # parameters accumulate
    layer.param_propagate_down = [False, False]
    layer.backward(top, [True], bottom)
    for blob, d in zip(layer.blobs, once):
        np.testing.assert_allclose(blob.diff, 2 * d)   # frozen parameters untouched
    assert not np.all(bottom[0].diff == 7.0)


def test_weights_from_definition_are_kept():
    layer = conv_layer("num_output: 2 kernel_size: 1")
    w = Blob(2, 3, 1, 1, dtype=np.float64)
    w.data[...] = [[[[1]], [[2]], [[3]]], [[[4]], [[5]], [[6]]]]
    b = Blob(2, dtype=np.float64)
    b.data[...] = [10, 20]
    layer.blobs = [w, b]
    bottom, top = make_blobs([(1, 3, 2, 2)], np.float64), [Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    assert layer.blobs[0] is w
    layer.forward(bottom, top)
    np.testing.assert_allclose(top[0].data[0, 0], 10 + np.tensordot([1, 2, 3], bottom[0].data[0], 1))


@pytest.mark.parametrize("params,shape,message", [
    ("num_output: 0 kernel_size: 3", (1, 3, 5, 5), "num_output"),
    ("num_output: 4 kernel_size: 3 group: 2", (1, 3, 5, 5), "group"),
    ("num_output: 4 kernel_size: 3 group: 3", (1, 6, 5, 5), "num_output"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 3, 5, 5), "not both"),
    ("num_output: 2 kernel_h: 3", (1, 3, 5, 5), "kernel_w"),
    ("num_output: 2", (1, 3, 5, 5), "kernel_size"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 3, 5, 5), "stride"),
    ("num_output: 2 kernel_size: 3 pad: 1 pad: 1 pad: 1", (1, 3, 5, 5), "pad"),
    ("num_output: 2 kernel_size: 3", (1, 3, 5, 5, 5), "only 2-D convolution"),
    ("num_output: 2 kernel_size: 7", (1, 3, 5, 5), "does not fit"),
])
def test_config_errors_name_the_layer(params, shape, message):
    layer = conv_layer(params)
    with pytest.raises(ConfigError, match=message) as err:
        layer.initialize(make_blobs([shape], np.float64), [Blob(dtype=np.float64)])
    assert "'conv'" in str(err.value)


def test_wrong_stored_weight_shape():
    layer = conv_layer("num_output: 2 kernel_size: 3")
    layer.blobs = [Blob(2, 3, 2, 2, dtype=np.float64), Blob(2, dtype=np.float64)]
    with pytest.raises(ConfigError, match="weight shape"):
        layer.initialize(make_blobs([(1, 3, 5, 5)], np.float64), [Blob(dtype=np.float64)])
