"""LSTM and RNN on the GPU (the GPU side of layers/recurrent.py): the recurrence runs on the device.

Same equations and parameter layout as the CPU layer.  Device layouts are
step-major, so a step is a contiguous block and the top (T, N, H) is
written in place:

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

The carried state (h_T, c_T, when not expose_hidden) lives in Blobs, so it
moves between host and device with the rest (see layers/recurrent.py).
"""
import math

from numba import cuda

from . import kernels_cuda as K
from .kernels_cuda import grid, jit, scalar

FUSED = True       # one launch per LSTM step (False: a product and a cell kernel per step)


@jit
def _lstm_forward_step(t, T, N, H, pre, rec, addend, a_stride, cont, c, acts, tanh_c, h, hc, one):
    G = 4 * H
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        j = k - n * H
        row = (t * N + n) * G
        r = n * G
        a = n * a_stride
        i = one / (one + math.exp(-((pre[row + j] + rec[r + j]) + addend[a + j])))
        sf = one / (one + math.exp(-((pre[row + H + j] + rec[r + H + j]) + addend[a + H + j])))
        o = one / (one + math.exp(-((pre[row + 2 * H + j] + rec[r + 2 * H + j]) + addend[a + 2 * H + j])))
        g = math.tanh((pre[row + 3 * H + j] + rec[r + 3 * H + j]) + addend[a + 3 * H + j])
        acts[row + j] = i
        acts[row + H + j] = sf
        acts[row + 2 * H + j] = o
        acts[row + 3 * H + j] = g
        cell = (t * N + n) * H + j
        cv = cont[t * N + n] * sf * c[cell] + i * g          # c[t] is c_{t-1} (c[0] = c_0)
        tc = math.tanh(cv)
        c[cell + N * H] = cv
        tanh_c[cell] = tc
        hv = o * tc
        h[cell] = hv
        if t + 1 < T:
            hc[cell + N * H] = cont[(t + 1) * N + n] * hv


@jit
def _lstm_backward_step(t, T, N, H, acts, c, tanh_c, cont, dtop, drec, dc, dG, one):
    G = 4 * H
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        j = k - n * H
        row = (t * N + n) * G
        cell = (t * N + n) * H + j
        i = acts[row + j]
        sf = acts[row + H + j]
        o = acts[row + 2 * H + j]
        g = acts[row + 3 * H + j]
        cont_next = cont[(t + 1) * N + n] if t + 1 < T else one
        dhv = dtop[cell] + cont_next * drec[k]
        tc = tanh_c[cell]
        dct = dc[k] + dhv * o * (one - tc * tc)
        f = cont[t * N + n] * sf
        dc[k] = dct * f
        dG[row + j] = dct * g * i * (one - i)
        dG[row + H + j] = dct * c[cell] * f * (one - sf)
        dG[row + 2 * H + j] = dhv * tc * o * (one - o)
        dG[row + 3 * H + j] = dct * i * (one - g * g)


@jit
def _rnn_forward_step(t, T, N, H, z, rec, addend, a_stride, cont, h, hc):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        j = k - n * H
        cell = (t * N + n) * H + j
        hv = math.tanh(z[cell] + addend[n * a_stride + j] + rec[k])
        h[cell] = hv
        if t + 1 < T:
            hc[cell + N * H] = cont[(t + 1) * N + n] * hv


@jit
def _rnn_backward_step(t, T, N, H, h, dh, drec, cont, dz, one):
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        cell = t * N * H + k
        cont_next = cont[(t + 1) * N + n] if t + 1 < T else one
        hv = h[cell]
        dz[cell] = (dh[cell] + cont_next * drec[k]) * (one - hv * hv)


@jit
def _scale_rows(src, s_off, scale, sc_off, dst, d_off, N, H):
    """dst[n, j] = scale[n] * src[n, j] (N x H blocks)."""
    for k in range(cuda.grid(1), N * H, cuda.gridsize(1)):
        n = k // H
        dst[d_off + k] = scale[sc_off + n] * src[s_off + k]


@jit
def _tanh_grad(y, dy, dx, n, one):
    for k in range(cuda.grid(1), n, cuda.gridsize(1)):
        v = y[k]
        dx[k] = dy[k] * (one - v * v)


@jit
def _tanh_inplace(x, n):
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
# then it does the cell update in registers.  The step's launch depends
# only on the previous step's launch, as the recurrence does.
# ---------------------------------------------------------------------------

