"""Recurrent layers: LSTM and RNN, with the semantics of Caffe's RecurrentLayer.

Caffe builds these layers as an unrolled net (InnerProduct, Scale, Eltwise,
LSTMUnit, Concat ... one copy per time step).  dltrain computes the same
function directly:

* the input projection of all T steps is ONE matrix product
  ``(T*N, D) x (D, G)`` (G = 4H for LSTM, H for RNN);
* each step is one matrix product for the recurrent term
  ``W_h (cont_t * h_{t-1})`` followed by one fused Numba kernel (all gate
  activations, the cell and hidden update);
* backward through time is the mirror image: one fused kernel and one
  matrix product per step; the weight gradients are products over many
  steps at once (``dW_h += dG (cont * h_prev)^T``, ``dW_x += dG x``), for
  LSTM computed on a second thread, a few steps at a time, while the
  recurrence goes on (see "Two streams of work" below).

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

Float32 kernels use a vectorizable rational approximation of tanh and
sigmoid (no libm call, so LLVM vectorizes the loops): absolute error below
3e-7 (a few float32 ulps); on a whole LSTM (T=20, H=256) the output's error
against a float64 reference is the same as with exact activations (~1e-7,
set by float32 rounding in the matrix products).  Float64 (gradient checks)
uses ``np.tanh``/``np.exp``.
"""
import ctypes
import os
import queue
import threading

import numpy as np
from numba import njit, types
from numba.extending import overload

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K


# ---------------------------------------------------------------------------
# activations: dtype-generic scalar functions usable inside @njit kernels
# ---------------------------------------------------------------------------

# tanh(x) ~= x P(x^2) / Q(x^2) on |x| <= 9 (a relative-error fit made for
# dltrain: max relative error 7e-9 in exact arithmetic, < 3e-7 absolute when
# evaluated in float32 with FMA; evaluating in float64 costs twice the time
# for no visible gain in a layer's output).  Beyond 9, tanh is +-1 in float32.
_TANH_CLAMP = 9.0
_P0, _P1, _P2, _P3 = 0.9999999934541551, 0.13084002612110607, 0.0031039475994803795, 1.1154212222105774e-05
_P4, _P5, _P6 = -2.0224806960112562e-08, 5.2777348981573375e-11, -8.488142170273733e-14
_Q1, _Q2, _Q3 = 0.46417329729436335, 0.024495144756486578, 0.00025461323079167434


@njit(cache=True, inline="always", error_model="numpy", fastmath={"contract"})
def _rational_tanh(x):
    """tanh of a float32 value without libm (vectorizes)."""
    f = np.float32
    v = min(max(x, f(-_TANH_CLAMP)), f(_TANH_CLAMP))
    u = v * v
    p = f(_P0) + u * (f(_P1) + u * (f(_P2) + u * (f(_P3) + u * (f(_P4) + u * (f(_P5) + u * f(_P6))))))
    q = f(1.0) + u * (f(_Q1) + u * (f(_Q2) + u * f(_Q3)))
    r = v * p / q
    return min(max(r, f(-1.0)), f(1.0))


def act_tanh(x):
    """tanh for use inside kernels: fast and vectorizable for float32, np.tanh otherwise."""
    return np.tanh(x)


def act_sigmoid(x):
    """The logistic function for use inside kernels (see act_tanh)."""
    return 1.0 / (1.0 + np.exp(-x))


def _is_f32(x):
    return isinstance(x, types.Float) and x.bitwidth == 32


@overload(act_tanh, jit_options={"error_model": "numpy", "fastmath": {"contract"}})
def _ov_act_tanh(x):
    if _is_f32(x):
        return lambda x: _rational_tanh(x)
    return lambda x: np.tanh(x)


@overload(act_sigmoid, jit_options={"error_model": "numpy", "fastmath": {"contract"}})
def _ov_act_sigmoid(x):
    if _is_f32(x):
        # sigmoid(x) = (1 + tanh(x/2)) / 2, the form Caffe's Sigmoid layer uses
        return lambda x: np.float32(0.5) * _rational_tanh(np.float32(0.5) * x) + np.float32(0.5)
    return lambda x: 1.0 / (1.0 + np.exp(-x))


