"""Recurrent layers: LSTM and RNN, with the semantics of Caffe's RecurrentLayer.

Caffe builds these layers as an unrolled net (InnerProduct, Scale, Eltwise,
LSTMUnit, Concat ... one copy per time step).  dltrain computes the same
function directly:

LSTM, on the CPU:

* the hidden units are split into P parts (one per Numba thread, at least
  32 units each; ``DLTRAIN_LSTM_PARTS`` overrides), and each part owns the
  4 gate rows of its units;
* each step is, per part, ONE matrix product ``[W_x | W_h]_part (4H/P, D+H)
  x [x_t; cont_t h_{t-1}] (D+H, N)`` (input projection and recurrent term
  together) and one fused Numba kernel (the gate activations, the cell and
  hidden update); the parts of a step run side by side on Numba's threads
  and meet once per step (``PartsSchedule`` falls back to running them in
  order when the machine is busy and that is faster: same numbers);
* backward through time is the mirror image, per part: the product
  ``W_h^T dG_{t+1}`` for its units, then its cells; the weight and bias
  gradients of all steps are then ONE product ``dG (4H, T*N) x [x | cont
  h_prev | 1] (T*N, D+H+1)``, its rows split between the threads.

RNN: the input projection of all T steps is one matrix product; each step
is one matrix product for ``W_hh (cont_t h_{t-1})`` and one Numba kernel;
the weight gradients are products over all steps; the forward hands half
of the projection to a second thread (layers/overlap.py).

Blobs
-----
bottom: ``x`` (T x N x ...; the axes after 2 are flattened to D),
``cont`` (T x N; 0 starts a new sequence for that stream, 1 continues it),
optionally ``x_static`` (N x ...), and with ``expose_hidden`` the initial
state: ``h_0`` (and for LSTM ``c_0``), each 1 x N x H.
top: ``h`` (LSTM; T x N x H) or ``o`` (RNN; T x N x H), and with
``expose_hidden`` the final state ``h_T`` (and ``c_T``), each 1 x N x H.

Parameters, in Caffe's order and shapes (so .caffemodel files load):
LSTM ``[W_xc (4H x D), b_c (4H), W_xc_static (4H x Ds) only with x_static,
W_hc (4H x H)]``; RNN ``[W_xh (H x D), b_h (H), W_xh_static (H x Ds) only
with x_static, W_hh (H x H), W_ho (H x H), b_o (H)]``.  Gate order inside
the 4H rows is Caffe's ``[i, f, o, g]``.

Equations (Caffe's LSTMUnit, "Learning to Execute" LSTM, no peepholes)::

    a_t = W_xc x_t + b_c [+ W_xc_static x_static] + W_hc (cont_t h_{t-1})
    i = sigmoid(a_i)   f = cont_t * sigmoid(a_f)  (0 where cont_t == 0)
    o = sigmoid(a_o)   g = tanh(a_g)
    c_t = f c_{t-1} + i g        h_t = o tanh(c_t)

RNN (Caffe's rnn_layer.cpp)::

    h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])
    o_t = tanh(W_ho h_t + b_o)

State: without ``expose_hidden``, each forward starts from the previous
forward's final state (Caffe copies h_T, c_T into h_0, c_0), so streams
carry over batches; gradients never cross batches.  The state is zero at
first, when N changes, and after :meth:`RecurrentLayer.reset`.  With
``expose_hidden`` the state comes from the extra bottoms and goes to the
extra tops, and gradients flow through both (Caffe itself drops the
gradients of the exposed tops and never writes the ``h_0``/``c_0`` diffs;
dltrain computes them, which changes nothing for nets that do not use them).
There is no gradient with respect to ``cont``: asking for one is an error.

Differences from Caffe, deliberate and small: for a ``cont`` value other
than 0 or 1 (Caffe documents binary flags) the forget-gate gradient here is
the exact derivative ``cont * s (1 - s)`` rather than Caffe's ``f (1 - f)``
with ``f = cont * s``; for 0/1 flags the two are identical.

The modules around this one, one concern each: the LSTM cell's formulas
(layers/lstm_cell.py, shared with LSTMUnit and the GPU), the CPU kernels'
float32 activations (layers/rational.py: a vectorizable rational tanh,
absolute error below 3e-7; float64, for gradient checks, uses the exact
``math.tanh``/``exp``), BLAS thread control (layers/blas_threads.py: the
products inside Numba's threads run single-threaded), the RNN's worker
thread (layers/overlap.py), and the GPU code (layers/recurrent_cuda.py).
"""
import contextlib
import os
import time

import numba
import numpy as np
from numba import njit, prange

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import blas_threads
from . import kernels as K
from .lstm_cell import lstm_cell, lstm_layer_cell_grad
from .overlap import Streams
from .rational import kernel_sigmoid, kernel_tanh


