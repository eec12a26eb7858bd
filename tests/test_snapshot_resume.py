"""Snapshots and resume: names, contents, atomic writes, and resume == uninterrupted run."""
import json
import os

import numpy as np
import pytest

import dlcore.config
from dlcore.config import load_message, solver_from_string
from dlcore.errors import ConfigError, DLTrainError
from dltrain.proto import caffe_pb2
from dltrain.solvers import get_solver

# Deterministic: Input blobs the test sets (no RNG draws after the fillers).
NET = """
name: "resume"
layer { name: "input" type: "Input" top: "data" top: "target"
        input_param { shape { dim: 6 dim: 4 } shape { dim: 6 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "relu" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "target" top: "loss" }
"""

SETTINGS = {
    "SGD": 'type: "SGD" momentum: 0.9 weight_decay: 0.01 lr_policy: "multistep" gamma: 0.5 stepvalue: 3 '
           'stepvalue: 7 base_lr: 0.05',
    "Adam": 'type: "Adam" momentum: 0.9 momentum2: 0.99 lr_policy: "step" gamma: 0.5 stepsize: 4 base_lr: 0.01 '
            'iter_size: 2',
    "AdaDelta": 'type: "AdaDelta" momentum: 0.9 delta: 1e-6 lr_policy: "fixed" base_lr: 1 weight_decay: 0.001',
}


def write_files(folder, solver_type, max_iter=10, snapshot=5, extra=""):
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write(NET)
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        f.write(f'net: "net.prototxt" max_iter: {max_iter} snapshot: {snapshot} display: 1 random_seed: 3 '
                f'solver_mode: CPU snapshot_prefix: "{folder}/snaps/run" {SETTINGS[solver_type]} {extra}')
    return path


def set_inputs(solver):
    rng = np.random.default_rng(0)
    net = solver.net
    net.blobs["data"].data[...] = rng.normal(size=net.blobs["data"].shape)
    net.blobs["target"].data[...] = rng.normal(size=net.blobs["target"].shape)


def train_losses(log_path):
    with open(log_path) as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if r["phase"] == "train"}


@pytest.mark.parametrize("solver_type", sorted(SETTINGS))
def test_resume_equals_uninterrupted(tmp_path, solver_type):
    # Uninterrupted: 10 iterations.
    full = tmp_path / "full"
    full.mkdir()
    solver = get_solver(write_files(str(full), solver_type))
    set_inputs(solver)
    solver.solve()
    full_weights = [b.data.copy() for b in solver.net.learnable_params]
    full_history = [h.data.copy() for h in solver.history]
    full_losses = train_losses(solver.log_path)

    # Interrupted: 5 iterations, then a fresh solver resumes from the snapshot.
    part = tmp_path / "part"
    part.mkdir()
    first = get_solver(write_files(str(part), solver_type, max_iter=5, snapshot=0))
    set_inputs(first)
    first.solve()
    state_file = part / "snaps" / "run_iter_5.solverstate"
    assert state_file.exists()
    resumed = get_solver(write_files(str(part), solver_type))
    set_inputs(resumed)
    resumed.solve(str(state_file))
    assert resumed.iter == 10
    for a, b in zip(resumed.net.learnable_params, full_weights):
        np.testing.assert_array_equal(a.data, b)          # bit for bit
    for a, b in zip(resumed.history, full_history):
        np.testing.assert_array_equal(a.data, b)
    part_losses = train_losses(resumed.log_path)          # the log is appended to across the two runs
    assert sorted(part_losses) == sorted(full_losses) == list(range(11))
    for it in range(11):
        assert part_losses[it] == full_losses[it], f"iteration {it}"


def test_snapshot_names_and_contents(tmp_path):
    solver = get_solver(write_files(str(tmp_path), "Adam", max_iter=7, snapshot=3))
    set_inputs(solver)
    solver.solve()
    names = sorted(os.listdir(tmp_path / "snaps"))
    assert names == ["run_iter_3.caffemodel", "run_iter_3.solverstate", "run_iter_6.caffemodel",
                     "run_iter_6.solverstate", "run_iter_7.caffemodel", "run_iter_7.solverstate", "run_log.jsonl"]
    model = load_message(str(tmp_path / "snaps" / "run_iter_7.caffemodel"), caffe_pb2.NetParameter)
    layers = {layer.name: layer for layer in model.layer}
    np.testing.assert_array_equal(np.asarray(layers["ip1"].blobs[0].data).reshape(5, 4),
                                  solver.net.params["ip1"][0].data)
    state = caffe_pb2.SolverState()
    with open(tmp_path / "snaps" / "run_iter_7.solverstate", "rb") as f:
        state.ParseFromString(f.read())
    assert state.iter == 7
    assert state.learned_net == str(tmp_path / "snaps" / "run_iter_7.caffemodel")
    assert state.current_step == 1                        # step policy, stepsize 4
    assert len(state.history) == 8                        # Adam: 4 params x (m, v), m's first
    assert list(state.history[0].shape.dim) == [5, 4] and list(state.history[4].shape.dim) == [5, 4]
    np.testing.assert_array_equal(np.asarray(state.history[4].data).reshape(5, 4), solver.history[4].data)


