"""Data-parallel ranks on the GPU path (gradients all-reduced from host buffers): `mpirun -n 2 dltrain train
--gpu 0` against one CPU process at twice the batch.  Runs in the simulator's suite (NUMBA_ENABLE_CUDASIM=1),
and on a real GPU in bench/gpu_check.sh's CUDA tests (DLTRAIN_TEST_REAL_GPU=1) where the [mpi] extra is
installed: both ranks then share device 0."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dlcore.config import load_message
from dltrain.cli.convert import convert_arrays
from dltrain.proto import caffe_pb2

BIN = os.path.dirname(sys.executable)
MPIRUN = shutil.which("mpirun", path=BIN)
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
pytestmark = pytest.mark.skipif(
    MPIRUN is None or mpi4py is None or not (SIMULATOR or os.environ.get("DLTRAIN_TEST_REAL_GPU") == "1"),
    reason="needs the [mpi] extra, and the CUDA simulator run or a real GPU")

NET = """
layer {{ name: "data" type: "Data" top: "data" top: "label" transform_param {{ scale: 0.004 }}
        data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_two_gpu_ranks_equal_one_cpu_process_at_twice_the_batch(tmp_path):
    rng = np.random.default_rng(1)
    db = str(tmp_path / "db")
    convert_arrays(rng.integers(0, 256, (16, 1, 4, 4), dtype=np.uint8), rng.integers(0, 2, 16), db)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    models = {}
    ranks = [MPIRUN, "-n", "2"] + (["-x", "NUMBA_ENABLE_CUDASIM"] if SIMULATOR else [])
    for name, batch, launcher in (("one", 4, []), ("two", 2, ranks)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "net.prototxt").write_text(NET.format(db=db, batch=batch))
        (folder / "solver.prototxt").write_text(
            f'net: "{folder}/net.prototxt" base_lr: 0.1 momentum: 0.9 lr_policy: "fixed" max_iter: 4 '
            f'solver_mode: CPU random_seed: 1 snapshot_prefix: "{folder}/s"')
        gpu = ["--gpu", "0"] if launcher else []
        run_env = env if launcher else {k: v for k, v in env.items() if k != "NUMBA_ENABLE_CUDASIM"}
        result = subprocess.run([*launcher, os.path.join(BIN, "dltrain"), "train", "--solver",
                                 str(folder / "solver.prototxt"), *gpu], capture_output=True, text=True,
                                env=run_env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        if launcher:
            assert "Use GPU with device ID 0" in result.stderr
        model = load_message(str(folder / "s_iter_4.caffemodel"), caffe_pb2.NetParameter)
        models[name] = [np.asarray(b.data) for layer in model.layer for b in layer.blobs]
    for a, b in zip(models["two"], models["one"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