# ---------------------------------------------------------------------------
# LSTM kernels.  Matrix products want "feature-major" blocks, (features, N)
# per step: ``z[t] = [x_t^T; cont_t h_{t-1}]`` (D+H, N), and a part's gate
# inputs (4H/P, N); then each step's product is W_part (4H/P, D+H) @ z[t],
# the fastest orientation for BLAS on these shapes (1.7x faster than
# (N, D+H) @ (D+H, G)).
#
# The element-wise kernels want long contiguous loops instead: inner loops
# of only N (strided rows) cost a vectorization set-up per row, 3-4x the
# work itself.  So per-step state is kept per step and part, contiguous:
# activations (T, P, 4*Hk*N), c (T+1, H, N), tanh(c) and h (T, H, N) (part
# p's units are rows [p*Hk, (p+1)*Hk)), and each kernel is ONE flat loop
# over a part's Hk*N cells.  ``cont`` enters the flat loops broadcast to
# (H, N) per step (``contx``, built once per forward).
#
# Kernels are written so that LLVM vectorizes them: one loop, no branches,
# and no literal that would widen float32 to float64 (``one`` is passed in,
# of the data's dtype).  The prange loops only call the per-part @njit
# functions, which hold the products (np.dot: SciPy's BLAS, one thread).
# ---------------------------------------------------------------------------

_KERNEL = dict(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})


@njit(**_KERNEL)
def lstm_forward_prepare_part(p, w_x, w_h, x, cont, h0, c0, w, z, contx, c):
    """Part p's share of the forward's set-up, on its own thread: its rows of ``[W_x | W_h]`` in
    parts order, its units' rows of z[0] (cont_0 h_0) and c[0], and every P-th step of z (x_t^T) and
    contx (cont_t per cell).  x (T, N, D), cont (T, N), h0 and c0 (N, H): as the blobs hold them."""
    P, G4, KD = w.shape
    Hk = G4 // 4
    T, N, D = x.shape
    H = w_h.shape[1]
    for q in range(4):
        for j in range(Hk):
            src = q * H + p * Hk + j
            dst = w[p, q * Hk + j]
            for k in range(D):
                dst[k] = w_x[src, k]
            for k in range(H):
                dst[D + k] = w_h[src, k]
    for j in range(p * Hk, (p + 1) * Hk):
        for n in range(N):
            z[0, D + j, n] = h0[n, j] * cont[0, n]
            c[0, j, n] = c0[n, j]
    for t in range(p, T + 1, P):
        if t == T:
            z[T, :D] = 0
            contx[T] = 1
            continue
        for k in range(D):
            for n in range(N):
                z[t, k, n] = x[t, n, k]
        for j in range(H):
            for n in range(N):
                contx[t, j, n] = cont[t, n]


@njit(**_KERNEL)
def lstm_forward_part(t, p, w, z, addend, contx, pre, acts, c, tanh_c, h, top, one):
    """Step t of the LSTM forward for part p of the hidden units (see lstm_forward_loop)."""
    P = w.shape[0]
    M = c.shape[2]
    N = z.shape[2]
    Hk = M // N
    D = z.shape[1] - P * Hk
    np.dot(w[p], z[t], pre[p])
    pf = pre[p].reshape(-1)
    bf = addend[p].reshape(-1)
    af, cx, c_prev, c_new, tc, hh = acts[t, p], contx[t, p], c[t, p], c[t + 1, p], tanh_c[t, p], h[t, p]
    for k in range(M):
        # the gates with the CPU's own activations, then the shared cell formula.  (Not through
        # lstm_gates: handed four activation calls, LLVM stops inlining it and the loop no longer
        # vectorizes, 10x slower.)
        i = kernel_sigmoid(pf[k] + bf[k], one)
        sf = kernel_sigmoid(pf[M + k] + bf[M + k], one)
        o = kernel_sigmoid(pf[2 * M + k] + bf[2 * M + k], one)
        g = kernel_tanh(pf[3 * M + k] + bf[3 * M + k], one)
        af[k], af[M + k], af[2 * M + k], af[3 * M + k] = i, sf, o, g
        # f = cont * s_f (0 where cont == 0)
        c_new[k], tc[k], hh[k] = lstm_cell(i, cx[k] * sf, o, g, c_prev[k], one, kernel_tanh)
    z_next = z[t + 1, D + p * Hk:D + (p + 1) * Hk].reshape(-1)
    cx_next = contx[t + 1, p]
    for k in range(M):
        z_next[k] = cx_next[k] * hh[k]
    top_t = top[t]                     # (N, H): the top's layout, this part's columns
    for j in range(Hk):
        for n in range(N):
            top_t[n, p * Hk + j] = hh[j * N + n]


@njit(parallel=True, **_KERNEL)
def lstm_forward_loop(w_x, w_h, x, cont, h0, c0, w, z, addend, contx, pre, acts, c, tanh_c, h, top, one):
    """All T steps of the LSTM forward, the hidden units split into P parts run side by side.

    Part p owns hidden units [p*Hk, (p+1)*Hk) and the 4*Hk gate rows that feed
    them, ``[i, f, o, g]`` blocks of Hk ("parts order").  Per step, part p
    computes its gate inputs with ONE product ``w[p] (4Hk, D+H) @ z[t] (D+H,
    N)``, where ``z[t] = [x_t^T; cont_t h_{t-1}]`` (so the input projection
    and the recurrent term are one product), then its cells; a step's parts
    need all of h_{t-1}, so they meet once per step.

    First each part prepares its share of the inputs (lstm_forward_prepare_part,
    from the blobs' w_x, w_h, x, cont, h0, c0), then the steps run.
    w (P, 4Hk, K=D+H): [W_x | W_h] rows in parts order; z (T+1, K, N): z[t, :D]
    = x_t^T, z[t+1, D:] = cont_{t+1} h_t; addend (P, 4Hk, N): b (+ the static
    term); contx (T+1, P, Hk*N): cont_t per cell; pre (P, 4Hk, N): scratch;
    acts (T, P, 4Hk*N): [i, s_f, o, g]; c (T+1, P, Hk*N); tanh_c, h (T, P,
    Hk*N); top (T, N, H): h in the top's layout.
    """
    P = w.shape[0]
    c4 = c.reshape(c.shape[0], -1, z.shape[2])
    for p in prange(P):
        lstm_forward_prepare_part(p, w_x, w_h, x, cont, h0, c0, w, z, contx.reshape(c4.shape), c4)
    for t in range(acts.shape[0]):
        for p in prange(P):
            lstm_forward_part(t, p, w, z, addend, contx, pre, acts, c, tanh_c, h, top, one)


