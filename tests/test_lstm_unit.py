"""LSTMUnit (after Caffe's test_lstm_layer.cpp: TestLSTMUnitSetUp, TestLSTMUnitGradient, ...NonZeroCont)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer
from dlcore.gradcheck import GradientChecker

N, H = 3, 4


def sig(x):
    return 1 / (1 + np.exp(-x))


def reference(c_prev, x, cont):
    """Caffe's lstm_unit_layer.cpp formulas with NumPy."""
    xs = x.reshape(-1, 4, H)
    i, f, o, g = sig(xs[:, 0]), sig(xs[:, 1]), sig(xs[:, 2]), np.tanh(xs[:, 3])
    f = f * cont.reshape(-1, 1)
    c = f * c_prev.reshape(-1, H) + i * g
    return c.reshape(1, -1, H), (o * np.tanh(c)).reshape(1, -1, H)


def make(cont, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(1, N, H), (1, N, 4 * H), (1, N)]
    bottom = [Blob(*s, dtype=dtype) for s in shapes]
    bottom[0].data[...] = rng.uniform(-1, 1, shapes[0])
    bottom[1].data[...] = rng.uniform(-2, 2, shapes[1])
    bottom[2].data[...] = np.asarray(cont).reshape(1, N)
    layer = create_layer('name: "unit" type: "LSTMUnit"', dtype=dtype)
    top = [Blob(dtype=dtype), Blob(dtype=dtype)]
    layer.initialize(bottom, top)
    return layer, bottom, top


def test_setup_shapes():
    layer, bottom, top = make([1, 1, 1])
    assert top[0].shape == (1, N, H) and top[1].shape == (1, N, H)


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1], [1, 1, 1]])
def test_forward_matches_formulas(cont):
    layer, bottom, top = make(cont)
    layer.forward(bottom, top)
    c, h = reference(bottom[0].data, bottom[1].data, np.array(cont, float))
    np.testing.assert_allclose(top[0].data, c, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(top[1].data, h, rtol=1e-13, atol=1e-15)


def test_backward_by_hand_one_cell():
    # one instance, one unit: every gradient written out
    layer = create_layer('name: "u" type: "LSTMUnit"', dtype=np.float64)
    xi, xf, xo, xg, cp = 0.3, -0.4, 0.8, 0.5, 0.7
    bottom = [Blob(1, 1, 1, dtype=np.float64), Blob(1, 1, 4, dtype=np.float64), Blob(1, 1, dtype=np.float64)]
    bottom[0].data[...] = cp
    bottom[1].data[...] = [[[xi, xf, xo, xg]]]
    bottom[2].data[...] = 1
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    i, f, o, g = sig(xi), sig(xf), sig(xo), np.tanh(xg)
    c = f * cp + i * g
    assert np.isclose(top[0].data.item(), c) and np.isclose(top[1].data.item(), o * np.tanh(c))
    dc, dh = 0.25, -1.5
    top[0].diff[...] = dc
    top[1].diff[...] = dh
    layer.backward(top, [True, True, False], bottom)
    dct = dc + dh * o * (1 - np.tanh(c) ** 2)
    np.testing.assert_allclose(bottom[0].diff.ravel(), [dct * f])
    np.testing.assert_allclose(bottom[1].diff.ravel(),
                               [dct * g * i * (1 - i), dct * cp * f * (1 - f), dh * np.tanh(c) * o * (1 - o),
                                dct * i * (1 - g * g)])


@pytest.mark.parametrize("cont", [[0, 0, 0], [1, 0, 1]])
def test_gradient(cont):
    # every element of both tops in turn (c and h); cont gets no gradient
    layer, bottom, top = make(cont)
    GradientChecker(1e-2, 1e-3).check_gradient_exhaustive(layer, bottom, top, check_bottom=[0, 1])


def test_zero_cont_drops_the_previous_cell():
    layer, bottom, top = make([0, 1, 0])
    layer.forward(bottom, top)
    c0 = top[0].data.copy()
    bottom[0].data[:, [0, 2]] += 10.0              # c_prev of the restarted streams does not matter
    layer.forward(bottom, top)
    np.testing.assert_array_equal(top[0].data[:, [0, 2]], c0[:, [0, 2]])
    top[0].diff[...] = 1.0
    top[1].diff[...] = 1.0
    layer.backward(top, [True, True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[:, [0, 2]], 0)
    np.testing.assert_array_equal(bottom[1].diff.reshape(N, 4, H)[[0, 2], 1], 0)


def test_no_gradient_to_cont():
    layer, bottom, top = make([1, 1, 1])
    layer.forward(bottom, top)
    assert not layer.allow_force_backward(2) and layer.allow_force_backward(0)
    with pytest.raises(DLTrainError, match="sequence indicators"):
        layer.backward(top, [True, True, True], bottom)


def test_shape_errors():
    layer = create_layer('name: "u" type: "LSTMUnit"', dtype=np.float64)
    bad = [Blob(1, 2, 3, dtype=np.float64), Blob(1, 2, 11, dtype=np.float64), Blob(1, 2, dtype=np.float64)]
    with pytest.raises(ConfigError, match="4 \\* H"):
        layer.initialize(bad, [Blob(dtype=np.float64), Blob(dtype=np.float64)])
    bad = [Blob(2, 2, 3, dtype=np.float64), Blob(2, 2, 12, dtype=np.float64), Blob(2, 2, dtype=np.float64)]
    with pytest.raises(ConfigError, match="1 x N x H"):
        layer.initialize(bad, [Blob(dtype=np.float64), Blob(dtype=np.float64)])


def test_matches_one_step_of_the_lstm_layer():
    # the LSTM layer (layers/recurrent.py) at T = 1 is one LSTMUnit on W_xc x + b + W_hc (cont h0)
    D = 3
    rng = np.random.default_rng(7)
    lstm = create_layer(f'name: "lstm" type: "LSTM" recurrent_param {{ num_output: {H} expose_hidden: true }}',
                        dtype=np.float64)
    shapes = [(1, N, D), (1, N), (1, N, H), (1, N, H)]
    bottom = [Blob(*s, dtype=np.float64) for s in shapes]
    for b in bottom:
        b.data[...] = rng.uniform(-1, 1, b.shape)
    bottom[1].data[...] = [[1, 0, 1]]
    top = [Blob(dtype=np.float64) for _ in range(3)]
    lstm.initialize(bottom, top)
    for p in lstm.blobs:
        p.data[...] = rng.uniform(-1, 1, p.shape)
    lstm.forward(bottom, top)
    w_x, b, w_h = (p.data for p in lstm.blobs)
    x, cont, h0, c0 = (blob.data for blob in bottom)
    gates = x[0] @ w_x.T + b + (cont[0][:, None] * h0[0]) @ w_h.T
    unit, ub, ut = make([1, 1, 1])
    ub[0].data[...] = c0
    ub[1].data[...] = gates[None]
    ub[2].data[...] = cont
    unit.forward(ub, ut)
    np.testing.assert_allclose(ut[1].data, top[0].data, rtol=1e-12)     # h
    np.testing.assert_allclose(ut[0].data, top[2].data, rtol=1e-12)     # c_T


# --- the CUDA kernels under the simulator (tests/test_cuda_lstm_unit.py), in a process of its own ----------

@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"), reason="already simulating")
def test_cuda_kernels_under_the_simulator():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    tests = ["tests/test_cuda_lstm_unit.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
