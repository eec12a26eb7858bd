"""LSTM and RNN on the GPU (the GPU side of layers/recurrent.py): the recurrence runs on the device.

Same equations and parameter layout as the CPU layer, and the same cell
formulas (layers/lstm_cell.py; on the device with the exact activations).
Device layouts are step-major, so a step is a contiguous block and the top
(T, N, H) is written in place:

* ``pre`` (T*N, G) = x W_x^T: the input projection of all steps, ONE product;
* ``addend`` = the bias (broadcast) or, with a static input, (N, G) =
  x_static W_static^T + bias, ONE product;
* per step t, ONE launch: the recurrent term (cont_t h_{t-1}) W_h^T of each
  cell's four gates (a small product staged in shared memory), then the
  gate activations, c_t, tanh c_t, h_t straight into the top, and
  cont_{t+1} h_t for the next step (RNN: a product, then a cell kernel);
* backward per step, ONE launch: the gradient reaching h_t from step t+1
  (dG_{t+1} W_h, the same way), then dL/dc and the gate gradients dG_t
  into a (T*N, G) buffer;
* after the loop: dW_x += dG^T x, db += column sums of dG, dW_h += dG^T hc,
  dx = dG W_x: four products over all steps at once.

Kernels take the sequence's geometry as one record (:class:`Seq`).  The
carried state (h_T, c_T, when not expose_hidden) lives in Blobs, so it
moves between host and device with the rest (see layers/recurrent.py).
"""
import math
from collections import namedtuple

import numba
import numpy as np
from numba import cuda

from dlcore.device import SIM, copy, fill, grid, jit, scalar
from dlcore.layer import gpu_backward, gpu_forward

from .kernels_cuda import BIAS_COL, channel_sum, gemm
from .lstm_cell import exact_tanh, logistic, lstm_cell, lstm_gates, lstm_layer_cell_grad
from .recurrent import LSTMLayer, RNNLayer, tanh_grad_of

FUSED = True       # one launch per LSTM step (False: a product and a cell kernel per step)

Seq = namedtuple("Seq", "T N H addend_stride")
Seq.__doc__ = """A sequence's geometry in the kernels: T steps of N streams, H hidden units; the addend's
row stride (G with a static input, whose addend is (N, G); 0 for the bias, the same for every stream)."""


def _seq(layer, addend_stride):
    return Seq(layer.T, layer.N, layer.H, addend_stride)


# ---------------------------------------------------------------------------
# one cell of a step (device functions: the fused and the two-launch kernels share them)
# ---------------------------------------------------------------------------

@cuda.jit(device=True)
def _lstm_cell_forward(t, seq, n, j, ri, rf, ro, rg, pre, addend, cont, c, acts, tanh_c, h, hc, one):
    """Cell (stream n, unit j) of step t, from its four gates' recurrent terms ri..rg: the gates into
    ``acts``, c_t, tanh c_t, h_t, and cont_{t+1} h_t into ``hc`` for the next step."""
    N, H = seq.N, seq.H
    row = (t * N + n) * 4 * H
    a = n * seq.addend_stride
    i, sf, o, g = lstm_gates((pre[row + j] + ri) + addend[a + j], (pre[row + H + j] + rf) + addend[a + H + j],
                             (pre[row + 2 * H + j] + ro) + addend[a + 2 * H + j],
                             (pre[row + 3 * H + j] + rg) + addend[a + 3 * H + j], one, logistic, exact_tanh)
    acts[row + j] = i
    acts[row + H + j] = sf
    acts[row + 2 * H + j] = o
    acts[row + 3 * H + j] = g
    cell = (t * N + n) * H + j                   # c[cell] is c_{t-1} (c[0] = c_0)
    cv, tc, hv = lstm_cell(i, cont[t * N + n] * sf, o, g, c[cell], one, exact_tanh)
    c[cell + N * H] = cv
    tanh_c[cell] = tc
    h[cell] = hv
    if t + 1 < seq.T:
        hc[cell + N * H] = cont[(t + 1) * N + n] * hv