@njit(**_KERNEL)
def lstm_backward_part(t, p, wt, acts, c, tanh_c, contx, top_diff, dh, dc, drec, rec_used, dgs, dG, one):
    """Step t of the LSTM backward for part p of the hidden units (see lstm_backward_loop)."""
    T = acts.shape[0]
    M = dc.shape[1]
    N = dgs.shape[3]
    Hk = M // N
    G = wt.shape[2]
    dhh, diff_t = dh[p], top_diff[t]   # this part's columns of the top's diff, as its cells are laid out
    for j in range(Hk):
        for n in range(N):
            dhh[j * N + n] = diff_t[n, p * Hk + j]
    if t + 1 < T:
        if rec_used[t + 1]:
            np.dot(wt[p], dgs[t + 1].reshape(G, N), drec[p])
        else:
            drec[p][:] = 0
    af, c_prev, tc, cx, cx_next = acts[t, p], c[t, p], tanh_c[t, p], contx[t, p], contx[t + 1, p]
    dr, dcc, dg = drec[p].reshape(-1), dc[p], dgs[t, p].reshape(-1)
    for k in range(M):
        dcc[k], dg[k], dg[M + k], dg[2 * M + k], dg[3 * M + k] = lstm_layer_cell_grad(
            af[k], af[M + k], af[2 * M + k], af[3 * M + k], cx[k], c_prev[k], tc[k],
            dhh[k] + cx_next[k] * dr[k], dcc[k], one)
    for q in range(4):
        for j in range(Hk):
            src, dst = dgs[t, p, q * Hk + j], dG[q, p, j, t]
            for n in range(N):
                dst[n] = src[n]


@njit(parallel=True, **_KERNEL)
def lstm_backward_loop(wt, acts, c, tanh_c, contx, top_diff, dh, dc, drec, rec_used, dgs, dG, one):
    """All T steps of the LSTM backward, in the forward's P parts (one meeting per step).

    Per step t (from T-1 down), part p takes its columns of the top's diff and
    the gradient reaching its units of h_t from step t+1, ``drec[p] = wt[p] @
    dG_{t+1}`` (wt[p] (Hk, 4H): W_h^T's rows of its units, columns in parts
    order), then its cells.

    acts, c, tanh_c, contx: as the forward (contx[T] = 1); top_diff (T, N, H);
    dh (P, Hk*N): scratch; dc (P, Hk*N): dL/dc_T in, dL/dc_0 out; drec (P, Hk,
    N): the gradient from h_T in; rec_used (T,): steps with a recurrent term;
    dgs (T, P, 4Hk, N): the gate-input gradients; dG (4, P, Hk, T, N): the
    same in the weights' row order [i, f, o, g] x H with step-major columns,
    i.e. (4H, T*N), for the weight gradients over all steps.
    """
    for t in range(acts.shape[0] - 1, -1, -1):
        for p in prange(wt.shape[0]):
            lstm_backward_part(t, p, wt, acts, c, tanh_c, contx, top_diff, dh, dc, drec, rec_used, dgs, dG, one)


@njit(cache=True, parallel=True, nogil=True)
def rows_matmul(a, b, out, P):
    """out = a @ b, the rows of a in P blocks side by side, through Numba's BLAS single-threaded in each.
    (Not NumPy's BLAS: its pool's threads spin for a while after each call and would compete with
    Numba's at the next step.)"""
    M = a.shape[0]
    for p in prange(P):
        lo, hi = p * M // P, (p + 1) * M // P
        if hi > lo:
            np.dot(a[lo:hi], b, out[lo:hi])


@contextlib.contextmanager
def parts_threads(parallel):
    """Context for the parallel loops above: all of Numba's threads, or (``parallel`` False) only the
    calling thread, which then runs the parts in order, making the same calls (the same numbers)."""
    if parallel:
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


# ---------------------------------------------------------------------------
# RNN kernels: state in the feature-major layout (H, T*N) throughout, indexed
# per row (the RNN's one activation per cell makes its kernels cheap anyway).
# ---------------------------------------------------------------------------

