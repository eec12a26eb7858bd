"""Caffe's compiled module `caffe._caffe`, for scripts that import from it directly: the same objects
as the `caffe` package's (Caffe's Boost.Python vector classes, such as ``BlobVec``, are plain lists here)."""
from . import (NCCL, TEST, TRAIN, AdaDeltaSolver, AdaGradSolver, AdamSolver, Blob, Layer,  # noqa: F401
               NesterovSolver, Net, RMSPropSolver, SGDSolver, Timer, get_solver, has_nccl, init_log,
               layer_type_list, log, set_device, set_mode_cpu, set_mode_gpu, set_multiprocess,
               set_random_seed, set_solver_count, set_solver_rank, solver_count, solver_rank)
from dltrain.solvers import Solver  # noqa: F401
