"""GPU dispatch in one place: the Layer base finds each layer's GPU code through ``cuda_module``.

The structure checks run in every suite run; the lookup of every built-in layer's GPU code runs
under the CUDA simulator (or on a real GPU), where the CUDA modules can be imported.
"""
import ast
import glob
import os

import pytest

from cuda_support import needs_cuda

LAYERS = os.path.join(os.path.dirname(__file__), "..", "layers")


def _builtin_classes():
    from dlcore.plugins import is_plugin_class
    from dlcore.registry import get_layer_class, layer_types
    classes = [get_layer_class(name) for name in layer_types()]
    return [cls for cls in classes if not is_plugin_class(cls)]


def _cuda_modules(cls):
    return [klass.__dict__["cuda_module"] for klass in cls.__mro__ if klass.__dict__.get("cuda_module")]


def test_builtin_layer_classes_hold_no_gpu_methods():
    for cls in _builtin_classes():
        for klass in cls.__mro__[:-1]:
            if klass.__module__.startswith("dltrain.layers."):
                assert "forward_gpu" not in klass.__dict__ and "backward_gpu" not in klass.__dict__, \
                    f"{klass.__qualname__}: GPU code belongs in its cuda_module, registered with @gpu_forward"


def test_cpu_modules_never_import_cuda_modules():
    for path in glob.glob(os.path.join(LAYERS, "*.py")):
        if path.endswith("_cuda.py"):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            bad = [name for name in names if name.split(".")[-1].endswith("_cuda") or name == "numba.cuda"]
            assert not bad, f"{os.path.basename(path)}:{node.lineno} imports {bad}: a CPU run must not load CUDA code"


@needs_cuda
def test_every_layer_naming_a_cuda_module_finds_its_gpu_code():
    missing = [cls.type for cls in _builtin_classes()
               if cls.gpu_capable and _cuda_modules(cls) and not cls.has_gpu_forward()]
    assert not missing, f"layers naming a cuda_module without registered GPU forward code: {missing}"


@needs_cuda
def test_layers_without_a_cuda_module_run_their_cpu_code():
    from dlcore.registry import get_layer_class
    for name in ("Input", "Python", "HDF5Data"):
        assert not get_layer_class(name).has_gpu_forward(), name


@pytest.mark.parametrize("relative, owner, expected", [
    (".neurons_cuda", "dltrain.layers.neurons", "dltrain.layers.neurons_cuda"),
    (".gram_cuda", "gram", "gram_cuda"),
    ("pkg.mod_cuda", "anything.else", "pkg.mod_cuda"),
])
def test_cuda_module_names_resolve_beside_the_class(relative, owner, expected):
    from dlcore.layer import _sibling
    assert _sibling(relative, owner) == expected