@formula
def tanh_grad_of(y, dy, one):
    """dL/dx of y = tanh(x) from y and dL/dy, in the data's dtype."""
    return dy * (one - y * y)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def rnn_forward_step(t, z, rec, addend, cont, h, hc, one):
    """Block t of ``h`` (H, T*N) = tanh(z + rec + addend); block t+1 of ``hc`` = cont_{t+1} * h_t."""
    T = cont.shape[0]
    uN = np.uint64(cont.shape[1])
    uH = np.uint64(h.shape[0])
    ut = np.uint64(t)
    off = ut * uN
    nxt = off + uN
    tn = ut + np.uint64(1) if t + 1 < T else ut
    for j in range(uH):
        for n in range(uN):
            hv = kernel_tanh(z[j, off + n] + addend[j, n] + rec[j, n], one)
            h[j, off + n] = hv
            hc[j, nxt + n] = cont[tn, n] * hv


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def rnn_backward_step(t, h, dh, drec, cont_next, dz, one):
    """Block t of ``dz`` = (dh + cont_next * drec) * (1 - h^2)."""
    uN = np.uint64(cont_next.shape[0])
    uH = np.uint64(h.shape[0])
    off = np.uint64(t) * uN
    for j in range(uH):
        for n in range(uN):
            dz[j, off + n] = tanh_grad_of(h[j, off + n], dh[j, off + n] + cont_next[n] * drec[j, n], one)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def bias_tanh(x, bias, one):
    """x = tanh(x + bias) in place; x (M, H), bias (H,)."""
    M, H = x.shape
    uH = np.uint64(H)
    for m in range(M):
        xx = x[m]
        for j in range(uH):
            xx[j] = kernel_tanh(xx[j] + bias[j], one)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def tanh_grad_rows(y, dy, dx, one):
    """dx = dy * (1 - y^2); all (M, H)."""
    M, H = y.shape
    uH = np.uint64(H)
    for m in range(M):
        yy, dyy, dxx = y[m], dy[m], dx[m]
        for j in range(uH):
            dxx[j] = tanh_grad_of(yy[j], dyy[j], one)


def _matmul_into(a, b, out):
    np.matmul(a, b, out=out)


class PartsSchedule:
    """Whether an LSTM's parts run side by side (Numba's threads) or one after another, chosen by time.

    Side by side is about twice as fast on an otherwise idle machine; on one whose cores are busy
    with other jobs, the meeting at every step can wait milliseconds for a descheduled thread, and
    in order on one thread is then many times faster.  So each layer times its forward loop in the
    mode it runs, tries the other mode on its 2nd pass and every ``probe_every`` passes after, and
    keeps the faster; each probe that confirms the mode doubles the time to the next (up to
    ``most_growth`` times ``probe_every``: a probe costs the slower mode's pass).  Both modes make
    the same calls on the same parts, so the numbers are the same bit for bit whichever runs.
    """

    probe_every = 50
    most_growth = 16

    def __init__(self):
        self.calls = 0
        self.parallel = True
        self.seconds = {}           # mode -> smoothed time of the forward loop
        self.growth = 1             # probes every probe_every * growth passes

    def pick(self):
        self.calls += 1
        if self.calls == 2 or self.calls % (self.probe_every * self.growth) == 0:
            return not self.parallel
        return self.parallel

    def record(self, parallel, seconds):
        if self.calls == 1:          # the first pass may include compilation
            return
        old = self.seconds.get(parallel)
        self.seconds[parallel] = seconds if old is None else 0.5 * (old + seconds)
        if len(self.seconds) == 2:
            faster = self.seconds[True] <= self.seconds[False]
            if parallel != self.parallel:          # this pass was a probe
                self.growth = min(2 * self.growth, self.most_growth) if faster == self.parallel else 1
            self.parallel = faster


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------

