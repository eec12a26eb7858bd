"""Eltwise, Tile, Reduction, ArgMax (after Caffe's test_eltwise_layer.cpp, test_tile_layer.cpp,
test_reduction_layer.cpp and test_argmax_layer.cpp)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer
from dlcore.gradcheck import GradientChecker, make_blobs

SHAPE = (2, 3, 2, 3)


def layer_of(text, dtype=np.float64):
    return create_layer(f'name: "l" {text}', dtype=dtype)


def run(text, arrays, n_top=1, dtype=np.float64):
    layer = layer_of(text, dtype)
    bottom = []
    for a in arrays:
        a = np.asarray(a, dtype)
        blob = Blob(*a.shape, dtype=dtype)
        blob.data[...] = a
        bottom.append(blob)
    top = [Blob(dtype=dtype) for _ in range(n_top)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


# --- Eltwise ------------------------------------------------------------------

def three(shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, shape) for _ in range(3)]


def test_eltwise_prod_sum_max_forward():
    a, b, c = three()
    _, _, top = run('type: "Eltwise" eltwise_param { operation: PROD }', [a, b, c])
    np.testing.assert_allclose(top[0].data, a * b * c, rtol=1e-14)
    _, _, top = run('type: "Eltwise"', [a, b, c])                       # SUM is the default
    np.testing.assert_allclose(top[0].data, a + b + c, rtol=1e-14)
    _, _, top = run('type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }', [a, b, c])
    np.testing.assert_allclose(top[0].data, a - 0.5 * b + 2 * c, rtol=1e-14)
    _, _, top = run('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    np.testing.assert_array_equal(top[0].data, np.maximum(a, np.maximum(b, c)))


def test_eltwise_max_ties_follow_caffe():
    # bottoms 0 and 1 compare with a > b: a tie goes to bottom 1; later bottoms must be strictly larger
    a = np.array([[1.0, 2.0, 5.0, 0.0]])
    b = np.array([[1.0, 3.0, 4.0, 0.0]])
    c = np.array([[1.0, 3.0, 5.0, -1.0]])
    layer, bottom, top = run('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    np.testing.assert_array_equal(layer.mask, [1, 1, 0, 1])
    top[0].diff[...] = [[10, 20, 30, 40]]
    layer.backward(top, [True, True, True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[0, 0, 30, 0]])
    np.testing.assert_array_equal(bottom[1].diff, [[10, 20, 0, 40]])
    np.testing.assert_array_equal(bottom[2].diff, [[0, 0, 0, 0]])


def test_eltwise_prod_gradient_both_ways_by_hand():
    a, b = np.array([2.0, 0.0, -3.0]), np.array([4.0, 5.0, 0.5])
    for stable, expect_a in ((True, [4.0, 5.0, 0.5]), (False, [4.0, np.nan, 0.5])):
        layer, bottom, top = run('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: %s }'
                                 % ("true" if stable else "false"), [a, b])
        top[0].diff[...] = 1.0
        with np.errstate(invalid="ignore", divide="ignore"):
            layer.backward(top, [True, True], bottom)
        # stable: the product of the other bottoms; unstable: top / bottom (0/0 where the bottom is 0, as Caffe)
        np.testing.assert_array_equal(bottom[0].diff, expect_a)
        np.testing.assert_array_equal(bottom[1].diff, a)


@pytest.mark.parametrize("text,checker", [
    ('eltwise_param { operation: PROD stable_prod_grad: true }', GradientChecker(1e-2, 1e-3)),
    ('eltwise_param { operation: PROD stable_prod_grad: false }', GradientChecker(1e-2, 1e-3)),
    ('eltwise_param { operation: SUM }', GradientChecker(1e-2, 1e-3)),
    ('eltwise_param { operation: SUM coeff: 1 coeff: -0.5 coeff: 2 }', GradientChecker(1e-2, 1e-3)),
    ('eltwise_param { operation: MAX }', GradientChecker(1e-4, 1e-3)),
])
def test_eltwise_gradient(text, checker):
    bottom = make_blobs([SHAPE] * 3)
    checker.check_gradient_eltwise(layer_of(f'type: "Eltwise" {text}'), bottom, [Blob(dtype=np.float64)])


def test_eltwise_two_bottoms_propagate_down_subset():
    a, b = three()[:2]
    layer, bottom, top = run('type: "Eltwise" eltwise_param { operation: SUM coeff: 3 coeff: -1 }', [a, b])
    top[0].diff[...] = 2.0
    bottom[1].diff[...] = 7.0
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 6.0)
    np.testing.assert_array_equal(bottom[1].diff, 7.0)     # untouched


def test_eltwise_config_errors():
    a, b = three()[:2]
    with pytest.raises(ConfigError, match="one coefficient per bottom"):
        run('type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 coeff: 3 }', [a, b])
    with pytest.raises(ConfigError, match="only takes coefficients for summation"):
        run('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [a, b])
    with pytest.raises(ConfigError, match="same shape"):
        run('type: "Eltwise"', [a, b[:1]])
    _, _, top = run('type: "Eltwise" eltwise_param { operation: MAX coeff: 2 coeff: 3 }', [a, b])   # ignored
    np.testing.assert_array_equal(top[0].data, np.maximum(a, b))
    with pytest.raises(ConfigError, match="at least 2 bottom"):
        run('type: "Eltwise"', [a])


# --- Tile ---------------------------------------------------------------------

@pytest.mark.parametrize("axis,tiles", [(0, 3), (1, 2), (-1, 2), (2, 1)])
def test_tile_forward(axis, tiles):
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 4))
    _, _, top = run(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}', [x])
    reps = [1, 1, 1]
    reps[axis] = tiles
    np.testing.assert_array_equal(top[0].data, np.tile(x, reps))


def test_tile_default_axis_and_backward_sums():
    x = np.arange(6.0).reshape(2, 3)
    layer, bottom, top = run('type: "Tile" tile_param { tiles: 3 }', [x])
    assert top[0].shape == (2, 9)
    top[0].diff[...] = np.arange(18.0).reshape(2, 9)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, [[9, 12, 15], [36, 39, 42]])


@pytest.mark.parametrize("axis", [0, 1])
def test_tile_gradient(axis):
    bottom = make_blobs([(2, 3, 2)])
    GradientChecker(1e-2, 1e-2).check_gradient_exhaustive(
        layer_of(f'type: "Tile" tile_param {{ axis: {axis} tiles: 2 }}'), bottom, [Blob(dtype=np.float64)])


def test_tile_errors():
    x = np.zeros((2, 3))
    with pytest.raises(ConfigError, match="tiles must be specified"):
        run('type: "Tile"', [x])
    with pytest.raises(ConfigError, match="positive"):
        run('type: "Tile" tile_param { tiles: 0 }', [x])


# --- Reduction ----------------------------------------------------------------

REDUCE = {"SUM": np.sum, "ASUM": lambda a, axis: np.abs(a).sum(axis=axis),
          "SUMSQ": lambda a, axis: (a * a).sum(axis=axis), "MEAN": np.mean}


@pytest.mark.parametrize("op", sorted(REDUCE))
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_reduction_forward(op, axis):
    x = np.random.default_rng(2).uniform(-1, 1, (2, 3, 4))
    _, _, top = run(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: 2.5 }}', [x])
    ax = axis % 3
    assert top[0].shape == x.shape[:ax]
    expect = REDUCE[op](x.reshape(x.shape[:ax] + (-1,)), axis=-1) * 2.5
    np.testing.assert_allclose(top[0].data, expect, rtol=1e-12)


def test_reduction_default_sums_everything_into_a_scalar():
    x = np.array([[1.0, -2.0], [3.0, 4.5]])
    layer, bottom, top = run('type: "Reduction"', [x])
    assert top[0].shape == () and top[0].count == 1
    assert float(top[0].data) == 6.5
    top[0].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 2.0)


def test_reduction_backward_by_hand():
    x = np.array([[1.5, 0.0, -2.0], [-1.0, 3.0, 0.5]])
    dy = np.array([2.0, -1.0])
    for op, expect in (("SUM", np.array([[2.0] * 3, [-1.0] * 3]) * 0.5),
                       ("MEAN", np.array([[2.0] * 3, [-1.0] * 3]) * 0.5 / 3),
                       ("ASUM", np.sign(x) * dy[:, None] * 0.5),     # sign(0) = 0, as caffe_cpu_sign
                       ("SUMSQ", 2 * x * dy[:, None] * 0.5)):
        layer, bottom, top = run(f'type: "Reduction" reduction_param {{ operation: {op} axis: 1 coeff: 0.5 }}', [x])
        top[0].diff[...] = dy
        layer.backward(top, [True], bottom)
        np.testing.assert_allclose(bottom[0].diff, expect, rtol=1e-14, err_msg=op)


@pytest.mark.parametrize("op", sorted(REDUCE))
@pytest.mark.parametrize("axis", [0, 1])
def test_reduction_gradient(op, axis):
    # ASUM has a kink at 0: keep the inputs away from it
    rng = np.random.default_rng(3)
    bottom = make_blobs([(2, 3, 2)], rng=rng)
    x = bottom[0].data
    x[...] = np.sign(x) * (0.1 + np.abs(x))
    GradientChecker(1e-2, 2e-3).check_gradient_exhaustive(
        layer_of(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: 2.3 }}'),
        bottom, [Blob(dtype=np.float64)])


# --- ArgMax -------------------------------------------------------------------

def argmax_reference(x, top_k, out_max_val, axis=None):
    """Caffe's ordering: descending (value, index) pairs, a tie goes to the larger index."""
    def top_pairs(values):
        order = sorted(range(len(values)), key=lambda j: (values[j], j), reverse=True)[:top_k]
        return [j for j in order], [values[j] for j in order]
    if axis is None:
        rows = x.reshape(x.shape[0], -1)
        shape = [1] * max(x.ndim, 3)
        shape[0], shape[2] = x.shape[0], top_k
        if out_max_val:
            shape[1] = 2
        out = np.zeros(shape)
        flat = out.reshape(x.shape[0], -1)
        for i, row in enumerate(rows):
            idx, val = top_pairs(list(row))
            if out_max_val:
                flat[i, :top_k] = idx
                flat[i, top_k:] = val
            else:
                flat[i] = idx
        return out
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,))
    for index in np.ndindex(moved.shape[:-1]):
        idx, val = top_pairs(list(moved[index]))
        out[index] = val if out_max_val else idx
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("params,axis,top_k,out_max_val", [
    ("", None, 1, False),
    ("out_max_val: true", None, 1, True),
    ("top_k: 4", None, 4, False),
    ("out_max_val: true top_k: 4", None, 4, True),
    ("axis: 0", 0, 1, False),
    ("axis: 2 top_k: 2", 2, 2, False),
    ("axis: -1 top_k: 3 out_max_val: true", 3, 3, True),
    ("axis: 1 out_max_val: true", 1, 1, True),
])
def test_argmax_forward(params, axis, top_k, out_max_val):
    x = np.random.default_rng(4).uniform(-1, 1, (2, 3, 4, 5)).round(1)    # rounding makes ties
    _, _, top = run(f'type: "ArgMax" argmax_param {{ {params} }}', [x])
    expect = argmax_reference(x, top_k, out_max_val, axis)
    assert top[0].shape == expect.shape
    np.testing.assert_array_equal(top[0].data, expect)


