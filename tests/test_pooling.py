"""Pooling: Caffe's literal cases, the AVE divisor and ceil rules, global pooling, gradients, errors."""
import math

import numpy as np
import pytest

from dlcore import Blob, ConfigError, create_layer
from dlcore.gradcheck import GradientChecker, make_blobs


def pool_layer(params, dtype=np.float64):
    return create_layer(f'name: "pool" type: "Pooling" pooling_param {{ {params} }}', dtype=dtype)


def run(params, x, ntop=1, dtype=np.float64):
    layer = pool_layer(params, dtype)
    bottom = [Blob(*x.shape, dtype=dtype)]
    bottom[0].data[...] = x
    top = [Blob(dtype=dtype) for _ in range(ntop)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def reference_pool(x, kh, kw, sh, sw, ph, pw, method):
    """Caffe's loops, written out plainly (ceil rounding, padded-window AVE divisor)."""
    N, C, H, W = x.shape
    PH = math.ceil((H + 2 * ph - kh) / sh) + 1
    PW = math.ceil((W + 2 * pw - kw) / sw) + 1
    if ph or pw:
        PH -= (PH - 1) * sh >= H + ph
        PW -= (PW - 1) * sw >= W + pw
    y = np.zeros((N, C, PH, PW))
    for py in range(PH):
        for px in range(PW):
            hs, ws = py * sh - ph, px * sw - pw
            if method == "MAX":
                win = x[:, :, max(hs, 0):min(hs + kh, H), max(ws, 0):min(ws + kw, W)]
                # An empty window (ceil rounding with stride > kernel) stays at -FLT_MAX, as in Caffe.
                y[:, :, py, px] = win.max(axis=(2, 3)) if win.size else -3.4028234663852886e38
            else:
                he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                size = (he - hs) * (we - ws)
                win = x[:, :, max(hs, 0):min(he, H), max(ws, 0):min(we, W)]
                y[:, :, py, px] = win.sum(axis=(2, 3)) / size if size > 0 else 0
    return y


# --- Caffe's literal cases (test_pooling_layer.cpp) ---------------------------

PLANE = np.array([[1, 2, 5, 2, 3], [9, 4, 1, 4, 8], [1, 2, 5, 2, 3]], dtype=np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_max_and_mask(dtype):
    x = np.broadcast_to(PLANE, (2, 2, 3, 5)).copy()
    layer, bottom, top = run("pool: MAX kernel_size: 2 stride: 1", x, ntop=2, dtype=dtype)
    assert top[0].shape == top[1].shape == (2, 2, 2, 4)
    for n in range(2):
        for c in range(2):
            np.testing.assert_array_equal(top[0].data[n, c], [[9, 5, 5, 8], [9, 5, 5, 8]])
            np.testing.assert_array_equal(top[1].data[n, c], [[5, 2, 2, 9], [5, 12, 12, 9]])


def test_forward_max_without_mask_top_and_backward():
    x = np.broadcast_to(PLANE, (1, 1, 3, 5)).copy()
    layer, bottom, top = run("pool: MAX kernel_size: 2 stride: 1", x)
    np.testing.assert_array_equal(top[0].data[0, 0], [[9, 5, 5, 8], [9, 5, 5, 8]])
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    # Each top gradient goes to its argmax: 9 (index 5) twice, 5 (2) twice, 5 (12) twice, 8 (9) twice.
    expected = np.zeros(15)
    for idx in [5, 2, 2, 9, 5, 12, 12, 9]:
        expected[idx] += 1
    np.testing.assert_array_equal(bottom[0].diff.ravel(), expected)


def test_backward_routes_through_mask_top():
    x = np.broadcast_to(PLANE, (1, 1, 3, 5)).copy()
    layer, bottom, top = run("pool: MAX kernel_size: 2 stride: 1", x, ntop=2)
    top[1].data[...] = 0          # Caffe reads the mask top's data in backward
    top[0].diff[...] = 1
    layer.backward(top, [True], bottom)
    assert bottom[0].diff.ravel()[0] == 8 and bottom[0].diff.sum() == 8


def test_forward_max_rect_high_and_wide():
    rng = np.random.default_rng(0)
    x = rng.permutation(2 * 3 * 6 * 6).reshape(2, 3, 6, 6).astype(np.float64)
    for params, (kh, kw) in [("kernel_h: 3 kernel_w: 2", (3, 2)), ("kernel_h: 2 kernel_w: 3", (2, 3))]:
        _, _, top = run(f"pool: MAX {params}", x)
        np.testing.assert_array_equal(top[0].data, reference_pool(x, kh, kw, 1, 1, 0, 0, "MAX"))
        assert top[0].shape == (2, 3, 7 - kh, 7 - kw)


def test_forward_max_padded():
    # Caffe's TestForwardMaxPadded: 3x3 input, kernel 3, stride 2, pad 2.
    x = np.array([[1, 2, 4], [2, 3, 2], [4, 2, 1]], dtype=np.float64).reshape(1, 1, 3, 3)
    _, _, top = run("pool: MAX kernel_size: 3 stride: 2 pad: 2", x)
    np.testing.assert_array_equal(top[0].data[0, 0], [[1, 4, 4], [4, 4, 4], [4, 4, 1]])


def test_forward_ave_padded_divisor_counts_padding():
    # Caffe's TestForwardAve: constant 2, kernel 3, stride 1, pad 1 -> corners 8/9, edges 12/9.
    x = np.full((1, 1, 3, 3), 2.0)
    _, _, top = run("pool: AVE kernel_size: 3 stride: 1 pad: 1", x)
    np.testing.assert_allclose(top[0].data[0, 0], [[8 / 9, 4 / 3, 8 / 9], [4 / 3, 2, 4 / 3], [8 / 9, 4 / 3, 8 / 9]],
                               rtol=1e-12)


def test_ave_ceil_rule_border_windows():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    # No padding: ceil((4-3)/2)+1 = 2 windows per axis; the last one is clipped to the
    # image and divided by the clipped size.
    _, _, top = run("pool: AVE kernel_size: 3 stride: 2", x)
    np.testing.assert_allclose(top[0].data[0, 0], [[45 / 9, 39 / 6], [66 / 6, 50 / 4]])
    # Pad 1: windows start at -1, 1, 3; the divisor counts padded cells, e.g. the
    # last window (rows 3..4, cols 3..4 of the padded image) holds only x[3, 3] = 15 / 4.
    _, _, top = run("pool: AVE kernel_size: 3 stride: 2 pad: 1", x)
    assert top[0].shape == (1, 1, 3, 3)
    got = top[0].data[0, 0]
    assert got[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 9)
    assert got[2, 2] == pytest.approx(15 / 4)
    assert got[0, 2] == pytest.approx((3 + 7) / 6)
    np.testing.assert_allclose(got, reference_pool(x, 3, 3, 2, 2, 1, 1, "AVE")[0, 0])
    # MAX with the same windows.
    _, _, top = run("pool: MAX kernel_size: 3 stride: 2", x)
    np.testing.assert_array_equal(top[0].data[0, 0], [[10, 11], [14, 15]])


def test_padding_last_window_must_start_inside_image():
    # ceil((3 + 2 - 2) / 2) + 1 = 3, but the third window would start in the padding -> 2.
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    _, _, top = run("pool: MAX kernel_size: 2 stride: 2 pad: 1", x)
    assert top[0].shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(top[0].data[0, 0], [[0, 2], [6, 8]])


def test_round_mode_floor():
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    _, _, top = run("pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR", x)
    assert top[0].shape == (1, 1, 1, 1) and top[0].data.item() == 10


@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_global_pooling(method):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5))
    layer, bottom, top = run(f"pool: {method} global_pooling: true", x)
    assert top[0].shape == (2, 3, 1, 1)
    expected = x.max(axis=(2, 3)) if method == "MAX" else x.mean(axis=(2, 3))
    np.testing.assert_allclose(top[0].data[:, :, 0, 0], expected, rtol=1e-12)
    # The kernel follows the bottom when it is reshaped.
    bottom[0].reshape(2, 3, 3, 2)
    layer.reshape(bottom, top)
    assert top[0].shape == (2, 3, 1, 1)


