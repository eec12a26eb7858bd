"""The backend: which device nets run on (Caffe's Caffe::mode() and Caffe::SetDevice).

``set_mode_cpu()`` (the default) runs every layer's ``forward_cpu`` /
``backward_cpu`` on NumPy arrays.  ``set_mode_gpu()`` makes nets built from
then on run on an NVIDIA GPU through Numba's CUDA target: blobs keep device
copies of their data (see :class:`dlcore.blob.SyncedMemory`), layers with
CUDA kernels call ``forward_gpu`` / ``backward_gpu``, the others run their
CPU code on host copies.  ``set_device(i)`` picks the GPU.

Nothing here imports ``numba.cuda`` until the GPU is asked for: a CPU run
never loads it.  Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1`` set
before numba is imported) counts as one device, so the GPU code paths can
be tested on a machine without a GPU.
"""
import ctypes
import importlib.util
import os

from .errors import DLTrainError

CPU, GPU = "cpu", "gpu"

_mode = CPU
_device_id = 0
_selected = None          # the device id numba.cuda was last told to use


def simulator_enabled():
    """Is Numba's CUDA simulator on?  (Read from the environment: no import.)"""
    value = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip()
    return value not in ("", "0")


def _driver_library_found():
    """Can the CUDA driver library (libcuda) be loaded?  (Cheap: no numba.cuda import.)"""
    candidates = [os.environ["NUMBA_CUDA_DRIVER"]] if os.environ.get("NUMBA_CUDA_DRIVER") else []
    candidates += ["libcuda.so.1", "libcuda.so", "/usr/lib/wsl/lib/libcuda.so.1", "nvcuda.dll",
                   "/usr/local/cuda/compat/libcuda.so.1"]
    for name in candidates:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def gpu_available(device_id=None):
    """(True, description) if a usable GPU (or the simulator) is there, else (False, reason).

    The reason names what is missing: numba's CUDA target, the NVIDIA
    driver, a CUDA device, or a device with that id.
    """
    device_id = _device_id if device_id is None else int(device_id)
    if device_id < 0:
        return False, f"GPU device id must be >= 0 (got {device_id})"
    if importlib.util.find_spec("numba") is None or _cuda_spec() is None:
        return False, ("numba's CUDA target (numba.cuda) is not installed; install it with "
                       "pip install 'dltrain[cuda]' (NVIDIA's numba-cuda)")
    sim = simulator_enabled()
    if not sim and not _driver_library_found():
        return False, ("no NVIDIA driver found (libcuda.so cannot be loaded); install the NVIDIA driver, "
                       "or set NUMBA_CUDA_DRIVER to the library's path")
    try:
        cuda = _import_cuda()
    except Exception as err:      # a broken install: say what failed
        return False, f"numba.cuda cannot be imported ({type(err).__name__}: {err})"
    try:
        if not cuda.is_available():
            return False, "the NVIDIA driver found no usable CUDA device"
        count = len(cuda.gpus)
    except Exception as err:
        return False, f"the CUDA driver could not be initialised ({_first_line(err)})"
    if count == 0:
        return False, "the NVIDIA driver found no CUDA device"
    if device_id >= count:
        return False, (f"GPU device id {device_id} is out of range: {count} CUDA device"
                       f"{'s' if count != 1 else ''} found (ids 0..{count - 1})")
    return True, device_name(device_id)


def _first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _cuda_spec():
    try:
        return importlib.util.find_spec("numba.cuda")
    except (ImportError, ValueError):
        return None


def _import_cuda():
    from numba import cuda
    return cuda


def cuda_module():
    """The ``numba.cuda`` module (imported on first use)."""
    return _import_cuda()


def device_name(device_id=None):
    """The name of GPU ``device_id`` ('SIMULATOR' under the simulator)."""
    device_id = _device_id if device_id is None else int(device_id)
    cuda = _import_cuda()
    if simulator_enabled():
        return "SIMULATOR"
    try:
        with cuda.gpus[device_id]:
            name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return f"CUDA device {device_id}"


def require_gpu(device_id=None, what="the GPU"):
    """Check that GPU ``device_id`` is usable; a DLTrainError naming what is missing if not."""
    ok, reason = gpu_available(device_id)
    if not ok:
        raise DLTrainError(f"{what} was asked for but cannot be used: {reason}")
    return reason


def select_device(device_id=None):
    """Make ``device_id`` numba's current CUDA device (once per id)."""
    global _selected
    device_id = _device_id if device_id is None else int(device_id)
    if _selected == device_id:
        return
    cuda = _import_cuda()
    if not simulator_enabled():
        cuda.select_device(device_id)
    _selected = device_id


def set_mode_cpu():
    """Run nets built from now on on the CPU (Caffe's set_mode_cpu)."""
    global _mode
    _mode = CPU


def set_mode_gpu(device_id=None):
    """Run nets built from now on on the GPU (Caffe's set_mode_gpu).

    Raises a DLTrainError naming what is missing when no usable GPU is
    found (no numba.cuda, no driver, no device, a device id out of range).
    """
    global _mode, _device_id
    if device_id is not None:
        _device_id = int(device_id)
    require_gpu(_device_id)
    select_device(_device_id)
    _mode = GPU


def set_device(device_id):
    """Choose the GPU (Caffe's set_device).  Checked when the GPU mode is (or already is) in force."""
    global _device_id
    device_id = int(device_id)
    if device_id < 0:
        raise DLTrainError(f"GPU device id must be >= 0 (got {device_id})")
    _device_id = device_id
    if _mode == GPU:
        require_gpu(device_id)
        select_device(device_id)


def get_mode():
    """'cpu' or 'gpu'."""
    return _mode


def get_device():
    return _device_id


def is_gpu():
    return _mode == GPU
