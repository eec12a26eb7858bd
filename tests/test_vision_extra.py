"""Im2col, SPP, Deconvolution (after Caffe's test_im2col_layer.cpp, test_spp_layer.cpp and
test_deconvolution_layer.cpp).

Deconvolution is checked against the transposed convolution computed with
the Convolution layer's backward (and its backward against the Convolution
layer's forward); SPP against pooling by hand and against the Pooling layer.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer
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


# --- Im2col -------------------------------------------------------------------

def im2col_reference(x, kh, kw, ph, pw, sh, sw, dh=1, dw=1):
    N, C, H, W = x.shape
    oh = (H + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (W + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    padded = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    padded[:, :, ph:ph + H, pw:pw + W] = x
    out = np.zeros((N, C, kh, kw, oh, ow))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i, j] = padded[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
    return out.reshape(N, C * kh * kw, oh, ow)


X = np.random.default_rng(0).uniform(-1, 1, (2, 3, 6, 5))


@pytest.mark.parametrize("params,geo", [
    ("kernel_size: 3 stride: 2", (3, 3, 0, 0, 2, 2)),
    ("kernel_h: 5 kernel_w: 3 stride: 2", (5, 3, 0, 0, 2, 2)),
    ("kernel_size: 3 pad: 1 dilation: 2", (3, 3, 1, 1, 1, 1, 2, 2)),
    ("kernel_size: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2", (2, 2, 1, 0, 1, 2)),
])
def test_im2col_forward(params, geo):
    _, _, top = run(f'type: "Im2col" convolution_param {{ {params} }}', [X])
    expect = im2col_reference(X, *geo)
    assert top[0].shape == expect.shape
    np.testing.assert_array_equal(top[0].data, expect)


def test_im2col_setup_shape_as_caffe():
    _, _, top = run('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 }', [X])
    assert top[0].shape == (2, 27, 2, 2)


def test_im2col_is_what_convolution_multiplies():
    conv = layer_of('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 '
                    'bias_term: false weight_filler { type: "gaussian" } }')
    bottom, top = blobs_of([X]), [Blob(dtype=np.float64)]
    conv.initialize(bottom, top)
    conv.forward(bottom, top)
    _, _, cols = run('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', [X])
    w = conv.blobs[0].data.reshape(4, -1)
    np.testing.assert_allclose(np.einsum("mk,nkhw->nmhw", w, cols[0].data), top[0].data, rtol=1e-12)


@pytest.mark.parametrize("params", ["kernel_size: 3 stride: 2", "kernel_h: 3 kernel_w: 2 pad: 1 dilation: 2"])
def test_im2col_gradient(params):
    bottom = make_blobs([(1, 2, 5, 4)])
    GradientChecker(1e-2, 1e-2).check_gradient(layer_of(f'type: "Im2col" convolution_param {{ {params} }}'),
                                               bottom, [Blob(dtype=np.float64)])


def test_im2col_backward_sums_overlaps():
    layer, bottom, top = run('type: "Im2col" convolution_param { kernel_size: 2 stride: 1 }', [np.ones((1, 1, 3, 3))])
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff[0, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


def test_im2col_errors():
    with pytest.raises(ConfigError, match="kernel_size"):
        run('type: "Im2col"', [X])
    with pytest.raises(ConfigError, match="does not fit"):
        run('type: "Im2col" convolution_param { kernel_size: 9 }', [X])


# --- SPP ----------------------------------------------------------------------

def pool_reference(x, k, p, s, method):
    """Caffe's pooling by hand (square geometry): ceil rounding, the last window starting inside,
    AVE's divisor over the window clipped to the padded image."""
    N, C, H, W = x.shape
    out_size = []
    for size in (H, W):
        pooled = -(-(size + 2 * p - k) // s) + 1
        if p and (pooled - 1) * s >= size + p:
            pooled -= 1
        out_size.append(pooled)
    out = np.zeros((N, C) + tuple(out_size))
    for py in range(out_size[0]):
        for px in range(out_size[1]):
            hs, ws = py * s - p, px * s - p
            he, we = min(hs + k, H + p), min(ws + k, W + p)
            window = x[:, :, max(hs, 0):min(he, H), max(ws, 0):min(we, W)]
            if method == "MAX":
                out[:, :, py, px] = window.max(axis=(2, 3))
            else:
                out[:, :, py, px] = window.sum(axis=(2, 3)) / ((he - hs) * (we - ws))
    return out


def spp_reference(x, height, method):
    N, C, H, W = x.shape
    parts = []
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-H // bins), -(-W // bins)
        assert kh == kw and H == W
        pad = (kh * bins - H + 1) // 2
        parts.append(pool_reference(x, kh, pad, kh, method).reshape(N, -1))
    return np.concatenate(parts, axis=1)


def test_spp_literal():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    _, _, top = run('type: "SPP" spp_param { pyramid_height: 2 }', [x])
    np.testing.assert_array_equal(top[0].data, [[15, 5, 7, 13, 15]])
    _, _, top = run('type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [x])
    np.testing.assert_array_equal(top[0].data, [[7.5, 2.5, 4.5, 10.5, 12.5]])


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,height", [(4, 3), (5, 2), (7, 3), (6, 3)])
def test_spp_by_hand(method, size, height):
    x = np.random.default_rng(size).uniform(-1, 1, (2, 3, size, size))
    _, _, top = run(f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {method} }}', [x])
    expect = spp_reference(x, height, method)
    assert top[0].shape == expect.shape
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-14)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_matches_the_pooling_layer(method):
    # each level is exactly a Pooling layer with SPP's kernel, stride and pad (Caffe builds it that way)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 9, 8))
    spp, _, top = run(f'type: "SPP" spp_param {{ pyramid_height: 3 pool: {method} }}', [x])
    assert top[0].shape == (2, 63)                              # Caffe's TestSetup: 3 * (1 + 4 + 16)
    offset = 0
    for lv in spp.levels:
        _, _, pooled = run(f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {lv.kh} '
                           f'kernel_w: {lv.kw} stride_h: {lv.sh} stride_w: {lv.sw} '
                           f'pad_h: {lv.ph} pad_w: {lv.pw} }}', [x])
        part = pooled[0].data.reshape(2, -1)
        np.testing.assert_array_equal(top[0].data[:, offset:offset + part.shape[1]], part)
        offset += part.shape[1]
    assert offset == 63


