"""Learning-rate policies against Caffe's GetLearningRate formulas, alone and inside a solver."""
import math
import re

import numpy as np
import pytest

from dlcore.config import solver_from_string
from dlcore.errors import ConfigError
from dltrain.solvers import get_solver
from dltrain.solvers.lr_policy import LearningRatePolicy, learning_rate

F32 = lambda x: float(np.float32(x))   # proto float fields hold float32 values


def policy(text):
    return LearningRatePolicy(solver_from_string(text))


ITERS = [0, 1, 2, 7, 10, 99, 100, 101, 250, 999]


def test_fixed():
    p = policy('base_lr: 0.01 lr_policy: "fixed"')
    for it in ITERS:
        assert p.rate(it)[0] == F32(0.01)


def test_step():
    p = policy('base_lr: 0.1 lr_policy: "step" gamma: 0.5 stepsize: 100')
    for it in ITERS:
        rate, _ = p.rate(it)
        assert rate == pytest.approx(F32(0.1) * 0.5 ** (it // 100), rel=1e-12)
        assert p.current_step == it // 100


def test_exp():
    p = policy('base_lr: 0.1 lr_policy: "exp" gamma: 0.99')
    for it in ITERS:
        assert p.rate(it)[0] == pytest.approx(F32(0.1) * F32(0.99) ** it, rel=1e-12)


def test_inv():
    p = policy('base_lr: 0.01 lr_policy: "inv" gamma: 0.0001 power: 0.75')
    for it in ITERS:
        expected = F32(0.01) * (1 + F32(0.0001) * it) ** -F32(0.75)
        assert p.rate(it)[0] == pytest.approx(expected, rel=1e-12)


def test_poly():
    p = policy('base_lr: 0.02 lr_policy: "poly" power: 2 max_iter: 1000')
    for it in ITERS:
        assert p.rate(it)[0] == pytest.approx(F32(0.02) * (1 - it / 1000) ** 2, rel=1e-12, abs=1e-18)


def test_sigmoid():
    p = policy('base_lr: 0.5 lr_policy: "sigmoid" gamma: -0.05 stepsize: 100')
    for it in ITERS:
        expected = F32(0.5) / (1 + math.exp(-F32(-0.05) * (it - 100)))
        assert p.rate(it)[0] == pytest.approx(expected, rel=1e-12)


def test_multistep_steps_once_per_call_in_order():
    p = policy('base_lr: 1 lr_policy: "multistep" gamma: 0.1 stepvalue: 3 stepvalue: 5 stepvalue: 8')
    rates, steps, messages = [], [], []
    for it in range(12):
        rate, message = p.rate(it)
        rates.append(rate)
        steps.append(p.current_step)
        if message:
            messages.append(message)
    assert steps == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    for rate, step in zip(rates, steps):
        assert rate == pytest.approx(0.1 ** step * 1.0 if step == 0 else F32(0.1) ** step, rel=1e-12)
    assert messages == ["MultiStep Status: Iteration 3, step = 1", "MultiStep Status: Iteration 5, step = 2",
                        "MultiStep Status: Iteration 8, step = 3"]


def test_multistep_catches_up_one_step_per_iteration_as_caffe():
    # Resumed past two step values with current_step 0: Caffe advances one step per call.
    p = policy('base_lr: 1 lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 4')
    assert p.rate(10)[0] == 0.5
    assert p.rate(11)[0] == 0.25
    assert p.rate(12)[0] == 0.25


def test_pure_function_matches_policy_object():
    param = solver_from_string('base_lr: 0.1 lr_policy: "step" gamma: 0.1 stepsize: 3')
    assert learning_rate(param, 7) == (pytest.approx(F32(0.1) * F32(0.1) ** 2), 2)


@pytest.mark.parametrize("text, field", [
    ('base_lr: 0.1', "lr_policy"),
    ('base_lr: 0.1 lr_policy: "cosine"', "lr_policy"),
    ('base_lr: 0.1 lr_policy: "step" gamma: 0.1', "stepsize"),
    ('base_lr: 0.1 lr_policy: "exp" gamma: -1', "gamma"),
    ('base_lr: 0.1 lr_policy: "multistep" gamma: -0.5 stepvalue: 3', "gamma"),
])
def test_bad_policy_settings_are_config_errors(text, field):
    with pytest.raises(ConfigError) as err:
        policy(text)
    assert err.value.field == field


NET = """
layer { name: "data" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 2 } shape { dim: 4 dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


@pytest.mark.parametrize("schedule", [
    'lr_policy: "step" gamma: 0.5 stepsize: 3',
    'lr_policy: "multistep" gamma: 0.5 stepvalue: 2 stepvalue: 7',
    'lr_policy: "inv" gamma: 0.1 power: 0.75',
    'lr_policy: "poly" power: 1.5',
    'lr_policy: "sigmoid" gamma: -0.5 stepsize: 5',
    'lr_policy: "exp" gamma: 0.9',
])
def test_solver_logs_the_rate_of_each_iteration(schedule, capsys):
    """The `Iteration N, lr = X` lines follow the formula, iteration by iteration."""
    text = f'net_param {{ {NET} }} base_lr: 0.2 {schedule} max_iter: 10 display: 1 snapshot_after_train: false'
    param = solver_from_string(text)
    solver = get_solver(param)
    solver.step(10)
    err = capsys.readouterr().err
    logged = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"Iteration (\d+), lr = (\S+)", err)}
    assert sorted(logged) == list(range(10))
    step = 0
    for it in range(10):
        expected, step = learning_rate(param, it, step)
        assert logged[it] == pytest.approx(expected, rel=1e-5)