@pytest.mark.parametrize("params,shape", [
    ("pool: MAX kernel_size: 3 stride: 2", (2, 3, 6, 5)),
    ("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 1", (2, 2, 6, 5)),
    ("pool: MAX kernel_size: 2 stride: 2", (2, 2, 4, 4)),
])
def test_max_gradient(params, shape):
    # Distinct, well separated values: no ties, no kinks within the step.
    rng = np.random.default_rng(2)
    count = int(np.prod(shape))
    bottom = [Blob(*shape, dtype=np.float64)]
    bottom[0].data[...] = (rng.permutation(count).reshape(shape) - count / 2) / count * 4
    GradientChecker(1e-4, 1e-2).check_gradient(pool_layer(params), bottom, [Blob(dtype=np.float64)])


@pytest.mark.parametrize("params,shape", [
    ("pool: AVE kernel_size: 3 stride: 2", (2, 3, 6, 5)),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", (2, 2, 6, 5)),
    ("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 1", (2, 2, 5, 4)),
    ("pool: AVE global_pooling: true", (2, 2, 3, 4)),
])
def test_ave_gradient(params, shape):
    GradientChecker(1e-2, 1e-2).check_gradient(pool_layer(params), make_blobs([shape], np.float64),
                                                [Blob(dtype=np.float64)])