def test_spp_output_sizes_as_caffe():
    for shape, height, channels in (((10, 3, 7, 7), 3, 63), ((1, 3, 1024, 765), 5, 1023)):
        layer = layer_of(f'type: "SPP" spp_param {{ pyramid_height: {height} }}', np.float32)
        top = [Blob(dtype=np.float32)]
        layer.initialize([Blob(*shape, dtype=np.float32)], top)
        assert top[0].shape == (shape[0], channels)


def test_spp_height_one_is_4d_global_pooling():
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 5, 4))
    _, _, top = run('type: "SPP" spp_param { pyramid_height: 1 }', [x])
    assert top[0].shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(top[0].data[..., 0, 0], x.max(axis=(2, 3)))


def test_spp_backward_sums_levels():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    layer, bottom, top = run('type: "SPP" spp_param { pyramid_height: 2 pool: MAX }', [x])
    top[0].diff[...] = [[1, 10, 20, 30, 40]]
    layer.backward(top, [True], bottom)
    expect = np.zeros((4, 4))
    expect[1, 1], expect[1, 3], expect[3, 1], expect[3, 3] = 10, 20, 30, 41
    np.testing.assert_array_equal(bottom[0].diff[0, 0], expect)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_spp_gradient(method):
    bottom = make_blobs([(1, 2, 6, 6)])
    layer = layer_of(f'type: "SPP" spp_param {{ pyramid_height: 3 pool: {method} }}')
    GradientChecker(1e-4, 1e-2).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64)])


def test_spp_errors():
    with pytest.raises(ConfigError, match="pad"):
        run('type: "SPP" spp_param { pyramid_height: 3 }', [np.zeros((1, 1, 5, 5))])    # Caffe's Pooling aborts
    with pytest.raises(ConfigError, match="4 axes"):
        run('type: "SPP" spp_param { pyramid_height: 2 }', [np.zeros((1, 4, 4))])
    with pytest.raises(ConfigError, match="STOCHASTIC"):
        run('type: "SPP" spp_param { pyramid_height: 2 pool: STOCHASTIC }', [np.zeros((1, 1, 4, 4))])


# --- Deconvolution ------------------------------------------------------------

