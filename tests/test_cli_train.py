"""`dltrain train` / `dltrain test` end to end on tiny nets, and their errors."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dltrain.cli.main import main
from dltrain.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny classifier on DummyData: constant inputs per class would be too easy;
# gaussian data, labels from a constant filler (class 1), trained a few steps.
NET = """
name: "tiny"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: LABEL } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 5
base_lr: 0.1
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 4
display: 2
max_iter: 10
snapshot: 5
snapshot_prefix: "snapshots/tiny"
random_seed: 5
solver_mode: CPU
"""


def setup_files(folder, solver=SOLVER, label=1):
    (folder / "net.prototxt").write_text(NET.replace("LABEL", str(label)))
    (folder / "solver.prototxt").write_text(solver)
    return str(folder / "solver.prototxt")


def run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


# The expressions of Caffe's tools/extra/parse_log.py and extract_seconds.py.
RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([.\deE+-]+)")
RE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
RE_GLOG = re.compile(r"^\w(\d{4}) (\d\d):(\d\d):(\d\d\.\d+)")


def parse_log(text):
    """What parse_log.py extracts: rows of (iteration, lr, outputs) for train and test.

    Like parse_log.py, every line after the first `Iteration` line must
    carry the glog date and time (its extract_datetime_from_line), and the
    start time comes from the `Solving` line.
    """
    lines = text.splitlines()
    solving = [line for line in lines if "Solving" in line]
    assert solving and RE_GLOG.match(solving[0])
    iteration, lr = -1, None
    train, test = {}, {}
    for line in lines:
        m = RE_ITERATION.search(line)
        if m:
            iteration = int(m.group(1))
        if iteration == -1 or not line.startswith(("I", "W", "E")):
            continue
        if not line.strip():
            raise AssertionError("empty line in the log after the first iteration")
        assert RE_GLOG.match(line), line
        fields = line.strip().split()
        int(fields[0][1:3]), int(fields[0][3:])                       # month, day
        m = RE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for regex, rows in ((RE_TRAIN, train), (RE_TEST, test)):
            m = regex.search(line)
            if m:
                rows.setdefault(iteration, {"lr": lr})[m.group(2)] = float(m.group(3))
    return train, test


def test_train_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path)
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 0, err
    snaps = tmp_path / "snapshots"
    assert sorted(os.listdir(snaps)) == ["tiny_iter_10.caffemodel", "tiny_iter_10.solverstate",
                                         "tiny_iter_5.caffemodel", "tiny_iter_5.solverstate", "tiny_log.jsonl"]
    assert "Iteration 0, loss = " in err and "Iteration 4, lr = 0.05" in err
    assert "Iteration 5, Testing net (#0)" in err and "Iteration 10, Testing net (#0)" in err
    assert "    Test net output #0: accuracy = " in err
    assert re.search(r"    Test net output #1: loss = \S+ \(\* 1 = \S+ loss\)", err)
    assert re.search(r"    Train net output #0: loss = \S+ \(\* 1 = \S+ loss\)", err)
    assert "Snapshotting to binary proto file snapshots/tiny_iter_5.caffemodel" in err
    assert err.rstrip().endswith("Optimization Done.")
    train, test = parse_log(err)
    assert sorted(train) == [0, 2, 4, 6, 8]
    assert sorted(test) == [0, 5, 10]
    assert set(test[10]) == {"lr", "accuracy", "loss"}
    # The JSON lines beside the snapshots hold the same numbers.
    records = [json.loads(line) for line in (snaps / "tiny_log.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["phase"] == "train"]
    assert [r["iter"] for r in train_records] == [0, 2, 4, 6, 8, 10]
    for r in train_records[:-1]:
        assert r["outputs"]["loss"] == pytest.approx(train[r["iter"]]["loss"], rel=1e-5)
    assert train_records[2]["lr"] == pytest.approx(0.05)
    test_records = [r for r in records if r["phase"] == "test"]
    assert [r["iter"] for r in test_records] == [0, 5, 10]
    assert set(test_records[0]) >= {"iter", "phase", "loss", "lr", "outputs", "time"}
    assert test_records[-1]["outputs"]["accuracy"] == pytest.approx(test[10]["accuracy"], rel=1e-5)

    # caffe test on the result: per-batch lines and the means.
    code, err = run(["test", "-model", "net.prototxt", "-weights", "snapshots/tiny_iter_10.caffemodel",
                     "-iterations", "3"], capsys)
    assert code == 0, err
    assert len(re.findall(r"Batch \d, accuracy = ", err)) == 3
    assert re.search(r"\] accuracy = [\d.]+\n", err)
    assert re.search(r"\] loss = \S+ \(\* 1 = \S+ loss\)", err)


def _no_gpu(monkeypatch):
    """Make the backend find no GPU (as on CI), whatever this machine has."""
    from dlcore import backend
    monkeypatch.setattr(backend, "gpu_available", lambda device_id=None: (False, "no NVIDIA driver found (test)"))


def test_bare_solver_argument_and_caffe_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _no_gpu(monkeypatch)
    setup_files(tmp_path, SOLVER.replace("max_iter: 10", "max_iter: 3").replace("solver_mode: CPU\n", ""))
    code, err = run(["solver.prototxt"], capsys)
    assert code == 0, err
    # solver_mode GPU is Caffe's default: without a GPU, a one-line notice and the CPU
    assert "solver_mode is GPU but no GPU can be used (no NVIDIA driver found (test)); training on the CPU" in err
    assert (tmp_path / "snapshots" / "tiny_iter_3.solverstate").exists()
    # Resume with Caffe's single-dash flags and a raised iteration count.
    code, err = run(["train", "-solver", "solver.prototxt", "-snapshot", "snapshots/tiny_iter_3.solverstate",
                     "-iterations", "6"], capsys)
    assert code == 0, err
    assert "Resuming from snapshots/tiny_iter_3.solverstate" in err
    assert "Iteration 3, loss" not in err.split("Resuming")[0]
    state = caffe_pb2.SolverState()
    state.ParseFromString((tmp_path / "snapshots" / "tiny_iter_6.solverstate").read_bytes())
    assert state.iter == 6
    # Fine-tune from the weights into a fresh run.
    code, err = run(["train", "--solver", "solver.prototxt", "--weights", "snapshots/tiny_iter_6.caffemodel",
                     "--iterations", "1"], capsys)
    assert code == 0, err
    assert "Finetuning from snapshots/tiny_iter_6.caffemodel" in err


def one_line_error(err):
    lines = [line for line in err.splitlines() if line.startswith("dltrain: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def assert_no_snapshot(folder):
    snaps = folder / "snapshots"
    found = [n for n in os.listdir(snaps) if n.endswith((".caffemodel", ".solverstate"))] if snaps.exists() else []
    assert found == []


def test_missing_net_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path, SOLVER.replace('net: "net.prototxt"', 'net: "missing.prototxt"'))
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "solver.prototxt:1" in line and "missing.prototxt" in line and "not found" in line
    assert_no_snapshot(tmp_path)


@pytest.mark.parametrize("bad, words", [
    ('lr_polcy: "step"', ["solver.prototxt:", "unknown field 'lr_polcy'"]),
    ('lr_policy: "stepwise"', ["solver.prototxt:", "unknown lr_policy 'stepwise'"]),
    ('type: "Adamax"', ["solver.prototxt:", "unknown solver type 'Adamax'"]),
    ('regularization_type: "L3"', ["solver.prototxt:", "regularization_type"]),
])
def test_bad_solver_field(tmp_path, capsys, monkeypatch, bad, words):
    monkeypatch.chdir(tmp_path)
    solver = SOLVER.replace('lr_policy: "step"', bad) if "lr_pol" in bad else SOLVER + bad + "\n"
    setup_files(tmp_path, solver)
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 1
    line = one_line_error(err)
    for word in words:
        assert word in line
    assert re.search(r"solver\.prototxt:\d+", line), line
    assert_no_snapshot(tmp_path)


def test_wrong_label_range(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path, label=7)          # 3 classes
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "label" in line and "outside [0, 3)" in line
    assert_no_snapshot(tmp_path)


def test_unreadable_data_source(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET.replace("LABEL", "1").replace(
        """layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }""",
        """layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "no_such_lmdb" backend: LMDB batch_size: 8 } }"""))
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 1
    line = one_line_error(err)
    assert "no_such_lmdb" in line or "lmdb" in line
    assert_no_snapshot(tmp_path)


def test_diverging_loss_names_the_layer_and_keeps_earlier_snapshots(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = """
    name: "diverge"
    layer { name: "data" type: "DummyData" top: "x" top: "y"
            dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 1 }
                               data_filler { type: "constant" value: 1 } data_filler { type: "constant" value: 2 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1"
            inner_product_param { num_output: 1 weight_filler { type: "constant" value: 0.5 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ip1" bottom: "y" top: "loss" }
    """
    (tmp_path / "net.prototxt").write_text(net)
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt" base_lr: 100 lr_policy: "fixed" momentum: 0.9 max_iter: 100 snapshot: 2 display: 1 '
        'snapshot_prefix: "snapshots/tiny" solver_mode: CPU')
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 1
    line = one_line_error(err)
    m = re.search(r"loss is (nan|inf) at iteration (\d+); first non-finite value: (.*)", line)
    assert m, line
    failed_at = int(m.group(2))
    assert re.search(r"(output|gradient of \w+ '?\w*'?) .*of layer '(ip1|loss)' \((forward|backward)\)", m.group(3))
    assert f"the last snapshot (snapshots/tiny_iter_{failed_at - failed_at % 2}.solverstate) is kept" in line
    snaps = sorted(os.listdir(tmp_path / "snapshots"))
    # Snapshots up to the failure are kept; none is written from the broken state.
    written = sorted(int(re.search(r"_iter_(\d+)", n).group(1)) for n in snaps if n.endswith(".solverstate"))
    assert written == list(range(2, failed_at + 1, 2))
    for n in snaps:
        if n.endswith(".caffemodel"):
            model = caffe_pb2.NetParameter()
            model.ParseFromString((tmp_path / "snapshots" / n).read_bytes())
            assert all(np.isfinite(b.data).all() for layer in model.layer for b in layer.blobs)


def test_flag_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path)
    code, err = run(["train", "--solver", "solver.prototxt", "--snapshot", "a.solverstate", "--weights",
                     "b.caffemodel"], capsys)
    assert code == 1 and "not both" in one_line_error(err)
    _no_gpu(monkeypatch)
    code, err = run(["train", "--solver", "solver.prototxt", "--gpu", "0"], capsys)
    assert code == 1 and "--gpu 0 was asked for but cannot be used: no NVIDIA driver found (test)" in \
        one_line_error(err)
    code, err = run(["train", "--solver", "solver.prototxt", "--gpu", "x"], capsys)
    assert code == 1 and "--gpu x: give a GPU device id" in one_line_error(err)
    code, err = run(["train", "--solver", "nothing.prototxt"], capsys)
    assert code == 1 and "nothing.prototxt" in one_line_error(err)
    assert_no_snapshot(tmp_path)


def test_debug_info_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path, SOLVER.replace("max_iter: 10", "max_iter: 1") + "debug_info: true\ntest_compute_loss: true\n")
    code, err = run(["train", "--solver", "solver.prototxt"], capsys)
    assert code == 0, err
    assert re.search(r"\[Forward\] Layer ip1, top blob ip1 data: \S+", err)
    assert re.search(r"\[Forward\] Layer ip1, param blob 0 data: \S+", err)
    assert re.search(r"\[Backward\] Layer ip2, bottom blob ip1 diff: \S+", err)
    assert re.search(r"\[Backward\] Layer ip1, param blob 0 diff: \S+", err)
    assert re.search(r"\[Backward\] All net params \(data, diff\): L1 norm = \(\S+, \S+\); L2 norm = \(\S+, \S+\)", err)
    assert re.search(r"\[Update\] Layer ip1, param 0 data: \S+; diff: \S+", err)
    assert re.search(r"\] Test loss: \S+", err)


def test_yaml_solver(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_files(tmp_path)
    (tmp_path / "solver.yaml").write_text(
        "net: net.prototxt\nbase_lr: 0.05\nlr_policy: fixed\nmax_iter: 2\ndisplay: 1\n"
        "snapshot_prefix: snapshots/yaml\nsolver_mode: CPU\ntype: Nesterov\nmomentum: 0.9\n")
    code, err = run(["solver.yaml"], capsys)
    assert code == 0, err
    assert (tmp_path / "snapshots" / "yaml_iter_2.solverstate").exists()
    (tmp_path / "bad.yaml").write_text("net: net.prototxt\nbase_lr: 0.05\nlr_policy: fixed\ntype: Newton\n")
    code, err = run(["bad.yaml"], capsys)
    assert code == 1 and "bad.yaml:4" in one_line_error(err)


def test_progress_line_on_a_terminal():
    import io
    from dltrain.solvers.training_log import Progress, info

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    with Progress(0, 100, stream=term, min_interval=0) as progress:
        progress.update(10, 0.5, 0.01)
        assert term.getvalue().startswith("\r\x1b[K" + "iter 10/100  loss 0.5  lr 0.01")
        assert "it/s" in term.getvalue() and "ETA" in term.getvalue()
        info("a log line clears the progress line first")
        assert term.getvalue().endswith("\r\x1b[K")
    plain = io.StringIO()
    with Progress(0, 100, stream=plain, min_interval=0) as progress:
        progress.update(10, 0.5, 0.01)
    assert plain.getvalue() == ""


def test_ctrl_c_snapshots_and_stops(tmp_path):
    """SIGINT in a real process: the iteration finishes, a snapshot is written, exit 0."""
    setup_files(tmp_path, SOLVER.replace("max_iter: 10", "max_iter: 100000000").replace("display: 2", "display: 50")
                .replace("snapshot: 5", "snapshot: 0"))
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "dltrain.cli.main", "train", "--solver", "solver.prototxt"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        deadline = time.time() + 120
        for line in proc.stderr:
            seen.append(line)
            if "Iteration 100, loss" in line or time.time() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 0, err
    assert "Optimization stopped early." in err
    states = [n for n in os.listdir(tmp_path / "snapshots") if n.endswith(".solverstate")]
    assert len(states) == 1
    it = int(re.search(r"_iter_(\d+)", states[0]).group(1))
    assert it >= 100
    assert (tmp_path / "snapshots" / f"tiny_iter_{it}.caffemodel").exists()


def test_non_finite_values_are_traced_to_their_layer():
    from dlcore.config import solver_from_string
    from dlcore.errors import DLTrainError
    from dltrain.solvers import get_solver
    text = """
    net_param { name: "nan"
      layer { name: "data" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 1 } } }
      layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "ip1"
              inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
      layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
              inner_product_param { num_output: 1 weight_filler { type: "gaussian" std: 1 } } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "ip2" bottom: "y" top: "loss" } }
    base_lr: 0.1 lr_policy: "fixed" max_iter: 5 snapshot_after_train: false"""
    solver = get_solver(solver_from_string(text))
    solver.net.blobs["x"].data[...] = 1
    solver.step(1)
    solver.net.blobs["x"].data[0, 1] = np.nan
    with pytest.raises(DLTrainError, match=r"loss is nan at iteration 1; first non-finite value: "
                                           r"output 'x' of layer 'data' \(forward\)"):
        solver.step(1)
    solver.net.blobs["x"].data[...] = 1
    solver.net.params["ip2"][0].data[0, 0] = np.inf
    with pytest.raises(DLTrainError, match=r"first non-finite value: parameter 0 of layer 'ip2'"):
        solver.step(1)


def test_gpu_flag_under_mpi_gives_each_rank_one_device(monkeypatch):
    from dlcore import parallel
    from dlcore.errors import DLTrainError
    from dltrain.cli.train import _rank_gpu

    class Ranks(parallel.World):          # rank 1 of `ranks` on one node, without MPI
        def __init__(self, ranks):
            super().__init__()
            self.rank = self.local_rank = 1
            self.size = self.local_size = ranks

    monkeypatch.setattr(parallel, "_world", Ranks(2))
    assert _rank_gpu("all") == "1" and _rank_gpu("2,3") == "3" and _rank_gpu("0") == "0"
    assert _rank_gpu(None) is None
    monkeypatch.setattr(parallel, "_world", Ranks(3))
    with pytest.raises(DLTrainError, match="3 ranks run on this node"):
        _rank_gpu("0,1")


@pytest.mark.parametrize("environ, size", [
    ({}, 1),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, 4),
    ({"PMI_SIZE": "2"}, 2),
    ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, 1),   # a batch script itself
    ({"SLURM_STEP_NUM_TASKS": "8"}, 8),                                              # srun -n 8
    ({"OMPI_COMM_WORLD_SIZE": "x"}, 1),
])
def test_an_mpi_launcher_is_recognised_by_its_environment(environ, size):
    from dlcore.parallel import launcher_size
    assert launcher_size(environ) == size