def test_snapshot_prefix_defaults_to_the_solver_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "my_solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 2 '
                                                 'solver_mode: CPU')
    solver = get_solver("my_solver.prototxt")
    set_inputs(solver)
    solver.solve()
    assert (tmp_path / "my_solver_iter_2.caffemodel").exists()
    assert (tmp_path / "my_solver_iter_2.solverstate").exists()
    # A prefix that names a folder: folder/<solver file stem>.
    (tmp_path / "out").mkdir()
    (tmp_path / "s2.prototxt").write_text('net: "net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 1 '
                                          'snapshot_prefix: "out"')
    solver = get_solver("s2.prototxt")
    solver.solve()
    assert (tmp_path / "out" / "s2_iter_1.caffemodel").exists()


def _no_snapshot_files(folder):
    return [n for n in os.listdir(folder) if n.endswith((".caffemodel", ".solverstate")) or ".tmp" in n]


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    solver = get_solver(write_files(str(tmp_path), "SGD", max_iter=2, snapshot=0))
    set_inputs(solver)
    solver.step(2)
    real_fsync = os.fsync

    def broken_fsync(fd):
        raise KeyboardInterrupt   # as if Ctrl-C or a crash struck mid-write

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    assert _no_snapshot_files(tmp_path / "snaps") == []
    monkeypatch.setattr(os, "fsync", real_fsync)

    # The model is written but the state write fails: the model is removed too.
    real_replace = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_once)
    with pytest.raises(DLTrainError, match="No space left on device"):
        solver.snapshot()
    assert _no_snapshot_files(tmp_path / "snaps") == []
    monkeypatch.setattr(os, "replace", real_replace)
    solver.snapshot()
    assert sorted(_no_snapshot_files(tmp_path / "snaps")) == ["run_iter_2.caffemodel", "run_iter_2.solverstate"]


def test_restore_rejects_a_state_of_another_solver_type(tmp_path):
    solver = get_solver(write_files(str(tmp_path), "SGD", max_iter=1, snapshot=0))
    set_inputs(solver)
    solver.solve()
    adam = get_solver(write_files(str(tmp_path), "Adam", max_iter=3, snapshot=0))
    with pytest.raises(ConfigError, match="history blobs"):
        adam.restore(str(tmp_path / "snaps" / "run_iter_1.solverstate"))


def test_restore_finds_a_moved_snapshot_pair(tmp_path):
    solver = get_solver(write_files(str(tmp_path), "SGD", max_iter=4, snapshot=0))
    set_inputs(solver)
    solver.solve()
    moved = tmp_path / "moved"
    moved.mkdir()
    for ext in (".caffemodel", ".solverstate"):
        os.rename(tmp_path / "snaps" / f"run_iter_4{ext}", moved / f"run_iter_4{ext}")
    other = get_solver(write_files(str(tmp_path), "SGD", max_iter=4, snapshot=0))
    other.restore(str(moved / "run_iter_4.solverstate"))
    assert other.iter == 4 and other.current_step == 1
    for a, b in zip(other.net.learnable_params, solver.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)


# --- failures after progress: reported, with a snapshot of the last completed iteration ---------------------
def test_a_full_disk_under_the_log_stops_with_a_snapshot(tmp_path, monkeypatch):
    solver = get_solver(write_files(str(tmp_path), "SGD", max_iter=10, snapshot=0))
    set_inputs(solver)
    real_write = os.write
    log_fds = set()
    real_open = os.open

    def tracking_open(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith("_log.jsonl"):
            log_fds.add(fd)
        return fd

    def full_disk_write(fd, data):
        if fd in log_fds and solver.iter == 4:
            real_write(fd, bytes(data)[:7])               # half a record, then the disk is full
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "write", full_disk_write)
    with pytest.raises(DLTrainError, match="cannot write the training log .*No space left on device"):
        solver.solve()
    monkeypatch.undo()
    snaps = tmp_path / "snaps"
    assert (snaps / "run_iter_4.caffemodel").exists() and (snaps / "run_iter_4.solverstate").exists()
    assert sorted(train_losses(solver.log_path)) == [0, 1, 2, 3]    # the half record was cut off
    resumed = get_solver(write_files(str(tmp_path), "SGD", max_iter=10, snapshot=0))
    set_inputs(resumed)
    resumed.solve(str(snaps / "run_iter_4.solverstate"))
    assert resumed.iter == 10


def test_a_failed_snapshot_is_reported_and_tried_once_more(tmp_path, monkeypatch, capfd):
    solver = get_solver(write_files(str(tmp_path), "SGD", max_iter=10, snapshot=3))
    set_inputs(solver)

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(DLTrainError, match="cannot write snapshot .*No space left on device"):
        solver.solve()
    err = capfd.readouterr().err
    assert "could not be written either" in err
    assert _no_snapshot_files(tmp_path / "snaps") == []              # nothing half-written


def test_a_data_reader_failure_that_is_not_about_the_data_says_so(tmp_path, monkeypatch):
    import pickle

    from dltrain.cli.convert import convert_arrays
    from dltrain.layers import db_data
    db = str(tmp_path / "db")
    convert_arrays(np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4), db)
    # An error raised from Numba's cache loader, as a corrupted cache file raises it.
    namespace = {"pickle": pickle}
    exec(compile("def load(*args):\n    raise pickle.UnpicklingError(\"invalid load key, '\\\\xd8'.\")\n",
                 "/site-packages/numba/core/caching.py", "exec"), namespace)
    monkeypatch.setattr(db_data, "transform_batch", namespace["load"])
    from dlcore import Net, TRAIN
    net = Net(dlcore.config.net_from_string(
        f'layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} }}'),
        TRAIN)
    with pytest.raises(DLTrainError) as info:
        net.forward()
    message = str(info.value)
    assert "not because of the data: UnpicklingError" in message and "Numba's cache" in message
    assert "source" not in message and "record" not in message