FUSED_SIM = (4, 4, 4)          # BJ, BS, BK under the simulator
FUSED_GPU = (32, 8, 32)
_fused = {}


def _fused_config():
    return FUSED_SIM if K.SIM else FUSED_GPU


def _make_fused(nbt, config):
    BJ, BS, BK = config
    NT = BJ * BS
    PJ = BJ + 1              # padded shared rows (compile-time constants: shared shapes must be)
    PS = BS + 1

    def forward(t, T, N, H, pre, addend, a_stride, cont, w_h, c, acts, tanh_c, h, hc, one):
        Ws = cuda.shared.array((4, BK, PJ), nbt)
        Hs = cuda.shared.array((BK, PS), nbt)
        zero = nbt(0)
        tid = cuda.threadIdx.x
        tj = tid % BJ
        tn = tid // BJ
        j0 = cuda.blockIdx.x * BJ
        n0 = cuda.blockIdx.y * BS
        j = j0 + tj
        n = n0 + tn
        ri = zero
        rf = zero
        ro = zero
        rg = zero
        hc_base = t * N * H
        for k0 in range(0, H, BK):
            for e in range(tid, 4 * BJ * BK, NT):
                gate = e // (BJ * BK)
                r = e - gate * (BJ * BK)
                jj = r // BK
                kk = r - jj * BK
                v = zero
                if j0 + jj < H and k0 + kk < H:
                    v = w_h[(gate * H + j0 + jj) * H + k0 + kk]
                Ws[gate, kk, jj] = v
            for e in range(tid, BS * BK, NT):
                nn = e // BK
                kk = e - nn * BK
                v = zero
                if n0 + nn < N and k0 + kk < H:
                    v = hc[hc_base + (n0 + nn) * H + k0 + kk]
                Hs[kk, nn] = v
            cuda.syncthreads()
            for kk in range(BK):
                hv = Hs[kk, tn]
                ri += hv * Ws[0, kk, tj]
                rf += hv * Ws[1, kk, tj]
                ro += hv * Ws[2, kk, tj]
                rg += hv * Ws[3, kk, tj]
            cuda.syncthreads()
        if j < H and n < N:
            G = 4 * H
            row = (t * N + n) * G
            a = n * a_stride
            i = one / (one + math.exp(-((pre[row + j] + ri) + addend[a + j])))
            sf = one / (one + math.exp(-((pre[row + H + j] + rf) + addend[a + H + j])))
            o = one / (one + math.exp(-((pre[row + 2 * H + j] + ro) + addend[a + 2 * H + j])))
            g = math.tanh((pre[row + 3 * H + j] + rg) + addend[a + 3 * H + j])
            acts[row + j] = i
            acts[row + H + j] = sf
            acts[row + 2 * H + j] = o
            acts[row + 3 * H + j] = g
            cell = (t * N + n) * H + j
            cv = cont[t * N + n] * sf * c[cell] + i * g
            tc = math.tanh(cv)
            c[cell + N * H] = cv
            tanh_c[cell] = tc
            hv = o * tc
            h[cell] = hv
            if t + 1 < T:
                hc[cell + N * H] = cont[(t + 1) * N + n] * hv

    def backward(t, T, N, H, acts, c, tanh_c, cont, dtop, drec_last, w_h, dc, dG, one):
        Ws = cuda.shared.array((BK, PJ), nbt)
        Ds = cuda.shared.array((BK, PS), nbt)
        zero = nbt(0)
        tid = cuda.threadIdx.x
        tj = tid % BJ
        tn = tid // BJ
        j0 = cuda.blockIdx.x * BJ
        n0 = cuda.blockIdx.y * BS
        j = j0 + tj
        n = n0 + tn
        G = 4 * H
        drec = zero
        if t + 1 < T:
            nxt = (t + 1) * N
            for g0 in range(0, G, BK):
                for e in range(tid, BK * BJ, NT):
                    kk = e // BJ
                    jj = e - kk * BJ
                    v = zero
                    if g0 + kk < G and j0 + jj < H:
                        v = w_h[(g0 + kk) * H + j0 + jj]
                    Ws[kk, jj] = v
                for e in range(tid, BS * BK, NT):
                    nn = e // BK
                    kk = e - nn * BK
                    v = zero
                    if n0 + nn < N and g0 + kk < G:
                        v = dG[(nxt + n0 + nn) * G + g0 + kk]
                    Ds[kk, nn] = v
                cuda.syncthreads()
                for kk in range(BK):
                    drec += Ds[kk, tn] * Ws[kk, tj]
                cuda.syncthreads()
        if j < H and n < N:
            k = n * H + j
            if t + 1 < T:
                cont_next = cont[(t + 1) * N + n]
            else:
                cont_next = one
                drec = drec_last[k]
            row = (t * N + n) * G
            cell = (t * N + n) * H + j
            i = acts[row + j]
            sf = acts[row + H + j]
            o = acts[row + 2 * H + j]
            g = acts[row + 3 * H + j]
            dhv = dtop[cell] + cont_next * drec
            tc = tanh_c[cell]
            dct = dc[k] + dhv * o * (one - tc * tc)
            f = cont[t * N + n] * sf
            dc[k] = dct * f
            dG[row + j] = dct * g * i * (one - i)
            dG[row + H + j] = dct * c[cell] * f * (one - sf)
            dG[row + 2 * H + j] = dhv * tc * o * (one - o)
            dG[row + 3 * H + j] = dct * i * (one - g * g)

    return K.jit(forward), K.jit(backward), NT


