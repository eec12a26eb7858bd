"""The GPU backend as seen from a machine without a GPU (the plain CPU test run).

The kernels themselves are tested by tests/test_cuda_*.py under Numba's CUDA
simulator (their own pytest run, see tests/cuda_support.py); one small
simulator run is started from here so that the plain run covers the GPU
path too.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import dlcore
from dlcore import DLTrainError, backend

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(backend, "simulator_enabled", lambda: False)
    monkeypatch.setattr(backend, "_driver_library_found", lambda: False)
    yield
    dlcore.set_mode_cpu()


def test_reasons_name_what_is_missing(no_gpu, monkeypatch):
    ok, reason = backend.gpu_available()
    assert not ok and "no NVIDIA driver found" in reason
    with pytest.raises(DLTrainError, match="the GPU was asked for but cannot be used: no NVIDIA driver found"):
        dlcore.set_mode_gpu()
    assert dlcore.get_mode() == "cpu"
    monkeypatch.setattr(backend, "_cuda_spec", lambda: None)
    ok, reason = backend.gpu_available()
    assert not ok and "numba.cuda" in reason and "dltrain[cuda]" in reason
    ok, reason = backend.gpu_available(-1)
    assert not ok and ">= 0" in reason


def test_device_count_and_id_checks(monkeypatch):
    class FakeCuda:
        gpus = [object()]

        @staticmethod
        def is_available():
            return True
    monkeypatch.setattr(backend, "simulator_enabled", lambda: False)
    monkeypatch.setattr(backend, "_driver_library_found", lambda: True)
    monkeypatch.setattr(backend, "_import_cuda", lambda: FakeCuda)
    monkeypatch.setattr(backend, "device_name", lambda device_id=None: "Fake GPU")
    assert backend.gpu_available(0) == (True, "Fake GPU")
    ok, reason = backend.gpu_available(2)
    assert not ok and reason == "GPU device id 2 is out of range: 1 CUDA device found (ids 0..0)"
    FakeCuda.gpus = []
    assert backend.gpu_available(0) == (False, "the NVIDIA driver found no CUDA device")


def test_net_and_solver_refuse_a_missing_gpu(no_gpu):
    from dlcore.config import net_from_string
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }'
    with pytest.raises(DLTrainError, match="a GPU net was asked for but cannot be used"):
        dlcore.Net(net_from_string(text), dlcore.TEST, gpu=True)
    net = dlcore.Net(net_from_string(text), dlcore.TEST)
    assert not net.gpu
    with pytest.raises(DLTrainError, match="Net.to_gpu"):
        net.to_gpu()
    import caffe
    caffe.set_mode_gpu()         # pycaffe's face: one warning line, then the CPU
    assert dlcore.get_mode() == "cpu"
    caffe.set_device(0)          # recorded; checked when the GPU mode is asked for


def test_solver_mode_decision(no_gpu):
    from dltrain.proto import caffe_pb2
    from dltrain.solvers import device_for_solver
    param = caffe_pb2.SolverParameter()                   # solver_mode GPU is Caffe's default
    use, device, notice = device_for_solver(param)
    assert not use and notice.startswith("solver_mode is GPU but no GPU can be used (no NVIDIA driver found")
    param.solver_mode = caffe_pb2.SolverParameter.CPU
    assert device_for_solver(param) == (False, None, None)
    with pytest.raises(DLTrainError, match="--gpu 0 was asked for but cannot be used"):
        device_for_solver(param, "0")
    with pytest.raises(DLTrainError, match="one GPU"):
        device_for_solver(param, "0,1")


def test_layer_dispatch():
    from dlcore import Layer
    from dltrain.proto import caffe_pb2
    calls = []

    class WithGpu(Layer):
        def reshape(self, bottom, top):
            pass

        def forward_cpu(self, bottom, top):
            calls.append("cpu")

        def forward_gpu(self, bottom, top):
            calls.append("gpu")

        def backward_cpu(self, top, propagate_down, bottom):
            calls.append("bcpu")

    layer = WithGpu(caffe_pb2.LayerParameter(name="w"))
    assert not layer.gpu
    layer.forward([], [])
    layer.gpu = True
    layer.forward([], [])
    layer.backward([], [], [])             # no backward_gpu: the CPU code (on host copies)
    assert calls == ["cpu", "gpu", "bcpu"]
    assert WithGpu.has_gpu_forward() and not WithGpu.has_gpu_backward()
    from dltrain.layers.python_layer import PythonLayer
    assert not PythonLayer.has_gpu_forward()


def test_cpu_training_never_imports_numba_cuda(tmp_path):
    # Caffe's default solver_mode (GPU) on a machine without a driver must not load numba.cuda either
    code = f"""
import sys
sys.path.insert(0, {ROOT!r})
from dltrain.cli.main import main
open('net.prototxt', 'w').write('layer {{ name: "d" type: "DummyData" top: "x" top: "y" dummy_data_param {{ shape {{ dim: 2 dim: 3 }} shape {{ dim: 2 dim: 3 }} data_filler {{ type: "gaussian" }} }} }} layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "z" inner_product_param {{ num_output: 3 }} }} layer {{ name: "l" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "l" }}')
open('solver.prototxt', 'w').write('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 2 snapshot_after_train: false')
assert main(['train', '--solver', 'solver.prototxt']) == 0
assert 'numba.cuda' not in sys.modules, 'numba.cuda was imported'
print('OK')
"""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if backend._driver_library_found():
        pytest.skip("this machine has an NVIDIA driver: solver_mode GPU would use it")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.skipif(SIM, reason="already running under the simulator")
def test_simulator_smoke():
    """A few GPU kernels and one GPU training run under Numba's CUDA simulator, in a process of its own."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    tests = ["tests/test_cuda_layers.py::test_relu", "tests/test_cuda_layers.py::test_softmax_with_loss",
             "tests/test_cuda_nets.py::test_blob_syncs_host_and_device",
             "tests/test_cuda_nets.py::test_every_solver_rule_on_the_device_matches_the_cpu[SGD]"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1]
