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

(layers/recurrent.py's gate kernels are not reused: they work on the
LSTM's gate-major buffers, (4, H*N) per step, with a fast float32 tanh
approximation; the unit's gates are interleaved per instance, (N, 4H),
and it computes Caffe's formulas directly.)
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer


@njit(cache=True, inline="always")
def _sigmoid(x, one):
    return one / (one + np.exp(-x))


@njit(cache=True, inline="always")
def _tanh(x, one):
    return (one + one) * _sigmoid((one + one) * x, one) - one


@njit(cache=True)
def lstm_unit_forward(c_prev, x, cont, c, h, N, H, one):
    for n in range(N):
        cn = cont[n]
        for d in range(H):
            xb = n * 4 * H + d
            i = _sigmoid(x[xb], one)
            f = cn * _sigmoid(x[xb + H], one) if cn != 0 else cn * 0
            o = _sigmoid(x[xb + 2 * H], one)
            g = _tanh(x[xb + 3 * H], one)
            k = n * H + d
            cv = f * c_prev[k] + i * g
            c[k] = cv
            h[k] = o * _tanh(cv, one)


@njit(cache=True)
def lstm_unit_backward(c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x, one):
    for n in range(N):
        cn = cont[n]
        for d in range(H):
            xb = n * 4 * H + d
            i = _sigmoid(x[xb], one)
            f = cn * _sigmoid(x[xb + H], one) if cn != 0 else cn * 0
            o = _sigmoid(x[xb + 2 * H], one)
            g = _tanh(x[xb + 3 * H], one)
            k = n * H + d
            tc = _tanh(c[k], one)
            dct = dc[k] + dh[k] * o * (one - tc * tc)
            if do_c:
                dc_prev[k] = dct * f
            if do_x:
                dx[xb] = dct * g * i * (one - i)
                dx[xb + H] = dct * c_prev[k] * f * (one - f)
                dx[xb + 2 * H] = dh[k] * tc * o * (one - o)
                dx[xb + 3 * H] = dct * i * (one - g * g)


@register_layer("LSTMUnit")
class LSTMUnitLayer(Layer):
    exact_num_bottom_blobs = 3
    exact_num_top_blobs = 2

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
            if any(t is b for b in bottom):
                raise ConfigError(f"{name} does not allow in-place computation")
            t.reshape_like(bottom[0])

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def _check_cont_down(self, propagate_down):
        if propagate_down[2]:
            raise DLTrainError(f"layer '{self.name}' (LSTMUnit) cannot backpropagate to the sequence "
                               "indicators (bottom 2, cont)")

    def forward_cpu(self, bottom, top):
        one = self.dtype.type(1)
        lstm_unit_forward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), bottom[2].data.reshape(-1),
                          top[0].data.reshape(-1), top[1].data.reshape(-1), self.num, self.hidden, one)

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_cont_down(propagate_down)
        if not (propagate_down[0] or propagate_down[1]):
            return
        one = self.dtype.type(1)
        lstm_unit_backward(bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), bottom[2].data.reshape(-1),
                           top[0].data.reshape(-1), top[0].diff.reshape(-1), top[1].diff.reshape(-1),
                           bottom[0].diff.reshape(-1), bottom[1].diff.reshape(-1), self.num, self.hidden,
                           bool(propagate_down[0]), bool(propagate_down[1]), one)

    def forward_gpu(self, bottom, top):
        from . import lstm_unit_cuda as C
        C.forward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[2].gpu_data(), top[0].mutable_gpu_data(),
                  top[1].mutable_gpu_data(), self.num, self.hidden)

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_cont_down(propagate_down)
        if not (propagate_down[0] or propagate_down[1]):
            return
        from . import lstm_unit_cuda as C
        # (a diff not propagated to is passed but never written)
        dc_prev = bottom[0].mutable_gpu_diff() if propagate_down[0] else bottom[0].gpu_diff()
        dx = bottom[1].mutable_gpu_diff() if propagate_down[1] else bottom[1].gpu_diff()
        C.backward(bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[2].gpu_data(), top[0].gpu_data(),
                   top[0].gpu_diff(), top[1].gpu_diff(), dc_prev, dx, self.num, self.hidden,
                   bool(propagate_down[0]), bool(propagate_down[1]))

