"""Compile every CUDA kernel dltrain launches to PTX (and, with ptxas, to SASS), without a GPU.

    python bench/cuda_compile_check.py [--cc 9.0] [--tests tests/test_cuda_x.py ...] [--record-only FILE] [--from FILE]

Numba's CUDA simulator does no type inference, so a kernel that mixes
types in a way the real CUDA target refuses passes the simulator tests.
This check closes that gap on a machine without a GPU:

1. record: the CUDA tests (tests/test_cuda_*.py) run under the simulator
   in a subprocess, with every kernel launch's argument types recorded;
2. compile: each recorded (kernel, argument types) is compiled for the real
   target with ``numba.cuda.compile_ptx`` (needs NVVM: numba-cuda with the
   CUDA toolkit, e.g. ``pip install 'numba-cuda[cu12]'``, or a system
   toolkit), and, where ``ptxas`` is found, assembled for the given compute
   capability to report registers, local-memory stack frames and spills of
   every variant of the tiled matrix product.

Exit status 0 when every kernel compiles.
"""
import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
def _tests():
    import glob
    chosen = os.environ.get("DLTRAIN_COMPILE_CHECK_TESTS")
    if chosen:
        return [os.path.abspath(path) for path in chosen.split(os.pathsep)]
    return sorted(glob.glob(os.path.join(ROOT, "tests", "test_cuda_*.py")))


# --- recording (runs under the simulator, as a pytest plugin) -------------------------------------

class _Recorder:
    """pytest plugin: wraps the simulator's kernel call to note (kernel, argument types)."""

    def __init__(self, path):
        self.path = path
        self.seen = set()

    def pytest_configure(self, config):
        import numba
        from numba.cuda.simulator import kernel as sim_kernel
        recorder = self
        original = sim_kernel.FakeCUDAKernel.__call__

        def call(kern, *args):
            if not kern._device:
                try:
                    types = tuple(numba.typeof(_host(a)) for a in args)
                    key = getattr(kern, "_dltrain_key", None)
                    name = (kern.fn.__module__, kern.fn.__qualname__, kern.fn.__code__.co_filename)
                    recorder.seen.add((name, key, types))
                except Exception as err:          # never break the tests
                    print(f"cuda_compile_check: could not record {kern}: {err}", file=sys.stderr)
            return original(kern, *args)
        sim_kernel.FakeCUDAKernel.__call__ = call

    def pytest_unconfigure(self, config):
        with open(self.path, "wb") as f:
            pickle.dump(sorted(self.seen, key=repr), f)


def _host(arg):
    array = getattr(arg, "_ary", None)
    return array if array is not None else arg


def record(path):
    import pytest
    code = pytest.main(["-q", "-p", "no:cacheprovider", *_tests()],
                       plugins=[_Recorder(path)])
    return int(code)


# --- compiling (the real CUDA target) -----------------------------------------------------------------

def _ptxas():
    found = shutil.which("ptxas")
    if found:
        return found
    try:
        import nvidia.cuda_nvcc
        candidate = os.path.join(os.path.dirname(nvidia.cuda_nvcc.__file__), "bin", "ptxas")
        return candidate if os.path.exists(candidate) else None
    except ImportError:
        return None


def _no_driver_device(cc):
    """Without a driver, numba-cuda asks the current device for its compute capability when it
    compiles a (non-inlined) device function; answer with ``cc``."""
    try:
        from numba.cuda import dispatcher
    except ImportError:
        return

    class _Device:
        compute_capability = cc
        name = f"(no device: compiling for sm_{cc[0]}{cc[1]})"
    try:
        dispatcher.get_current_device()
    except Exception:
        dispatcher.get_current_device = lambda: _Device


def _dispatcher(module, qualname, key, filename):
    """The kernel a recording names: a module attribute, or one a factory makes (``key``:
    (module, function, args) to call again; the GEMM's key is its variant)."""
    import importlib
    if key is not None and isinstance(key, tuple) and len(key) == 3 and isinstance(key[0], str) \
            and isinstance(key[2], tuple) and key[0].startswith(("dltrain.layers.", "dltrain.solvers.", "dlcore.")):
        factory = getattr(importlib.import_module(key[0]), key[1])
        return factory(*key[2]), f"{key[0]}.{key[1]}{key[2]}"
    if key is not None:
        from dltrain.layers import kernels_cuda
        return kernels_cuda._kernel_for(*key)[0], f"gemm{key}"
    try:
        obj = importlib.import_module(module)
    except ModuleNotFoundError:
        # a module a test wrote to a temporary folder (docs/ARCHITECTURE.md's example): import it from there
        sys.path.insert(0, os.path.dirname(filename))
        obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj, f"{module}.{qualname}"


def compile_all(entries, cc):
    from numba import cuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        raise SystemExit("the compile step must run without NUMBA_ENABLE_CUDASIM")
    _no_driver_device(cc)
    ptxas = _ptxas()
    failures = 0
    done = set()
    for (module, qualname, filename), key, types in entries:
        try:
            dispatcher, label = _dispatcher(module, qualname, key, filename)
        except Exception as err:
            failures += 1
            print(f"FAIL {module}.{qualname}: cannot find the kernel ({type(err).__name__}: {err}); a kernel made "
                  "by a factory needs a _dltrain_key (see layers/kernels_cuda.py)")
            continue
        ident = (label, types)
        if ident in done:
            continue
        done.add(ident)
        try:
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, types, cc=cc)
        except Exception as err:
            failures += 1
            print(f"FAIL {label} {types}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        info = ""
        if ptxas and (key is not None or "<locals>" in qualname):
            with tempfile.TemporaryDirectory() as folder:
                src = os.path.join(folder, "k.ptx")
                with open(src, "w") as f:
                    f.write(ptx)
                out = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", src, "-o", os.path.join(folder, "k.o")],
                                     capture_output=True, text=True)
                stats = [line.split("info    :")[-1].strip() for line in out.stderr.splitlines()
                         if "registers" in line or "spill" in line]
                info = "  [" + "; ".join(stats) + "]"
        print(f"ok   {label} ({', '.join(str(t) for t in types[:6])}{', ...' if len(types) > 6 else ''}){info}")
    return failures, len(done)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (default 9.0: H100/H200)")
    parser.add_argument("--tests", nargs="+", metavar="FILE",
                        help="record the launches of these test files only (default: tests/test_cuda_*.py)")
    parser.add_argument("--record-only", metavar="FILE", help="(internal) record the launches into FILE and stop")
    parser.add_argument("--from", dest="source", metavar="FILE", help="compile the launches recorded in FILE")
    args = parser.parse_args()
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    if args.record_only:
        os.chdir(ROOT)
        raise SystemExit(record(args.record_only))
    path = args.source
    if path is None:
        path = os.path.join(tempfile.mkdtemp(), "launches.pkl")
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        if args.tests:
            env["DLTRAIN_COMPILE_CHECK_TESTS"] = os.pathsep.join(os.path.abspath(t) for t in args.tests)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--record-only", path], env=env, cwd=ROOT)
        if proc.returncode != 0:
            print(f"(the simulator tests exited {proc.returncode}; compiling what was recorded)")
    with open(path, "rb") as f:
        entries = pickle.load(f)
    cc = tuple(int(x) for x in args.cc.split("."))
    failures, count = compile_all(entries, cc)
    print(f"{count - failures} of {count} kernel variants compiled for sm_{cc[0]}{cc[1]}"
          + (f"; {failures} FAILED" if failures else ""))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