class RecurrentLayer(Layer):
    """Caffe's RecurrentLayer: bottoms, tops, state and parameter handling.

    Subclasses set ``num_recur`` (recurrent state blobs: 1 for RNN, 2 for
    LSTM; the most bottoms and tops follow from it) and implement
    ``_param_shapes``, ``_param_is_bias``, and the CPU passes
    ``forward_cpu`` and ``backward_cpu`` (the latter starting with
    ``_check_propagate_down``).
    """

    min_bottom_blobs = 2
    min_top_blobs = 1
    num_recur = 1
    allows_in_place = False          # every time step reads x while h is written
    cuda_module = ".recurrent_cuda"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.max_bottom_blobs = 3 + cls.num_recur         # x, cont, x_static, the exposed initial state
        cls.max_top_blobs = 1 + cls.num_recur

    # --- setup -------------------------------------------------------------
    def _fail(self, message):
        raise ConfigError(f"layer '{self.name}' ({self.type}): {message}")

    def setup(self, bottom, top):
        rp = self.layer_param.recurrent_param
        self.H = int(rp.num_output)
        if self.H <= 0:
            self._fail(f"recurrent_param.num_output must be > 0 (got {self.H})")
        self.expose_hidden = bool(rp.expose_hidden)
        exposed = self.num_recur if self.expose_hidden else 0
        if bottom[0].num_axes < 2:
            self._fail(f"bottom[0] (x) must have at least 2 axes (#timesteps, #streams, ...), "
                       f"got {bottom[0].shape_string()}")
        self.T, self.N = bottom[0].shape[0], bottom[0].shape[1]
        self.static_input = len(bottom) > 2 + exposed
        want_bottom = 2 + int(self.static_input) + exposed
        if len(bottom) != want_bottom:
            names = ["x", "cont"] + (["x_static"] if self.static_input else []) + \
                (self._recur_names("0") if exposed else [])
            self._fail(f"takes bottoms {', '.join(names)} ({want_bottom} blobs), got {len(bottom)}")
        if len(top) != 1 + exposed:
            self._fail(f"takes {1 + exposed} top blob(s){' (expose_hidden)' if exposed else ''}, got {len(top)}")
        self.D = bottom[0].count_range(2)
        self.Ds = 0
        if self.static_input:
            if bottom[2].num_axes < 1:
                self._fail("bottom[2] (x_static) must have at least 1 axis")
            self.Ds = bottom[2].count_range(1)
        shapes = self._param_shapes()
        if self.blobs:
            if len(self.blobs) != len(shapes):
                self._fail(f"incorrect number of parameter blobs (expected {len(shapes)}, got {len(self.blobs)})")
            for k, (blob, shape) in enumerate(zip(self.blobs, shapes)):
                if blob.shape != shape:
                    lead = blob.shape[:max(blob.num_axes - len(shape), 0)]
                    if blob.shape[len(lead):] == shape and all(d == 1 for d in lead):
                        blob.reshape(shape)          # legacy 4-D (1, 1, rows, cols) storage
                    else:
                        self._fail(f"incorrect shape of parameter blob {k}: expected "
                                   f"{' '.join(map(str, shape))}, got {blob.shape_string()}")
        else:
            self.blobs = []
            for shape, is_bias in zip(shapes, self._param_is_bias()):
                blob = Blob(*shape, dtype=self.dtype)
                fill(blob, rp.bias_filler if is_bias else rp.weight_filler)
                self.blobs.append(blob)
        self.param_propagate_down = [True] * len(self.blobs)
        self.work = K.Workspace()
        # Carried h_T (and c_T), each an (N, H) Blob, when not expose_hidden: Blobs, so the state
        # moves between host and device with the rest (a net may switch devices between batches).
        self._state = None
        self._rec_used = None

    def matrix_work(self):
        """Multiply-adds of one pass's matrix products, roughly: T*N*G*(D + H)."""
        G = self.blobs[0].shape[0]
        return self.T * self.N * G * (self.D + self.H)

    def _recur_names(self, suffix):
        return ["h_" + suffix, "c_" + suffix][:self.num_recur]

    def allow_force_backward(self, bottom_index):
        return bottom_index != 1      # never to the sequence indicators

    def reset(self):
        """Zero the carried state (Caffe's RecurrentLayer::Reset)."""
        if self._state is not None:
            for s in self._state:
                s.data[...] = 0

    # --- reshape -----------------------------------------------------------
    def reshape(self, bottom, top):
        x, cont = bottom[0], bottom[1]
        if x.num_axes < 2:
            self._fail(f"bottom[0] (x) must have at least 2 axes (#timesteps, #streams, ...), "
                       f"got {x.shape_string()}")
        if x.shape[0] != self.T:
            self._fail(f"input number of timesteps changed: set up with T={self.T}, bottom[0] (x) now has "
                       f"{x.shape[0]} ({x.shape_string()})")
        self.N = N = x.shape[1]
        if cont.num_axes != 2 or cont.shape != (self.T, N):
            self._fail(f"bottom[1] (cont) must be #timesteps x #streams = {self.T} x {N}, "
                       f"got {cont.shape_string()}")
        if x.count_range(2) != self.D:
            self._fail(f"bottom[0] (x) has {x.count_range(2)} inputs per time step and stream "
                       f"({x.shape_string()}), the weights expect {self.D}")
        if self.static_input:
            xs = bottom[2]
            if xs.num_axes < 1 or xs.shape[0] != N or xs.count_range(1) != self.Ds:
                self._fail(f"bottom[2] (x_static) must be {N} x ... with {self.Ds} values per stream, "
                           f"got {xs.shape_string()}")
        if self.expose_hidden:
            first = 2 + int(self.static_input)
            for k, name in enumerate(self._recur_names("0")):
                b = bottom[first + k]
                if b.shape != (1, N, self.H):
                    self._fail(f"bottom[{first + k}] ({name}) must be 1 x {N} x {self.H}, got {b.shape_string()}")
            for k in range(self.num_recur):
                top[1 + k].reshape(1, N, self.H)
        elif self._state is None or self._state[0].shape[0] != N:
            self._state = [Blob(N, self.H, dtype=self.dtype) for _ in range(self.num_recur)]
        top[0].reshape(self.T, N, self.H)

    def _check_propagate_down(self, propagate_down):
        if propagate_down[1]:
            self._fail("cannot backpropagate to the sequence indicators (bottom[1], cont); if the layer "
                       "producing cont needs a gradient, give this layer propagate_down: [true, false, ...]")
        if self._rec_used is None:
            self._fail("backward called before forward")

    # --- shared pieces -----------------------------------------------------
    def _buf(self, name, *shape):
        return self.work.get(name, shape, self.dtype)

    def _first_state_bottom(self):
        return 2 + int(self.static_input)

    def _initial_state(self, bottom, k):
        """(N, H): the k-th initial state (h_0 or c_0) of this forward."""
        if self.expose_hidden:
            return bottom[self._first_state_bottom() + k].data.reshape(self.N, self.H)
        return self._state[k].data

    def _store_final_state(self, top, k, value_hn):
        """value_hn (H, N): the k-th final state, to the exposed top or the carried state."""
        if self.expose_hidden:
            top[1 + k].data.reshape(self.N, self.H)[...] = value_hn.T
        else:
            self._state[k].data[...] = value_hn.T

    def _forward_common(self, bottom, w_x, bias, w_static, G, streams=None):
        """The input projection of all steps and the per-step addend.

        Returns (proj (G, T*N) = W_x x^T, addend (G, N) = bias [+ W_static x_static^T]).
        With ``streams``, the worker computes half of the projection's rows.
        """
        T, N = self.T, self.N
        X = bottom[0].data.reshape(T * N, self.D)
        proj = self._buf("proj", G, T * N)
        if streams is not None and streams.worker is not None:
            half = G // 2
            streams.run(_matmul_into, w_x[half:], X.T, proj[half:])
            np.matmul(w_x[:half], X.T, out=proj[:half])
            streams.wait()
        else:
            np.matmul(w_x, X.T, out=proj)
        addend = self._buf("addend", G, N)
        if self.static_input:
            np.matmul(w_static, bottom[2].data.reshape(N, self.Ds).T, out=addend)
            addend += bias[:, None]
        else:
            addend[...] = bias[:, None]
        return proj, addend

    def _start_recurrence(self, bottom, hc):
        """Block 0 of hc = cont_0 * h_0 (transposed to (H, N))."""
        N = self.N
        cont0 = bottom[1].data.reshape(self.T, N)[0]
        np.multiply(self._initial_state(bottom, 0).T, cont0, out=hc[:, :N])

    def _recurrent_product(self, hc, w_h, cont_t, rec, t):
        """rec (G, N) = W_h (cont_t h_{t-1}); skipped (zeros) when every stream restarts at t."""
        N = self.N
        self._rec_used[t] = used = bool(cont_t.any())
        if used:
            np.matmul(w_h, hc[:, t * N:(t + 1) * N], out=rec)
        else:
            rec[...] = 0

    def _recurrent_grad(self, dg_t, w_h, drec, t):
        """drec (H, N) = W_h^T dG_t (dg_t: step t's (G, N) block), the gradient reaching
        cont_t h_{t-1}; zeros without recurrence at t."""
        if self._rec_used[t]:
            np.matmul(w_h.T, dg_t, out=drec)
        else:
            drec[...] = 0

    def _backward_start(self, top, drec):
        """The gradient entering the last step from h_T: the exposed top's diff, or nothing."""
        if self.expose_hidden:
            drec[...] = top[1].diff.reshape(self.N, self.H).T
        else:
            drec[...] = 0

    def _h0_grad(self, bottom, propagate_down, dg, w_h):
        """dL/dh_0 = cont_0 * (W_h^T dG_0)^T, into the exposed h_0 bottom."""
        first = self._first_state_bottom()
        if self.expose_hidden and propagate_down[first]:
            N = self.N
            cont0 = bottom[1].data.reshape(self.T, N)[0]
            d = self._buf("dh0", self.H, N)
            np.matmul(w_h.T, dg[:, :N], out=d)
            d *= cont0
            bottom[first].diff.reshape(N, self.H)[...] = d.T

    def _weight_and_input_grads(self, bottom, propagate_down, dG, hc, ix, ib, ih):
        """Add all steps' dW_x, db, dW_h (blobs ix, ib, ih) to the parameter diffs; write dx.

        dG (G, T*N): gradients w.r.t. the pre-activations; hc (H, (T+1)*N):
        the recurrent products' inputs cont_t * h_{t-1} (block T unused).
        """
        TN, N = self.T * self.N, self.N
        G = dG.shape[0]
        ppd = self.param_propagate_down
        X = bottom[0].data.reshape(TN, self.D)
        if ppd[ix]:
            K.matmul(dG, X, self.blobs[ix].diff, accumulate=True, work=self.work)
        if ppd[ib]:
            db = self.blobs[ib].diff
            np.add(db, np.matmul(dG, self._ones(TN), out=self._buf("db", G)), out=db)
        if ppd[ih]:
            # steps before the first one with recurrence have hc == 0: leave them out
            used = np.flatnonzero(self._rec_used)
            if used.size:
                u = int(used[0]) * N
                K.matmul(dG[:, u:TN], hc[:, u:TN].T, self.blobs[ih].diff, accumulate=True, work=self.work)
        if propagate_down[0]:
            K.matmul(dG.T, self.blobs[ix].data, bottom[0].diff.reshape(TN, self.D))

    def _static_grads(self, bottom, propagate_down, dG, istat):
        """Gradients of W_static and x_static: the static term enters every step."""
        if not self.static_input or not (self.param_propagate_down[istat] or propagate_down[2]):
            return
        T, N = self.T, self.N
        G = dG.shape[0]
        dGs = dG.reshape(G, T, N).sum(axis=1, dtype=self.dtype)       # (G, N)
        xs = bottom[2].data.reshape(N, self.Ds)
        if self.param_propagate_down[istat]:
            dw = self.blobs[istat].diff
            K.matmul(dGs, xs, dw, accumulate=True, work=self.work)
        if propagate_down[2]:
            K.matmul(dGs.T, self.blobs[istat].data, bottom[2].diff.reshape(N, self.Ds))

    def _ones(self, n):
        ones = self._buf("ones%d" % n, n)
        ones[...] = 1
        return ones

    def _param_shapes(self):
        raise NotImplementedError

    def _param_is_bias(self):
        raise NotImplementedError


