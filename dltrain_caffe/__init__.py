"""dltrain's pycaffe face, imported as `caffe` where no real Caffe is installed.

``import caffe`` reaches this package only through the fallback finder of
:mod:`dltrain_caffe.fallback` (installed with dltrain), which Python asks
last: a real Caffe anywhere on ``sys.path`` is always preferred.

What it offers, under pycaffe's (Caffe 1.0's) names: ``Layer`` (the base
class of Python layers), ``Net`` (with ``forward_all``,
``forward_backward_all``, ``save_hdf5``/``load_hdf5``, ``blob_loss_weights``
and the ``before_forward``/``after_forward``/``before_backward``/
``after_backward`` hooks), ``TRAIN``/``TEST``, ``get_solver``, the solvers
``SGDSolver``, ``NesterovSolver``, ``AdaGradSolver``, ``RMSPropSolver``,
``AdaDeltaSolver``, ``AdamSolver`` (with ``add_callback``, ``share_weights``,
``lr``, ``param``), ``Classifier``, ``Detector``, ``Timer``,
``set_mode_cpu``/``set_mode_gpu``, ``set_device``, ``set_random_seed``,
``layer_type_list``, ``init_log``, ``log``, the solver-count functions,
``io``, ``proto.caffe_pb2``, and ``NetSpec``/``layers``/``params``/
``to_proto`` (from :mod:`caffe.net_spec`).

Differences, said plainly: ``has_nccl()`` is False and ``NCCL`` only
explains why (dltrain trains on several processes over MPI:
``mpirun -n N dltrain train --solver S``); ``set_mode_gpu()`` on a machine
without a usable GPU logs one warning and runs on the CPU, as dltrain's
``solver_mode: GPU`` does.
"""
import time as _time

import dlcore as _dlcore
from dlcore import TEST, TRAIN, Blob, Net, set_random_seed
from dlcore.errors import DLTrainError as _DLTrainError
from dltrain.layers.python_layer import CaffeLayer as Layer
from dltrain.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
                     get_solver)
from dltrain.solvers import gpu_or_cpu_notice as _gpu_or_cpu_notice

from . import io, proto  # noqa: F401
from .classifier import Classifier
from .detector import Detector
from .net_spec import NetSpec, layers, params, to_proto

__version__ = "1.0.0"           # the pycaffe API level this face follows
dltrain = True                  # scripts can tell this face from a real Caffe: getattr(caffe, "dltrain", False)

_solver_count = 1
_solver_rank = 0
_multiprocess = False


def set_mode_cpu():
    _dlcore.set_mode_cpu()


def set_mode_gpu():
    """Run nets built from now on on the GPU (set_device picks which).  Where no GPU can be used: one
    warning line, and the CPU (``dlcore.set_mode_gpu`` is the strict form, an error instead)."""
    device_id = _dlcore.get_device()
    usable, notice = _gpu_or_cpu_notice(device_id, "caffe.set_mode_gpu() was called", "running")
    if not usable:
        _dlcore.log.warning(notice)
        _dlcore.set_mode_cpu()
        return
    _dlcore.set_mode_gpu(device_id)


def set_device(device_id):
    _dlcore.set_device(device_id)


def layer_type_list():
    return _dlcore.layer_types()


def init_log(*args, **kwargs):
    """Logging needs no set-up in dltrain (glog-format lines on stderr)."""


def log(message):
    _dlcore.log.info(message)


def solver_count():
    return _solver_count


def set_solver_count(count):
    global _solver_count
    _solver_count = int(count)


def solver_rank():
    return _solver_rank


def set_solver_rank(rank):
    global _solver_rank
    _solver_rank = int(rank)


def set_multiprocess(value):
    global _multiprocess
    _multiprocess = bool(value)


def get_solver_from_file(filename):
    """The solver a solver file describes (the name some Caffe forks give get_solver)."""
    return get_solver(filename)


class Timer:
    """Caffe's Timer: ``start()``, ``stop()``, and ``ms``, the milliseconds from the last start to its stop
    (reading ``ms`` while running stops it first; 0, with a warning, if never started).  In GPU mode
    start and stop wait for the GPU, so ``ms`` includes the device work, as Caffe's CUDA-event timer."""

    def __init__(self):
        self._start = self._stop = None
        self._running = False

    def start(self):
        if not self._running:
            self._sync()
            self._start = _time.perf_counter()
            self._running = True

    def stop(self):
        if self._running:
            self._sync()
            self._stop = _time.perf_counter()
            self._running = False

    @property
    def ms(self):
        if self._start is None:
            _dlcore.log.warning("Timer has never been run before reading time.")
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0

    @staticmethod
    def _sync():
        if _dlcore.backend.is_gpu():
            from dlcore.device import synchronize    # imported only in GPU mode: a CPU run never loads numba.cuda
            synchronize()


NCCL_UNAVAILABLE = ("caffe.NCCL is not available: dltrain has no NCCL (caffe.has_nccl() is False). "
                    "Instead of python/train.py with NCCL, train data-parallel over MPI: "
                    "mpirun -n N dltrain train --solver SOLVER.prototxt (one process per GPU or CPU share; "
                    "see the README's 'Training on several processes or machines' and docs/SCALING.md)")


class NCCL:
    """Caffe's multi-GPU NCCL communicator.  dltrain has none: constructing one, or ``NCCL.new_uid()``,
    raises an error that names what to use instead (MPI)."""

    def __init__(self, solver, uid):
        raise _DLTrainError(NCCL_UNAVAILABLE)

    @staticmethod
    def new_uid():
        raise _DLTrainError(NCCL_UNAVAILABLE)


def has_nccl():
    """False: dltrain's several-process training runs over MPI, not NCCL."""
    return False


def __getattr__(name):
    raise AttributeError(f"module 'caffe' (dltrain's pycaffe face) has no attribute '{name}'")


__all__ = ["Layer", "Net", "TRAIN", "TEST", "Blob", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "layer_type_list", "init_log", "log", "solver_count", "set_solver_count",
           "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl", "io", "proto", "Classifier",
           "Detector", "Timer", "NCCL", "get_solver_from_file", "NetSpec", "layers", "params", "to_proto"]
