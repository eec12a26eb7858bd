"""The LSTM cell's formulas (layers/lstm_cell.py), the CPU kernels' rational activations
(layers/rational.py) and BLAS thread control (layers/blas_threads.py), on their own.

The layers that use them (LSTM, RNN, LSTMUnit) are tested in test_recurrent.py and test_lstm_unit.py.
"""
import math

import numpy as np
import pytest
from numba import njit

from dltrain.layers import blas_threads
from dltrain.layers.lstm_cell import (caffe_forget, caffe_tanh, exact_tanh, logistic, lstm_cell, lstm_cell_grad,
                                      lstm_gates, lstm_layer_cell_grad)
from dltrain.layers.rational import kernel_sigmoid, kernel_tanh, rational_sigmoid, rational_tanh


def cell_forward(ai, af, ao, ag, cont, c_prev):
    """The LSTM layer's cell, float64, through the formulas called from Python."""
    i, sf, o, g = lstm_gates(ai, af, ao, ag, 1.0, logistic, exact_tanh)
    c, tc, h = lstm_cell(i, cont * sf, o, g, c_prev, 1.0, exact_tanh)
    return (i, sf, o, g), c, tc, h


@pytest.mark.parametrize("cont", [1.0, 0.5, 0.0])
def test_cell_gradient_is_the_derivative_of_the_cell(cont):
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = list(rng.uniform(-2, 2, 5))               # ai, af, ao, ag, c_prev
        wc, wh = rng.uniform(-1, 1, 2)                # L = wc c + wh h

        def loss(v):
            _, c, _, h = cell_forward(v[0], v[1], v[2], v[3], cont, v[4])
            return wc * c + wh * h
        (i, sf, o, g), c, tc, h = cell_forward(x[0], x[1], x[2], x[3], cont, x[4])
        dc_prev, di, df, do, dg = lstm_layer_cell_grad(i, sf, o, g, cont, x[4], tc, wh, wc, 1.0)
        analytic = [di, df, do, dg, dc_prev]
        eps = 1e-6
        for k in range(5):
            up, down = list(x), list(x)
            up[k] += eps
            down[k] -= eps
            assert analytic[k] == pytest.approx((loss(up) - loss(down)) / (2 * eps), abs=1e-8)


def test_the_units_gradient_differs_only_in_the_forget_slope():
    # Caffe's unit takes f (1 - f) for the forget gate's slope, the LSTM layer cont s_f (1 - s_f)
    i, sf, o, g, c_prev, tc, dh, dc = 0.3, 0.6, 0.8, -0.4, 0.7, 0.2, -1.5, 0.25
    for cont in (0.0, 1.0, 0.5):
        f = caffe_forget(cont, sf)
        unit = lstm_cell_grad(i, f, f, o, g, c_prev, tc, dh, dc, 1.0)
        layer = lstm_layer_cell_grad(i, sf, o, g, cont, c_prev, tc, dh, dc, 1.0)
        assert unit[:2] == layer[:2] and unit[3:] == layer[3:]
        assert (unit[2] == layer[2]) == (cont in (0.0, 1.0))


def test_caffe_forget_and_tanh():
    assert caffe_forget(0.0, float("nan")) == 0          # cont == 0: no forget gate, whatever its input
    assert caffe_forget(0.5, 0.6) == 0.5 * 0.6
    for x in np.linspace(-5, 5, 41):
        assert caffe_tanh(x, 1.0) == pytest.approx(math.tanh(x), abs=1e-15)
        assert logistic(x, 1.0) == pytest.approx(0.5 * math.tanh(0.5 * x) + 0.5, abs=1e-15)


@njit
def _kernel_activations(x, one, t, s):
    for k in range(x.shape[0]):
        t[k] = kernel_tanh(x[k], one)
        s[k] = kernel_sigmoid(x[k], one)


def test_rational_activations_are_accurate_in_float32():
    x = np.linspace(-12, 12, 200001).astype(np.float32)
    t, s = np.empty_like(x), np.empty_like(x)
    _kernel_activations(x, np.float32(1), t, s)
    exact = np.tanh(x.astype(np.float64))
    assert np.abs(t - exact).max() < 3e-7
    assert np.abs(s - (0.5 * np.tanh(0.5 * x.astype(np.float64)) + 0.5)).max() < 3e-7
    assert np.all(np.abs(t) <= 1) and t[0] == -1 and t[-1] == 1
    t_neg, s_neg = np.empty_like(x), np.empty_like(x)
    _kernel_activations(-x, np.float32(1), t_neg, s_neg)
    np.testing.assert_array_equal(t_neg, -t)          # odd
    # the scalar functions are the kernels' float32 path
    for k in (0, 77777, 100000, 123456):
        assert rational_tanh(x[k]) == t[k] and rational_sigmoid(x[k]) == s[k]


def test_float64_kernels_use_the_exact_activations():
    x = np.linspace(-12, 12, 2001)
    t, s = np.empty_like(x), np.empty_like(x)
    _kernel_activations(x, 1.0, t, s)
    np.testing.assert_array_equal(t, [math.tanh(v) for v in x])
    np.testing.assert_array_equal(s, [1.0 / (1.0 + math.exp(-v)) for v in x])


def test_single_threaded_blas_restores_the_thread_count():
    if not blas_threads.controllable():
        pytest.skip("no BLAS whose threads threadpoolctl can control")
    before = blas_threads.thread_counts()
    with blas_threads.single_threaded():
        assert blas_threads.thread_counts() == [1] * len(before)
    assert blas_threads.thread_counts() == before