def _fused_kernels(dtype):
    import numba
    import numpy as np
    config = _fused_config()
    key = (np.dtype(dtype).str, config)
    if key not in _fused:
        _fused[key] = kernels = _make_fused(numba.from_dtype(np.dtype(dtype)), config)
        for index, kernel in enumerate(kernels[:2]):
            try:    # how to make it again (bench/cuda_compile_check.py)
                kernel._dltrain_key = ("dltrain.layers.recurrent_cuda", "_fused_kernel", (np.dtype(dtype).str, index))
            except AttributeError:
                pass
    return _fused[key], config


def _fused_kernel(dtype, index):
    """The fused forward (0) or backward (1) step kernel for ``dtype`` (the compile check rebuilds it so)."""
    return _fused_kernels(dtype)[0][index]


def _scale_rows_launch(src, scale, dst, N, H, s_off=0, sc_off=0, d_off=0):
    if N * H:
        _scale_rows[grid(N * H)](src, s_off, scale, sc_off, dst, d_off, N, H)


def _work(layer):
    work = getattr(layer, "_gpu_work", None)
    if work is None:
        work = layer._gpu_work = K.DeviceWorkspace()
    return work


def _buf(layer, name, count):
    return _work(layer).get(name, count, layer.dtype)


def _initial_state(layer, bottom, k):
    """The device array (N*H) of the k-th initial state: the exposed bottom, or the carried state blob."""
    if layer.expose_hidden:
        return bottom[layer._first_state_bottom() + k].gpu_data()
    return layer._state[k].gpu_data()


def _final_state(layer, top, k):
    if layer.expose_hidden:
        return top[1 + k].mutable_gpu_data()
    return layer._state[k].mutable_gpu_data()


def _input_side(layer, bottom, w_x, bias, w_static, G):
    """pre (T*N, G) = x W_x^T (+ bias when there is no static input) and the addend (array, row stride)."""
    T, N = layer.T, layer.N
    pre = _buf(layer, "pre", T * N * G)
    x = bottom[0].gpu_data()
    if layer.static_input:
        K.gemm(T * N, G, layer.D, x, w_x, pre, tb=True)
        addend = _buf(layer, "addend", N * G)
        K.gemm(N, G, layer.Ds, bottom[2].gpu_data(), w_static, addend, tb=True, bias=bias, bias_mode=K.BIAS_COL)
        return pre, addend, G
    K.gemm(T * N, G, layer.D, x, w_x, pre, tb=True)
    return pre, bias, 0


# --- LSTM ------------------------------------------------------------------------------------