@cuda.jit(device=True)
def _lstm_cell_backward(t, seq, n, j, drec, cont_next, acts, c, tanh_c, cont, dtop, dc, dG, one):
    """Backward of cell (n, j) of step t; ``drec`` reaches h_t from step t+1 (times ``cont_next``)."""
    N, H = seq.N, seq.H
    row = (t * N + n) * 4 * H
    cell = (t * N + n) * H + j
    k = n * H + j
    dc[k], dG[row + j], dG[row + H + j], dG[row + 2 * H + j], dG[row + 3 * H + j] = lstm_layer_cell_grad(
        acts[row + j], acts[row + H + j], acts[row + 2 * H + j], acts[row + 3 * H + j], cont[t * N + n], c[cell],
        tanh_c[cell], dtop[cell] + cont_next * drec, dc[k], one)


# ---------------------------------------------------------------------------
# the two-launch LSTM step (a product, then this), the RNN and the small kernels
# ---------------------------------------------------------------------------

@jit
def _lstm_step_kernel(t, seq, pre, rec, addend, cont, c, acts, tanh_c, h, hc, one):
    H = seq.H
    for k in range(cuda.grid(1), seq.N * H, cuda.gridsize(1)):
        n = k // H
        j = k - n * H
        r = n * 4 * H
        _lstm_cell_forward(t, seq, n, j, rec[r + j], rec[r + H + j], rec[r + 2 * H + j], rec[r + 3 * H + j],
                           pre, addend, cont, c, acts, tanh_c, h, hc, one)


@jit
def _lstm_step_grad_kernel(t, seq, acts, c, tanh_c, cont, dtop, drec, dc, dG, one):
    H = seq.H
    for k in range(cuda.grid(1), seq.N * H, cuda.gridsize(1)):
        n = k // H
        cont_next = cont[(t + 1) * seq.N + n] if t + 1 < seq.T else one
        _lstm_cell_backward(t, seq, n, k - n * H, drec[k], cont_next, acts, c, tanh_c, cont, dtop, dc, dG, one)


@jit
def _rnn_step_kernel(t, seq, z, rec, addend, cont, h, hc, one):
    N, H = seq.N, seq.H
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        j = k - n * H
        cell = (t * N + n) * H + j
        hv = exact_tanh(z[cell] + addend[n * seq.addend_stride + j] + rec[k], one)
        h[cell] = hv
        if t + 1 < seq.T:
            hc[cell + N * H] = cont[(t + 1) * N + n] * hv


@jit
def _rnn_step_grad_kernel(t, seq, h, dh, drec, cont, dz, one):
    N, H = seq.N, seq.H
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        cell = t * N * H + k
        cont_next = cont[(t + 1) * N + n] if t + 1 < seq.T else one
        dz[cell] = tanh_grad_of(h[cell], dh[cell] + cont_next * drec[k], one)


