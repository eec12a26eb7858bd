"""The GPU backend end to end: Blob syncing, nets, every solver's device update, the CLI.

Runs under Numba's CUDA simulator or on a real GPU (see tests/cuda_support.py);
skipped in the plain CPU run.  Losses of GPU runs must equal the CPU's to
1e-4 relative.
"""
import os

import numpy as np
import pytest

from cuda_support import check_device, needs_cuda, rel_err

pytestmark = needs_cuda

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def _cpu_mode_after():
    check_device()
    yield
    import dlcore
    dlcore.set_mode_cpu()


# --- Blob: SyncedMemory -----------------------------------------------------------------------

def test_blob_syncs_host_and_device():
    from dlcore import Blob
    from dlcore import device as K
    blob = Blob(2, 3)
    assert not blob.has_device_memory() and blob.data_head == "host"
    blob.data[...] = np.arange(6).reshape(2, 3)
    dev = blob.gpu_data()                           # uploads
    assert blob.data_head == "synced"
    np.testing.assert_array_equal(dev.copy_to_host(), np.arange(6))
    K.scale(blob.gpu_data(), blob.mutable_gpu_data(), 2.0)
    assert blob.data_head == "device"
    np.testing.assert_array_equal(blob.cpu_data(), 2 * np.arange(6).reshape(2, 3))   # downloads, stays synced
    assert blob.data_head == "synced"
    view = blob.data                                # pycaffe's .data: the host may be written
    assert blob.data_head == "host"
    view[0, 0] = 100
    assert blob.gpu_data().copy_to_host()[0] == 100
    blob.diff = 1.5                                 # setter copies in, on the host
    assert blob.diff_head == "host" and blob.gpu_diff().copy_to_host().tolist() == [1.5] * 6


def test_shared_blobs_share_both_sides():
    from dlcore import Blob
    from dlcore import device as K
    a, b = Blob(2, 3), Blob(6)
    b.share_data(a)
    b.share_diff(a)
    a.data[...] = 1
    K.fill(b.mutable_gpu_data(), 7)                 # written through b on the device
    assert a.data_head == "device" and (a.data == 7).all()
    K.fill(a.mutable_gpu_diff(), 3)
    assert (b.diff == 3).all()
    b.reshape(2, 3)                                 # same count: still shared
    assert b.shares_data_with(a)
    b.reshape(4)                                    # new count: new memory on both sides
    assert not b.shares_data_with(a) and not b.has_device_memory()


# --- nets ------------------------------------------------------------------------------------------

CONV_NET = """
name: "tiny_conv"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 7 dim: 7 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "xavier" }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "relu" type: "ReLU" bottom: "pool" top: "pool" }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" }
"""

