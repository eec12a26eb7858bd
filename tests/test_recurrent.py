"""LSTM and RNN (Caffe's RecurrentLayer semantics).

* gradient checks (Caffe's GradientChecker, float64, exhaustive) with cont
  resets inside the sequence, with a static input, and with exposed hidden
  state (h_0 / c_0 gradients, h_T / c_T top gradients);
* Caffe's property tests: one pass over the whole sequence equals T=1
  step-by-step processing with the state carried over calls; cont = 0
  everywhere differs from cont = 1 after t = 0; the state carries across
  batches, gradients do not;
* an independent NumPy reference of the equations, and PyTorch (nn.LSTM,
  and autograd through the same equations with resets) when installed;
* parameter shapes and order, loading weights through Net.save / copy_from.
"""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, Net, create_layer, set_random_seed
from dlcore.gradcheck import GradientChecker
from dltrain.proto import caffe_pb2
from google.protobuf import text_format

F64 = np.float64
T, N, D, H = 3, 2, 3, 2
DS = 2                                  # static input size
# cont: stream 0 restarts at t = 2, stream 1 runs through (both start at t = 0).
CONT = np.array([[0, 0], [1, 1], [0, 1]], dtype=float)


def make_layer(kind, dtype=F64, num_output=H, expose_hidden=False, low=-0.5, high=0.5, name="rec"):
    text = (f'name: "{name}" type: "{kind}" recurrent_param {{ num_output: {num_output} '
            f'weight_filler {{ type: "uniform" min: {low} max: {high} }} '
            f'bias_filler {{ type: "uniform" min: {low} max: {high} }} '
            f'expose_hidden: {str(expose_hidden).lower()} }}')
    return create_layer(text, dtype=dtype)


def blob(array, dtype=F64):
    array = np.asarray(array)
    b = Blob(*array.shape, dtype=dtype)
    b.data[...] = array
    return b


def random_inputs(rng, t=T, n=N, d=D, static=False, hidden=0, h=H, dtype=F64, cont=None):
    x = blob(rng.uniform(-1, 1, (t, n, d)), dtype)
    c = blob(CONT if cont is None else cont, dtype)
    bottom = [x, c]
    if static:
        bottom.append(blob(rng.uniform(-1, 1, (n, DS)), dtype))
    for _ in range(hidden):
        bottom.append(blob(rng.uniform(-1, 1, (1, n, h)), dtype))
    return bottom


def n_tops(kind, expose_hidden):
    return 1 + (({"LSTM": 2, "RNN": 1}[kind]) if expose_hidden else 0)


# ---------------------------------------------------------------------------
# an independent NumPy reference of the equations
# ---------------------------------------------------------------------------

def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm_reference(params, x, cont, x_static=None, h0=None, c0=None):
    """Caffe's unrolled LSTM, step by step, in float64.  Returns h (T,N,H), h_T, c_T."""
    W_xc, b_c = params[0], params[1]
    W_hc = params[-1]
    W_s = params[2] if x_static is not None else None
    t_, n_ = x.shape[:2]
    hid = W_hc.shape[1]
    x = x.reshape(t_, n_, -1)
    h = np.zeros((n_, hid)) if h0 is None else h0.reshape(n_, hid).astype(F64)
    c = np.zeros((n_, hid)) if c0 is None else c0.reshape(n_, hid).astype(F64)
    out = []
    for t in range(t_):
        ct = cont[t][:, None]
        a = (ct * h) @ W_hc.T + x[t] @ W_xc.T + b_c
        if x_static is not None:
            a = a + x_static.reshape(n_, -1) @ W_s.T
        i = sigmoid(a[:, :hid])
        f = ct * sigmoid(a[:, hid:2 * hid])
        o = sigmoid(a[:, 2 * hid:3 * hid])
        g = np.tanh(a[:, 3 * hid:])
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def rnn_reference(params, x, cont, x_static=None, h0=None):
    """Caffe's unrolled RNN.  Returns o (T,N,H) and h_T."""
    W_xh, b_h = params[0], params[1]
    k = 3 if x_static is not None else 2
    W_hh, W_ho, b_o = params[k], params[k + 1], params[k + 2]
    t_, n_ = x.shape[:2]
    hid = W_hh.shape[0]
    x = x.reshape(t_, n_, -1)
    h = np.zeros((n_, hid)) if h0 is None else h0.reshape(n_, hid).astype(F64)
    out = []
    for t in range(t_):
        a = (cont[t][:, None] * h) @ W_hh.T + x[t] @ W_xh.T + b_h
        if x_static is not None:
            a = a + x_static.reshape(n_, -1) @ params[2].T
        h = np.tanh(a)
        out.append(np.tanh(h @ W_ho.T + b_o))
    return np.stack(out), h


