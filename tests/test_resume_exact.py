"""Exact resume with real data: N iterations in one go equal N/2 + resume from the snapshot + N/2, bit for bit.

Every random stream and every data layer's position goes into the .solverstate (dlcore.resume), so the
comparison covers LMDB Data with random crops and mirrors, Dropout, DummyData's fillers, ImageData and HDF5Data
with shuffling, WindowData's sampler, MemoryData, the test nets' data positions, and the digits example as shipped.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dlcore.config import load_message, load_solver, to_prototxt
from dlcore.errors import ConfigError
from dltrain.proto import caffe_pb2
from dltrain.solvers import get_solver
from dltrain.cli.convert import convert_arrays

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SOLVERS = {
    "SGD": 'type: "SGD" momentum: 0.9 weight_decay: 0.001 base_lr: 0.05 lr_policy: "inv" gamma: 0.01 power: 0.75',
    "Nesterov": 'type: "Nesterov" momentum: 0.9 base_lr: 0.02 lr_policy: "step" gamma: 0.5 stepsize: 3',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.05 lr_policy: "fixed" delta: 1e-8',
    "RMSProp": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.95 lr_policy: "fixed" delta: 1e-8',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.9 base_lr: 1 delta: 1e-6 lr_policy: "fixed"',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.999 base_lr: 0.01 lr_policy: "multistep" gamma: 0.5 '
            'stepvalue: 2 stepvalue: 7',
}


def lmdb_net(train_db, test_db):
    """Data (random crop + mirror, read-ahead, rand_skip) -> conv -> Dropout -> ip, with a TEST Data layer."""
    return f"""
name: "resume_lmdb"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ crop_size: 5 mirror: true scale: 0.0039 mean_value: 100 }}
        data_param {{ source: "{train_db}" batch_size: 7 backend: LMDB rand_skip: 9 prefetch: 3 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ crop_size: 5 scale: 0.0039 mean_value: 100 }}
        data_param {{ source: "{test_db}" batch_size: 4 backend: LMDB }} }}