# ---------------------------------------------------------------------------
# Layout.  Matrix products want "feature-major" buffers, (features, T*N),
# whose step t is the column block [t*N, (t+1)*N): the input projection of
# all steps (G, T*N), the gate gradients of all steps (G, T*N), and the
# recurrent products' inputs ``hc`` (H, (T+1)*N), block t = cont_t * h_{t-1}.
# Then each step's product is W (G, H) @ block (H, N), the fastest
# orientation for BLAS on these shapes (1.7x faster than (N, H) @ (H, G)),
# and a weight gradient over many steps is one product.
#
# The element-wise kernels want long contiguous loops instead: inner loops
# of only N (strided rows) cost a vectorization set-up per row, 3-4x the
# work itself.  So per-step state is kept per step, contiguous: activations
# (T, G, N), c (T+1, H, N), tanh(c) and h (T, H, N), and each kernel is ONE
# flat loop over the H*N cells of a step.  ``cont`` enters the flat loops
# broadcast to (H, N) per step (``contx``, built once per forward).
#
# Kernels are written so that LLVM vectorizes them: one loop, no branches,
# and no literal that would widen float32 to float64 (``one`` is passed in,
# of the data's dtype).
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def lstm_forward_step(pre, addend, cont, c_prev, acts, c, tanh_c, h):
    """One LSTM step over the M = H*N cells (flat 1-D arrays).

    ``pre`` (4M) = W_xc x_t + W_hc (cont_t h_{t-1}), ``addend`` (4M) = b_c (+
    the static term), gate blocks [i, f, o, g] of M each; ``cont`` (M) =
    cont_t per cell; ``c_prev`` (M) = c_{t-1}.  Writes the activations
    [i, s_f, o, g] to ``acts`` (4M; s_f = sigmoid of the forget input, the
    effective f being cont * s_f), and c_t, tanh(c_t), h_t (M each).
    """
    M = c.shape[0]
    pi, pf, po, pg = pre[:M], pre[M:2 * M], pre[2 * M:3 * M], pre[3 * M:]
    bi, bf, bo, bg = addend[:M], addend[M:2 * M], addend[2 * M:3 * M], addend[3 * M:]
    ai, af, ao, ag = acts[:M], acts[M:2 * M], acts[2 * M:3 * M], acts[3 * M:]
    for k in range(M):
        i = act_sigmoid(pi[k] + bi[k])
        sf = act_sigmoid(pf[k] + bf[k])
        o = act_sigmoid(po[k] + bo[k])
        g = act_tanh(pg[k] + bg[k])
        ai[k] = i
        af[k] = sf
        ao[k] = o
        ag[k] = g
        cv = cont[k] * sf * c_prev[k] + i * g          # f = cont * s_f: 0 where cont == 0
        tc = act_tanh(cv)
        c[k] = cv
        tanh_c[k] = tc
        h[k] = o * tc


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def lstm_backward_step(acts, c_prev, tanh_c, cont, dh, drec, cont_next, dc, dgates, one):
    """Backward of one LSTM step over the M = H*N cells (flat; layouts as the forward).

    The gradient reaching h_t is ``dh`` (the top's diff) plus ``cont_next *
    drec`` (drec = W_hc^T dG_{t+1}, cont_next = cont_{t+1} per cell).
    ``dc`` (M) holds dL/dc_t on entry and dL/dc_{t-1} on exit; ``dgates``
    (4M) gets the gradient w.r.t. the gate inputs, in [i, f, o, g] order.
    """
    M = dc.shape[0]
    ai, af, ao, ag = acts[:M], acts[M:2 * M], acts[2 * M:3 * M], acts[3 * M:]
    di, df, do, dg = dgates[:M], dgates[M:2 * M], dgates[2 * M:3 * M], dgates[3 * M:]
    for k in range(M):
        i = ai[k]
        sf = af[k]
        o = ao[k]
        g = ag[k]
        dhv = dh[k] + cont_next[k] * drec[k]
        tc = tanh_c[k]
        dct = dc[k] + dhv * o * (one - tc * tc)
        f = cont[k] * sf
        dc[k] = dct * f
        di[k] = dct * g * i * (one - i)
        df[k] = dct * c_prev[k] * f * (one - sf)
        do[k] = dhv * tc * o * (one - o)
        dg[k] = dct * i * (one - g * g)


