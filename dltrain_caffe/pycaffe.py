"""pycaffe's `caffe.pycaffe` module, for scripts that import from it directly.

In Caffe this module adds the Python conveniences (``forward_all``,
``blobs``, ``params``, ...) to the compiled Net; dltrain's ``Net`` has
them already, so this is the same ``Net`` and solver classes as ``caffe``'s.
"""
from dlcore import Net  # noqa: F401
from dltrain.solvers import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,  # noqa: F401
                             RMSPropSolver, SGDSolver)

__all__ = ["Net", "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver"]
