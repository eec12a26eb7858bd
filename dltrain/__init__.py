"""dltrain: Caffe-style training with every layer a Numba kernel.

The installed namespace.  Its subpackages are the repository's folders:

* ``dltrain.proto``   Caffe's schema (``caffe_pb2``),
* ``dltrain.layers``  the layer catalog,
* ``dltrain.solvers`` the training loop and the update rules,
* ``dltrain.cli``     the ``dltrain`` command;

the engine is the package ``dlcore`` (``Net``, ``Blob``, ``Layer``, the
registry).  The public API mirrors pycaffe: ``dltrain.Net``,
``dltrain.get_solver``, ``dltrain.TRAIN``, ``dltrain.TEST``,
``set_mode_cpu``/``set_mode_gpu``...

The names are looked up on first use (PEP 562), because ``dlcore`` itself
imports ``dltrain.proto``: importing this package never imports the engine.
"""
import importlib

# public name -> the module that defines it
_PUBLIC = {name: "dlcore" for name in (
    "Blob", "ConfigError", "DLTrainError", "Layer", "Net", "Param", "PluginError", "TEST", "TRAIN",
    "create_layer", "get_device", "get_mode", "gpu_available", "layer_types", "load_plugins", "register_layer",
    "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed")}
_PUBLIC.update({name: "dltrain.solvers" for name in ("get_solver", "solver_types")})

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'dltrain' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
