"""One installed namespace: a user's own `layers.py`, `solvers.py`, `proto.py`, `cli.py` and a plain
`caffe/` folder on the path never shadow dltrain, and dltrain never shadows them.

Run in fresh processes, with those files in the working folder and on PYTHONPATH, as a Caffe user
keeps them (``python_param { module: "layers" }``).
"""
import os
import subprocess
import sys
import textwrap

import pytest

USER_LAYERS = '''
"""A user's Python layers, in a module called `layers` as Caffe's examples name it."""
import caffe


class Double(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff
'''

# Imported by mistake, these would say so.
DECOY = 'raise ImportError("the user\'s own {name}.py was imported by dltrain")\n'

NET = '''
name: "user"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "double" type: "Python" bottom: "ip" top: "double"
        python_param { module: "layers" layer: "Double" } }
layer { name: "relu" type: "ReLU" bottom: "double" top: "double" }
'''

SCRIPT = '''
import numpy as np
import caffe
import dltrain
import layers
assert layers.__file__.startswith({folder!r}), layers.__file__
assert caffe.Net is dltrain.Net, caffe
net = caffe.Net("net.prototxt", caffe.TEST)
net.blobs["data"].data[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
out = net.forward()
ip = net.blobs["ip"].data
assert np.allclose(out["double"], np.maximum(2 * ip, 0)), (out, ip)
print("user files OK")
'''


@pytest.fixture
def user_folder(tmp_path):
    (tmp_path / "layers.py").write_text(USER_LAYERS)
    for name in ("solvers", "proto", "cli"):
        (tmp_path / f"{name}.py").write_text(DECOY.format(name=name))
    clone = tmp_path / "caffe" / "python"          # a Caffe source clone: a plain folder, no __init__.py
    clone.mkdir(parents=True)
    (clone / "README.txt").write_text("not a package\n")
    (tmp_path / "net.prototxt").write_text(NET)
    return tmp_path


def _run(folder, *command):
    env = dict(os.environ, PYTHONPATH=str(folder))
    env.pop("DLTRAIN_NO_CAFFE_SHIM", None)
    return subprocess.run(list(command), cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_python_layer_and_import_caffe_beside_user_files(user_folder):
    proc = _run(user_folder, sys.executable, "-c", SCRIPT.format(folder=str(user_folder)))
    assert proc.returncode == 0, proc.stderr
    assert "user files OK" in proc.stdout


def test_dltrain_time_beside_user_files(user_folder):
    proc = _run(user_folder, sys.executable, "-m", "dltrain", "time", "--model", "net.prototxt", "--iterations", "2")
    assert proc.returncode == 0, proc.stderr
    assert "Average Forward pass" in proc.stderr


def test_no_generic_top_level_names_installed(tmp_path):
    # Outside the repository (nothing of ours on the path but what is installed).
    code = textwrap.dedent('''
        import importlib.util
        found = [name for name in ("layers", "solvers", "proto", "cli") if importlib.util.find_spec(name)]
        print("found:", found)
        raise SystemExit(1 if found else 0)
    ''')
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_failed_catalog_import_is_reported_as_itself(monkeypatch):
    """The registry marks the built-ins loaded only after they loaded: a failure repeats as itself."""
    import importlib

    from dlcore import registry
    monkeypatch.setattr(registry, "_builtins_loaded", False)
    real_import = importlib.import_module

    def broken(name, *args):
        if name == "dltrain.layers":
            raise ImportError("numba cache is corrupt")
        return real_import(name, *args)
    monkeypatch.setattr(registry.importlib, "import_module", broken)
    for _ in range(2):
        with pytest.raises(ImportError, match="numba cache is corrupt"):
            registry.get_layer_class("Input")
    assert registry._builtins_loaded is False