layer {{ name: "noise" type: "DummyData" top: "noise" include {{ phase: TRAIN }}
        dummy_data_param {{ shape {{ dim: 7 dim: 3 dim: 5 dim: 5 }} data_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "noise" type: "DummyData" top: "noise" include {{ phase: TEST }}
        dummy_data_param {{ shape {{ dim: 4 dim: 3 dim: 5 dim: 5 }} data_filler {{ type: "constant" }} }} }}
layer {{ name: "add" type: "Eltwise" bottom: "data" bottom: "noise" top: "noisy" }}
layer {{ name: "conv" type: "Convolution" bottom: "noisy" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param {{ dropout_ratio: 0.3 }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""


@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume_dbs")
    rng = np.random.default_rng(4)
    made = []
    for name, n in (("train", 23), ("test", 10)):
        x = rng.integers(0, 256, (n, 3, 7, 7), dtype=np.uint8)
        y = rng.integers(0, 3, n)
        path = str(folder / f"{name}_lmdb")
        convert_arrays(x, y, path)
        made.append(path)
    return made


def write_solver(folder, net_text, settings, max_iter, extra=""):
    folder = str(folder)
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write(net_text)
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        f.write(f'net: "{folder}/net.prototxt" max_iter: {max_iter} display: 1 average_loss: 3 random_seed: 11 '
                f'solver_mode: CPU snapshot_prefix: "{folder}/snaps/run" {settings} {extra}')
    return path


def log_records(solver):
    with open(solver.log_path) as f:
        return [(r["iter"], r["phase"], r["loss"], r["outputs"]) for r in map(json.loads, f)]


def run_split(tmp_path, net_text, settings, total, extra="", prepare=None):
    """(the uninterrupted solver, the resumed solver): ``total`` iterations, and total/2 + resume + total/2."""
    half = total // 2
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    full_dir.mkdir()
    part_dir.mkdir()
    full = get_solver(write_solver(full_dir, net_text, settings, total, extra))
    prepare and prepare(full)
    full.solve()
    first = get_solver(write_solver(part_dir, net_text, settings, half, extra))
    prepare and prepare(first)
    first.solve()
    # The first run ends with Caffe's last display (and test) at iteration `half`, after its snapshot; the
    # resumed run logs that iteration again, as the uninterrupted one does.
    first_records = [r for r in log_records(first) if r[0] < half]
    first_count = len(log_records(first))
    resumed = get_solver(write_solver(part_dir, net_text, settings, total, extra))
    prepare and prepare(resumed)
    resumed.solve(str(part_dir / "snaps" / f"run_iter_{half}.solverstate"))
    assert resumed.iter == full.iter == total
    resumed.logged = first_records + log_records(resumed)[first_count:]
    return full, resumed


def assert_same_run(full, resumed):
    for a, b in zip(resumed.net.learnable_params, full.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)        # bit for bit
    for a, b in zip(resumed.history, full.history):
        np.testing.assert_array_equal(a.data, b.data)
    assert resumed.logged == log_records(full)      # every displayed loss and test output too


@pytest.mark.parametrize("solver_type", sorted(SOLVERS))
def test_lmdb_with_crop_mirror_dropout_resumes_exactly(tmp_path, dbs, solver_type):
    full, resumed = run_split(tmp_path, lmdb_net(*dbs), SOLVERS[solver_type], 10,
                              extra="test_iter: 2 test_interval: 3 snapshot: 5 iter_size: 2")
    assert_same_run(full, resumed)


def test_the_state_stores_positions_and_random_streams(tmp_path, dbs):
    solver = get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 3, extra="test_iter: 1 "
                                     "test_interval: 2"))
    solver.solve()
    state = load_message(str(tmp_path / "snaps" / "run_iter_3.solverstate"), caffe_pb2.SolverState)
    assert state.HasField("resume") and state.resume.random_state
    assert sorted((e.net, e.name, e.type) for e in state.resume.layer) == [(0, "data", "Data"), (1, "data", "Data")]
    assert caffe_pb2.SolverState.DESCRIPTOR.fields_by_name["resume"].number == 8000    # dltrain's own range
    # Caffe's reader keeps what it knows and skips the rest: without field 8000 the state is Caffe's.
    stripped = caffe_pb2.SolverState()
    stripped.CopyFrom(state)
    stripped.ClearField("resume")
    assert stripped.iter == 3 and len(stripped.history) == len(state.history)


def test_a_caffe_state_resumes_from_the_first_record_with_a_notice(tmp_path, dbs, capfd):
    path = write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 4)
    first = get_solver(path)
    first.step(2)
    first.snapshot()
    state_file = tmp_path / "snaps" / "run_iter_2.solverstate"
    state = load_message(str(state_file), caffe_pb2.SolverState)
    state.ClearField("resume")                 # as Caffe writes it
    state_file.write_bytes(state.SerializeToString())
    resumed = get_solver(path)
    capfd.readouterr()
    resumed.solve(str(state_file))
    assert resumed.iter == 4
    assert "holds no data position" in capfd.readouterr().err


def test_a_state_for_another_net_is_refused(tmp_path, dbs):
    first = get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 2))
    first.solve()
    other_net = lmdb_net(*dbs).replace('name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }',
                                       'name: "train_data" type: "Data" top: "data" top: "label" '
                                       'include { phase: TRAIN }')
    (tmp_path / "other").mkdir()
    other = get_solver(write_solver(tmp_path / "other", other_net, SOLVERS["SGD"], 4))
    with pytest.raises(ConfigError, match="layer 'train_data'|layer 'data'"):
        other.restore(str(tmp_path / "snaps" / "run_iter_2.solverstate"))


@pytest.mark.parametrize("field,value,message", [("iter", -100, "iter is -100"),
                                                 ("current_step", -1, "current_step is -1")])
def test_negative_positions_in_a_state_are_refused(tmp_path, dbs, field, value, message):
    first = get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 2))
    first.solve()
    state_file = tmp_path / "snaps" / "run_iter_2.solverstate"
    state = load_message(str(state_file), caffe_pb2.SolverState)
    setattr(state, field, value)
    state_file.write_bytes(state.SerializeToString())
    with pytest.raises(ConfigError, match=message):
        get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 4)).solve(str(state_file))


def test_a_state_past_max_iter_is_refused(tmp_path, dbs):
    first = get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 3))
    first.solve()
    shorter = get_solver(write_solver(tmp_path, lmdb_net(*dbs), SOLVERS["SGD"], 2))
    with pytest.raises(ConfigError, match="past max_iter 2"):
        shorter.solve(str(tmp_path / "snaps" / "run_iter_3.solverstate"))