@jit
def _scale_rows(src, scale, dst, N, H):
    """dst[n, j] = scale[n] * src[n, j] (N x H blocks)."""
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        dst[k] = scale[k // H] * src[k]


@jit
def _tanh_grad_kernel(y, dy, dx, n, one):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        dx[k] = tanh_grad_of(y[k], dy[k], one)


@jit
def _tanh_kernel(x, n):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        x[k] = math.tanh(x[k])


@jit
def _sum_steps(dG, T, NG, out):
    """out[k] = sum over t of dG[t*NG + k] (the static input's gradient sums every step)."""
    for k in range(cuda.grid(1), NG, cuda.gridsize(1)):
        acc = dG[k] * 0
        for t in range(T):
            acc += dG[t * NG + k]
        out[k] = acc


# ---------------------------------------------------------------------------
# LSTM steps with the recurrent product fused in: ONE launch per step.
#
# A block owns a tile of BJ hidden units x BS streams (one thread per cell)
# and computes, for its cells, the four gates' recurrent terms (forward:
# rec[n, g*H + j] = sum_k hc_t[n, k] W_h[g*H + j, k]) or the gradient that
# reaches h_t (backward: drec[n, j] = sum_g dG_{t+1}[n, g] W_h[g, j]),
# staging BK-deep slices of W_h and of the step's rows in shared memory;
# then it does the cell update in registers (the cell functions above).  The
# step's launch depends only on the previous step's launch, as the
# recurrence does.
# ---------------------------------------------------------------------------

Tile = namedtuple("Tile", "BJ BS BK")          # hidden units x streams per block, the staged depth
FUSED_SIM = Tile(4, 4, 4)                      # under the simulator
FUSED_GPU = Tile(32, 8, 32)
_fused = {}


@cuda.jit(device=True)
def _tile_place(BJ, BS):
    """This thread in its block's BJ x BS tile: (thread id, its unit and stream in the tile, the tile's
    first unit and first stream)."""
    tid = cuda.threadIdx.x
    return tid, tid % BJ, tid // BJ, cuda.blockIdx.x * BJ, cuda.blockIdx.y * BS


@cuda.jit(device=True)
def _stage(dst, src, base, ld, rows, cols, R, C, transpose, tid, nt, zero):
    """Copy an R x C tile of the row-major matrix ``src`` (leading dimension ``ld``, the tile's first
    element at ``base``) into the shared array ``dst``: element (r, c) to dst[c, r] (``transpose``) or
    dst[r, c]; zero for r >= rows or c >= cols.  Consecutive threads read consecutive columns."""
    for e in range(tid, R * C, nt):
        r = e // C
        cc = e - r * C
        v = zero
        if r < rows and cc < cols:
            v = src[base + r * ld + cc]
        if transpose:
            dst[cc, r] = v
        else:
            dst[r, cc] = v


def _make_fused(nbt, tile):
    BJ, BS, BK = tile
    NT = BJ * BS
    PJ = BJ + 1              # padded shared rows (compile-time constants: shared shapes must be)
    PS = BS + 1

    def forward(t, seq, pre, addend, cont, w_h, c, acts, tanh_c, h, hc):
        Ws = cuda.shared.array((4, BK, PJ), nbt)
        Hs = cuda.shared.array((BK, PS), nbt)
        zero = nbt(0)
        tid, tj, tn, j0, n0 = _tile_place(BJ, BS)
        N, H = seq.N, seq.H
        ri = zero
        rf = zero
        ro = zero
        rg = zero
        for k0 in range(0, H, BK):
            for e in range(tid, 4 * BJ * BK, NT):     # the four gates' tiles in one pass (fewer registers)
                gate = e // (BJ * BK)
                r = e - gate * (BJ * BK)
                jj = r // BK
                kk = r - jj * BK
                v = zero
                if j0 + jj < H and k0 + kk < H:
                    v = w_h[(gate * H + j0 + jj) * H + k0 + kk]
                Ws[gate, kk, jj] = v
            _stage(Hs, hc, (t * N + n0) * H + k0, H, N - n0, H - k0, BS, BK, True, tid, NT, zero)
            cuda.syncthreads()
            for kk in range(BK):
                hv = Hs[kk, tn]
                ri += hv * Ws[0, kk, tj]
                rf += hv * Ws[1, kk, tj]
                ro += hv * Ws[2, kk, tj]
                rg += hv * Ws[3, kk, tj]
            cuda.syncthreads()
        if j0 + tj < H and n0 + tn < N:
            _lstm_cell_forward(t, seq, n0 + tn, j0 + tj, ri, rf, ro, rg, pre, addend, cont, c, acts, tanh_c, h, hc,
                               nbt(1))

    def backward(t, seq, acts, c, tanh_c, cont, dtop, drec_last, w_h, dc, dG):
        Ws = cuda.shared.array((BK, PJ), nbt)
        Ds = cuda.shared.array((BK, PS), nbt)
        zero = nbt(0)
        one = nbt(1)
        tid, tj, tn, j0, n0 = _tile_place(BJ, BS)
        N, H = seq.N, seq.H
        G = 4 * H
        drec = zero
        if t + 1 < seq.T:
            for g0 in range(0, G, BK):
                _stage(Ws, w_h, g0 * H + j0, H, G - g0, H - j0, BK, BJ, False, tid, NT, zero)
                _stage(Ds, dG, ((t + 1) * N + n0) * G + g0, G, N - n0, G - g0, BS, BK, True, tid, NT, zero)
                cuda.syncthreads()
                for kk in range(BK):
                    drec += Ds[kk, tn] * Ws[kk, tj]
                cuda.syncthreads()
        if j0 + tj < H and n0 + tn < N:
            n = n0 + tn
            cont_next = one
            if t + 1 < seq.T:
                cont_next = cont[(t + 1) * N + n]
            else:
                drec = drec_last[n * H + j0 + tj]
            _lstm_cell_backward(t, seq, n, j0 + tj, drec, cont_next, acts, c, tanh_c, cont, dtop, dc, dG, one)

    return jit(forward), jit(backward), NT


def _fused_kernels(dtype):
    tile = FUSED_SIM if SIM else FUSED_GPU
    key = (np.dtype(dtype).str, tile)
    if key not in _fused:
        _fused[key] = kernels = _make_fused(numba.from_dtype(np.dtype(dtype)), tile)
        for index, kernel in enumerate(kernels[:2]):
            try:    # how to make it again (bench/cuda_compile_check.py)
                kernel._dltrain_key = ("dltrain.layers.recurrent_cuda", "_fused_kernel", (np.dtype(dtype).str, index))
            except AttributeError:
                pass
    return _fused[key], tile


def _fused_kernel(dtype, index):
    """The fused forward (0) or backward (1) step kernel for ``dtype`` (the compile check rebuilds it so)."""
    return _fused_kernels(dtype)[0][index]


def _fused_launch(layer):
    """(forward kernel, backward kernel, launch shape) of the fused steps for this layer's sizes."""
    (forward, backward, threads), tile = _fused_kernels(layer.dtype)
    blocks = ((layer.H + tile.BJ - 1) // tile.BJ, (layer.N + tile.BS - 1) // tile.BS)
    return forward, backward, (blocks, threads)


# ---------------------------------------------------------------------------
# the passes (registered as the layers' GPU code)
# ---------------------------------------------------------------------------

def _buf(layer, name, count):
    return layer.workspace.get(name, count, layer.dtype)


def _scale_rows_launch(src, scale, dst, N, H):
    if N * H:
        _scale_rows[grid(N * H)](src, scale, dst, N, H)


def _initial_state(layer, bottom, k):
    """The device array (N*H) of the k-th initial state: the exposed bottom, or the carried state blob."""
    if layer.expose_hidden:
        return bottom[layer._first_state_bottom() + k].gpu_data()
    return layer._state[k].gpu_data()


def _final_state(layer, top, k):
    if layer.expose_hidden:
        return top[1 + k].mutable_gpu_data()
    return layer._state[k].mutable_gpu_data()


def _input_side(layer, bottom, G):
    """pre (T*N, G) = x W_x^T, and the addend with its geometry: the sequence's :class:`Seq`."""
    T, N = layer.T, layer.N
    w_x, bias = layer.blobs[0].gpu_data(), layer.blobs[1].gpu_data()
    pre = _buf(layer, "pre", T * N * G)
    gemm(T * N, G, layer.D, bottom[0].gpu_data(), w_x, pre, tb=True)
    if layer.static_input:
        addend = _buf(layer, "addend", N * G)
        gemm(N, G, layer.Ds, bottom[2].gpu_data(), layer.blobs[2].gpu_data(), addend, tb=True, bias=bias,
               bias_mode=BIAS_COL)
        return pre, addend, _seq(layer, G)
    return pre, bias, _seq(layer, 0)


def _start(layer, bottom, hc):
    """Block 0 of hc = cont_0 * h_0; marks the forward done (for backward's check)."""
    _scale_rows_launch(_initial_state(layer, bottom, 0), bottom[1].gpu_data(), hc, layer.N, layer.H)
    layer._rec_used = np.ones(layer.T, np.bool_)


def _backward_start(layer, top, propagate_down, drec):
    """The gradient entering the last step from h_T: the exposed top's diff, or nothing."""
    layer._check_propagate_down(propagate_down)
    if layer.expose_hidden:
        copy(top[1].gpu_diff(), drec, layer.N * layer.H)
    else:
        fill(drec, 0, layer.N * layer.H)


def _h0_grad(layer, bottom, propagate_down, dG, w_h, G):
    """dL/dh_0 = cont_0 * (dG_0 W_h), into the exposed h_0 bottom."""
    first = layer._first_state_bottom()
    if layer.expose_hidden and propagate_down[first]:
        N, H = layer.N, layer.H
        d = _buf(layer, "dh0", N * H)
        gemm(N, H, G, dG, w_h, d)
        _scale_rows_launch(d, bottom[1].gpu_data(), bottom[first].mutable_gpu_diff(), N, H)


@gpu_forward(LSTMLayer)
def lstm_forward_gpu(layer, bottom, top):
    T, N, H = layer.T, layer.N, layer.H
    G = 4 * H
    NH = N * H
    w_h = layer.blobs[-1].gpu_data()
    cont = bottom[1].gpu_data()
    pre, addend, seq = _input_side(layer, bottom, G)
    acts = _buf(layer, "acts", T * N * G)
    c = _buf(layer, "c", (T + 1) * NH)
    tanh_c = _buf(layer, "tanh_c", T * NH)
    hc = _buf(layer, "hc", T * NH)
    h = top[0].mutable_gpu_data()
    copy(_initial_state(layer, bottom, 1), c, NH)
    _start(layer, bottom, hc)
    if FUSED:
        forward, _, shape = _fused_launch(layer)
        for t in range(T):
            forward[shape](t, seq, pre, addend, cont, w_h, c, acts, tanh_c, h, hc)
    else:
        rec = _buf(layer, "rec", N * G)
        one = scalar(1, layer.dtype)
        for t in range(T):
            gemm(N, G, H, hc, w_h, rec, tb=True, a_off=t * NH)
            _lstm_step_kernel[grid(NH)](t, seq, pre, rec, addend, cont, c, acts, tanh_c, h, hc, one)
    copy(h, _final_state(layer, top, 0), NH, s_off=(T - 1) * NH)
    copy(c, _final_state(layer, top, 1), NH, s_off=T * NH)


@gpu_backward(LSTMLayer)
def lstm_backward_gpu(layer, top, propagate_down, bottom):
    T, N, H = layer.T, layer.N, layer.H
    G = 4 * H
    NH = N * H
    w_h = layer.blobs[-1].gpu_data()
    cont = bottom[1].gpu_data()
    acts = _buf(layer, "acts", T * N * G)
    c = _buf(layer, "c", (T + 1) * NH)
    tanh_c = _buf(layer, "tanh_c", T * NH)
    hc = _buf(layer, "hc", T * NH)
    dG = _buf(layer, "pre", T * N * G)          # the projection's buffer is free after forward
    drec = _buf(layer, "drec", NH)
    dc = _buf(layer, "dc", NH)
    dtop = top[0].gpu_diff()
    seq = _seq(layer, 0)
    _backward_start(layer, top, propagate_down, drec)
    if layer.expose_hidden:
        copy(top[2].gpu_diff(), dc, NH)
    else:
        fill(dc, 0, NH)
    if FUSED:
        _, backward, shape = _fused_launch(layer)
        for t in range(T - 1, -1, -1):
            backward[shape](t, seq, acts, c, tanh_c, cont, dtop, drec, w_h, dc, dG)
    else:
        one = scalar(1, layer.dtype)
        for t in range(T - 1, -1, -1):
            _lstm_step_grad_kernel[grid(NH)](t, seq, acts, c, tanh_c, cont, dtop, drec, dc, dG, one)
            if t > 0:
                gemm(N, H, G, dG, w_h, drec, a_off=t * N * G)       # drec = dG_t W_h
    _parameter_grads(layer, bottom, propagate_down, dG, hc, G, 2 + int(layer.static_input))
    _h0_grad(layer, bottom, propagate_down, dG, w_h, G)
    first = layer._first_state_bottom()
    if layer.expose_hidden and propagate_down[first + 1]:
        copy(dc, bottom[first + 1].mutable_gpu_diff(), NH)
    _static_grads(layer, bottom, propagate_down, dG, G)


def _parameter_grads(layer, bottom, propagate_down, dG, hc, G, ih):
    """dW_x += dG^T x, db += column sums of dG, dW_h += dG^T hc, dx = dG W_x (all steps at once;
    W_x and b are parameters 0 and 1, W_h is ``ih``)."""
    TN = layer.T * layer.N
    ppd = layer.param_propagate_down
    if ppd[0]:
        gemm(G, layer.D, TN, dG, bottom[0].gpu_data(), layer.blobs[0].mutable_gpu_diff(), ta=True, beta=1.0)
    if ppd[1]:
        channel_sum(dG, TN, G, 1, layer.blobs[1].mutable_gpu_diff(), accumulate=True)
    if ppd[ih]:
        gemm(G, layer.H, TN, dG, hc, layer.blobs[ih].mutable_gpu_diff(), ta=True, beta=1.0)
    if propagate_down[0]:
        gemm(TN, layer.D, G, dG, layer.blobs[0].gpu_data(), bottom[0].mutable_gpu_diff())


def _static_grads(layer, bottom, propagate_down, dG, G):
    """The static input's weight (parameter 2) and input gradients: its term enters every step."""
    if not layer.static_input or not (layer.param_propagate_down[2] or propagate_down[2]):
        return
    N = layer.N
    dGs = _buf(layer, "dGs", N * G)
    _sum_steps[grid(N * G)](dG, layer.T, N * G, dGs)
    if layer.param_propagate_down[2]:
        gemm(G, layer.Ds, N, dGs, bottom[2].gpu_data(), layer.blobs[2].mutable_gpu_diff(), ta=True, beta=1.0)
    if propagate_down[2]:
        gemm(N, layer.Ds, G, dGs, layer.blobs[2].gpu_data(), bottom[2].mutable_gpu_diff())


# --- RNN -------------------------------------------------------------------------------------

@gpu_forward(RNNLayer)
def rnn_forward_gpu(layer, bottom, top):
    T, N, H = layer.T, layer.N, layer.H
    NH = N * H
    w_hh, w_ho, b_o = (blob.gpu_data() for blob in layer.blobs[2 + int(layer.static_input):])
    cont = bottom[1].gpu_data()
    z, addend, seq = _input_side(layer, bottom, H)
    rec = _buf(layer, "rec", NH)
    h = _buf(layer, "h", T * NH)
    hc = _buf(layer, "hc", T * NH)
    one = scalar(1, layer.dtype)
    _start(layer, bottom, hc)
    for t in range(T):
        gemm(N, H, H, hc, w_hh, rec, tb=True, a_off=t * NH)
        _rnn_step_kernel[grid(NH)](t, seq, z, rec, addend, cont, h, hc, one)
    o = top[0].mutable_gpu_data()
    gemm(T * N, H, H, h, w_ho, o, tb=True, bias=b_o, bias_mode=BIAS_COL)
    _tanh_kernel[grid(T * NH)](o, T * NH)
    copy(h, _final_state(layer, top, 0), NH, s_off=(T - 1) * NH)


@gpu_backward(RNNLayer)
def rnn_backward_gpu(layer, top, propagate_down, bottom):
    T, N, H = layer.T, layer.N, layer.H
    NH, TN = N * H, T * N
    i_hh, i_ho, i_bo = (k + int(layer.static_input) for k in (2, 3, 4))
    w_hh, w_ho = layer.blobs[i_hh].gpu_data(), layer.blobs[i_ho].gpu_data()
    cont = bottom[1].gpu_data()
    h = _buf(layer, "h", T * NH)
    hc = _buf(layer, "hc", T * NH)
    do = _buf(layer, "do", T * NH)
    dho = _buf(layer, "dho", T * NH)
    dz = _buf(layer, "dz", T * NH)
    drec = _buf(layer, "drec", NH)
    one = scalar(1, layer.dtype)
    seq = _seq(layer, 0)
    ppd = layer.param_propagate_down
    _backward_start(layer, top, propagate_down, drec)
    _tanh_grad_kernel[grid(T * NH)](top[0].gpu_data(), top[0].gpu_diff(), do, T * NH, one)
    if ppd[i_ho]:
        gemm(H, H, TN, do, h, layer.blobs[i_ho].mutable_gpu_diff(), ta=True, beta=1.0)
    if ppd[i_bo]:
        channel_sum(do, TN, H, 1, layer.blobs[i_bo].mutable_gpu_diff(), accumulate=True)
    gemm(TN, H, H, do, w_ho, dho)
    for t in range(T - 1, -1, -1):
        _rnn_step_grad_kernel[grid(NH)](t, seq, h, dho, drec, cont, dz, one)
        if t > 0:
            gemm(N, H, H, dz, w_hh, drec, a_off=t * NH)
    _h0_grad(layer, bottom, propagate_down, dz, w_hh, H)
    _parameter_grads(layer, bottom, propagate_down, dz, hc, H, i_hh)
    _static_grads(layer, bottom, propagate_down, dz, H)