@register_layer("LSTM")
class LSTMLayer(RecurrentLayer):
    """Caffe's LSTM layer (see the module docstring)."""

    num_recur = 2
    _schedule = None          # PartsSchedule, made at the first forward

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self._P = self._parts()

    @property
    def runs_numba_threads(self):
        """Whether the CPU passes run parts side by side on Numba's threads (where its work outweighs
        the rest of the net's, the net keeps NumPy's BLAS on one thread: Net.cpu_blas_context)."""
        return self._P > 1

    def _param_shapes(self):
        G = 4 * self.H
        shapes = [(G, self.D), (G,)]
        if self.static_input:
            shapes.append((G, self.Ds))
        shapes.append((G, self.H))
        return shapes

    def _param_is_bias(self):
        return [False, True] + [False] * (1 + int(self.static_input))

    # The CPU passes run the recurrence in P parts side by side on Numba's threads (the kernels above),
    # not on the two streams of layers/overlap.py: each step's product is split between the cores.
    def forward_cpu(self, bottom, top):
        with blas_threads.numba_single_threaded():
            self._forward(bottom, top)

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        with blas_threads.numba_single_threaded(), parts_threads(self._parallel):     # as the forward ran
            self._backward(top, propagate_down, bottom)

    def _parts(self):
        """How many parts the hidden units are split into: one per Numba thread (at least 32 units
        each), or DLTRAIN_LSTM_PARTS (1: all on the calling thread, steadier on a machine whose cores
        are busy with other jobs, where a meeting per step can wait for a descheduled thread)."""
        wanted = os.environ.get("DLTRAIN_LSTM_PARTS")
        if wanted is None:
            most, least_units = numba.get_num_threads(), 32
        else:
            try:
                most, least_units = max(1, int(wanted)), 1
            except ValueError:
                raise ConfigError(f"layer '{self.name}' (LSTM): DLTRAIN_LSTM_PARTS must be a whole number, "
                                  f"got '{wanted}'") from None
        return max(p for p in range(1, most + 1) if self.H % p == 0 and self.H // p >= min(least_units, self.H))

    def _forward(self, bottom, top):
        T, N, H, D = self.T, self.N, self.H, self.D
        KD = D + H
        P = self._P
        Hk = H // P
        dt = self.dtype
        cont = bottom[1].data.reshape(T, N)
        w = self._buf("w_parts", P, 4 * Hk, KD)  # [W_x | W_h] in parts order: packed once per pass
        bias = self.blobs[1].data
        addend = self._buf("addend", P, 4, Hk, N)
        if self.static_input:
            static = np.matmul(self.blobs[2].data, bottom[2].data.reshape(N, self.Ds).T) + bias[:, None]
            addend[...] = static.reshape(4, P, Hk, N).transpose(1, 0, 2, 3)
        else:
            addend[...] = bias.reshape(4, P, Hk).transpose(1, 0, 2)[..., None]
        z = self._buf("z", T + 1, KD, N)          # z[t] = [x_t^T; cont_t h_{t-1}]
        contx = self._buf("contx", T + 1, H, N)  # cont_t broadcast per cell; contx[T] = 1
        c = self._buf("c", T + 1, H, N)          # c[0] = c_0, c[t+1] = c_t
        acts = self._buf("acts", T, P, 4 * Hk * N)
        tanh_c = self._buf("tanh_c", T, H, N)
        h = self._buf("h", T, H, N)
        pre = self._buf("pre", P, 4 * Hk, N)
        self._rec_used = cont.any(axis=1)
        if self._schedule is None:
            self._schedule = PartsSchedule()
        self._parallel = parallel = P > 1 and self._schedule.pick()
        start = time.perf_counter()
        with parts_threads(parallel):
            lstm_forward_loop(
                self.blobs[0].data, self.blobs[-1].data, bottom[0].data.reshape(T, N, D), cont,
                self._initial_state(bottom, 0), self._initial_state(bottom, 1),
                w, z, addend.reshape(P, 4 * Hk, N), contx.reshape(T + 1, P, -1), pre, acts, c.reshape(T + 1, P, -1),
                tanh_c.reshape(T, P, -1), h.reshape(T, P, -1), top[0].data.reshape(T, N, H), dt.type(1))
        if P > 1:
            self._schedule.record(parallel, time.perf_counter() - start)
        self._store_final_state(top, 0, h[T - 1])
        self._store_final_state(top, 1, c[T])

    def _backward(self, top, propagate_down, bottom):
        T, N, H, D = self.T, self.N, self.H, self.D
        G, TN, KD = 4 * H, T * N, D + H
        P = self._P
        Hk = H // P
        nst = int(self.static_input)
        w = self._buf("w_parts", P, 4 * Hk, KD)
        z = self._buf("z", T + 1, KD, N)
        contx = self._buf("contx", T + 1, H, N)
        c = self._buf("c", T + 1, H, N)
        acts = self._buf("acts", T, P, 4 * Hk * N)
        tanh_c = self._buf("tanh_c", T, H, N)
        wt = self._buf("wt_parts", P, Hk, G)     # W_h^T, rows per part, columns in parts order
        wt[...] = w[:, :, D:].reshape(G, P, Hk).transpose(1, 2, 0)
        dh = self._buf("dh_step", P, Hk * N)
        dc = self._buf("dc", H, N)
        drec = self._buf("drec", H, N)
        self._backward_start(top, drec)
        if self.expose_hidden:
            dc[...] = top[2].diff.reshape(N, H).T
        else:
            dc[...] = 0
        dgs = self._buf("dgs", T, P, 4 * Hk, N)
        dG = self._buf("dG", G, TN)
        lstm_backward_loop(
            wt, acts, c.reshape(T + 1, P, -1), tanh_c.reshape(T, P, -1), contx.reshape(T + 1, P, -1),
            top[0].diff.reshape(T, N, H), dh, dc.reshape(P, -1), drec.reshape(P, Hk, N), self._rec_used, dgs,
            dG.reshape(4, P, Hk, T, N), self.dtype.type(1))
        self._weight_grads(dG, z)
        w_h = self.blobs[-1].data
        self._h0_grad(bottom, propagate_down, dG, w_h)
        first = self._first_state_bottom()
        if self.expose_hidden and propagate_down[first + 1]:
            bottom[first + 1].diff.reshape(N, H)[...] = dc.T
        self._static_grads(bottom, propagate_down, dG, 2 if nst else -1)
        if propagate_down[0]:          # dx^T = W_x^T dG, on Numba's threads too (see rows_matmul)
            w_xt = self._buf("w_xt", D, G)
            w_xt[...] = self.blobs[0].data.T
            dxt = self._buf("dxt", D, TN)
            rows_matmul(w_xt, dG, dxt, P)
            bottom[0].diff.reshape(TN, D)[...] = dxt.T

    def _weight_grads(self, dG, z):
        """dW_x, db and dW_h of all steps as ONE product, dG (4H, T*N) @ [x | cont h_prev | 1] (T*N, D+H+1)."""
        T, N, H, D = self.T, self.N, self.H, self.D
        ix, ib, ih = 0, 1, len(self.blobs) - 1
        ppd = self.param_propagate_down
        if not (ppd[ix] or ppd[ib] or ppd[ih]):
            return
        KD = D + H
        zt = self._buf("zt", T, N, KD + 1)
        zt[..., :KD] = z[:T].transpose(0, 2, 1)
        zt[..., KD] = 1
        dw = self._buf("dw_all", 4 * H, KD + 1)
        rows_matmul(dG, zt.reshape(T * N, KD + 1), dw, self._P)
        if ppd[ix]:
            self.blobs[ix].diff += dw[:, :D]
        if ppd[ih]:
            self.blobs[ih].diff += dw[:, D:KD]
        if ppd[ib]:
            self.blobs[ib].diff += dw[:, KD]


@register_layer("RNN")
class RNNLayer(RecurrentLayer):
    """Caffe's RNN layer (see the module docstring)."""

    num_recur = 1

    def _param_shapes(self):
        H = self.H
        shapes = [(H, self.D), (H,)]
        if self.static_input:
            shapes.append((H, self.Ds))
        shapes += [(H, H), (H, H), (H,)]
        return shapes

    def _param_is_bias(self):
        return [False, True] + [False] * int(self.static_input) + [False, False, True]

    # the CPU passes, with the two streams of work (layers/overlap.py)
    def forward_cpu(self, bottom, top):
        with Streams(self.matrix_work()) as streams:
            self._forward(bottom, top, streams)

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        with Streams(self.matrix_work()) as streams:
            self._backward(top, propagate_down, bottom, streams)

    def _forward(self, bottom, top, streams):
        T, N, H = self.T, self.N, self.H
        TN = T * N
        nst = int(self.static_input)
        w_hh, w_ho, b_o = (blob.data for blob in self.blobs[2 + nst:])
        cont = bottom[1].data.reshape(T, N)
        z, addend = self._forward_common(bottom, self.blobs[0].data, self.blobs[1].data,
                                         self.blobs[2].data if nst else None, H, streams)
        h = self._buf("h", H, TN)
        hc = self._buf("hc", H, TN + N)
        rec = self._buf("rec", H, N)
        one = self.dtype.type(1)
        self._rec_used = np.zeros(T, np.bool_)

        self._start_recurrence(bottom, hc)
        for t in range(T):
            self._recurrent_product(hc, w_hh, cont[t], rec, t)
            rnn_forward_step(t, z, rec, addend, cont, h, hc, one)
        o = top[0].data.reshape(TN, H)
        np.matmul(h.T, w_ho.T, out=o)
        bias_tanh(o, b_o, one)
        self._store_final_state(top, 0, h[:, TN - N:])

    def _backward(self, top, propagate_down, bottom, streams):
        # all in order here (BLAS single-threaded, as for LSTM; nothing goes to the worker)
        T, N, H = self.T, self.N, self.H
        TN = T * N
        nst = int(self.static_input)
        i_hh, i_ho, i_bo = 2 + nst, 3 + nst, 4 + nst
        w_hh, w_ho = self.blobs[i_hh].data, self.blobs[i_ho].data
        cont = bottom[1].data.reshape(T, N)
        h = self._buf("h", H, TN)
        hc = self._buf("hc", H, TN + N)
        do = self._buf("do", TN, H)
        dho = self._buf("dho", H, TN)
        dz = self._buf("dz", H, TN)
        drec = self._buf("drec", H, N)
        ones = self._ones(N)
        one = self.dtype.type(1)
        ppd = self.param_propagate_down

        tanh_grad_rows(top[0].data.reshape(TN, H), top[0].diff.reshape(TN, H), do, one)
        if ppd[i_ho]:
            dw = self.blobs[i_ho].diff
            K.matmul(do.T, h.T, dw, accumulate=True, work=self.work)
        if ppd[i_bo]:
            db = self.blobs[i_bo].diff
            np.add(db, np.matmul(self._ones(TN), do, out=self._buf("dbo", H)), out=db)
        np.matmul(w_ho.T, do.T, out=dho)

        self._backward_start(top, drec)
        cont_next = ones
        for t in range(T - 1, -1, -1):
            rnn_backward_step(t, h, dho, drec, cont_next, dz, one)
            if t > 0:
                self._recurrent_grad(dz[:, t * N:(t + 1) * N], w_hh, drec, t)
                cont_next = cont[t]
        self._h0_grad(bottom, propagate_down, dz, w_hh)
        self._weight_and_input_grads(bottom, propagate_down, dz, hc, 0, 1, i_hh)
        self._static_grads(bottom, propagate_down, dz, 2 if nst else -1)