def params_of(layer):
    return [b.data.astype(F64) for b in layer.blobs]


def run(layer, bottom, ntop):
    top = [Blob(dtype=layer.dtype) for _ in range(ntop)]
    layer.initialize(bottom, top)
    layer.forward(bottom, top)
    return top


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("static", [False, True])
def test_lstm_param_shapes_and_order(static):
    layer = make_layer("LSTM", num_output=5)
    bottom = random_inputs(np.random.default_rng(0), d=4, static=static)
    top = run(layer, bottom, 1)
    expected = [(20, 4), (20,)] + ([(20, DS)] if static else []) + [(20, 5)]
    assert [b.shape for b in layer.blobs] == expected
    assert top[0].shape == (T, N, 5)


@pytest.mark.parametrize("static", [False, True])
def test_rnn_param_shapes_and_order(static):
    layer = make_layer("RNN", num_output=5)
    bottom = random_inputs(np.random.default_rng(0), d=4, static=static)
    top = run(layer, bottom, 1)
    expected = [(5, 4), (5,)] + ([(5, DS)] if static else []) + [(5, 5), (5, 5), (5,)]
    assert [b.shape for b in layer.blobs] == expected
    assert top[0].shape == (T, N, 5)


def test_default_fillers_are_constant_zero_and_axes_flattened():
    layer = create_layer('name: "l" type: "LSTM" recurrent_param { num_output: 3 }', dtype=F64)
    bottom = [blob(np.ones((2, 4, 2, 3))), blob(np.ones((2, 4)))]
    top = run(layer, bottom, 1)
    assert layer.blobs[0].shape == (12, 6)
    assert all(np.all(b.data == 0) for b in layer.blobs)
    # all gates 0.5, g = 0: c stays 0, h = 0
    assert top[0].shape == (2, 4, 3) and np.all(top[0].data == 0)


def test_bad_configs_name_the_layer():
    with pytest.raises(ConfigError, match="'rec'.*num_output"):
        run(create_layer('name: "rec" type: "LSTM" recurrent_param { num_output: 0 }'), random_inputs(
            np.random.default_rng(0), dtype=np.float32), 1)
    layer = make_layer("LSTM")
    rng = np.random.default_rng(0)
    bottom = random_inputs(rng)
    top = run(layer, bottom, 1)
    with pytest.raises(ConfigError, match="'rec'.*timesteps changed"):
        layer.reshape(random_inputs(rng, t=T + 1, cont=np.ones((T + 1, N))), top)
    with pytest.raises(ConfigError, match="'rec'.*cont"):
        layer.reshape([bottom[0], blob(np.ones((T, N + 1)))], top)
    with pytest.raises(ConfigError, match="'rec'"):
        run(make_layer("LSTM", expose_hidden=True), random_inputs(rng, hidden=1), 3)


def test_no_gradient_to_cont():
    for kind in ("LSTM", "RNN"):
        layer = make_layer(kind)
        bottom = random_inputs(np.random.default_rng(0))
        top = run(layer, bottom, 1)
        assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
        with pytest.raises(ConfigError, match="sequence indicators"):
            layer.backward(top, [True, True], bottom)


