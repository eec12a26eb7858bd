"""Data-parallel training over MPI: which rank this process is, and the few collective calls training needs.

A run started by an MPI launcher (``mpirun -n 4 dltrain train ...``, ``srun dltrain train ...``) with more than
one rank trains data-parallel: every rank builds the same nets, rank 0's weights are broadcast, each rank runs
its own batches (its data layers deal the source out record by record), the parameter gradients are averaged
over the ranks before the one update, and rank 0 alone logs and writes files.

A single process (no launcher, or one rank) never imports ``mpi4py``: the launcher is recognised by the
environment variables it sets, and :func:`world` is then a one-rank :class:`World` whose calls do nothing.
"""
import os
import time

import numpy as np

from .errors import DLTrainError

__all__ = ["World", "world", "launcher_size", "GradientAverager"]

# The world size each launcher announces: Open MPI's mpirun, MPICH/Intel MPI's hydra (PMI), PMIx, and Slurm's
# srun (the step's tasks: a batch script itself is a step of one task, whatever its allocation's --ntasks).
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")


def launcher_size(environ=os.environ):
    """The number of ranks an MPI launcher started, from its environment (1 when there is none)."""
    for name in _SIZE_VARIABLES:
        try:
            return max(1, int(environ[name]))
        except (KeyError, ValueError):
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
        self.MPI = MPI                    # imported once, here: a one-rank World never imports it
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
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)

    def allreduce_max(self, value):
        if not self.parallel:
            return value
        return self.comm.allreduce(value, op=self.MPI.MAX)

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


def data_share(train):
    """(first record, stride) of this rank's share of a data layer's source: in TRAIN, rank r of N takes
    records r, r+N, r+2N, ... (Caffe 1.0's rule); a TEST net (tested on rank 0 alone) reads them all."""
    ranks = world()
    return (ranks.rank, ranks.size) if train else (0, 1)


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


class GradientAverager:
    """Averages a net's parameter gradients over the ranks, as DDP and Horovod do: the gradients go out in
    buckets of about ``bucket_bytes``, each all-reduced (non-blocking) as soon as the backward of every layer
    that writes into it has run, so communication overlaps the rest of backward; :meth:`finish` waits for them
    and divides by the number of ranks.  ``bucket_bytes`` 0: one blocking all-reduce after backward.

    The net calls :meth:`layer_done` after each layer's backward (``Net.after_layer_backward``); the buckets are
    started in the same order on every rank (backward's order, the same net everywhere), as MPI requires.
    """

    def __init__(self, world, net, dtype, bucket_bytes):
        self.world, self.net, self.dtype = world, net, np.dtype(dtype)
        self.params = net.learnable_params
        index_of = {id(p._diff_mem): k for k, p in enumerate(self.params)}
        # A param's gradient is final after the backward of the first layer (in forward order) that writes it.
        ready_at = [len(net.layers)] * len(self.params)
        for i, layer in enumerate(net.layers):
            for blob in layer.blobs:
                k = index_of.get(id(blob._diff_mem))
                if k is not None:
                    ready_at[k] = min(ready_at[k], i)
        order = sorted(range(len(self.params)), key=lambda k: -ready_at[k])      # backward's order
        self.buckets, current, size = [], [], 0
        for k in order:
            current.append(k)
            size += self.params[k].count * self.dtype.itemsize
            if bucket_bytes and size >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.bucket_of = {k: b for b, bucket in enumerate(self.buckets) for k in bucket}
        self.ready_at_layer = {}
        for k, i in enumerate(ready_at):
            self.ready_at_layer.setdefault(i, []).append(k)
        self.buffers = [np.empty(sum(self.params[k].count for k in bucket), self.dtype) for bucket in self.buckets]
        self.overlap = bool(bucket_bytes)
        self.seconds_waiting = 0.0       # time spent in finish(), for the benchmarks
        self.bytes_per_step = sum(b.nbytes for b in self.buffers)
        self._reset()

    def _reset(self):
        self.pending = [len(bucket) for bucket in self.buckets]
        self.requests = [None] * len(self.buckets)
        self.next_to_start = 0

    def layer_done(self, layer_index):
        """Called after layer ``layer_index``'s backward: start every bucket whose gradients are now final."""
        if not self.overlap:
            return
        for k in self.ready_at_layer.get(layer_index, ()):
            self.pending[self.bucket_of[k]] -= 1
        while self.next_to_start < len(self.buckets) and self.pending[self.next_to_start] == 0:
            self._start(self.next_to_start)
        active = [r for r in self.requests[:self.next_to_start] if r is not None]
        if active:
            # Without an asynchronous progress thread, MPI moves a non-blocking collective along only inside
            # MPI calls: a test after each layer keeps the buckets in flight while backward runs.
            self.world.MPI.Request.Testall(active)

    def _start(self, b):
        buffer, offset = self.buffers[b], 0
        for k in self.buckets[b]:
            blob = self.params[k]
            buffer[offset:offset + blob.count] = blob.cpu_diff().reshape(-1)
            offset += blob.count
        MPI = self.world.MPI
        self.requests[b] = self.world.comm.Iallreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        self.next_to_start = b + 1

    def finish(self):
        """Start what backward did not (layers it skipped), wait for every bucket, write the averages back."""
        start = time.perf_counter()
        while self.next_to_start < len(self.buckets):
            self._start(self.next_to_start)
        self.world.MPI.Request.Waitall([r for r in self.requests if r is not None])
        scale = self.dtype.type(1.0 / self.world.size)
        for bucket, buffer in zip(self.buckets, self.buffers):
            offset = 0
            for k in bucket:
                blob = self.params[k]
                np.multiply(buffer[offset:offset + blob.count], scale, out=blob.mutable_cpu_diff().reshape(-1))
                offset += blob.count
        self.seconds_waiting += time.perf_counter() - start
        self._reset()