MLP_NET = """
name: "tiny_mlp"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 5 dim: 6 } shape { dim: 5 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 7 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "sig" type: "Sigmoid" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        param { lr_mult: 2 decay_mult: 0 } param { lr_mult: 1 }
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """
base_lr: 0.05
lr_policy: "fixed"
max_iter: {iters}
display: 0
snapshot_after_train: false
random_seed: 7
{extra}
"""

RULES = {
    "SGD": 'type: "SGD" momentum: 0.9 weight_decay: 0.01',
    "Nesterov": 'type: "Nesterov" momentum: 0.9 weight_decay: 0.01 regularization_type: "L1"',
    "AdaGrad": 'type: "AdaGrad" weight_decay: 0.005 clip_gradients: 0.5',
    "RMSProp": 'type: "RMSProp" rms_decay: 0.9 weight_decay: 0.01',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.95 delta: 1e-6 iter_size: 2',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 clip_gradients: 0.1 regularization_type: "L1" '
            'weight_decay: 0.001',
}


def _solver(net_text, extra, iters, gpu, dtype=np.float32, data=None):
    from google.protobuf import text_format

    from dlcore.config import solver_from_string
    from dltrain.solvers import get_solver
    param = solver_from_string(SOLVER.format(iters=iters, extra=extra))
    text_format.Parse(net_text, param.net_param)
    solver = get_solver(param, dtype=dtype, gpu=gpu)
    solver.progress_enabled = False
    if data is not None:
        for name, value in data.items():
            solver.net.blobs[name].data[...] = value
    return solver


def _conv_data():
    rng = np.random.default_rng(5)
    return {"data": rng.uniform(-1, 1, (4, 2, 7, 7)), "label": rng.integers(0, 3, 4)}


def _mlp_data():
    rng = np.random.default_rng(6)
    return {"data": rng.uniform(-2, 2, (5, 6)), "label": rng.integers(0, 3, 5)}


def _train(net_text, extra, iters, gpu, dtype=np.float32, data=None):
    """Losses of ``iters`` iterations and the final weights."""
    solver = _solver(net_text, extra, iters, gpu, dtype, data)
    losses = []
    for _ in range(iters):
        solver.step(1)
        losses.append(float(solver.net.loss))
    weights = [blob.data.copy() for blob in solver.net.learnable_params]
    return losses, weights, solver


@pytest.mark.parametrize("rule", list(RULES))
def test_every_solver_rule_on_the_device_matches_the_cpu(rule):
    data = _mlp_data()
    cpu_losses, cpu_w, _ = _train(MLP_NET, RULES[rule], 3, False, data=data)
    gpu_losses, gpu_w, solver = _train(MLP_NET, RULES[rule], 3, True, data=data)
    assert solver.net.gpu and all(layer.gpu for layer in solver.net.layers)
    for a, b in zip(gpu_losses, cpu_losses):
        assert abs(a - b) <= 1e-4 * max(abs(b), 1e-3), (rule, gpu_losses, cpu_losses)
    for a, b in zip(gpu_w, cpu_w):
        assert rel_err(a, b) < 1e-4, rule


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_net_trains_as_on_the_cpu(dtype):
    data = _conv_data()
    cpu_losses, cpu_w, _ = _train(CONV_NET, RULES["Adam"], 3, False, dtype, data)
    gpu_losses, gpu_w, solver = _train(CONV_NET, RULES["Adam"], 3, True, dtype, data)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=tol)
    for a, b in zip(gpu_w, cpu_w):
        assert rel_err(a, b) < tol
    # after a step, the hot blobs' newest copy is the device's (no host round trips)
    solver.step(1)
    net = solver.net
    layer_types = {name: layer.type for name, layer in zip(net.layer_names, net.layers)}
    if all(net.layer_dict[n].has_gpu_forward() for n in ("conv", "pool", "ip")):
        assert net.blobs["conv"].data_head == "device"
        assert all(blob.data_head == "device" for blob in net.learnable_params)
    assert layer_types["loss"] == "SoftmaxWithLoss"


def test_net_api_on_the_gpu_and_switching():
    import dlcore
    from dlcore.config import net_from_string
    data = _conv_data()
    cpu = dlcore.Net(net_from_string(CONV_NET), dlcore.TRAIN, dtype=np.float64, gpu=False)
    gpu = dlcore.Net(net_from_string(CONV_NET), dlcore.TRAIN, dtype=np.float64, gpu=True)
    gpu.copy_from(cpu.to_proto())
    out_cpu = cpu.forward(**data)
    out_gpu = gpu.forward(**data)
    for name in out_cpu:
        np.testing.assert_allclose(out_gpu[name], out_cpu[name], rtol=1e-10)
    d_cpu = cpu.backward(diffs=["data"])
    d_gpu = gpu.backward(diffs=["data"])
    np.testing.assert_allclose(d_gpu["data"], d_cpu["data"], rtol=1e-9, atol=1e-12)
    gpu.to_cpu()
    assert not any(layer.gpu for layer in gpu.layers)
    np.testing.assert_allclose(gpu.forward(**data)["loss"], out_cpu["loss"], rtol=1e-12)
    gpu.to_gpu()
    dlcore.set_mode_gpu()
    assert dlcore.get_mode() == "gpu"
    built = dlcore.Net(net_from_string(CONV_NET), dlcore.TEST)
    assert built.gpu


def test_python_layer_in_a_gpu_net_runs_on_the_host(tmp_path, monkeypatch):
    import dlcore
    from dlcore.config import net_from_string
    (tmp_path / "twice.py").write_text(
        "import caffe\n"
        "class Twice(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): bottom[0].diff[...] = 2 * top[0].diff\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = ('layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } '
            'shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }\n'
            'layer { name: "twice" type: "Python" bottom: "r" top: "t" python_param { module: "twice" layer: "Twice" } }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "t" bottom: "y" top: "loss" }\nforce_backward: true\n')
    net = dlcore.Net(net_from_string(text), dlcore.TRAIN, dtype=np.float64, gpu=True)
    x = np.array([[1.0, -2, 3], [-1, 2, 0.5]])
    y = np.zeros((2, 3))
    out = net.forward(x=x, y=y)
    expected = ((2 * np.maximum(x, 0)) ** 2).sum() / 2 / 2
    np.testing.assert_allclose(out["loss"], expected)
    grads = net.backward()
    np.testing.assert_allclose(grads["x"], np.where(x > 0, 2 * 2 * np.maximum(x, 0) / 2, 0))
    assert net.layer_dict["relu"].gpu and not net.layer_dict["twice"].has_gpu_forward()


# --- snapshots, the CLI ------------------------------------------------------------------------------

def test_gpu_snapshot_and_resume(tmp_path):
    data = _mlp_data()
    prefix = str(tmp_path / "snap")
    solver = _solver(MLP_NET, RULES["Adam"] + f' snapshot_prefix: "{prefix}"', 4, True, data=data)
    solver.step(2)
    model, state = solver.snapshot()
    solver.step(2)
    losses = list(solver.losses)
    resumed = _solver(MLP_NET, RULES["Adam"] + f' snapshot_prefix: "{prefix}"', 4, True, data=data)
    resumed.restore(state)
    resumed.step(2)
    np.testing.assert_allclose(resumed.losses, losses, rtol=1e-6)
    cpu = _solver(MLP_NET, RULES["Adam"], 4, False, data=data)
    cpu.restore(state)                              # a GPU snapshot resumes on the CPU too
    cpu.step(2)
    np.testing.assert_allclose(cpu.losses, losses, rtol=1e-4)


def test_cli_train_with_gpu_flag(tmp_path, monkeypatch, capsys):
    from dltrain.cli.main import main
    monkeypatch.chdir(tmp_path)
    net = MLP_NET.replace('type: "Input" top: "data" top: "label"\n        input_param { shape { dim: 5 dim: 6 } shape { dim: 5 } }',
                          'type: "DummyData" top: "data" top: "label" dummy_data_param { shape { dim: 5 dim: 6 } '
                          'shape { dim: 5 } data_filler { type: "uniform" min: -1 max: 1 } '
                          'data_filler { type: "constant" value: 1 } }')
    assert "DummyData" in net
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 3 '
                                             'display: 1 snapshot_prefix: "snaps/s" random_seed: 1 solver_mode: CPU\n')
    assert main(["train", "--solver", "solver.prototxt", "--gpu", "0"]) == 0
    err = capsys.readouterr().err
    assert "Use GPU with device ID 0" in err and "Iteration 3, loss = " in err
    assert (tmp_path / "snaps" / "s_iter_3.caffemodel").exists()
    assert main(["train", "--solver", "solver.prototxt", "--gpu", "5"]) == 1
    assert "out of range" in capsys.readouterr().err


def test_gradient_checker_checks_gpu_kernels():
    # the float64 gradient checker drives the GPU code when the backend is in GPU mode
    import dlcore
    from dlcore.gradcheck import check_layer
    dlcore.set_mode_gpu()
    report = check_layer('type: "Softmax"', [(2, 4)])
    assert report.layer.gpu and report.passed
    report = check_layer('type: "TanH"', [(3, 2)])
    assert report.passed


GEOLOC_NET = """
name: "tiny_geoloc"
layer { name: "data" type: "Input" top: "chars" top: "cont" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } shape { dim: 3 dim: 2 } } }
layer { name: "embed" type: "Embed" bottom: "chars" top: "embed"
        embed_param { input_dim: 6 num_output: 3 bias_term: false weight_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "lstm" type: "LSTM" bottom: "embed" bottom: "cont" top: "h"
        recurrent_param { num_output: 4 weight_filler { type: "uniform" min: -0.5 max: 0.5 }
                          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "h_grid" type: "Reshape" bottom: "h" top: "h_grid" reshape_param { shape { dim: 1 dim: 1 dim: 4 dim: -1 } } }
layer { name: "pool" type: "Pooling" bottom: "h_grid" top: "h_max" pooling_param { pool: MAX kernel_h: 4 kernel_w: 1 } }
layer { name: "feat" type: "Reshape" bottom: "h_max" top: "feat" reshape_param { shape { dim: -1 dim: 4 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "feat" top: "fc1" inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "pred" type: "InnerProduct" bottom: "fc1" top: "pred" param { lr_mult: 57.3 } param { lr_mult: 57.3 }
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "GeolocLoss" bottom: "pred" bottom: "label" top: "loss" geoloc_loss_param { radius: 6371 } }
"""


def test_lstm_geoloc_net_trains_as_on_the_cpu():
    from dlcore.registry import get_layer_class
    for name in ("Embed", "LSTM", "GeolocLoss", "Pooling", "InnerProduct"):
        if not get_layer_class(name).has_gpu_forward():
            pytest.skip(f"{name} has no forward_gpu yet")
    rng = np.random.default_rng(8)
    cont = np.ones((4, 3))
    cont[0] = 0
    data = {"chars": rng.integers(0, 6, (4, 3)), "cont": cont,
            "label": np.c_[rng.uniform(-60, 60, 3), rng.uniform(-170, 170, 3)]}
    extra = 'type: "Adam" momentum: 0.9 momentum2: 0.999 delta: 1e-8 base_lr: 0.002'
    extra = extra.replace(" base_lr: 0.002", "")
    cpu_losses, cpu_w, _ = _train(GEOLOC_NET, extra, 3, False, data=data)
    gpu_losses, gpu_w, solver = _train(GEOLOC_NET, extra, 3, True, data=data)
    assert solver.net.layer_dict["lstm"].gpu
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    for a, b in zip(gpu_w, cpu_w):
        assert rel_err(a, b) < 1e-4


def test_cli_gradcheck_and_time_on_the_gpu(tmp_path, capsys):
    from dltrain.cli.main import main
    layer = tmp_path / "layer.prototxt"
    layer.write_text('name: "sig" type: "Sigmoid"\n')
    assert main(["gradcheck", str(layer), "--bottom", "2,3", "--gpu", "0"]) == 0
    assert "gradient elements checked in float64 on the GPU" in capsys.readouterr().out
    net = tmp_path / "net.prototxt"
    net.write_text(MLP_NET)
    assert main(["time", "--model", str(net), "--iterations", "2", "--gpu", "0"]) == 0
    err = capsys.readouterr().err
    assert "Use GPU with device ID 0" in err and "Average Forward-Backward" in err
