"""Data-parallel training over MPI: which rank this process is, and the few collective calls training needs.

A run started by an MPI launcher (``mpirun -n 4 dltrain train ...``, ``srun dltrain train ...``) with more than
one rank trains data-parallel: every rank builds the same nets, rank 0's weights are broadcast, each rank runs
its own batches (its data layers deal the source out record by record), the parameter gradients are averaged
over the ranks before the one update, and rank 0 alone logs and writes files.

A single process (no launcher, or one rank) never imports ``mpi4py``: the launcher is recognised by the
environment variables it sets, and :func:`world` is then a one-rank :class:`World` whose calls do nothing.
"""
import os

from .errors import DLTrainError

__all__ = ["World", "world", "launcher_size"]

# The world size each launcher announces: Open MPI's mpirun, MPICH/Intel MPI's hydra (PMI), Slurm's srun.
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_NTASKS")


def launcher_size(environ=os.environ):
    """The number of ranks an MPI launcher started, from its environment (1 when there is none)."""
    for name in _SIZE_VARIABLES:
        value = environ.get(name)
        if value:
            if name == "SLURM_NTASKS" and not any(k in environ for k in ("PMI_RANK", "PMIX_RANK", "SLURM_PROCID")):
                continue
            try:
                return max(1, int(value))
            except ValueError:
                continue
    return 1


class World:
    """The ranks of this run.  ``rank``, ``size``, ``local_rank`` and ``local_size`` (ranks on this node); the
    collectives below are no-ops for one rank."""

    def __init__(self, comm=None):
        self.comm = comm
        if comm is None:
            self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
            return
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()

    @property
    def parallel(self):
        return self.size > 1

    @property
    def is_root(self):
        return self.rank == 0

    def broadcast(self, array):
        """Rank 0's values into ``array`` (a contiguous NumPy array) on every rank."""
        if self.parallel:
            self.comm.Bcast(array, root=0)

    def allreduce_sum(self, array):
        """``array`` (contiguous) replaced by its sum over the ranks."""
        if self.parallel:
            from mpi4py import MPI
            self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)

    def allreduce_max(self, value):
        if not self.parallel:
            return value
        from mpi4py import MPI
        return self.comm.allreduce(value, op=MPI.MAX)

    def gather(self, value):
        """Rank 0 gets ``[value of rank 0, value of rank 1, ...]`` (picklable values); the others None."""
        if not self.parallel:
            return [value]
        return self.comm.gather(value, root=0)

    def scatter(self, values):
        """Each rank gets its element of rank 0's ``values``."""
        if not self.parallel:
            return values[0]
        return self.comm.scatter(values, root=0)

    def share(self, value):
        """Rank 0's ``value`` (picklable) on every rank."""
        if not self.parallel:
            return value
        return self.comm.bcast(value, root=0)

    def abort(self, code=1):
        """End every rank of the job now (one rank's error must not leave the others waiting)."""
        if self.parallel:
            self.comm.Abort(code)


_world = None


def world():
    """This process's :class:`World` (MPI is initialised on the first call when a launcher started several
    ranks; ``mpi4py`` is needed then: ``pip install 'dltrain[mpi]'``)."""
    global _world
    if _world is None:
        if launcher_size() > 1:
            try:
                from mpi4py import MPI
            except ImportError:
                raise DLTrainError("this run was started by an MPI launcher with several ranks, which needs mpi4py: "
                                   "pip install 'dltrain[mpi]' (it brings Open MPI too)") from None
            _world = World(MPI.COMM_WORLD)
        else:
            _world = World()
    return _world
