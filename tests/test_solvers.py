"""Every solver type's update, checked by hand against its formula over several steps.

As Caffe's test_gradient_based_solver.cpp: a least-squares net (data ->
InnerProduct(1) -> EuclideanLoss) whose gradient is known in closed form,
``dL/dW = (1/n) (XW^T + b - y)^T X``, ``dL/db = (1/n) sum(XW^T + b - y)``.
A NumPy reference applies Caffe's update rules (clip, normalize,
regularize, rule) with its own history from zero; after every iteration
the solver's weights, and at the end its history blobs, must match it.
The nets run in float64 so the comparison is tight; one float32 run
checks the dtype is kept.
"""
import math

import numpy as np
import pytest

from dlcore import Layer, register_layer
from dlcore.config import solver_from_string
from dlcore.errors import ConfigError
from dltrain.proto import caffe_pb2
from dltrain.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
                     get_solver, updates)

N, D = 24, 3            # samples, features


@register_layer("SolverTestCyclicData")
class CyclicData(Layer):
    """Test-only source: successive batches of a fixed (X, y), wrapping around.

    The data is looked up by layer name in ``CyclicData.sources``.
    """
    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2
    sources = {}

    def setup(self, bottom, top):
        self.x, self.y, self.batch = self.sources[self.name]
        self.pos = 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, self.x.shape[1])
        top[1].reshape(self.batch, 1)

    def forward_cpu(self, bottom, top):
        idx = (self.pos + np.arange(self.batch)) % len(self.x)
        top[0].data[...] = self.x[idx]
        top[1].data[...] = self.y[idx]
        self.pos = (self.pos + self.batch) % len(self.x)

    def backward_cpu(self, top, propagate_down, bottom):
        pass


def dataset(seed=1701):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    y = x @ np.array([[0.5], [-1.0], [2.0]]) + 0.3 + 0.1 * rng.normal(size=(N, 1))
    return x, y


def least_squares_solver(settings, batch=N, name="lsq", dtype=np.float64, params=True, seed=7):
    CyclicData.sources[name] = (*dataset(), batch)
    specs = 'param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }' if params else ""
    text = f"""
    net_param {{
      name: "{name}"
      layer {{ name: "{name}" type: "SolverTestCyclicData" top: "data" top: "targets" }}
      layer {{ name: "innerprod" type: "InnerProduct" bottom: "data" top: "innerprod" {specs}
               inner_product_param {{ num_output: 1 weight_filler {{ type: "gaussian" std: 1.0 }}
                                      bias_filler {{ type: "gaussian" std: 1.0 }} }} }}
      layer {{ name: "loss" type: "EuclideanLoss" bottom: "innerprod" bottom: "targets" top: "loss" }}
    }}
    random_seed: {seed} snapshot_after_train: false display: 0 max_iter: 100
    {settings}"""
    return get_solver(solver_from_string(text), dtype=dtype)


F32 = lambda x: float(np.float32(x))   # proto float fields hold float32 values