# ---------------------------------------------------------------------------
# RNN kernels: state in the feature-major layout (H, T*N) throughout, indexed
# per row (the RNN's one activation per cell makes its kernels cheap anyway).
# ---------------------------------------------------------------------------

@njit(cache=True, error_model="numpy", fastmath={"contract"})
def rnn_forward_step(t, z, rec, addend, cont, h, hc):
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
            hv = act_tanh(z[j, off + n] + addend[j, n] + rec[j, n])
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
            hv = h[j, off + n]
            dz[j, off + n] = (dh[j, off + n] + cont_next[n] * drec[j, n]) * (one - hv * hv)


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def bias_tanh(x, bias):
    """x = tanh(x + bias) in place; x (M, H), bias (H,)."""
    M, H = x.shape
    uH = np.uint64(H)
    for m in range(M):
        xx = x[m]
        for j in range(uH):
            xx[j] = act_tanh(xx[j] + bias[j])


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def tanh_grad(y, dy, dx, one):
    """dx = dy * (1 - y^2); all (M, H)."""
    M, H = y.shape
    uH = np.uint64(H)
    for m in range(M):
        yy, dyy, dxx = y[m], dy[m], dx[m]
        for j in range(uH):
            v = yy[j]
            dxx[j] = dyy[j] * (one - v * v)


# ---------------------------------------------------------------------------
# Two streams of work on two cores.
#
# A step's matrix product (G x H by H x N) is too small to split across BLAS
# threads well, and a BLAS that spreads it over two threads waits for both at
# every step: on a machine whose cores are busy with other jobs that wait
# costs more than the product (measured: 3-4x slower than one thread).  So the
# recurrent layers call BLAS single-threaded (OpenBLAS's per-thread setting,
# other layers keep theirs) and use the second core for the work that does
# not depend on the recurrence, on a worker thread: half of the input
# projection in forward; in LSTM's backward, the weight, bias and input
# gradients of the steps already done (dW_h, dW_x, db, dx in chunks of
# steps) while the recurrence goes on.  numpy's BLAS and the LSTM kernels
# (nogil) release the GIL.  DLTRAIN_RNN_OVERLAP=0 turns the worker off.
# Without OpenBLAS's per-thread control, or on one core, everything runs in
# order on the calling thread, with BLAS's own threading.
# ---------------------------------------------------------------------------

