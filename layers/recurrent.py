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
  recurrence goes on (layers/overlap.py).

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
``math.tanh``/``exp``), BLAS thread control (layers/blas_threads.py), the
worker thread that overlaps side work with the recurrence
(layers/overlap.py), and the GPU code (layers/recurrent_cuda.py).
"""
import numpy as np
from numba import njit

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K
from .lstm_cell import lstm_cell, lstm_layer_cell_grad
from .overlap import Streams
from .rational import kernel_sigmoid, kernel_tanh


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
def lstm_forward_step(pre, addend, cont, c_prev, acts, c, tanh_c, h, one):
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
        # the gates with the CPU's own activations, then the shared cell formula.  (Not through
        # lstm_gates: handed four activation calls, LLVM stops inlining it and the loop no longer
        # vectorizes, 10x slower.)
        i = kernel_sigmoid(pi[k] + bi[k], one)
        sf = kernel_sigmoid(pf[k] + bf[k], one)
        o = kernel_sigmoid(po[k] + bo[k], one)
        g = kernel_tanh(pg[k] + bg[k], one)
        ai[k], af[k], ao[k], ag[k] = i, sf, o, g
        # f = cont * s_f (0 where cont == 0).  (cont and c_prev are read after the gates, as they always
        # were: LLVM then fuses the cell's products into the same FMAs, so float64 keeps its bits.)
        c[k], tanh_c[k], h[k] = lstm_cell(i, cont[k] * sf, o, g, c_prev[k], one, kernel_tanh)


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
        dc[k], di[k], df[k], do[k], dg[k] = lstm_layer_cell_grad(
            ai[k], af[k], ao[k], ag[k], cont[k], c_prev[k], tanh_c[k], dh[k] + cont_next[k] * drec[k], dc[k], one)


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


# ---------------------------------------------------------------------------
# the layers
# ---------------------------------------------------------------------------

class RecurrentLayer(Layer):
    """Caffe's RecurrentLayer: bottoms, tops, state and parameter handling.

    Subclasses set ``num_recur`` (recurrent state blobs: 1 for RNN, 2 for
    LSTM; the most bottoms and tops follow from it) and implement
    ``_param_shapes``, ``_param_is_bias``, and the CPU passes
    ``_forward(bottom, top, streams)`` and ``_backward(top, propagate_down,
    bottom, streams)`` (``streams``: the two streams of work,
    layers/overlap.py).
    """

    min_bottom_blobs = 2
    min_top_blobs = 1
    num_recur = 1
    cuda_module = ".recurrent_cuda"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.max_bottom_blobs = 3 + cls.num_recur         # x, cont, x_static, the exposed initial state
        cls.max_top_blobs = 1 + cls.num_recur

    # --- setup -------------------------------------------------------------
    def _fail(self, message):
        raise ConfigError(f"layer '{self.name}' ({self.type}): {message}")

    def setup(self, bottom, top):
        if any(t is b for t in top for b in bottom):    # every time step reads x while h is written
            raise ConfigError(f"layer '{self.name}' ({self.type}) does not allow in-place computation")
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

    # --- the CPU passes, with the two streams of work -------------------------
    def forward_cpu(self, bottom, top):
        with Streams(self._work_size()) as streams:
            self._forward(bottom, top, streams)

    def backward_cpu(self, top, propagate_down, bottom):
        self._check_propagate_down(propagate_down)
        with Streams(self._work_size()) as streams:
            self._backward(top, propagate_down, bottom, streams)

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
            K.matmul(dG, plan["X"][cols], plan["dw_x"], accumulate=True, work=plan["work_x"])
        if plan["db"] is not None:
            np.add(plan["db"], np.matmul(dG, plan["ones"][cols], out=plan["work_b"]), out=plan["db"])
        if plan["dw_h"] is not None:
            # steps before the first one with recurrence have hc == 0: leave them out
            used = np.flatnonzero(plan["rec_used"][a:b])
            if used.size:
                u = (a + int(used[0])) * N
                K.matmul(plan["dG"][:, u:b * N], plan["hc"][:, u:b * N].T, plan["dw_h"], accumulate=True,
                       work=plan["work_h"])
        if plan["dx"] is not None:
            K.matmul(dG.T, plan["w_x"], plan["dx"][cols])

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
            K.matmul(dGs, xs, dw, accumulate=True, work=self._buf("dws", *dw.shape))
        if propagate_down[2]:
            K.matmul(dGs.T, self.blobs[istat].data, bottom[2].diff.reshape(N, self.Ds))

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
        one = self.dtype.type(1)
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
                              acts[t].reshape(-1), c[t + 1].reshape(-1), tanh_c[t].reshape(-1), h[t].reshape(-1),
                              one)
            if t + 1 < T:
                np.multiply(h[t], contx[t + 1], out=hc[:, (t + 1) * N:(t + 2) * N])
        np.copyto(top[0].data.reshape(T, N, H), h.transpose(0, 2, 1))
        self._store_final_state(top, 0, h[T - 1])
        self._store_final_state(top, 1, c[T])

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
            K.matmul(do.T, h.T, dw, accumulate=True, work=self._buf("dwo", H, H))
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