def test_matches_reference_on_random_configs():
    rng = np.random.default_rng(4)
    for _ in range(20):
        kh, kw = rng.integers(1, 4, 2)
        sh, sw = rng.integers(1, 4, 2)
        ph, pw = rng.integers(0, kh), rng.integers(0, kw)
        H, W = rng.integers(max(kh, 3), 8), rng.integers(max(kw, 3), 8)
        x = rng.normal(size=(2, 2, H, W))
        for method in ("MAX", "AVE"):
            params = (f"pool: {method} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
                      f"pad_h: {ph} pad_w: {pw}")
            _, _, top = run(params, x)
            np.testing.assert_allclose(top[0].data, reference_pool(x, kh, kw, sh, sw, ph, pw, method),
                                       rtol=1e-12, err_msg=params)


@pytest.mark.parametrize("stride,pad,size", [(1, 0, (5, 4)), (2, 0, (5, 7)), (2, 1, (6, 5)), (3, 1, (7, 7)),
                                             (1, 1, (3, 4)), (3, 0, (7, 5))])
def test_2x2_max_matches_reference(stride, pad, size):
    # 2x2 windows take an unrolled kernel; borders (padding, ceil overhang) the general one.
    x = np.random.default_rng(7).normal(size=(2, 3) + size)
    layer, bottom, top = run(f"pool: MAX kernel_size: 2 stride: {stride} pad: {pad}", x, ntop=2)
    np.testing.assert_array_equal(top[0].data, reference_pool(x, 2, 2, stride, stride, pad, pad, "MAX"))
    # The mask points at the maximum.
    planes = x.reshape(6, -1)
    mask = top[1].data.reshape(6, -1).astype(int)
    np.testing.assert_array_equal(np.take_along_axis(planes, np.maximum(mask, 0), 1)[mask >= 0],
                                  top[0].data.reshape(6, -1)[mask >= 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unrolled_3x3_max_equals_plain_loop(dtype):
    # 3x3 windows take an unrolled kernel: same values AND argmaxes as the plain window loop, bit for
    # bit, with ties (the first in row-major order wins), -inf, NaN, padding and ceil-rounded borders.
    from dltrain.layers.pooling import PoolGeometry, max_pool_forward, max_pool_forward_3x3, pooled_size
    rng = np.random.default_rng(11)
    for _ in range(30):
        sh, sw = rng.integers(1, 5, 2)
        ph, pw = rng.integers(0, 3, 2)
        H, W = rng.integers(3, 10, 2)
        PH = pooled_size(H, 3, ph, sh, True, bool(ph or pw))
        PW = pooled_size(W, 3, pw, sw, True, bool(ph or pw))
        x = rng.integers(-3, 4, size=(3, H, W)).astype(dtype)     # small integers: many ties
        x[rng.random(x.shape) < 0.1] = -np.inf
        x[rng.random(x.shape) < 0.1] = np.nan
        x[2] = -np.inf                                               # a plane with no finite value
        g = PoolGeometry(3, int(H), int(W), PH, PW, 3, 3, int(ph), int(pw), int(sh), int(sw))
        outs = []
        for kernel in (max_pool_forward, max_pool_forward_3x3):
            top, mask = np.zeros(3 * PH * PW, dtype), np.zeros(3 * PH * PW, np.int32)
            kernel(x.reshape(-1), g, top, mask)
            outs.append((top, mask))
        np.testing.assert_array_equal(outs[1][0], outs[0][0], err_msg=str(g))
        np.testing.assert_array_equal(outs[1][1], outs[0][1], err_msg=str(g))


@pytest.mark.parametrize("params,message", [
    ("pool: MAX kernel_size: 2 pad: 2", "smaller than the kernel"),
    ("pool: MAX global_pooling: true kernel_size: 2", "cannot be specified"),
    ("pool: MAX global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "not both"),
    ("pool: MAX kernel_h: 2", "kernel_h and kernel_w"),
    ("pool: MAX kernel_size: 2 pad_h: 1", "pad"),
    ("pool: MAX kernel_size: 2 stride_w: 1", "stride"),
    ("pool: STOCHASTIC kernel_size: 2", "not implemented"),
])
def test_config_errors(params, message):
    with pytest.raises(ConfigError, match=message) as err:
        pool_layer(params).initialize(make_blobs([(1, 1, 4, 4)], np.float64), [Blob(dtype=np.float64)])
    assert "'pool'" in str(err.value)


def test_mask_top_only_for_max():
    with pytest.raises(ConfigError, match="mask"):
        pool_layer("pool: AVE kernel_size: 2").initialize(make_blobs([(1, 1, 4, 4)], np.float64),
                                                     [Blob(dtype=np.float64), Blob(dtype=np.float64)])
