"""Solvers: the training loop and the update rules (Caffe's SGD family).

``get_solver(path_or_SolverParameter)`` builds the solver its ``type`` (or
the legacy ``solver_type``) names, as pycaffe's ``caffe.get_solver``;
``SGDSolver(path)`` and the other classes build one type directly.
"""
import numpy as np

from dlcore.config import field_line
from dlcore.errors import ConfigError

from .lr_policy import POLICIES, LearningRatePolicy, learning_rate
from .sgd_solvers import (SOLVERS, AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver, RMSPropSolver,
                          SGDSolver)
from .solver import (Solver, SolverAction, device_for_solver, gpu_or_cpu_notice, output_loss_weights,
                     snapshot_filename, upgrade_solver_param)

__all__ = ["get_solver", "solver_types", "Solver", "SolverAction", "SGDSolver", "NesterovSolver", "AdaGradSolver",
           "RMSPropSolver", "AdaDeltaSolver", "AdamSolver", "SOLVERS", "POLICIES", "LearningRatePolicy",
           "learning_rate", "snapshot_filename", "device_for_solver", "gpu_or_cpu_notice", "output_loss_weights"]


def solver_types():
    """The solver ``type`` names (Caffe's SolverRegistry)."""
    return sorted(SOLVERS)


def get_solver(solver, dtype=np.float32, solver_path=None, gpu=None):
    """The solver a SolverParameter or a solver file describes, of the class its type names.

    ``solver_path`` names the file a SolverParameter came from (for error
    locations and the default snapshot_prefix).  ``gpu``: run on the GPU (True),
    the CPU (False), or as the backend's mode says (None, pycaffe's way).
    """
    import os
    from dltrain.proto import caffe_pb2
    path = solver_path
    if isinstance(solver, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(solver)
    else:
        from dlcore.config import load_solver
        path = os.fspath(solver)
        param = load_solver(path, resolve_paths=True)
    upgrade_solver_param(param, path)
    cls = SOLVERS.get(param.type)
    if cls is None:
        raise ConfigError(f"unknown solver type '{param.type}' (known types: {', '.join(solver_types())})",
                          path=path, line=field_line(path, "type"), field="type")
    return cls(param, dtype=dtype, solver_path=path, gpu=gpu)