# ---------------------------------------------------------------------------
# gradient checks (float64, exhaustive, as Caffe's test_lstm_layer / test_rnn_layer)
# ---------------------------------------------------------------------------

def gradient_check(kind, static=False, expose_hidden=False, cont=None):
    rng = np.random.default_rng(1701)
    nrec = {"LSTM": 2, "RNN": 1}[kind] if expose_hidden else 0
    bottom = random_inputs(rng, static=static, hidden=nrec, cont=cont)
    top = [Blob(dtype=F64) for _ in range(n_tops(kind, expose_hidden))]
    checker = GradientChecker(1e-3, 1e-3)
    # every bottom but cont (bottom 1: no gradient by design)
    for i in [0] + list(range(2, len(bottom))):
        layer = make_layer(kind, expose_hidden=expose_hidden)
        checker.check_gradient_exhaustive(layer, bottom, top, check_bottom=i)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_cont_resets(kind):
    gradient_check(kind)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_static_input(kind):
    gradient_check(kind, static=True)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_exposed_hidden_state(kind):
    # cont = 1 at t = 0 for stream 1: h_0 / c_0 reach the outputs
    gradient_check(kind, expose_hidden=True, cont=np.array([[0, 1], [1, 1], [0, 1]], dtype=float))


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_every_step_restarting(kind):
    # cont == 0 everywhere: no step has a recurrent term (W_h gets no gradient)
    gradient_check(kind, cont=np.zeros((T, N)))


def test_gradient_with_static_input_and_exposed_hidden_state():
    gradient_check("LSTM", static=True, expose_hidden=True, cont=np.array([[1, 1], [0, 1], [1, 0]], dtype=float))


# ---------------------------------------------------------------------------
# against the NumPy reference
# ---------------------------------------------------------------------------

REFERENCES = {"LSTM": (3, lambda *args: lstm_reference(*args)[0]),      # (seed, reference of the top)
              "RNN": (4, lambda *args: rnn_reference(*args)[0])}


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("static", [False, True])
def test_matches_reference(kind, dtype, static):
    seed, reference = REFERENCES[kind]
    rng = np.random.default_rng(seed)
    t, n, d, h = 6, 4, 5, 7
    cont = (rng.random((t, n)) > 0.3).astype(float)
    cont[0] = 0
    layer = make_layer(kind, dtype, num_output=h, low=-1, high=1)
    bottom = random_inputs(rng, t, n, d, static=static, h=h, dtype=dtype, cont=cont)
    top = run(layer, bottom, 1)
    ref = reference(params_of(layer), bottom[0].data.astype(F64), cont, bottom[2].data.astype(F64) if static else None)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    np.testing.assert_allclose(top[0].data, ref, rtol=tol, atol=tol)


def test_float32_activations_are_accurate():
    # the float32 kernels use a rational tanh; large pre-activations saturate correctly
    rng = np.random.default_rng(5)
    layer = make_layer("LSTM", np.float32, num_output=8, low=-4, high=4)
    bottom = random_inputs(rng, 5, 3, 6, h=8, dtype=np.float32, cont=np.ones((5, 3)))
    bottom[0].data[...] *= 5
    top = run(layer, bottom, 1)
    ref, _, _ = lstm_reference(params_of(layer), bottom[0].data.astype(F64), np.ones((5, 3)))
    np.testing.assert_allclose(top[0].data, ref, atol=3e-6)
    assert np.all(np.abs(top[0].data) <= 1)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_exposed_hidden_state_matches_reference(kind):
    rng = np.random.default_rng(6)
    cont = np.array([[1, 1], [1, 0], [1, 1]], dtype=float)
    nrec = 2 if kind == "LSTM" else 1
    layer = make_layer(kind, expose_hidden=True, low=-1, high=1)
    bottom = random_inputs(rng, hidden=nrec, cont=cont)
    top = run(layer, bottom, 1 + nrec)
    if kind == "LSTM":
        ref, hT, cT = lstm_reference(params_of(layer), bottom[0].data, cont, h0=bottom[2].data, c0=bottom[3].data)
        np.testing.assert_allclose(top[1].data.reshape(N, H), hT, rtol=1e-12)
        np.testing.assert_allclose(top[2].data.reshape(N, H), cT, rtol=1e-12)
        assert top[1].shape == top[2].shape == (1, N, H)
    else:
        ref, hT = rnn_reference(params_of(layer), bottom[0].data, cont, h0=bottom[2].data)
        np.testing.assert_allclose(top[1].data.reshape(N, H), hT, rtol=1e-12)
    np.testing.assert_allclose(top[0].data, ref, rtol=1e-12)