def test_deconvolution_setup_as_caffe():
    layer = layer_of('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 }')
    bottom = [Blob(2, 3, 6, 4, dtype=np.float64), Blob(2, 3, 6, 4, dtype=np.float64)]
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    assert top[0].shape == (2, 4, 13, 9) and top[1].shape == (2, 4, 13, 9)
    assert layer.blobs[0].shape == (3, 4, 3, 3) and layer.blobs[1].shape == (4,)
    layer = layer_of('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 3 group: 3 }')
    layer.initialize([Blob(2, 3, 6, 4, dtype=np.float64)], top[:1])
    assert layer.blobs[0].shape == (3, 2, 3, 3) and top[0].shape == (2, 6, 8, 6)


def test_simple_deconvolution_literal():
    # Caffe's TestSimpleDeconvolution: ones in, weights 1, bias 0.1; overlapping windows accumulate
    layer, bottom, top = run('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 '
                             'weight_filler { type: "constant" value: 1 } '
                             'bias_filler { type: "constant" value: 0.1 } }',
                             [np.ones((2, 3, 6, 4))])
    H, W = top[0].shape[2:]
    for h in range(H):
        for w in range(W):
            expected = 3.1
            h_overlap = h % 2 == 0 and 0 < h < H - 1
            w_overlap = w % 2 == 0 and 0 < w < W - 1
            if h_overlap and w_overlap:
                expected += 9
            elif h_overlap or w_overlap:
                expected += 3
            np.testing.assert_allclose(top[0].data[:, :, h, w], expected, atol=1e-4)   # (0.1 is a float in the proto)


DECONVS = [
    "num_output: 4 kernel_size: 3 stride: 2",
    "num_output: 3 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad: 1",
    "num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2",
    "num_output: 2 kernel_size: 2 dilation: 2 pad_h: 1 bias_term: false",
]


@pytest.mark.parametrize("params", DECONVS)
def test_deconvolution_is_the_transposed_convolution(params):
    """Forward = Convolution's backward (data gradient); backward = Convolution's forward and weight gradient."""
    rng = np.random.default_rng(3)
    C_in = 4
    x = rng.uniform(-1, 1, (2, C_in, 4, 3))
    deconv = layer_of(f'type: "Deconvolution" convolution_param {{ {params} weight_filler {{ type: "gaussian" }} '
                      'bias_filler { type: "gaussian" } }')
    bottom, top = blobs_of([x]), [Blob(dtype=np.float64)]
    deconv.initialize(bottom, top)
    deconv.forward(bottom, top)
    cp = deconv.layer_param.convolution_param
    M = deconv.num_output
    # the convolution this layer transposes: num_output channels in, C_in channels out, the same weights
    conv_params = params.replace(f"num_output: {cp.num_output}", f"num_output: {C_in}")
    if "bias_term" not in conv_params:
        conv_params += " bias_term: false"
    conv = layer_of(f'type: "Convolution" convolution_param {{ {conv_params} }}')
    cb, ct = [Blob(2, M, *top[0].shape[2:], dtype=np.float64)], [Blob(dtype=np.float64)]
    conv.initialize(cb, ct)
    assert ct[0].shape == x.shape
    conv.blobs[0].data[...] = deconv.blobs[0].data
    # forward: the convolution's data gradient of top diff x, plus the bias
    ct[0].diff[...] = x
    conv.backward(ct, [True], cb)
    expect = cb[0].diff.copy()
    if deconv.bias_term:
        expect += deconv.blobs[1].data.reshape(1, M, 1, 1)
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-11, atol=1e-12)
    # backward: bottom diff = conv forward of the top diff; weight diff = conv's weight gradient
    dy = rng.uniform(-1, 1, top[0].shape)
    top[0].diff[...] = dy
    for b in deconv.blobs:
        b.diff[...] = 0
    deconv.backward(top, [True], bottom)
    cb[0].data[...] = dy
    conv.forward(cb, ct)
    np.testing.assert_allclose(bottom[0].diff, ct[0].data, rtol=1e-11, atol=1e-12)
    conv.blobs[0].diff[...] = 0
    ct[0].diff[...] = x
    conv.backward(ct, [False], cb)
    np.testing.assert_allclose(deconv.blobs[0].diff, conv.blobs[0].diff, rtol=1e-11, atol=1e-12)
    if deconv.bias_term:
        np.testing.assert_allclose(deconv.blobs[1].diff, dy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_deconvolution_accumulates_param_diffs_and_chunks():
    import dltrain.layers.vision_extra as V
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (5, 2, 3, 3))
    text = 'type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 2 stride: 2 ' \
           'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'
    results = []
    for limit in (V.COL_BUFFER_LIMIT, 3 * 4 * 9 * 2):       # the second cuts the batch into chunks of 2
        old, V.COL_BUFFER_LIMIT = V.COL_BUFFER_LIMIT, limit
        try:
            layer = layer_of(text)
            bottom, top = blobs_of([x]), [Blob(dtype=np.float64)]
            layer.initialize(bottom, top)
            layer.blobs[0].data[...] = np.linspace(-1, 1, layer.blobs[0].count).reshape(layer.blobs[0].shape)
            layer.blobs[1].data[...] = [0.1, -0.2, 0.3]
            assert layer.chunk == (5 if limit == old else 2)
            layer.forward(bottom, top)
            top[0].diff[...] = np.cos(np.arange(top[0].count)).reshape(top[0].shape)
            for b in layer.blobs:
                b.diff[...] = 1.0
            layer.backward(top, [True], bottom)
            results.append((top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy(),
                            layer.blobs[1].diff.copy()))
        finally:
            V.COL_BUFFER_LIMIT = old
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.allclose(results[0][3], 1.0 + top[0].diff.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("params,shapes", [
    ("num_output: 2 kernel_size: 2", [(1, 2, 2, 2)] * 2),                         # two bottoms, shared weights
    ("num_output: 2 kernel_size: 3 stride: 2 pad: 1 group: 2", [(1, 2, 2, 3)]),
])
def test_deconvolution_gradient(params, shapes):
    layer = layer_of(f'type: "Deconvolution" convolution_param {{ {params} weight_filler {{ type: "gaussian" }} '
                     'bias_filler { type: "gaussian" } }')
    bottom = make_blobs(shapes)
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, [Blob(dtype=np.float64) for _ in shapes])