class Reference:
    """Caffe's ApplyUpdate, written out with NumPy from the formulas."""

    def __init__(self, solver_type, p, weights, batch, iter_size):
        self.type, self.p = solver_type, p
        self.w = [w.astype(np.float64).copy() for w in weights]
        self.lr_mult = [1.0, 2.0]
        self.decay_mult = [1.0, 0.0]
        self.history = [np.zeros_like(w) for w in self.w]
        self.history2 = [np.zeros_like(w) for w in self.w]
        self.x, self.y = dataset()
        self.batch, self.iter_size = batch, iter_size
        self.pos = 0
        self.iter = 0

    def gradient(self):
        """Accumulated (summed) gradients over iter_size batches, and the mean loss."""
        W, b = self.w
        gW, gb, loss = np.zeros_like(W), np.zeros_like(b), 0.0
        for _ in range(self.iter_size):
            idx = (self.pos + np.arange(self.batch)) % N
            self.pos = (self.pos + self.batch) % N
            x, y = self.x[idx], self.y[idx]
            r = x @ W.T + b - y                    # (batch, 1)
            loss += float((r ** 2).sum() / (2 * self.batch))
            gW += r.T @ x / self.batch
            gb += r.sum(axis=0) / self.batch
        return [gW, gb], loss / self.iter_size

    def rate(self):
        p = self.p
        if p.lr_policy == "step":
            return F32(p.base_lr) * F32(p.gamma) ** (self.iter // p.stepsize)
        return F32(p.base_lr)

    def step(self):
        p = self.p
        grads, loss = self.gradient()
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
            if norm > p.clip_gradients:
                grads = [g * (p.clip_gradients / norm) for g in grads]
        rate = self.rate()
        for i, (w, g) in enumerate(zip(self.w, grads)):
            g = g / self.iter_size
            decay = F32(p.weight_decay) * self.decay_mult[i]
            if p.regularization_type == "L2":
                g = g + decay * w
            else:
                g = g + decay * np.sign(w)
            lr = rate * self.lr_mult[i]
            h, h2 = self.history[i], self.history2[i]
            m, delta = F32(p.momentum), F32(p.delta)
            if self.type == "SGD":
                h[...] = m * h + lr * g
                update = h.copy()
            elif self.type == "Nesterov":
                old = h.copy()
                h[...] = m * h + lr * g
                update = (1 + m) * h - m * old
            elif self.type == "AdaGrad":
                h[...] = h + g * g
                update = lr * g / (np.sqrt(h) + delta)
            elif self.type == "RMSProp":
                d = F32(p.rms_decay)
                h[...] = d * h + (1 - d) * g * g
                update = lr * g / (np.sqrt(h) + delta)
            elif self.type == "AdaDelta":
                h[...] = m * h + (1 - m) * g * g
                u = g * np.sqrt((h2 + delta) / (h + delta))
                h2[...] = m * h2 + (1 - m) * u * u
                update = lr * u
            elif self.type == "Adam":
                b1, b2, t = m, F32(p.momentum2), self.iter + 1
                h[...] = b1 * h + (1 - b1) * g
                h2[...] = b2 * h2 + (1 - b2) * g * g
                correction = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                update = lr * correction * h / (np.sqrt(h2) + delta)
            w -= update
        self.iter += 1
        return loss


CLASSES = {"SGD": SGDSolver, "Nesterov": NesterovSolver, "AdaGrad": AdaGradSolver, "RMSProp": RMSPropSolver,
           "AdaDelta": AdaDeltaSolver, "Adam": AdamSolver}

CASES = [
    # (type, settings, batch, iter_size)
    ("SGD", 'base_lr: 0.1 lr_policy: "fixed"', N, 1),
    ("SGD", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9', N, 1),
    ("SGD", 'base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 momentum: 0.9 weight_decay: 0.1', 8, 1),
    ("SGD", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.5 weight_decay: 0.2 regularization_type: "L1"', 8, 1),
    ("SGD", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.1 clip_gradients: 0.5', 8, 1),
    ("SGD", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.1 iter_size: 3', 8, 3),
    ("Nesterov", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.1', 8, 1),
    ("Nesterov", 'base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 2 momentum: 0.95 iter_size: 2 '
                 'clip_gradients: 1 weight_decay: 0.05 regularization_type: "L1"', 8, 2),
    ("AdaGrad", 'base_lr: 0.2 lr_policy: "fixed" weight_decay: 0.1 delta: 1e-6', 8, 1),
    ("AdaGrad", 'base_lr: 0.2 lr_policy: "fixed" weight_decay: 0.1 iter_size: 2 clip_gradients: 0.3', 6, 2),
    ("RMSProp", 'base_lr: 0.05 lr_policy: "fixed" rms_decay: 0.95 weight_decay: 0.1 delta: 1e-6', 8, 1),
    ("RMSProp", 'base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 weight_decay: 0.1 '
                'regularization_type: "L1" iter_size: 2', 8, 2),
    ("AdaDelta", 'base_lr: 1.0 lr_policy: "fixed" momentum: 0.95 delta: 1e-6 weight_decay: 0.1', 8, 1),
    ("AdaDelta", 'base_lr: 1.0 lr_policy: "fixed" momentum: 0.9 delta: 1e-4 clip_gradients: 0.5 iter_size: 3',
     8, 3),
    ("Adam", 'base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 momentum2: 0.999 delta: 1e-8', 8, 1),
    ("Adam", 'base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 3 momentum: 0.8 momentum2: 0.99 '
             'weight_decay: 0.1 regularization_type: "L1" clip_gradients: 2 iter_size: 2', 8, 2),
]


@pytest.mark.parametrize("solver_type, settings, batch, iter_size", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_update_matches_formula(solver_type, settings, batch, iter_size):
    solver = least_squares_solver(f'type: "{solver_type}" {settings}', batch=batch)
    assert type(solver) is CLASSES[solver_type]
    W, b = solver.net.params["innerprod"]
    ref = Reference(solver_type, solver.param, [W.data, b.data], batch, iter_size)
    for it in range(6):
        solver.step(1)
        expected_loss = ref.step()
        assert solver.iter == it + 1
        np.testing.assert_allclose(W.data, ref.w[0], rtol=1e-10, atol=1e-12, err_msg=f"weights, iteration {it}")
        np.testing.assert_allclose(b.data, ref.w[1], rtol=1e-10, atol=1e-12, err_msg=f"bias, iteration {it}")
        assert solver.smoothed_loss == pytest.approx(expected_loss, rel=1e-10)
    # History: Caffe's layout and values (Adam/AdaDelta: a second set after the first).
    sets = 2 if solver_type in ("Adam", "AdaDelta") else 1
    assert len(solver.history) == 2 * sets
    np.testing.assert_allclose(solver.history[0].data, ref.history[0], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(solver.history[1].data, ref.history[1], rtol=1e-10, atol=1e-14)
    if sets == 2:
        np.testing.assert_allclose(solver.history[2].data, ref.history2[0], rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(solver.history[3].data, ref.history2[1], rtol=1e-10, atol=1e-14)


def test_sgd_by_hand_one_step():
    """One SGD step written out for a single element: w1 = w0 - lr*(g + wd*w0)."""
    solver = least_squares_solver('base_lr: 0.1 lr_policy: "fixed" weight_decay: 0.01', batch=N)
    W, b = solver.net.params["innerprod"]
    w0, b0 = W.data.copy(), b.data.copy()
    x, y = dataset()
    r = x @ w0.T + b0 - y
    solver.step(1)
    expected_w = w0 - F32(0.1) * (r.T @ x / N + F32(0.01) * w0)
    expected_b = b0 - F32(0.1) * 2 * (r.sum(axis=0) / N)          # lr_mult 2, decay_mult 0
    np.testing.assert_allclose(W.data, expected_w, rtol=1e-12)
    np.testing.assert_allclose(b.data, expected_b, rtol=1e-12)


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_iter_size_equals_one_big_batch(solver_type):
    """iter_size k over batches of n == one batch of k*n (Caffe's CheckAccumulation)."""
    settings = f'type: "{solver_type}" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.01'
    small = least_squares_solver(settings + " iter_size: 3", batch=8, name="acc_small")
    big = least_squares_solver(settings, batch=24, name="acc_big")
    for a, b in zip(small.net.learnable_params, big.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)
    small.step(5)
    big.step(5)
    for a, b in zip(small.net.learnable_params, big.net.learnable_params):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-14)


def test_float32_solver_keeps_float32_and_matches_reference():
    solver = least_squares_solver('type: "Adam" base_lr: 0.05 lr_policy: "fixed" momentum: 0.9 '
                                  'weight_decay: 0.1', batch=8, dtype=np.float32)
    W, b = solver.net.params["innerprod"]
    ref = Reference("Adam", solver.param, [W.data, b.data], 8, 1)
    for _ in range(5):
        solver.step(1)
        ref.step()
    assert W.data.dtype == np.float32 and all(h.data.dtype == np.float32 for h in solver.history)
    np.testing.assert_allclose(W.data, ref.w[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b.data, ref.w[1], rtol=1e-4, atol=1e-6)


def test_lr_mult_zero_freezes_and_decay_mult_scales():
    solver = least_squares_solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.5', params=False,
                                  name="mults")
    # Default ParamSpec: lr_mult 1 and decay_mult 1 for both weights and bias.
    assert solver.net.params_lr == [1.0, 1.0] and solver.net.params_weight_decay == [1.0, 1.0]
    frozen = least_squares_solver('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.5',
                                  name="frozen")
    frozen.net.params_lr[1] = 0.0        # freeze the bias
    b0 = frozen.net.params["innerprod"][1].data.copy()
    frozen.step(3)
    np.testing.assert_array_equal(frozen.net.params["innerprod"][1].data, b0)


def test_clip_gradients_logs_and_scales(capsys):
    solver = least_squares_solver('base_lr: 0.1 lr_policy: "fixed" clip_gradients: 0.01', name="clip")
    W, b = solver.net.params["innerprod"]
    w0, b0 = W.data.copy(), b.data.copy()
    solver.step(1)
    change = np.concatenate([(w0 - W.data).ravel(), (b0 - b.data).ravel() / 2])   # undo the bias lr_mult 2
    assert np.linalg.norm(change) == pytest.approx(F32(0.1) * F32(0.01), rel=1e-9)
    assert "Gradient clipping: scaling down gradients (L2 norm" in capsys.readouterr().err


def test_legacy_solver_type_enum():
    param = solver_from_string('solver_type: ADAM base_lr: 0.1 lr_policy: "fixed"')
    CyclicData.sources["legacy"] = (*dataset(), N)
    param.net_param.CopyFrom(least_squares_solver('base_lr: 0.1 lr_policy: "fixed"', name="legacy").param.net_param)
    solver = get_solver(param)
    assert isinstance(solver, AdamSolver) and solver.param.type == "Adam"
    assert len(solver.history) == 4
    both = solver_from_string('solver_type: ADAM type: "Adam" base_lr: 0.1 lr_policy: "fixed"')
    both.net_param.CopyFrom(param.net_param)
    with pytest.raises(ConfigError, match="not both"):
        get_solver(both)


@pytest.mark.parametrize("settings, field", [
    ('type: "AdaGrad" momentum: 0.9', "momentum"),
    ('type: "RMSProp" momentum: 0.9', "momentum"),
    ('type: "RMSProp" rms_decay: 1.5', "rms_decay"),
    ('regularization_type: "L3"', "regularization_type"),
    ('iter_size: 0', "iter_size"),
    ('average_loss: 0', "average_loss"),
    ('snapshot_format: HDF5', "snapshot_format"),
])
def test_invalid_settings(settings, field):
    with pytest.raises(ConfigError) as err:
        least_squares_solver(f'base_lr: 0.1 lr_policy: "fixed" {settings}', name="invalid")
    assert err.value.field == field


def test_unknown_type_lists_known_types():
    with pytest.raises(ConfigError, match="known types: AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, SGD"):
        least_squares_solver('type: "LBFGS" base_lr: 0.1 lr_policy: "fixed"', name="unknown")


def test_average_loss_smoothing():
    solver = least_squares_solver('base_lr: 0.05 lr_policy: "fixed" average_loss: 3', batch=8, name="smooth")
    ref = Reference("SGD", solver.param, [b.data for b in solver.net.learnable_params], 8, 1)
    losses = []
    for _ in range(7):
        solver.step(1)
        losses.append(ref.step())
    # step() restarts the window each call (as Caffe's Step); one call of 7:
    solver2 = least_squares_solver('base_lr: 0.05 lr_policy: "fixed" average_loss: 3', batch=8, name="smooth2")
    solver2.step(7)
    assert solver2.smoothed_loss == pytest.approx(np.mean(losses[-3:]), rel=1e-10)


def test_train_and_test_nets_from_one_definition_share_weights():
    """net_param with include { phase } rules: a TRAIN net and a TEST net that uses its weights."""
    text = """
    net_param {
      name: "shared"
      layer { name: "data" type: "DummyData" top: "data" top: "target"
              dummy_data_param { shape { dim: 4 dim: 2 } shape { dim: 4 dim: 1 }
                                 data_filler { type: "constant" value: 1 } } }
      layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
              inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 1 } } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
      layer { name: "only_test" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "test_loss"
              include { phase: TEST } }
    }
    test_iter: 2 test_interval: 2 base_lr: 0.01 lr_policy: "fixed" max_iter: 4 snapshot_after_train: false
    """
    solver = get_solver(solver_from_string(text), dtype=np.float64)
    assert len(solver.test_nets) == 1
    test_net = solver.test_nets[0]
    assert "only_test" in test_net.layer_names and "only_test" not in solver.net.layer_names
    solver.step(3)
    solver.test(0)
    np.testing.assert_array_equal(test_net.params["ip"][0].data, solver.net.params["ip"][0].data)


def test_test_state_and_test_iter_counts():
    base = 'base_lr: 0.01 lr_policy: "fixed" test_interval: 1 '
    CyclicData.sources["counts"] = (*dataset(), N)
    net = least_squares_solver('base_lr: 0.1 lr_policy: "fixed"', name="counts").param.net_param
    param = solver_from_string(base + "test_iter: 1 test_iter: 1 test_state { stage: 'a' }")
    param.net_param.CopyFrom(net)
    with pytest.raises(ConfigError, match="test_state"):
        get_solver(param)
    param = solver_from_string('base_lr: 0.01 lr_policy: "fixed" test_iter: 1')
    param.net_param.CopyFrom(net)
    with pytest.raises(ConfigError, match="test_interval"):
        get_solver(param)


# --- the update kernels themselves ------------------------------------------------------------

@pytest.mark.parametrize("rule", sorted(updates.RULES))
@pytest.mark.parametrize("reg", [updates.REG_NONE, updates.REG_L2, updates.REG_L1])
def test_update_kernels_are_their_formulas_in_float32(rule, reg):
    """Each compiled CPU kernel, on float32 arrays with float32 records, is bit for bit its loop and
    formulas run as plain Python on np.float32 scalars: float32 arithmetic throughout; a non-finite
    update value is stored in the diff, never applied, and flags its parameter."""
    f = np.float32
    fn, record, histories = updates.RULES[rule]
    hyper = record(*(f(v) for v in (0.01, 0.9, 0.1, 0.999, 0.001, 1e-8)[:len(record._fields)]))
    steps = updates.GradientSteps(f(0.7), True, f(f(1) / f(3)), True, f(5e-3) if reg else f(0), reg)
    rng = np.random.default_rng(3)
    w, g, h1, h2 = (rng.standard_normal(40).astype(f) for _ in range(4))
    h1, h2 = np.abs(h1), np.abs(h2)
    w[::5] = 0
    g[7] = np.inf
    arrays = [[x.copy() for x in (w, g, h1, h2)] for _ in range(2)]
    flags = [updates.new_flags(3) for _ in range(2)]
    compiled, python = arrays
    updates.update(rule, *compiled[:2], compiled[2:2 + histories], 40, flags[0], 1, True, steps, hyper)
    plain = updates.update_loop(rule, lambda: 0, lambda: 1)
    with np.errstate(all="ignore"):
        plain(python[0], python[1], python[2], python[1 + histories], 40, flags[1], 1, True, steps, hyper)
    for a, b in zip(compiled, python):
        np.testing.assert_array_equal(a, b)
    assert updates.bad_params(flags[0], 3) == updates.bad_params(flags[1], 3) == [1]
    assert compiled[0][7] == w[7] and not np.isfinite(compiled[1][7])