# ---------------------------------------------------------------------------
# Caffe's property tests
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_sequence_equals_step_by_step(kind, dtype):
    # Caffe's TestForward: a T-step pass equals T passes of a T=1 layer that
    # carries its state over calls, fed cont_t (here with a reset inside).
    rng = np.random.default_rng(7)
    t, n = 5, 3
    cont = np.ones((t, n))
    cont[0] = 0
    cont[3, 1] = 0
    full = make_layer(kind, dtype, low=-1, high=1)
    bottom = random_inputs(rng, t, n, dtype=dtype, cont=cont)
    whole = run(full, bottom, 1)[0].data.copy()

    step = make_layer(kind, dtype, low=-1, high=1)
    x1, c1 = blob(bottom[0].data[:1], dtype), blob(cont[:1], dtype)
    top = run(step, [x1, c1], 1)
    for src, dst in zip(full.blobs, step.blobs):
        dst.data[...] = src.data
    tol = 1e-6 if dtype == np.float32 else 1e-14
    for i in range(t):
        x1.data[...] = bottom[0].data[i:i + 1]
        c1.data[...] = cont[i:i + 1]
        step.reshape([x1, c1], top)
        step.forward([x1, c1], top)
        np.testing.assert_allclose(top[0].data[0], whole[i], rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_cont_zero_differs_from_cont_one_after_t0(kind):
    rng = np.random.default_rng(8)
    t, n = 4, 2
    layer_a = make_layer(kind, low=-1, high=1)
    bottom_a = random_inputs(rng, t, n, cont=np.zeros((t, n)))
    out_zero = run(layer_a, bottom_a, 1)[0].data.copy()
    layer_b = make_layer(kind, low=-1, high=1)
    bottom_b = [blob(bottom_a[0].data), blob(np.r_[np.zeros((1, n)), np.ones((t - 1, n))])]
    top = run(layer_b, bottom_b, 1)
    for src, dst in zip(layer_a.blobs, layer_b.blobs):
        dst.data[...] = src.data
    layer_b.reset()
    layer_b.forward(bottom_b, top)
    out_one = top[0].data
    np.testing.assert_allclose(out_zero[0], out_one[0], rtol=1e-14)
    for i in range(1, t):
        assert np.abs(out_zero[i] - out_one[i]).max() > 1e-4
    # cont = 0 everywhere: every step sees a fresh state, i.e. a T=1 net on each x_t
    single, _ = (lstm_reference if kind == "LSTM" else rnn_reference)(
        params_of(layer_a), bottom_a[0].data.reshape(t * n, 1, D).transpose(1, 0, 2), np.zeros((1, t * n)))[:2]
    np.testing.assert_allclose(out_zero.reshape(t * n, H), single.reshape(t * n, H), rtol=1e-12)


def two_batches(seed, t, n):
    """One sequence of 2t steps for n streams, fresh at t = 0, to feed in two batches of t: (rng, x, cont)."""
    rng = np.random.default_rng(seed)
    cont = np.ones((2 * t, n))
    cont[0] = 0
    return rng, rng.uniform(-1, 1, (2 * t, n, D)), cont


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carries_across_batches_gradients_do_not(kind):
    t, n = 3, 2
    rng, x, cont = two_batches(9, t, n)
    cont[4, 0] = 0
    layer = make_layer(kind, low=-1, high=1)
    b1 = [blob(x[:t]), blob(cont[:t])]
    top = run(layer, b1, 1)
    first = top[0].data.copy()
    b2 = [blob(x[t:]), blob(cont[t:])]
    layer.reshape(b2, top)
    layer.forward(b2, top)
    second = top[0].data.copy()
    ref = (lstm_reference if kind == "LSTM" else rnn_reference)(params_of(layer), x, cont)[0]
    np.testing.assert_allclose(np.concatenate([first, second]), ref, rtol=1e-12, atol=1e-14)

    # gradient of the second batch: the carried state acts as a constant
    top[0].diff[...] = rng.uniform(-1, 1, top[0].shape)
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True, False], b2)
    carried = make_layer(kind, expose_hidden=True)
    nrec = 2 if kind == "LSTM" else 1
    state = [Blob(1, n, H, dtype=F64) for _ in range(nrec)]
    if kind == "LSTM":
        _, state[0].data[...], state[1].data[...] = lstm_reference(params_of(layer), x[:t], cont[:t])
    else:
        _, state[0].data[...] = rnn_reference(params_of(layer), x[:t], cont[:t])
    b2e = [blob(x[t:]), blob(cont[t:])] + state
    tope = [Blob(dtype=F64) for _ in range(1 + nrec)]
    carried.initialize(b2e, tope)
    for src, dst in zip(layer.blobs, carried.blobs):
        dst.data[...] = src.data
        dst.diff[...] = 0
    carried.forward(b2e, tope)
    np.testing.assert_allclose(tope[0].data, second, rtol=1e-12)
    tope[0].diff[...] = top[0].diff
    for extra in tope[1:]:
        extra.diff[...] = 0
    carried.backward(tope, [True, False] + [False] * nrec, b2e)
    for a, b in zip(layer.blobs, carried.blobs):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(b2[0].diff, b2e[0].diff, rtol=1e-12, atol=1e-14)


