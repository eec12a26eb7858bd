"""Two streams of work on two cores, for the RNN layer (layers/recurrent.py; the LSTM splits its steps
across Numba's threads instead).

A step's matrix product (G x H by H x N) is too small to split across BLAS
threads well, and a BLAS that spreads it over two threads waits for both at
every step: on a machine whose cores are busy with other jobs that wait
costs more than the product (measured: 3-4x slower than one thread).  So the
recurrent layers call BLAS single-threaded (layers/blas_threads.py) and use
the second core for the work that does not depend on the recurrence, on a
worker thread: half of the input projection in forward.  numpy's BLAS
releases the GIL.  DLTRAIN_RNN_OVERLAP=0 turns the
worker off.  Without a BLAS whose threads can be limited, or on one core,
everything runs in order on the calling thread, with BLAS's own threading.
"""
import os
import queue
import threading

from . import blas_threads


class Worker:
    """One daemon thread running submitted callables in order, with BLAS single-threaded."""

    def __init__(self):
        self._tasks = queue.SimpleQueue()
        self._done = queue.SimpleQueue()
        self._pending = 0
        threading.Thread(target=self._run, name="dltrain-recurrent", daemon=True).start()

    def _run(self):
        if blas_threads.limits_are_per_thread():            # else the caller's limit covers this thread
            blas_threads.single_threaded().__enter__()          # for this thread's life
        while True:
            fn, args = self._tasks.get()
            try:
                fn(*args)
                self._done.put(None)
            except BaseException as err:            # handed to the caller in wait()
                self._done.put(err)

    def submit(self, fn, *args):
        self._pending += 1
        self._tasks.put((fn, args))

    def wait(self):
        error = None
        while self._pending:
            result = self._done.get()
            self._pending -= 1
            error = error or result
        if error is not None:
            raise error


class Streams:
    """Context for one forward or backward: BLAS single-threaded here, a worker for side work.

    ``run(fn, *args)`` runs ``fn`` on the worker (or at once, without one);
    leaving the context waits for the worker and restores BLAS's threads.
    Small layers (below ``min_work`` multiply-adds per pass) run everything
    in order on the calling thread: handing work over costs tens of us.
    """

    _worker = None
    _ready = False
    _busy = threading.Lock()          # one user of the worker at a time (other threads run in order)
    enabled = os.environ.get("DLTRAIN_RNN_OVERLAP", "1") != "0"     # off: everything in order
    min_work = 1 << 22

    def __init__(self, work=None):
        self.work = work

    @classmethod
    def _setup(cls):
        if not cls._ready:
            cls._ready = True
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 1
            if cores > 1 and blas_threads.controllable():
                cls._worker = Worker()

    def __enter__(self):
        self._setup()
        big = self.work is None or self.work >= self.min_work
        self.worker = None
        if self.enabled and big and self._worker is not None and self._busy.acquire(blocking=False):
            self.worker = self._worker
            self._blas = blas_threads.single_threaded()
            self._blas.__enter__()
        return self

    def run(self, fn, *args):
        if self.worker is not None:
            self.worker.submit(fn, *args)
        else:
            fn(*args)

    def wait(self):
        if self.worker is not None:
            self.worker.wait()

    def __exit__(self, *exc):
        if self.worker is None:
            return False
        try:
            self.wait()
        finally:
            self._blas.__exit__(None, None, None)
            self._busy.release()
        return False
