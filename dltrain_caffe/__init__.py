"""dltrain's pycaffe face, imported as `caffe` where no real Caffe is installed.

``import caffe`` reaches this package only through the fallback finder of
:mod:`dltrain_caffe.fallback` (installed with dltrain), which Python asks
last: a real Caffe anywhere on ``sys.path`` is always preferred.

What it offers, under pycaffe's names: ``Layer`` (the base class of Python
layers), ``Net``, ``TRAIN``/``TEST``, ``get_solver`` and ``SGDSolver``,
``NesterovSolver``, ``AdaGradSolver``, ``RMSPropSolver``,
``AdaDeltaSolver``, ``AdamSolver``, ``set_mode_cpu``/``set_mode_gpu``,
``set_device``, ``set_random_seed``, ``layer_type_list``, ``init_log``,
``log``, the solver-count functions, ``io`` and ``proto.caffe_pb2``.
Not offered: ``Classifier``, ``Detector``, ``NetSpec`` and the NCCL and
Timer classes.
"""
import dlcore as _dlcore
from dlcore import TEST, TRAIN, Blob, Net, set_random_seed
from dltrain.layers.python_layer import CaffeLayer as Layer
from dltrain.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver, SGDSolver,
                     get_solver)

from . import io, proto  # noqa: F401

__version__ = "1.0.0"           # the pycaffe API level this face follows
dltrain = True                  # scripts can tell this face from a real Caffe: getattr(caffe, "dltrain", False)

_device_id = 0
_solver_count = 1
_solver_rank = 0
_multiprocess = False


def set_mode_cpu():
    _dlcore.set_mode_cpu()


def set_mode_gpu():
    """Run nets built from now on on the GPU (set_device picks which); a clear error if none is usable."""
    _dlcore.set_mode_gpu()


def set_device(device_id):
    global _device_id
    _device_id = int(device_id)
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


def has_nccl():
    return False


_MISSING = {"Classifier", "Detector", "NetSpec", "layers", "params", "to_proto", "NCCL", "Timer"}


def __getattr__(name):
    if name in _MISSING:
        raise AttributeError(f"caffe.{name} is not provided by dltrain's pycaffe face (dltrain_caffe)")
    raise AttributeError(f"module 'caffe' (dltrain's pycaffe face) has no attribute '{name}'")


__all__ = ["Layer", "Net", "TRAIN", "TEST", "Blob", "get_solver", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "set_mode_cpu", "set_mode_gpu", "set_device",
           "set_random_seed", "layer_type_list", "init_log", "log", "solver_count", "set_solver_count",
           "solver_rank", "set_solver_rank", "set_multiprocess", "has_nccl", "io", "proto"]