def test_state_resets_when_batch_size_changes_and_on_reset():
    rng = np.random.default_rng(10)
    layer = make_layer("LSTM", low=-1, high=1)
    ones = np.ones((T, N))
    b = [blob(rng.uniform(-1, 1, (T, N, D))), blob(ones)]
    top = run(layer, b, 1)                       # starts from zeros
    fresh = lstm_reference(params_of(layer), b[0].data, ones)[0]
    np.testing.assert_allclose(top[0].data, fresh, rtol=1e-12)
    layer.forward(b, top)                        # continues: differs
    assert np.abs(top[0].data - fresh).max() > 1e-4
    layer.reset()
    layer.forward(b, top)
    np.testing.assert_allclose(top[0].data, fresh, rtol=1e-12)
    b3 = [blob(rng.uniform(-1, 1, (T, N + 1, D))), blob(np.ones((T, N + 1)))]
    layer.reshape(b3, top)                       # N changed: the state is zeros again
    layer.forward(b3, top)
    np.testing.assert_allclose(top[0].data, lstm_reference(params_of(layer), b3[0].data, b3[1].data)[0],
                               rtol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_exposed_hidden_chains_like_one_long_sequence(kind):
    t, n = 3, 2
    _, x, cont = two_batches(11, t, n)
    nrec = 2 if kind == "LSTM" else 1
    long_layer = make_layer(kind, low=-1, high=1)
    long_out = run(long_layer, [blob(x), blob(cont)], 1)[0].data
    layer = make_layer(kind, expose_hidden=True, low=-1, high=1)
    state = [blob(np.zeros((1, n, H))) for _ in range(nrec)]
    bottom = [blob(x[:t]), blob(cont[:t])] + state
    top = run(layer, bottom, 1 + nrec)
    for src, dst in zip(long_layer.blobs, layer.blobs):
        dst.data[...] = src.data
    outs = []
    for k in range(2):
        bottom[0].data[...] = x[k * t:(k + 1) * t]
        bottom[1].data[...] = cont[k * t:(k + 1) * t]
        layer.forward(bottom, top)
        outs.append(top[0].data.copy())
        for s, out in zip(state, top[1:]):
            s.data[...] = out.data
    np.testing.assert_allclose(np.concatenate(outs), long_out, rtol=1e-12)


# ---------------------------------------------------------------------------
# PyTorch (skipped when torch is not installed)
# ---------------------------------------------------------------------------

def test_lstm_matches_torch_nn_lstm():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    t, n, d, h = 5, 3, 4, 6
    cont = np.ones((t, n))
    cont[0] = 0                                   # each batch is a fresh sequence, as torch's zero state
    layer = make_layer("LSTM", num_output=h, low=-1, high=1)
    bottom = random_inputs(rng, t, n, d, cont=cont)
    top = run(layer, bottom, 1)
    W_xc, b_c, W_hc = params_of(layer)
    perm = np.r_[0:2 * h, 3 * h:4 * h, 2 * h:3 * h]   # Caffe [i, f, o, g] -> torch [i, f, g, o]
    lstm = torch.nn.LSTM(d, h).double()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(W_xc[perm]))
        lstm.weight_hh_l0.copy_(torch.from_numpy(W_hc[perm]))
        lstm.bias_ih_l0.copy_(torch.from_numpy(b_c[perm] * 0.25))
        lstm.bias_hh_l0.copy_(torch.from_numpy(b_c[perm] * 0.75))
    xt = torch.from_numpy(bottom[0].data.copy()).requires_grad_()
    out, _ = lstm(xt)
    np.testing.assert_allclose(top[0].data, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    dtop = rng.uniform(-1, 1, top[0].shape)
    out.backward(torch.from_numpy(dtop))
    top[0].diff[...] = dtop
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True, False], bottom)
    inv = np.argsort(perm)
    np.testing.assert_allclose(bottom[0].diff, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[0].diff, lstm.weight_ih_l0.grad.numpy()[inv], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[1].diff, lstm.bias_ih_l0.grad.numpy()[inv], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.blobs[2].diff, lstm.weight_hh_l0.grad.numpy()[inv], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradients_match_torch_autograd_with_resets(kind):
    # the equations written in torch, differentiated by autograd: cont resets,
    # a static input and an exposed initial state, every gradient compared.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(13)
    t, n, d, h = 5, 3, 4, 3
    cont = (rng.random((t, n)) > 0.3).astype(float)
    cont[0, 0] = 0
    nrec = 2 if kind == "LSTM" else 1
    layer = make_layer(kind, num_output=h, expose_hidden=True, low=-1, high=1)
    bottom = random_inputs(rng, t, n, d, static=True, hidden=nrec, h=h, cont=cont)
    top = run(layer, bottom, 1 + nrec)
    tp = [torch.from_numpy(p.copy()).requires_grad_() for p in params_of(layer)]
    tx, ts = (torch.from_numpy(bottom[i].data.copy()).requires_grad_() for i in (0, 2))
    tstate = [torch.from_numpy(b.data.reshape(n, h).copy()).requires_grad_() for b in bottom[3:]]
    tc = torch.from_numpy(cont)
    hs = tstate[0]
    cs = tstate[1] if kind == "LSTM" else None
    outs = []
    for i in range(t):
        ci = tc[i][:, None]
        if kind == "LSTM":
            a = (ci * hs) @ tp[3].T + tx[i] @ tp[0].T + tp[1] + ts @ tp[2].T
            gi, gf, go, gg = a.split(h, dim=1)
            cs = ci * torch.sigmoid(gf) * cs + torch.sigmoid(gi) * torch.tanh(gg)
            hs = torch.sigmoid(go) * torch.tanh(cs)
            outs.append(hs)
        else:
            hs = torch.tanh((ci * hs) @ tp[3].T + tx[i] @ tp[0].T + tp[1] + ts @ tp[2].T)
            outs.append(torch.tanh(hs @ tp[4].T + tp[5]))
    final = [hs, cs][:nrec]
    out = torch.stack(outs)
    np.testing.assert_allclose(top[0].data, out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for mine, theirs in zip(top[1:], final):
        np.testing.assert_allclose(mine.data.reshape(n, h), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    diffs = [rng.uniform(-1, 1, b.shape) for b in top]
    loss = (out * torch.from_numpy(diffs[0])).sum()
    for f, dd in zip(final, diffs[1:]):
        loss = loss + (f * torch.from_numpy(dd.reshape(n, h))).sum()
    loss.backward()
    for b, dd in zip(top, diffs):
        b.diff[...] = dd
    for p in layer.blobs:
        p.diff[...] = 0
    layer.backward(top, [True, False, True] + [True] * nrec, bottom)
    for p, q in zip(layer.blobs, tp):
        np.testing.assert_allclose(p.diff, q.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bottom[2].diff, ts.grad.numpy(), rtol=1e-9, atol=1e-12)
    for b, s in zip(bottom[3:], tstate):
        np.testing.assert_allclose(b.diff.reshape(n, h), s.grad.numpy(), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------
# in a Net: weights round trip, cont never gets a gradient
# ---------------------------------------------------------------------------

NET = """
name: "lstm_net"
force_backward: true
layer { name: "input" type: "Input" top: "x" top: "cont" top: "target"
        input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 dim: 2 } shape { dim: 4 dim: 2 dim: 5 } } }
layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.3 max: 0.3 }
                          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "rnn1" type: "RNN" bottom: "h" bottom: "cont" top: "o"
        recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.3 max: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "target" top: "loss" }
"""


def build_net(dtype=np.float32):
    param = caffe_pb2.NetParameter()
    text_format.Parse(NET, param)
    return Net(param, 0, dtype=dtype)


def feed(net, rng):
    net.blobs["x"].data[...] = rng.uniform(-1, 1, net.blobs["x"].shape)
    cont = np.ones((4, 2))
    cont[0] = 0
    cont[2, 1] = 0
    net.blobs["cont"].data[...] = cont
    net.blobs["target"].data[...] = rng.uniform(-0.5, 0.5, net.blobs["target"].shape)


def test_net_round_trip_through_caffemodel(tmp_path):
    rng = np.random.default_rng(14)
    net = build_net()
    feed(net, rng)
    loss = net.forward_backward()
    assert np.all(net.blobs["cont"].diff == 0)          # force_backward does not reach cont
    assert np.any(net.blobs["x"].diff != 0)
    path = tmp_path / "lstm.caffemodel"
    net.save(str(path))

    other = build_net()
    assert not np.allclose(other.layer_dict["lstm1"].blobs[0].data, net.layer_dict["lstm1"].blobs[0].data)
    other.copy_from(str(path))
    for name in ("lstm1", "rnn1"):
        for a, b in zip(net.layer_dict[name].blobs, other.layer_dict[name].blobs):
            np.testing.assert_array_equal(a.data, b.data)
    feed(other, np.random.default_rng(14))
    for layer in other.layers:
        if hasattr(layer, "reset"):
            layer.reset()
    assert other.forward_backward() == pytest.approx(loss, rel=1e-6)

    # a definition that carries the blobs (as Caffe-written models do) loads them as they are
    stored = caffe_pb2.NetParameter()
    stored.ParseFromString(path.read_bytes())
    names = [lp.name for lp in stored.layer]
    assert [len(stored.layer[names.index(n)].blobs) for n in ("lstm1", "rnn1")] == [3, 5]
    assert list(stored.layer[names.index("lstm1")].blobs[0].shape.dim) == [20, 3]
    loaded = Net(stored, 0)
    for name in ("lstm1", "rnn1"):
        for a, b in zip(net.layer_dict[name].blobs, loaded.layer_dict[name].blobs):
            np.testing.assert_array_equal(a.data, b.data)


def test_copy_from_rejects_wrong_shapes(tmp_path):
    net = build_net()
    path = tmp_path / "lstm.caffemodel"
    net.save(str(path))
    param = caffe_pb2.NetParameter()
    text_format.Parse(NET.replace("num_output: 5 weight_filler { type: \"uniform\" min: -0.3 max: 0.3 }\n"
                                  "                          bias_filler",
                                  "num_output: 6 weight_filler { type: \"uniform\" min: -0.3 max: 0.3 }\n"
                                  "                          bias_filler"), param)
    wider = Net(param, 0)
    with pytest.raises(ConfigError, match="lstm1"):
        wider.copy_from(str(path))


def test_net_learns_with_sgd():
    # a few plain SGD steps lower the loss (parameters, gradients and state all wired up)
    rng = np.random.default_rng(15)
    net = build_net(np.float64)
    feed(net, rng)
    losses = []
    for _ in range(30):
        for layer in net.layers:
            if hasattr(layer, "reset"):
                layer.reset()
        net.clear_param_diffs()
        losses.append(net.forward_backward())
        for p in net.learnable_params:
            p.data[...] -= 0.5 * p.diff
    assert losses[-1] < 0.7 * losses[0]


def test_blobs_in_the_definition_are_used_legacy_shapes_included():
    # a definition carrying its parameters (old Caffe files store 4-D num/channels/height/width)
    rng = np.random.default_rng(16)
    param = caffe_pb2.LayerParameter()
    text_format.Parse('name: "l" type: "LSTM" recurrent_param { num_output: 2 }', param)
    values = [rng.uniform(-1, 1, s) for s in [(8, 3), (8,), (8, 2)]]
    for v in values:
        b = param.blobs.add()
        shape = (1, 1) + v.shape if v.ndim == 2 else (1, 1, 1) + v.shape
        b.num, b.channels, b.height, b.width = shape
        b.data.extend(v.ravel().tolist())
    layer = create_layer(param, dtype=F64)
    bottom = random_inputs(rng)
    top = run(layer, bottom, 1)
    assert [b.shape for b in layer.blobs] == [(8, 3), (8,), (8, 2)]
    for b, v in zip(layer.blobs, values):
        np.testing.assert_allclose(b.data, v, rtol=1e-6)
    np.testing.assert_allclose(top[0].data, lstm_reference(values, bottom[0].data, CONT)[0], rtol=1e-5)
    bad = caffe_pb2.LayerParameter()
    bad.CopyFrom(param)
    del bad.blobs[2]
    with pytest.raises(ConfigError, match="'l'.*parameter blobs"):
        run(create_layer(bad, dtype=F64), random_inputs(rng), 1)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_worker_thread_gives_the_same_results(kind, monkeypatch):
    # big layers hand part of the work to a second thread (layers/overlap.py);
    # forced here on a small one, it must change nothing
    from dltrain.layers import overlap
    overlap.Streams._setup()
    if overlap.Streams._worker is None:
        pytest.skip("no second core or no BLAS thread control: everything runs in order anyway")
    rng = np.random.default_rng(17)
    t, n, d, h = 7, 3, 4, 5
    cont = (rng.random((t, n)) > 0.3).astype(float)
    nrec = 2 if kind == "LSTM" else 1
    bottom = random_inputs(rng, t, n, d, static=True, hidden=nrec, h=h, cont=cont)
    diffs = [rng.uniform(-1, 1, s) for s in [(t, n, h)] + [(1, n, h)] * nrec]
    results = []
    for forced in (False, True):
        monkeypatch.setattr(overlap.Streams, "enabled", forced)
        monkeypatch.setattr(overlap.Streams, "min_work", 0)
        set_random_seed(1)                   # the same weights both times
        layer = make_layer(kind, num_output=h, expose_hidden=True, low=-1, high=1)
        top = run(layer, bottom, 1 + nrec)
        for b, dd in zip(top, diffs):
            b.diff[...] = dd
        layer.backward(top, [True, False, True] + [True] * nrec, bottom)
        results.append([b.data.copy() for b in top] + [p.diff.copy() for p in layer.blobs] +
                       [b.diff.copy() for b in bottom if b is not bottom[1]])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
