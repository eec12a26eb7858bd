"""LSTMUnit: one step of Caffe's LSTM cell (lstm_unit_layer.cpp), the unit LSTM unrolls into.

Bottoms: ``c_prev`` (1 x N x H), ``x`` (1 x N x 4H: the gate inputs, blocks
[i, f, o, g] of H per instance) and ``cont`` (1 x N).  Tops: ``c`` and
``h`` (1 x N x H each)::

    i = sigmoid(x_i)   f = cont == 0 ? 0 : cont * sigmoid(x_f)
    o = sigmoid(x_o)   g = tanh(x_g)
    c = f * c_prev + i * g          h = o * tanh(c)

Backward, with dc~ = dc + dh * o * (1 - tanh(c)^2) (Caffe's CPU formulas;
f includes cont)::

    dc_prev = dc~ * f      dx_i = dc~ * g * i (1 - i)
    dx_f = dc~ * c_prev * f (1 - f)      dx_o = dh * tanh(c) * o (1 - o)
    dx_g = dc~ * i * (1 - g^2)

No gradient goes to ``cont``.  tanh is Caffe's ``2 sigmoid(2x) - 1``.

The cell is the LSTM's, written once in layers/lstm_cell.py (the LSTM
layer uses the same formulas, with its own forget gate f = cont * s_f and
its own activations on the CPU).  The unit's gates are interleaved per
instance, (N, 4H).
"""
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .lstm_cell import caffe_forget, caffe_tanh, logistic, lstm_cell, lstm_cell_grad, lstm_gates


@njit(cache=True)
def lstm_unit_forward(c_prev, x, cont, c, h, N, H, one):
    for n in range(N):
        for d in range(H):
            xb = n * 4 * H + d
            i, sf, o, g = lstm_gates(x[xb], x[xb + H], x[xb + 2 * H], x[xb + 3 * H], one, logistic, caffe_tanh)
            k = n * H + d
            c[k], _, h[k] = lstm_cell(i, caffe_forget(cont[n], sf), o, g, c_prev[k], one, caffe_tanh)


@njit(cache=True)
def lstm_unit_backward(c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x, one):
    for n in range(N):
        for d in range(H):
            xb = n * 4 * H + d
            i, sf, o, g = lstm_gates(x[xb], x[xb + H], x[xb + 2 * H], x[xb + 3 * H], one, logistic, caffe_tanh)
            k = n * H + d
            f = caffe_forget(cont[n], sf)
            dcp, di, df, do, dg = lstm_cell_grad(i, f, f, o, g, c_prev[k], caffe_tanh(c[k], one), dh[k], dc[k], one)
            if do_c:
                dc_prev[k] = dcp
            if do_x:
                dx[xb], dx[xb + H], dx[xb + 2 * H], dx[xb + 3 * H] = di, df, do, dg


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    """Caffe's LSTMUnit (see the module docstring); its GPU code is in layers/lstm_unit_cuda.py."""

    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2
    allows_in_place = False
    cuda_module = ".lstm_unit_cuda"

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (LSTMUnit)"
        names = ("c_prev", "x", "cont")
        if bottom[0].num_axes != 3:
            raise ConfigError(f"{name}: bottom 0 (c_prev) must be 1 x N x H, got {bottom[0].shape_string()}")
        num = bottom[0].shape[1]
        for i, blob in enumerate(bottom):
            axes = 2 if i == 2 else 3
            if blob.num_axes != axes or blob.shape[0] != 1 or blob.shape[1] != num:
                want = "1 x N" if i == 2 else ("1 x N x 4H" if i == 1 else "1 x N x H")
                raise ConfigError(f"{name}: bottom {i} ({names[i]}) must be {want} with N = {num}, got "
                                  f"{blob.shape_string()}")
        self.num = num
        self.hidden = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.hidden:
            raise ConfigError(f"{name}: bottom 1 (x) must have 4 * H = {4 * self.hidden} gate inputs per "
                              f"instance, got {bottom[1].shape_string()}")
        for t in top:
            t.reshape_like(bottom[0])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def backward_wanted(self, propagate_down):
        """Whether backward writes anything (c_prev's or x's diff); never to cont."""
        if propagate_down[2]:
            raise DLTrainError(f"layer '{self.name}' (LSTMUnit) cannot backpropagate to the sequence "
                               "indicators (bottom 2, cont)")
        return bool(propagate_down[0] or propagate_down[1])

    def forward_cpu(self, bottom, top):
        one = self.dtype.type(1)
        lstm_unit_forward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), bottom[2].data.reshape(-1),
                          top[0].data.reshape(-1), top[1].data.reshape(-1), self.num, self.hidden, one)

    def backward_cpu(self, top, propagate_down, bottom):
        if not self.backward_wanted(propagate_down):
            return
        one = self.dtype.type(1)
        lstm_unit_backward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), bottom[2].data.reshape(-1),
                           top[0].data.reshape(-1), top[0].diff.reshape(-1), top[1].diff.reshape(-1),
                           bottom[0].diff.reshape(-1), bottom[1].diff.reshape(-1), self.num, self.hidden,
                           bool(propagate_down[0]), bool(propagate_down[1]), one)