# --- the other data layers --------------------------------------------------------------------------------
def _tail(bottom):
    return f"""
layer {{ name: "ip" type: "InnerProduct" bottom: "{bottom}" top: "ip"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "ip" top: "ip" dropout_param {{ dropout_ratio: 0.2 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_image_data_with_shuffle_crop_and_mirror_resumes_exactly(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    lines = []
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        lines.append(f"im{i}.png {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    net = f"""
layer {{ name: "images" type: "ImageData" top: "data" top: "label"
        transform_param {{ crop_size: 6 mirror: true scale: 0.004 }}
        image_data_param {{ source: "{tmp_path}/list.txt" root_folder: "{tmp_path}/" batch_size: 4 shuffle: true
                           rand_skip: 5 }} }}""" + _tail("data")
    full, resumed = run_split(tmp_path, net, SOLVERS["Adam"], 8)
    assert_same_run(full, resumed)


def test_hdf5_data_with_shuffle_resumes_exactly(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    names = []
    for i, rows in enumerate((5, 7)):
        with h5py.File(tmp_path / f"part{i}.h5", "w") as f:
            f["data"] = rng.normal(size=(rows, 4)).astype(np.float32)
            f["label"] = rng.integers(0, 3, rows).astype(np.float32)
        names.append(str(tmp_path / f"part{i}.h5"))
    (tmp_path / "files.txt").write_text("\n".join(names) + "\n")
    net = f"""
layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "{tmp_path}/files.txt" batch_size: 3 shuffle: true }} }}""" + _tail("data")
    full, resumed = run_split(tmp_path, net, SOLVERS["SGD"], 10)
    assert_same_run(full, resumed)


def test_memory_data_resumes_at_its_row(tmp_path):
    x = np.random.default_rng(5).normal(size=(12, 2, 1, 1)).astype(np.float32)
    y = (np.arange(12) % 3).astype(np.float32)
    net = """
layer { name: "mem" type: "MemoryData" top: "data" top: "label"
        memory_data_param { batch_size: 4 channels: 2 height: 1 width: 1 } }""" + _tail("data")
    full, resumed = run_split(tmp_path, net, SOLVERS["SGD"], 6, prepare=lambda s: s.net.set_input_arrays(x, y))
    assert_same_run(full, resumed)


def test_window_data_resumes_exactly(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(6)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "windows.txt").write_text(
        f"# 0\n{tmp_path}/a.png\n3\n20\n24\n3\n1 0.9 2 2 12 12\n2 0.8 5 4 20 18\n0 0.1 0 0 6 6\n")
    net = f"""
layer {{ name: "win" type: "WindowData" top: "data" top: "label"
        transform_param {{ crop_size: 6 mirror: true }}
        window_data_param {{ source: "{tmp_path}/windows.txt" batch_size: 4 fg_threshold: 0.5 bg_threshold: 0.5
                            fg_fraction: 0.5 scale: 0.004 }} }}""" + _tail("data")
    full, resumed = run_split(tmp_path, net, SOLVERS["SGD"], 6)
    assert_same_run(full, resumed)


# --- the digits example as shipped, through the command line ------------------------------------------------
def test_digits_example_resumes_exactly_through_the_cli(tmp_path):
    param = load_solver(os.path.join(REPO, "configs/digits/solver.prototxt"))
    param.net = os.path.join(REPO, param.net)
    text = open(param.net).read().replace('source: "configs/', f'source: "{REPO}/configs/')
    (tmp_path / "net.prototxt").write_text(text)
    param.net = str(tmp_path / "net.prototxt")
    param.max_iter, param.snapshot, param.test_interval, param.display = 200, 100, 100, 50

    def train(folder, *args):
        folder.mkdir(exist_ok=True)
        param.snapshot_prefix = str(folder / "digits")
        (folder / "solver.prototxt").write_text(to_prototxt(param))
        result = subprocess.run([sys.executable, "-m", "dltrain", "train", "--solver", str(folder / "solver.prototxt"),
                                 *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return folder

    full = train(tmp_path / "full")             # snapshots at 100 and 200
    resumed = train(tmp_path / "resumed", "--snapshot", str(full / "digits_iter_100.solverstate"))
    a = load_message(str(full / "digits_iter_200.caffemodel"), caffe_pb2.NetParameter)
    b = load_message(str(resumed / "digits_iter_200.caffemodel"), caffe_pb2.NetParameter)
    assert a.SerializeToString() == b.SerializeToString()       # the weights, bit for bit
    sa = load_message(str(full / "digits_iter_200.solverstate"), caffe_pb2.SolverState)
    sb = load_message(str(resumed / "digits_iter_200.solverstate"), caffe_pb2.SolverState)
    sa.learned_net = sb.learned_net = ""
    assert sa.SerializeToString() == sb.SerializeToString()     # history, data positions, random streams
