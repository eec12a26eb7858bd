"""Data-parallel training over MPI, through the launcher: `mpirun -n 2 dltrain train ...` (dlcore.parallel).

Needs the `[mpi]` extra (mpi4py and Open MPI's mpirun); skipped without it.  Each test starts real 2-rank
jobs, as a user would, and compares what they write with a single process's files.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlcore.config import load_message
from dltrain.cli.convert import convert_arrays
from dltrain.proto import caffe_pb2

BIN = os.path.dirname(sys.executable)
MPIRUN = shutil.which("mpirun", path=BIN) or shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
pytestmark = pytest.mark.skipif(MPIRUN is None or mpi4py is None,
                                reason="the [mpi] extra (mpi4py, mpirun) is not installed")

# Open MPI refuses root without these (CI runs as root); the TCP/shared-memory transports are enough here.
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")

NET = """
name: "mpi"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
        transform_param {{ scale: 0.0039 }} data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
        transform_param {{ scale: 0.0039 }} data_param {{ source: "{db}" batch_size: 8 backend: LMDB }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
{extra}
layer {{ name: "ip" type: "InnerProduct" bottom: "{ip_bottom}" top: "ip"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""

SETTINGS = {"SGD": 'type: "SGD" base_lr: 0.05 momentum: 0.9 weight_decay: 0.001 lr_policy: "step" gamma: 0.5 '
                   'stepsize: 8',
            "Adam": 'type: "Adam" base_lr: 0.01 momentum: 0.9 momentum2: 0.999 lr_policy: "fixed"'}

PASS_THROUGH = '''
import os
import caffe


class PassThrough(caffe.Layer):
    """Copies its bottom; on the rank named by param_str, raises from forward number 4 on."""

    def setup(self, bottom, top):
        self.calls = 0
        self.failing_rank = self.param_str

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        rank = os.environ.get("OMPI_COMM_WORLD_RANK", "0")
        if self.failing_rank and rank == self.failing_rank and self.calls >= 4:
            raise RuntimeError("bad batch on this rank")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi_db")
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8)
    y = rng.integers(0, 3, 40)
    path = str(folder / "train_lmdb")
    convert_arrays(x, y, path)
    return path


def write_run(folder, db, batch, solver_type, max_iter=20, snapshot=10, python_layer=None):
    os.makedirs(folder, exist_ok=True)
    extra, ip_bottom = "", "conv"
    if python_layer is not None:
        with open(os.path.join(folder, "pass_through.py"), "w") as f:
            f.write(PASS_THROUGH)
        extra = ('layer { name: "py" type: "Python" bottom: "conv" top: "py" '
                 f'python_param {{ module: "pass_through" layer: "PassThrough" param_str: "{python_layer}" }} }}')
        ip_bottom = "py"
    with open(os.path.join(folder, "net.prototxt"), "w") as f:
        f.write(NET.format(db=db, batch=batch, extra=extra, ip_bottom=ip_bottom))
    path = os.path.join(folder, "solver.prototxt")
    with open(path, "w") as f:
        f.write(f'net: "{folder}/net.prototxt" max_iter: {max_iter} snapshot: {snapshot} display: 5 random_seed: 3 '
                f'test_iter: 5 test_interval: 10 solver_mode: CPU snapshot_prefix: "{folder}/snaps/run" '
                f'{SETTINGS[solver_type]}')
    return path


def dltrain(args, ranks=None, cwd=None, timeout=180):
    command = [os.path.join(BIN, "dltrain"), *args]
    if ranks:
        command = [MPIRUN, "-n", str(ranks), "-x", "PYTHONPATH", *command]
    env = dict(ENV, PYTHONPATH=cwd or "")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def weights(path):
    model = load_message(path, caffe_pb2.NetParameter)
    return {layer.name: [np.asarray(b.data, np.float64) for b in layer.blobs] for layer in model.layer if layer.blobs}


def relative_difference(a, b):
    diffs = [np.abs(x - y).max() / max(np.abs(y).max(), 1e-12) for name in b for x, y in zip(a[name], b[name])]
    return max(diffs)


# Bucket sizes: tiny (a bucket per parameter blob, all-reduced while backward runs), 0 (one blocking call
# after backward), the default (25 MB: one bucket for these small nets).
@pytest.mark.parametrize("solver_type, bucket_mb", [("SGD", "0.00001"), ("Adam", "0"), ("Adam", "25")])
def test_two_ranks_at_batch_b_equal_one_process_at_batch_2b(tmp_path, db, solver_type, bucket_mb):
    one = write_run(str(tmp_path / "one"), db, 8, solver_type)
    two = write_run(str(tmp_path / "two"), db, 4, solver_type)
    single = dltrain(["train", "--solver", one], cwd=str(tmp_path))
    assert single.returncode == 0, single.stderr[-2000:]
    parallel = dltrain(["train", "--solver", two, "--bucket_mb", bucket_mb], ranks=2, cwd=str(tmp_path))
    assert parallel.returncode == 0, parallel.stderr[-2000:]
    a = weights(str(tmp_path / "two" / "snaps" / "run_iter_20.caffemodel"))
    b = weights(str(tmp_path / "one" / "snaps" / "run_iter_20.caffemodel"))
    assert relative_difference(a, b) <= 1e-4
    # One set of files, from rank 0; its log shows the mean loss of the ranks.
    assert sorted(os.listdir(tmp_path / "two" / "snaps")) == [
        "run_iter_10.caffemodel", "run_iter_10.solverstate", "run_iter_20.caffemodel", "run_iter_20.solverstate",
        "run_log.jsonl"]
    assert parallel.stderr.count("Optimization Done.") == 1
    assert "Data-parallel training on 2 ranks" in parallel.stderr


def test_a_python_layer_runs_on_every_rank(tmp_path, db):
    path = write_run(str(tmp_path), db, 4, "SGD", max_iter=6, snapshot=0, python_layer="")
    result = dltrain(["train", "--solver", path, "--check_ranks"], ranks=2, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the weights of all 2 ranks agree" in result.stderr       # --check_ranks, at each display
    assert os.path.exists(tmp_path / "snaps" / "run_iter_6.caffemodel")


def test_a_failing_rank_ends_the_job_with_its_error(tmp_path, db):
    path = write_run(str(tmp_path), db, 4, "SGD", max_iter=1000, snapshot=0, python_layer="1")
    start = time.monotonic()
    result = dltrain(["train", "--solver", path], ranks=2, cwd=str(tmp_path), timeout=120)
    assert result.returncode != 0
    assert time.monotonic() - start < 100
    errors = [line for line in result.stderr.splitlines() if line.startswith("dltrain: error:")]
    assert len(errors) == 1 and "rank 1:" in errors[0] and "bad batch on this rank" in errors[0], result.stderr[-3000:]


def test_a_two_rank_run_resumes_exactly(tmp_path, db):
    full = write_run(str(tmp_path / "full"), db, 4, "Adam", max_iter=20, snapshot=10)
    result = dltrain(["train", "--solver", full], ranks=2, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    part = write_run(str(tmp_path / "part"), db, 4, "Adam", max_iter=20, snapshot=10)
    state = str(tmp_path / "full" / "snaps" / "run_iter_10.solverstate")
    assert len(load_message(state, caffe_pb2.SolverState).rank_resume) == 1      # rank 1's position
    result = dltrain(["train", "--solver", part, "--snapshot", state], ranks=2, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_message(str(tmp_path / "full" / "snaps" / "run_iter_20.caffemodel"), caffe_pb2.NetParameter)
    b = load_message(str(tmp_path / "part" / "snaps" / "run_iter_20.caffemodel"), caffe_pb2.NetParameter)
    assert a.SerializeToString() == b.SerializeToString()


def start_long_job(tmp_path, db):
    """A 2-rank run of a million iterations, once its log shows it training: (the mpirun process, the solver)."""
    path = write_run(str(tmp_path), db, 4, "SGD", max_iter=10 ** 6, snapshot=0)
    command = [MPIRUN, "-n", "2", os.path.join(BIN, "dltrain"), "train", "--solver", path]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=str(tmp_path))
    log = tmp_path / "snaps" / "run_log.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and log.read_text().count("\n") >= 3):
        time.sleep(0.2)
    return job, path


def test_ctrl_c_on_the_launcher_snapshots_and_stops_every_rank(tmp_path, db):
    job, path = start_long_job(tmp_path, db)
    job.send_signal(signal.SIGINT)            # what Ctrl-C in the launcher's terminal does
    job.wait(timeout=60)
    states = [n for n in os.listdir(tmp_path / "snaps") if n.endswith(".solverstate")]
    assert len(states) == 1, os.listdir(tmp_path / "snaps")
    state = load_message(str(tmp_path / "snaps" / states[0]), caffe_pb2.SolverState)
    assert state.iter > 0 and len(state.rank_resume) == 1
    assert (tmp_path / "snaps" / states[0].replace(".solverstate", ".caffemodel")).exists()


def test_a_rank_killed_outright_ends_the_job(tmp_path, db):
    job, path = start_long_job(tmp_path, db)
    found = subprocess.run(["pgrep", "-f", f"train --solver {path}"], capture_output=True, text=True).stdout.split()
    ranks = [int(pid) for pid in found if int(pid) != job.pid]
    assert ranks, "no rank process found"
    os.kill(max(ranks), signal.SIGKILL)
    start = time.monotonic()
    assert job.wait(timeout=60) != 0            # mpirun ends the job: no rank is left waiting for ever
    assert time.monotonic() - start < 60
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"train --solver {path}"], capture_output=True, text=True).stdout.split()
    assert left == []


def test_a_two_rank_state_resumes_on_one_process_with_a_notice(tmp_path, db):
    two = write_run(str(tmp_path / "two"), db, 4, "SGD", max_iter=10, snapshot=10)
    result = dltrain(["train", "--solver", two], ranks=2, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    one = write_run(str(tmp_path / "one"), db, 4, "SGD", max_iter=14, snapshot=0)
    state = str(tmp_path / "two" / "snaps" / "run_iter_10.solverstate")
    result = dltrain(["train", "--solver", one, "--snapshot", state], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "written by a run of 2 rank(s), this run has 1" in result.stderr
    assert os.path.exists(tmp_path / "one" / "snaps" / "run_iter_14.caffemodel")