def test_deconvolution_errors():
    with pytest.raises(ConfigError, match="multiple of group"):
        run('type: "Deconvolution" convolution_param { num_output: 3 kernel_size: 2 group: 2 }',
            [np.zeros((1, 2, 3, 3))])
    with pytest.raises(ConfigError, match="num_output"):
        run('type: "Deconvolution" convolution_param { kernel_size: 2 }', [np.zeros((1, 2, 3, 3))])
    with pytest.raises(ConfigError, match="output would be"):
        run('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 1 pad: 1 }',
            [np.zeros((1, 2, 1, 1))])


def test_fcn_style_upsampling_net():
    """Caffe's FCN pattern: a fixed bilinear Deconvolution (group = channels) then Crop back to the input."""
    import dlcore
    from dlcore import Net
    from dlcore.config import net_from_string
    text = """
    layer { name: "input" type: "Input" top: "data" top: "target"
            input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
            pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
    layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up" param { lr_mult: 0 }
            convolution_param { num_output: 3 group: 3 kernel_size: 4 stride: 2 bias_term: false
                                weight_filler { type: "bilinear" } } }
    layer { name: "crop" type: "Crop" bottom: "up" bottom: "data" top: "score" crop_param { offset: 1 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "score" bottom: "target" top: "loss" }
    """
    net = Net(net_from_string(text), dlcore.TRAIN, dtype=np.float64)
    assert net.blobs["up"].shape == (1, 3, 10, 10) and net.blobs["score"].shape == (1, 3, 8, 8)
    net.blobs["data"].data[...] = 2.0
    net.blobs["target"].data[...] = 2.0
    loss = net.forward_backward()
    # bilinear upsampling by 2 keeps a constant image constant away from the border
    np.testing.assert_allclose(net.blobs["score"].data[:, :, 1:-1, 1:-1], 2.0, rtol=1e-12)
    assert np.isfinite(loss) and np.isfinite(net.blobs["data"].diff).all()


# --- the CUDA kernels under the simulator (tests/test_cuda_vision_extra.py), in a process of its own ----------

@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"), reason="already simulating")
def test_cuda_kernels_under_the_simulator():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    tests = ["tests/test_cuda_vision_extra.py::test_im2col[float32]",
             "tests/test_cuda_vision_extra.py::test_spp[float64]",
             "tests/test_cuda_vision_extra.py::test_deconvolution[float64]",
             "tests/test_cuda_vision_extra.py::test_deconvolution_two_bottoms_rectangular_dilated"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