def lstm_forward(layer, bottom, top):
    T, N, H = layer.T, layer.N, layer.H
    G = 4 * H
    NH = N * H
    nst = int(layer.static_input)
    w_x = layer.blobs[0].gpu_data()
    bias = layer.blobs[1].gpu_data()
    w_static = layer.blobs[2].gpu_data() if nst else None
    w_h = layer.blobs[-1].gpu_data()
    cont = bottom[1].gpu_data()
    pre, addend, a_stride = _input_side(layer, bottom, w_x, bias, w_static, G)
    rec = _buf(layer, "rec", N * G)
    acts = _buf(layer, "acts", T * N * G)
    c = _buf(layer, "c", (T + 1) * NH)
    tanh_c = _buf(layer, "tanh_c", T * NH)
    hc = _buf(layer, "hc", T * NH)
    h = top[0].mutable_gpu_data()
    one = scalar(1, layer.dtype)
    K.copy(_initial_state(layer, bottom, 1), c, NH)
    _scale_rows_launch(_initial_state(layer, bottom, 0), cont, hc, N, H)
    if FUSED:
        (fwd, _, NT), (BJ, BS, _) = _fused_kernels(layer.dtype)
        blocks = ((H + BJ - 1) // BJ, (N + BS - 1) // BS)
        for t in range(T):
            fwd[blocks, NT](t, T, N, H, pre, addend, a_stride, cont, w_h, c, acts, tanh_c, h, hc, one)
    else:
        for t in range(T):
            K.gemm(N, G, H, hc, w_h, rec, tb=True, a_off=t * NH)
            _lstm_forward_step[grid(NH)](t, T, N, H, pre, rec, addend, a_stride, cont, c, acts, tanh_c, h, hc,
                                         one)
    K.copy(h, _final_state(layer, top, 0), NH, s_off=(T - 1) * NH)
    K.copy(c, _final_state(layer, top, 1), NH, s_off=T * NH)


def lstm_backward(layer, top, propagate_down, bottom):
    T, N, H = layer.T, layer.N, layer.H
    G = 4 * H
    NH = N * H
    nst = int(layer.static_input)
    w_h = layer.blobs[-1].gpu_data()
    cont = bottom[1].gpu_data()
    acts = _buf(layer, "acts", T * N * G)
    c = _buf(layer, "c", (T + 1) * NH)
    tanh_c = _buf(layer, "tanh_c", T * NH)
    hc = _buf(layer, "hc", T * NH)
    dG = _buf(layer, "pre", T * N * G)          # the projection's buffer is free after forward
    drec = _buf(layer, "drec", NH)
    dc = _buf(layer, "dc", NH)
    one = scalar(1, layer.dtype)
    dtop = top[0].gpu_diff()
    if layer.expose_hidden:
        K.copy(top[1].gpu_diff(), drec, NH)
        K.copy(top[2].gpu_diff(), dc, NH)
    else:
        K.fill(drec, 0, NH)
        K.fill(dc, 0, NH)
    if FUSED:
        (_, bwd, NT), (BJ, BS, _) = _fused_kernels(layer.dtype)
        blocks = ((H + BJ - 1) // BJ, (N + BS - 1) // BS)
        for t in range(T - 1, -1, -1):
            bwd[blocks, NT](t, T, N, H, acts, c, tanh_c, cont, dtop, drec, w_h, dc, dG, one)
    else:
        for t in range(T - 1, -1, -1):
            _lstm_backward_step[grid(NH)](t, T, N, H, acts, c, tanh_c, cont, dtop, drec, dc, dG, one)
            if t > 0:
                K.gemm(N, H, G, dG, w_h, drec, a_off=t * N * G)       # drec = dG_t W_h
    _parameter_grads(layer, bottom, propagate_down, dG, hc, G, 0, 1, 2 + nst)
    first = layer._first_state_bottom()
    if layer.expose_hidden and propagate_down[first]:
        d = _buf(layer, "dh0", NH)
        K.gemm(N, H, G, dG, w_h, d)
        _scale_rows_launch(d, cont, bottom[first].mutable_gpu_diff(), N, H)
    if layer.expose_hidden and propagate_down[first + 1]:
        K.copy(dc, bottom[first + 1].mutable_gpu_diff(), NH)
    _static_grads(layer, bottom, propagate_down, dG, G, 2 if nst else -1)


def _parameter_grads(layer, bottom, propagate_down, dG, hc, G, ix, ib, ih):
    """dW_x += dG^T x, db += column sums of dG, dW_h += dG^T hc, dx = dG W_x (all steps at once)."""
    TN = layer.T * layer.N
    ppd = layer.param_propagate_down
    if ppd[ix]:
        K.gemm(G, layer.D, TN, dG, bottom[0].gpu_data(), layer.blobs[ix].mutable_gpu_diff(), ta=True, beta=1.0)
    if ppd[ib]:
        K.channel_sum(dG, TN, G, 1, layer.blobs[ib].mutable_gpu_diff(), accumulate=True)
    if ppd[ih]:
        K.gemm(G, layer.H, TN, dG, hc, layer.blobs[ih].mutable_gpu_diff(), ta=True, beta=1.0)
    if propagate_down[0]:
        K.gemm(TN, layer.D, G, dG, layer.blobs[ix].gpu_data(), bottom[0].mutable_gpu_diff())


def _static_grads(layer, bottom, propagate_down, dG, G, istat):
    if not layer.static_input or not (layer.param_propagate_down[istat] or propagate_down[2]):
        return
    N = layer.N
    dGs = _buf(layer, "dGs", N * G)
    _sum_steps[grid(N * G)](dG, layer.T, N * G, dGs)
    if layer.param_propagate_down[istat]:
        K.gemm(G, layer.Ds, N, dGs, bottom[2].gpu_data(), layer.blobs[istat].mutable_gpu_diff(), ta=True, beta=1.0)
    if propagate_down[2]:
        K.gemm(N, layer.Ds, G, dGs, layer.blobs[istat].gpu_data(), bottom[2].mutable_gpu_diff())


# --- RNN -------------------------------------------------------------------------------------

def rnn_forward(layer, bottom, top):
    T, N, H = layer.T, layer.N, layer.H
    NH = N * H
    nst = int(layer.static_input)
    w_x = layer.blobs[0].gpu_data()
    bias = layer.blobs[1].gpu_data()
    w_static = layer.blobs[2].gpu_data() if nst else None
    w_hh, w_ho, b_o = (blob.gpu_data() for blob in layer.blobs[2 + nst:])
    cont = bottom[1].gpu_data()
    z, addend, a_stride = _input_side(layer, bottom, w_x, bias, w_static, H)
    rec = _buf(layer, "rec", NH)
    h = _buf(layer, "h", T * NH)
    hc = _buf(layer, "hc", T * NH)
    _scale_rows_launch(_initial_state(layer, bottom, 0), cont, hc, N, H)
    for t in range(T):
        K.gemm(N, H, H, hc, w_hh, rec, tb=True, a_off=t * NH)
        _rnn_forward_step[grid(NH)](t, T, N, H, z, rec, addend, a_stride, cont, h, hc)
    o = top[0].mutable_gpu_data()
    K.gemm(T * N, H, H, h, w_ho, o, tb=True, bias=b_o, bias_mode=K.BIAS_COL)
    _tanh_inplace[grid(T * NH)](o, T * NH)
    K.copy(h, _final_state(layer, top, 0), NH, s_off=(T - 1) * NH)


def rnn_backward(layer, top, propagate_down, bottom):
    T, N, H = layer.T, layer.N, layer.H
    NH, TN = N * H, T * N
    nst = int(layer.static_input)
    i_hh, i_ho, i_bo = 2 + nst, 3 + nst, 4 + nst
    w_hh, w_ho = layer.blobs[i_hh].gpu_data(), layer.blobs[i_ho].gpu_data()
    cont = bottom[1].gpu_data()
    h = _buf(layer, "h", T * NH)
    hc = _buf(layer, "hc", T * NH)
    do = _buf(layer, "do", T * NH)
    dho = _buf(layer, "dho", T * NH)
    dz = _buf(layer, "dz", T * NH)
    drec = _buf(layer, "drec", NH)
    one = scalar(1, layer.dtype)
    ppd = layer.param_propagate_down
    _tanh_grad[grid(T * NH)](top[0].gpu_data(), top[0].gpu_diff(), do, T * NH, one)
    if ppd[i_ho]:
        K.gemm(H, H, TN, do, h, layer.blobs[i_ho].mutable_gpu_diff(), ta=True, beta=1.0)
    if ppd[i_bo]:
        K.channel_sum(do, TN, H, 1, layer.blobs[i_bo].mutable_gpu_diff(), accumulate=True)
    K.gemm(TN, H, H, do, w_ho, dho)
    if layer.expose_hidden:
        K.copy(top[1].gpu_diff(), drec, NH)
    else:
        K.fill(drec, 0, NH)
    for t in range(T - 1, -1, -1):
        _rnn_backward_step[grid(NH)](t, T, N, H, h, dho, drec, cont, dz, one)
        if t > 0:
            K.gemm(N, H, H, dz, w_hh, drec, a_off=t * NH)
    first = layer._first_state_bottom()
    if layer.expose_hidden and propagate_down[first]:
        d = _buf(layer, "dh0", NH)
        K.gemm(N, H, H, dz, w_hh, d)
        _scale_rows_launch(d, cont, bottom[first].mutable_gpu_diff(), N, H)
    _parameter_grads(layer, bottom, propagate_down, dz, hc, H, 0, 1, i_hh)
    _static_grads(layer, bottom, propagate_down, dz, H, 2 if nst else -1)