def test_argmax_shapes_and_ties_by_hand():
    x = np.array([[1.0, 3.0, 3.0, 2.0]])
    _, _, top = run('type: "ArgMax" argmax_param { top_k: 3 out_max_val: true }', [x])
    assert top[0].shape == (1, 2, 3)
    np.testing.assert_array_equal(top[0].data, [[[2, 1, 3], [3, 3, 2]]])   # a tie: the larger index first
    _, _, top = run('type: "ArgMax"', [np.zeros((3, 2, 4, 5))])
    assert top[0].shape == (3, 1, 1, 1)
    np.testing.assert_array_equal(top[0].data, 39)                       # all equal: the last index


def test_argmax_errors_and_no_backward():
    x = np.zeros((2, 3))
    with pytest.raises(ConfigError, match="top_k"):
        run('type: "ArgMax" argmax_param { top_k: 4 }', [x])
    with pytest.raises(ConfigError, match="top_k"):
        run('type: "ArgMax" argmax_param { top_k: 3 axis: 0 }', [x])
    layer, bottom, top = run('type: "ArgMax"', [x])
    assert not layer.allow_force_backward(0)
    layer.backward(top, [False], bottom)                  # nothing asked, nothing done
    with pytest.raises(DLTrainError, match="no backward"):
        layer.backward(top, [True], bottom)


def test_float32_runs():
    a, b, c = (v.astype(np.float32) for v in three())
    _, _, top = run('type: "Eltwise" eltwise_param { operation: PROD }', [a, b, c], dtype=np.float32)
    np.testing.assert_allclose(top[0].data, a * b * c, rtol=1e-6)
    _, _, top = run('type: "Reduction" reduction_param { operation: SUMSQ axis: 1 }', [a], dtype=np.float32)
    np.testing.assert_allclose(top[0].data, (a.reshape(2, -1) ** 2).sum(1), rtol=1e-6)


# --- the CUDA kernels under the simulator (tests/test_cuda_elementwise.py), in a process of its own ----------

@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"), reason="already simulating")
def test_cuda_kernels_under_the_simulator():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    tests = ["tests/test_cuda_elementwise.py::test_eltwise[float64]",
             "tests/test_cuda_elementwise.py::test_eltwise_max_ties_match_cpu",
             "tests/test_cuda_elementwise.py::test_tile[float32]",
             "tests/test_cuda_elementwise.py::test_reduction[float32]",
             "tests/test_cuda_elementwise.py::test_argmax[float64]"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