def _openblas_local_threads():
    """OpenBLAS's ``openblas_set_num_threads_local`` of the BLAS numpy uses, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    for path in sorted(paths, key=lambda p: not p.startswith(numpy_dir)):   # numpy's own first
        try:
            fn = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_int]
        return fn
    return None


def _matmul_into(a, b, out):
    np.matmul(a, b, out=out)


class _Worker:
    """One daemon thread running submitted callables in order (BLAS single-threaded there)."""

    def __init__(self, set_local):
        self._tasks = queue.SimpleQueue()
        self._done = queue.SimpleQueue()
        self._pending = 0
        self._set_local = set_local
        threading.Thread(target=self._run, name="dltrain-recurrent", daemon=True).start()

    def _run(self):
        self._set_local(1)
        while True:
            fn, args = self._tasks.get()
            try:
                fn(*args)
                self._done.put(None)
            except BaseException as err:            # handed to the caller in wait()
                self._done.put(err)

    def submit(self, fn, *args):
        self._pending += 1
        self._tasks.put((fn, args))

    def wait(self):
        error = None
        while self._pending:
            result = self._done.get()
            self._pending -= 1
            error = error or result
        if error is not None:
            raise error


class _Streams:
    """Context for one forward or backward: BLAS single-threaded here, a worker for side work.

    ``run(fn, *args)`` runs ``fn`` on the worker (or at once, without one);
    leaving the context waits for the worker and restores BLAS's threads.
    Small layers (below ``min_work`` multiply-adds per pass) run everything
    in order on the calling thread: handing work over costs tens of us.
    """

    _set_local = None
    _worker = None
    _busy = threading.Lock()          # one user of the worker at a time (other threads run in order)
    enabled = os.environ.get("DLTRAIN_RNN_OVERLAP", "1") != "0"     # off: everything in order
    min_work = 1 << 22

    def __init__(self, work=None):
        self.work = work

    @classmethod
    def _setup(cls):
        if cls._set_local is None:
            cls._set_local = _openblas_local_threads() or False
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 1
            if cls._set_local and cores > 1:
                cls._worker = _Worker(cls._set_local)

    def __enter__(self):
        self._setup()
        big = self.work is None or self.work >= self.min_work
        self.worker = None
        if self.enabled and big and self._worker is not None and self._busy.acquire(blocking=False):
            self.worker = self._worker
        self._previous = self._set_local(1) if self.worker is not None else None
        return self

    def run(self, fn, *args):
        if self.worker is not None:
            self.worker.submit(fn, *args)
        else:
            fn(*args)

    def wait(self):
        if self.worker is not None:
            self.worker.wait()

    def __exit__(self, *exc):
        try:
            self.wait()
        finally:
            if self.worker is not None:
                self._set_local(self._previous)
                self._busy.release()
        return False


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------

class RecurrentLayer(Layer):
    """Caffe's RecurrentLayer: bottoms, tops, state and parameter handling.

    Subclasses set ``num_recur`` (recurrent state blobs: 1 for RNN, 2 for
    LSTM) and implement ``_param_shapes``, ``_param_is_bias``,
    ``forward_cpu`` and ``backward_cpu``.
    """

    min_bottom_blobs = 2
    min_top_blobs = 1
    num_recur = 1

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

    def _work_size(self):
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

    def _grad_plan(self, bottom, propagate_down, dG, hc, ix, ib, ih):
        """What the weight, bias and input gradients of a range of steps need.

        dG (G, T*N): gradients w.r.t. the pre-activations; hc (H, (T+1)*N):
        the recurrent products' inputs cont_t * h_{t-1} (block T unused).
        Buffers are taken here, on the calling thread.
        """
        TN = self.T * self.N
        G = dG.shape[0]
        ppd = self.param_propagate_down
        return dict(
            dG=dG, hc=hc, X=bottom[0].data.reshape(TN, self.D), rec_used=self._rec_used, N=self.N,
            dw_x=self.blobs[ix].diff if ppd[ix] else None, w_x=self.blobs[ix].data,
            db=self.blobs[ib].diff if ppd[ib] else None,
            dw_h=self.blobs[ih].diff if ppd[ih] else None,
            dx=bottom[0].diff.reshape(TN, self.D) if propagate_down[0] else None,
            ones=self._ones(TN),
            work_x=self._buf("dwx", G, self.D), work_h=self._buf("dwh", G, self.H), work_b=self._buf("db", G))

    @staticmethod
    def _grads_of_steps(plan, a, b):
        """Add steps [a, b)'s share of dW_x, db, dW_h to the parameter diffs; write their dx rows."""
        N = plan["N"]
        cols = slice(a * N, b * N)
        dG = plan["dG"][:, cols]
        if plan["dw_x"] is not None:
            K.gemm(dG, plan["X"][cols], plan["dw_x"], accumulate=True, work=plan["work_x"])
        if plan["db"] is not None:
            np.add(plan["db"], np.matmul(dG, plan["ones"][cols], out=plan["work_b"]), out=plan["db"])
        if plan["dw_h"] is not None:
            # steps before the first one with recurrence have hc == 0: leave them out
            used = np.flatnonzero(plan["rec_used"][a:b])
            if used.size:
                u = (a + int(used[0])) * N
                K.gemm(plan["dG"][:, u:b * N], plan["hc"][:, u:b * N].T, plan["dw_h"], accumulate=True,
                       work=plan["work_h"])
        if plan["dx"] is not None:
            K.gemm(dG.T, plan["w_x"], plan["dx"][cols])

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
            K.gemm(dGs, xs, dw, accumulate=True, work=self._buf("dws", *dw.shape))
        if propagate_down[2]:
            K.gemm(dGs.T, self.blobs[istat].data, bottom[2].diff.reshape(N, self.Ds))

    @staticmethod
    def _chunk_starts(T):
        """Steps at which backward hands the steps done so far to the worker: chunks of
        about T/5 steps from the end, halving near t = 0 so that little is left after the loop."""
        size = max(1, T // 5)
        starts, top = [], T
        while top > 0:
            step = size if top > 2 * size else max(1, (top + 1) // 2)
            top -= step
            starts.append(top)
        return starts

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

    max_bottom_blobs = 5
    max_top_blobs = 3
    num_recur = 2

    def _param_shapes(self):
        G = 4 * self.H
        shapes = [(G, self.D), (G,)]
        if self.static_input:
            shapes.append((G, self.Ds))
        shapes.append((G, self.H))
        return shapes

    def _param_is_bias(self):
        return [False, True] + [False] * (1 + int(self.static_input))

    def forward_cpu(self, bottom, top):
        with _Streams(self._work_size()) as streams:
            self._forward(bottom, top, streams)

    def _forward(self, bottom, top, streams):
        T, N, H = self.T, self.N, self.H
        G, TN = 4 * H, T * N
        w_h = self.blobs[-1].data
        cont = bottom[1].data.reshape(T, N)
        proj, addend = self._forward_common(bottom, self.blobs[0].data, self.blobs[1].data,
                                            self.blobs[2].data if self.static_input else None, G, streams)
        acts = self._buf("acts", T, G, N)
        c = self._buf("c", T + 1, H, N)          # c[0] = c_0, c[t+1] = c_t
        tanh_c = self._buf("tanh_c", T, H, N)
        h = self._buf("h", T, H, N)
        hc = self._buf("hc", H, TN + N)          # block t: cont_t * h_{t-1} (block T: unused)
        contx = self._buf("contx", T + 1, H, N)  # cont_t broadcast per cell; contx[T] = 1
        rec = self._buf("rec", G, N)
        self._rec_used = np.zeros(T, np.bool_)

        contx[:T] = cont[:, None, :]
        contx[T] = 1
        c[0] = self._initial_state(bottom, 1).T
        self._start_recurrence(bottom, hc)
        addend_flat = addend.reshape(-1)
        for t in range(T):
            self._recurrent_product(hc, w_h, cont[t], rec, t)
            np.add(rec, proj[:, t * N:(t + 1) * N], out=rec)
            lstm_forward_step(rec.reshape(-1), addend_flat, contx[t].reshape(-1), c[t].reshape(-1),
                              acts[t].reshape(-1), c[t + 1].reshape(-1), tanh_c[t].reshape(-1), h[t].reshape(-1))
            if t + 1 < T:
                np.multiply(h[t], contx[t + 1], out=hc[:, (t + 1) * N:(t + 2) * N])
        np.copyto(top[0].data.reshape(T, N, H), h.transpose(0, 2, 1))
        self._store_final_state(top, 0, h[T - 1])
        self._store_final_state(top, 1, c[T])

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        with _Streams(self._work_size()) as streams:
            self._backward(top, propagate_down, bottom, streams)

    def _backward(self, top, propagate_down, bottom, streams):
        T, N, H = self.T, self.N, self.H
        G, TN = 4 * H, T * N
        nst = int(self.static_input)
        w_h = self.blobs[-1].data
        acts = self._buf("acts", T, G, N)
        c = self._buf("c", T + 1, H, N)
        tanh_c = self._buf("tanh_c", T, H, N)
        hc = self._buf("hc", H, TN + N)
        contx = self._buf("contx", T + 1, H, N)
        dG = self._buf("proj", G, TN)            # the input projection's buffer, free after forward
        dgs = self._buf("dgs", G, N)             # one step's gate gradients, contiguous
        dc = self._buf("dc", H, N)
        drec = self._buf("drec", H, N)
        dh = self._buf("dh_top", T, H, N)
        np.copyto(dh, top[0].diff.reshape(T, N, H).transpose(0, 2, 1))
        one = self.dtype.type(1)

        self._backward_start(top, drec)
        if self.expose_hidden:
            dc[...] = top[2].diff.reshape(N, H).T
        else:
            dc[...] = 0
        dc_flat, drec_flat, dgs_flat = dc.reshape(-1), drec.reshape(-1), dgs.reshape(-1)
        plan = self._grad_plan(bottom, propagate_down, dG, hc, 0, 1, 2 + nst)
        # with a worker: hand over chunks of finished steps; alone: all steps at the end
        starts, end = (self._chunk_starts(T) if streams.worker is not None else [0]), T
        for t in range(T - 1, -1, -1):
            lstm_backward_step(acts[t].reshape(-1), c[t].reshape(-1), tanh_c[t].reshape(-1), contx[t].reshape(-1),
                               dh[t].reshape(-1), drec_flat, contx[t + 1].reshape(-1), dc_flat, dgs_flat, one)
            np.copyto(dG[:, t * N:(t + 1) * N], dgs)
            if t == starts[0]:                   # steps [t, end) are done: their weight gradients, meanwhile
                streams.run(self._grads_of_steps, plan, t, end)
                starts.pop(0)
                end = t
            if t > 0:
                self._recurrent_grad(dgs, w_h, drec, t)
        self._h0_grad(bottom, propagate_down, dG, w_h)
        first = self._first_state_bottom()
        if self.expose_hidden and propagate_down[first + 1]:
            bottom[first + 1].diff.reshape(N, H)[...] = dc.T
        self._static_grads(bottom, propagate_down, dG, 2 if nst else -1)
        streams.wait()

    # --- GPU: the recurrence on the device (layers/recurrent_cuda.py) ----------------
    def forward_gpu(self, bottom, top):
        from . import recurrent_cuda
        recurrent_cuda.lstm_forward(self, bottom, top)
        self._rec_used = np.ones(self.T, np.bool_)      # marks "forward done" for backward's check

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        from . import recurrent_cuda
        recurrent_cuda.lstm_backward(self, top, propagate_down, bottom)


@register_layer("RNN")
class RNNLayer(RecurrentLayer):
    """Caffe's RNN layer (see the module docstring)."""

    max_bottom_blobs = 4
    max_top_blobs = 2
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

    def forward_cpu(self, bottom, top):
        with _Streams(self._work_size()) as streams:
            self._forward(bottom, top, streams)

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
        self._rec_used = np.zeros(T, np.bool_)

        self._start_recurrence(bottom, hc)
        for t in range(T):
            self._recurrent_product(hc, w_hh, cont[t], rec, t)
            rnn_forward_step(t, z, rec, addend, cont, h, hc)
        o = top[0].data.reshape(TN, H)
        np.matmul(h.T, w_ho.T, out=o)
        bias_tanh(o, b_o)
        self._store_final_state(top, 0, h[:, TN - N:])

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        with _Streams(self._work_size()):       # BLAS single-threaded here, as for LSTM
            self._backward(top, propagate_down, bottom)

    def _backward(self, top, propagate_down, bottom):
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

        tanh_grad(top[0].data.reshape(TN, H), top[0].diff.reshape(TN, H), do, one)
        if ppd[i_ho]:
            dw = self.blobs[i_ho].diff
            K.gemm(do.T, h.T, dw, accumulate=True, work=self._buf("dwo", H, H))
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
        self._grads_of_steps(self._grad_plan(bottom, propagate_down, dz, hc, 0, 1, i_hh), 0, T)
        self._static_grads(bottom, propagate_down, dz, 2 if nst else -1)

    def forward_gpu(self, bottom, top):
        from . import recurrent_cuda
        recurrent_cuda.rnn_forward(self, bottom, top)
        self._rec_used = np.ones(self.T, np.bool_)

    def backward_gpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        from . import recurrent_cuda
        recurrent_cuda.rnn_backward(self, top, propagate_down, bottom)
