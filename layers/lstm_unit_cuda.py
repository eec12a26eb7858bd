"""LSTMUnit on the GPU: the CUDA side of layers/lstm_unit.py.

One thread per cell (instance n, hidden unit d), grid-stride, with the cell
formulas of layers/lstm_cell.py and Caffe's activations, as the CPU loops.
"""
from numba import cuda

from dlcore.device import grid, jit, scalar
from dlcore.layer import gpu_backward, gpu_forward

from .lstm_cell import caffe_forget, caffe_tanh, logistic, lstm_cell, lstm_cell_grad, lstm_gates
from .lstm_unit import LSTMUnitLayer


@jit
def _unit_forward(c_prev, x, cont, c, h, N, H, one):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        xb = k + 3 * n * H                  # n * 4H + d, d = k - n * H
        i, sf, o, g = lstm_gates(x[xb], x[xb + H], x[xb + 2 * H], x[xb + 3 * H], one, logistic, caffe_tanh)
        c[k], _, h[k] = lstm_cell(i, caffe_forget(cont[n], sf), o, g, c_prev[k], one, caffe_tanh)


@jit
def _unit_backward(c_prev, x, cont, c, dc, dh, dc_prev, dx, N, H, do_c, do_x, one):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        xb = k + 3 * n * H
        i, sf, o, g = lstm_gates(x[xb], x[xb + H], x[xb + 2 * H], x[xb + 3 * H], one, logistic, caffe_tanh)
        f = caffe_forget(cont[n], sf)
        dcp, di, df, do, dg = lstm_cell_grad(i, f, f, o, g, c_prev[k], caffe_tanh(c[k], one), dh[k], dc[k], one)
        if do_c:
            dc_prev[k] = dcp
        if do_x:
            dx[xb] = di
            dx[xb + H] = df
            dx[xb + 2 * H] = do
            dx[xb + 3 * H] = dg


@gpu_forward(LSTMUnitLayer)
def lstm_unit_forward_gpu(layer, bottom, top):
    cells = layer.num * layer.hidden
    if cells:
        _unit_forward[grid(cells)](bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[2].gpu_data(),
                                   top[0].mutable_gpu_data(), top[1].mutable_gpu_data(), layer.num, layer.hidden,
                                   scalar(1, layer.dtype))


@gpu_backward(LSTMUnitLayer)
def lstm_unit_backward_gpu(layer, top, propagate_down, bottom):
    cells = layer.num * layer.hidden
    if not layer.backward_wanted(propagate_down) or not cells:
        return
    # (a diff not propagated to is passed but never written)
    dc_prev = bottom[0].mutable_gpu_diff() if propagate_down[0] else bottom[0].gpu_diff()
    dx = bottom[1].mutable_gpu_diff() if propagate_down[1] else bottom[1].gpu_diff()
    _unit_backward[grid(cells)](bottom[0].gpu_data(), bottom[1].gpu_data(), bottom[2].gpu_data(), top[0].gpu_data(),
                                top[0].gpu_diff(), top[1].gpu_diff(), dc_prev, dx, layer.num, layer.hidden,
                                bool(propagate_down[0]), bool(propagate_down[1]), scalar(1, layer.dtype))
