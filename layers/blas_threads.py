"""BLAS thread control (threadpoolctl), for the recurrent layers' two streams of work (layers/overlap.py).

``controllable()`` says whether a BLAS whose threads can be limited is
loaded (NumPy's OpenBLAS, MKL, BLIS ...); ``single_threaded()`` is a context
in which BLAS calls from this thread run on one thread, restored on exit;
``limits_are_per_thread()`` says how far such a limit reaches.

How far the limit reaches depends on the library (threadpoolctl's notes):
an OpenMP BLAS limits the calling thread only; OpenBLAS with its own
pthreads pool (NumPy's wheels) has one process-wide setting, which
threadpoolctl lets one thread at a time change, so a limit set by another
thread meanwhile is a no-op (it is already in force).
"""
import contextlib
import importlib
import os
import threading

_lock = threading.Lock()
_controllers = {}         # module whose BLAS is meant -> its controller, or False: none threadpoolctl can control


def numpy_blas_files():
    """The files of the BLAS libraries NumPy's np.matmul calls (threadpoolctl's view), or []."""
    blas = _blas()
    return [lib.filepath for lib in blas.lib_controllers] if blas else []


def _controller_of(package):
    """threadpoolctl's controller of the BLAS libraries under ``package``'s folder (else of every BLAS
    loaded), or False if there is none it can control."""
    from threadpoolctl import ThreadpoolController
    blas = ThreadpoolController().select(user_api="blas")
    home = os.path.dirname(os.path.dirname(os.path.realpath(package.__file__)))
    own = [lib.filepath for lib in blas.lib_controllers
           if os.path.realpath(lib.filepath).startswith(os.path.join(home, package.__name__))]
    blas = blas.select(filepath=own) if own else blas
    return blas if blas.lib_controllers else False


def _controller_for(module):
    """The controller of the BLAS that ``module`` loads (``module`` imported first), looked for once."""
    if module not in _controllers:
        with _lock:
            if module not in _controllers:
                importlib.import_module(module)
                _controllers[module] = _controller_of(importlib.import_module(module.partition(".")[0]))
    return _controllers[module]


def _blas():
    """The controller of NumPy's BLAS (the one np.matmul calls)."""
    return _controller_for("numpy")


def _numba_blas():
    """The controller of the BLAS that Numba's np.dot calls: SciPy's own, which
    scipy.linalg.cython_blas loads."""
    return _controller_for("scipy.linalg.cython_blas")


def _one_thread(blas):
    return blas.limit(limits=1, user_api="blas") if blas else contextlib.nullcontext()


def controllable():
    """Whether a BLAS whose thread count can be set is loaded."""
    return bool(_blas())


def limits_are_per_thread():
    """Whether a limit set in one thread leaves the others alone: OpenBLAS or BLIS built on OpenMP.
    Otherwise (OpenBLAS's own pthreads pool, MKL) one setting holds for the whole process."""
    blas = _blas()
    return bool(blas) and all(lib["internal_api"] in ("openblas", "blis") and lib.get("threading_layer") == "openmp"
                              for lib in blas.info())


def thread_counts():
    """The thread count of each controlled library now (empty without one)."""
    blas = _blas()
    return [lib["num_threads"] for lib in blas.info()] if blas else []


def single_threaded():
    """Context: BLAS single-threaded for the calling thread (a no-op without a controllable BLAS)."""
    return _one_thread(_blas())


def numba_single_threaded():
    """Context: the BLAS behind Numba's np.dot on one thread (Numba's own threads run the products
    side by side; a BLAS spreading each one over more threads would compete with them)."""
    return _one_thread(_numba_blas())
