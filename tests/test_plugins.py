"""Native plugin layers: parameter schemas, discovery (entry points, dltrain.yaml,
--plugin), type clashes, errors from plugin code, the `caffe` face, and the
example plugin package in configs/plugins."""
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dltrain_caffe.fallback  # noqa: F401  (`import caffe` even where dltrain's .pth is not installed)
from dltrain.cli.main import _normalize_argv, main
from dlcore import (TEST, TRAIN, ConfigError, DLTrainError, Layer, Net, Param, PluginError, create_layer,
                    get_layer_class, load_plugins, register_layer)
from dlcore import plugins, registry
from dlcore.params import parse_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRAM_PACKAGE = os.path.join(ROOT, "configs", "plugins", "dltrain-gram")
_counter = itertools.count()


@pytest.fixture
def isolated(monkeypatch):
    """Registry, plugin bookkeeping, sys.path and sys.modules restored after the test."""
    registry._load_builtins()
    monkeypatch.setattr(registry, "_LAYERS", dict(registry._LAYERS))
    monkeypatch.setattr(plugins, "_loaded", [])
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    monkeypatch.setattr(plugins, "_entry_point_failures", [])
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv(plugins.ALLOW_PROJECT_PLUGINS_ENV, raising=False)
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("plug_", "dltrain_gram")):
            del sys.modules[name]


def unique(prefix="plug"):
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


PLUGIN = '''
"""A test plugin: y = k * x, with a schema, and failures on request."""
import numpy as np

from dlcore import Layer, Param, register_layer


@register_layer("TYPE")
class ScaleBy(Layer):
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    params = {
        "k": Param(float, 2.0),
        "fail": Param(str, "never", choices=("never", "forward", "backward")),
        "fail_after": Param(int, 0, check=lambda v: v >= 0, why="must not be negative"),
    }
    calls = 0

    def reshape(self, bottom, top):
        top[0].reshape_like(bottom[0])

    def forward_cpu(self, bottom, top):
        ScaleBy.calls += 1
        if self.fail == "forward" and ScaleBy.calls > self.fail_after:
            raise ZeroDivisionError("plugin forward exploded")
        top[0].data[...] = self.k * bottom[0].data

    def backward_cpu(self, top, propagate_down, bottom):
        if self.fail == "backward":
            raise IndexError("plugin backward exploded")
        if propagate_down[0]:
            bottom[0].diff[...] = self.k * top[0].diff
'''


def write_plugin(folder, type_name=None, module=None):
    module = module or unique()
    type_name = type_name or "T" + module.replace("_", "")
    (folder / f"{module}.py").write_text(PLUGIN.replace("TYPE", type_name))
    return module, type_name


# --- parameter schemas -------------------------------------------------------------------------
SCHEMA = {
    "k": Param(float, 1.0),
    "n": Param(int, 3, check=lambda v: v > 0, why="must be positive"),
    "mode": Param(str, "a", choices=("a", "b")),
    "flag": Param(bool, False),
    "sizes": Param([int], [1, 2]),
    "name": Param(str),
}


def test_params_defaults_and_conversions():
    values = parse_params(SCHEMA, "name: x\nk: 1e-3\nsizes: 4", "l", "T")
    assert values == {"name": "x", "k": 1e-3, "n": 3, "mode": "a", "flag": False, "sizes": [4]}
    values = parse_params(SCHEMA, "{name: y, k: 2, n: 5, mode: b, flag: yes, sizes: [3, 4]}")
    assert values["k"] == 2.0 and isinstance(values["k"], float) and values["flag"] is True
    assert values["sizes"] == [3, 4]


@pytest.mark.parametrize("text, message", [
    ("k: 1", "parameter 'name' is required"),
    ("name: x\nn: 0", "parameter 'n': 0 must be positive"),
    ("name: x\nn: 2.5", "parameter 'n': expected an integer, got 2.5"),
    ("name: x\nn: true", "parameter 'n': expected an integer, got true"),
    ("name: x\nflag: 1", "parameter 'flag': expected a boolean (true/false), got 1"),
    ("name: 3", "parameter 'name': expected a string, got 3 (a number; quote it)"),
    ("name: x\nmode: c", "parameter 'mode': 'c' is not one of: a, b"),
    ("name: x\nsizes: [1, x]", "parameter 'sizes': expected an integer, got 'x'"),
    ("name: x\nk: [1]", "parameter 'k': expected a number, got a list"),
    ("name: x\nsize: 1", "unknown parameter 'size' in param_str (known parameters: k, n, mode, flag, sizes, name)"),
    ("name: [x", "param_str is not valid YAML at line 1"),
    ("12", "param_str must be a YAML mapping of parameters (name: value, ...), got a number"),
])
def test_params_errors_name_the_layer_and_the_parameter(text, message):
    with pytest.raises(ConfigError) as info:
        parse_params(SCHEMA, text, "mylayer", "MyType")
    assert str(info.value).startswith("layer 'mylayer' (MyType): ")
    assert message in str(info.value)


def test_param_declaration_errors():
    with pytest.raises(TypeError):
        Param(dict)
    with pytest.raises(TypeError):
        Param([int, float])
    assert Param(float, 1.0, why="must be positive", doc="gain").describe() == \
        "float, default 1.0, must be positive: gain"


def test_param_names_must_not_clash_with_layer_attributes(isolated):
    @register_layer(unique("Clashy"))
    class Clashy(Layer):
        params = {"blobs": Param(int, 1)}

        def reshape(self, bottom, top):
            pass

    with pytest.raises(ConfigError, match="parameter name 'blobs' clashes"):
        create_layer(f'name: "c" type: "{Clashy.type}"').initialize([], [])


def test_bad_plugin_parameter_in_a_net_file_names_file_line_layer_parameter(isolated, tmp_path):
    module, type_name = write_plugin(tmp_path)
    load_plugins([str(tmp_path / f"{module}.py")], plugins.ProjectConfig(), entry_points=False)
    net = tmp_path / "net.prototxt"
    net.write_text(textwrap.dedent(f"""\
        name: "n"
        input: "data" input_shape {{ dim: 2 dim: 3 }}
        layer {{ name: "scale" type: "{type_name}" bottom: "data" top: "out"
                python_param {{ param_str: "k: lots" }} }}
        """))
    with pytest.raises(ConfigError) as info:
        Net(str(net), TRAIN)
    assert str(info.value) == (f"{net}:3: layer 'scale' ({type_name}): parameter 'k': expected a number, "
                               "got 'lots'")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- registration and clashes ----------------------------------------------------------------------
def test_plugin_type_clashing_with_a_builtin_names_both(isolated):
    with pytest.raises(ConfigError) as info:
        @register_layer("ReLU")
        class MyReLU(Layer):
            pass
    text = str(info.value)
    assert "layer type 'ReLU' is registered twice" in text
    assert "built-in layer dltrain.layers.neurons.ReLULayer" in text and "plugin test_plugins" in text and "MyReLU" in text


def test_two_plugins_registering_one_type_is_an_error_naming_both(isolated, in_tmp):
    first, type_name = write_plugin(in_tmp)
    second, _ = write_plugin(in_tmp, type_name)
    load_plugins([first], plugins.ProjectConfig(), entry_points=False)     # found in the working directory
    with pytest.raises(DLTrainError) as info:
        load_plugins([second], plugins.ProjectConfig(), entry_points=False)
    text = str(info.value)
    assert f"layer type '{type_name}' is registered twice" in text
    assert f"plugin {first}.ScaleBy" in text and f"plugin {second}.ScaleBy" in text
    assert f"plugin '{second}' (from --plugin)" in text


def test_plugin_flag_module_and_file(isolated, in_tmp, capsys):
    module, type_name = write_plugin(in_tmp)
    sub = in_tmp / "more"
    sub.mkdir()
    file_module, file_type = write_plugin(sub)
    assert main(["--plugin", module, "plugins", "--plugin", f"more/{file_module}.py"]) == 0
    out = capsys.readouterr().out
    assert f"  {module} (from --plugin): {type_name}" in out
    assert f"  {file_module} (from --plugin): {file_type}" in out
    assert type_name in out.split("layer types: ")[1]


def test_missing_plugin_module_is_a_clear_error(isolated, in_tmp, capsys):
    assert main(["--plugin", "no_such_plugin_xyz", "plugins"]) == 1
    err = capsys.readouterr().err
    assert "dltrain: error: plugin 'no_such_plugin_xyz' (from --plugin): no module named 'no_such_plugin_xyz'" in err


def test_plugin_that_fails_to_import(isolated, in_tmp, capsys):
    name = unique()
    (in_tmp / f"{name}.py").write_text("import numpy\nraise RuntimeError('broken plugin')\n")
    assert main(["plugins", "--plugin", name]) == 1
    assert f"plugin '{name}' (from --plugin) failed to import: RuntimeError: broken plugin" in \
        capsys.readouterr().err


def test_normalize_argv_skips_option_values():
    assert _normalize_argv(["--plugin", "mod", "solver.prototxt"]) == \
        ["--plugin", "mod", "train", "--solver", "solver.prototxt"]
    assert _normalize_argv(["-config", "x.yaml", "s.yaml"]) == ["--config", "x.yaml", "train", "--solver", "s.yaml"]


# --- the project config -------------------------------------------------------------------------------
def test_project_config_plugins_and_log_dir(isolated, in_tmp, capsys):
    project = in_tmp / "project"
    project.mkdir()
    module, type_name = write_plugin(project)
    (project / "dltrain.yaml").write_text(f"# project settings\nplugins:\n  - {module}\nlog_dir: logs\n")
    assert main(["--config", "project/dltrain.yaml", "plugins"]) == 0
    out = capsys.readouterr().out
    assert f"{module} (from project/dltrain.yaml): {type_name}" in out
    logs = sorted(os.listdir(project / "logs"))
    assert "dltrain.INFO" in logs and any(f.startswith("dltrain.") and ".log.INFO." in f for f in logs)
    text = (project / "logs" / "dltrain.INFO").read_text()
    assert text.startswith("Log file created at: ")


def test_dltrain_yaml_in_the_working_directory_loads_plugins_only_when_allowed(isolated, in_tmp, capsys,
                                                                             monkeypatch):
    module, type_name = write_plugin(in_tmp)
    (in_tmp / "dltrain.yaml").write_text(f"plugins: [{module}]\nlog_dir: logs\n")
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert module not in sys.modules and type_name not in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("W")]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"not loading the plugins listed in dltrain.yaml ({module}): that file was found in the current folder, "
        "not named by you; to load them, pass --config dltrain.yaml or set DLTRAIN_ALLOW_PROJECT_PLUGINS=1")
    assert (in_tmp / "logs" / "dltrain.INFO").exists()      # the rest of the file applies

    monkeypatch.setenv("DLTRAIN_ALLOW_PROJECT_PLUGINS", "1")
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert f"{module} (from dltrain.yaml): {type_name} [{in_tmp / module}.py]" in captured.out
    assert f"loaded plugin {module} (from dltrain.yaml) from {in_tmp / module}.py" in captured.err


def test_dltrain_yaml_named_with_config_loads_its_plugins(isolated, in_tmp, capsys):
    module, type_name = write_plugin(in_tmp)
    (in_tmp / "dltrain.yaml").write_text(f"plugins: [{module}]\n")
    assert main(["--config", "dltrain.yaml", "plugins"]) == 0
    assert f"{module} (from dltrain.yaml): {type_name}" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("plugins: [a]\ndevice: gpu\n", "dltrain.yaml:2: unknown key 'device' (known keys: plugins, log_dir)"),
    ("plugins: {a: 1}\n", "dltrain.yaml:1: 'plugins' must be a list of module names or .py paths"),
    ("plugins: [a\n", "dltrain.yaml:2:1: YAML syntax error: did not find expected ',' or ']'"),
    ("- a\n", "dltrain.yaml: the project config must be a YAML mapping"),
    ("plugins: \xe9t\xe9\n".encode("latin-1"), "dltrain.yaml:1:10: file is not UTF-8 text"),
    (b"\x00\x01\x02binary", "dltrain.yaml:1:1: YAML syntax error: unacceptable character #x0000"),
    ("a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i} {{<<: [{', '.join([f'*a{i - 1}'] * 10)}]}}\n"
                                   for i in range(1, 9)),
     "dltrain.yaml:7:14: YAML too large: more than 2,000,000 nodes here once aliases and merge keys are expanded"),
    (None, "dltrain.yaml: cannot read the project config: it is a directory, not a regular file"),
])
def test_project_config_errors(isolated, in_tmp, capsys, text, message):
    path = in_tmp / "dltrain.yaml"
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    assert main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dltrain: error: ") and message in err


def test_named_config_that_is_missing(isolated, in_tmp, capsys):
    assert main(["plugins", "--config", "nope.yaml"]) == 1
    assert "nope.yaml: project config 'nope.yaml' does not exist" in capsys.readouterr().err


# --- entry points of installed packages -------------------------------------------------------------
def fake_distribution(folder, entry_points, name="fake-plugin"):
    """Make ``folder`` look like site-packages holding an installed package
    with ``entry_points`` ({name: value}) in the dltrain.layers group."""
    dist = folder / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[dltrain.layers]\n{lines}\n")
    sys.path.append(str(folder))


def test_entry_point_plugins_are_found(isolated, tmp_path):
    module, type_name = write_plugin(tmp_path)
    fake_distribution(tmp_path, {"scale": module})
    load_plugins([], plugins.ProjectConfig())
    assert get_layer_class(type_name).__module__ == module
    assert (f"entry point of fake-plugin", module, [type_name]) in plugins.loaded_plugins()


def test_entry_points_load_lazily_for_a_net(isolated, tmp_path):
    module, type_name = write_plugin(tmp_path)
    fake_distribution(tmp_path, {"scale": module})
    layer = create_layer(f'name: "s" type: "{type_name}" python_param {{ param_str: "k: 3" }}')
    assert type(layer).__module__ == module


def test_entry_point_naming_a_class_registers_it(isolated, tmp_path):
    name = unique()
    (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
        from dlcore import Layer

        class Doubler(Layer):
            def reshape(self, bottom, top):
                top[0].reshape_like(bottom[0])

            def forward_cpu(self, bottom, top):
                top[0].data[...] = 2 * bottom[0].data
        """))
    fake_distribution(tmp_path, {"Doubler" + name: f"{name}:Doubler"})
    assert get_layer_class("Doubler" + name).__name__ == "Doubler"


def test_broken_entry_point(isolated, tmp_path, capsys, monkeypatch):
    fake_distribution(tmp_path, {"broken": "no_such_module_for_ep"}, name="broken-plugin")
    with pytest.raises(DLTrainError) as info:
        load_plugins([], plugins.ProjectConfig())
    assert "entry point 'broken = no_such_module_for_ep' of package 'broken-plugin' failed to load" in str(info.value)
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)
    with pytest.raises(ConfigError) as info:        # the library notes it in the unknown-type error
        get_layer_class("NoSuchTypeAnywhere")
    assert "plugins that failed to load" in str(info.value) and "broken-plugin" in str(info.value)


# --- plugin code that raises --------------------------------------------------------------------------
NET = """
name: "n"
force_backward: true
input: "data" input_shape {{ dim: 2 dim: 3 }}
layer {{ name: "scale" type: "{type}" bottom: "data" top: "out" python_param {{ param_str: "{params}" }} }}
"""


def test_plugin_failures_name_layer_type_and_module(isolated, tmp_path):
    module, type_name = write_plugin(tmp_path)
    load_plugins([str(tmp_path / f"{module}.py")], plugins.ProjectConfig(), entry_points=False)
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(type=type_name, params="fail: forward"))
    net = Net(str(path), TRAIN)
    with pytest.raises(ZeroDivisionError) as info:
        net.forward()
    err = info.value
    assert isinstance(err, PluginError)
    assert str(err) == (f"layer 'scale' (type '{type_name}', plugin module '{module}', class ScaleBy) raised in "
                        "forward: ZeroDivisionError: plugin forward exploded")
    assert isinstance(err.__cause__, ZeroDivisionError)

    path.write_text(NET.format(type=type_name, params="fail: backward\\nk: 4"))
    net = Net(str(path), TRAIN)
    out = net.forward(data=np.ones((2, 3)))["out"]
    np.testing.assert_allclose(out, 4)
    with pytest.raises(PluginError, match="raised in backward: IndexError: plugin backward exploded"):
        net.backward()


SOLVER = """net: "net.prototxt"
base_lr: 0.01
lr_policy: "fixed"
display: 0
max_iter: 20
snapshot: 2
snapshot_prefix: "snap/p"
solver_mode: CPU
"""

TRAIN_NET = """
name: "n"
layer {{ name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param {{ shape {{ dim: 4 dim: 3 }} shape {{ dim: 4 }}
                           data_filler {{ type: "gaussian" }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "scale" type: "{type}" bottom: "data" top: "scaled"
        python_param {{ param_str: "fail: forward\\nfail_after: 5" }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "scaled" top: "ip"
        inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_training_run_dying_in_a_plugin_keeps_its_snapshots(isolated, in_tmp, capsys):
    module, type_name = write_plugin(in_tmp)
    (in_tmp / "net.prototxt").write_text(TRAIN_NET.format(type=type_name))
    (in_tmp / "solver.prototxt").write_text(SOLVER)
    code = main(["--plugin", module, "solver.prototxt"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"dltrain: error: layer 'scale' (type '{type_name}', plugin module '{module}'" in err
    assert "raised in forward: ZeroDivisionError" in err
    for it in (2, 4):
        assert (in_tmp / "snap" / f"p_iter_{it}.caffemodel").exists()
        assert (in_tmp / "snap" / f"p_iter_{it}.solverstate").exists()
    assert not (in_tmp / "snap" / "p_iter_6.caffemodel").exists()
    assert not [f for f in os.listdir(in_tmp / "snap") if "tmp" in f or f.startswith(".")]
    Net("net.prototxt", TEST, weights="snap/p_iter_4.caffemodel")

    proc = subprocess.run([sys.executable, "-m", "dltrain.cli.main", "--debug", "--plugin", module, "solver.prototxt"],
                          capture_output=True, text=True, cwd=in_tmp,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, str(in_tmp)])})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and f"{module}.py" in proc.stderr
    assert 'raise ZeroDivisionError("plugin forward exploded")' in proc.stderr
    assert "PluginError(ZeroDivisionError): layer 'scale'" in proc.stderr


# --- the example plugin package ------------------------------------------------------------------------
def test_example_gram_plugin_trains_on_a_short_schedule(isolated, monkeypatch):
    monkeypatch.chdir(ROOT)
    sys.path.insert(0, GRAM_PACKAGE)
    load_plugins(["dltrain_gram.gram"], plugins.ProjectConfig(), entry_points=False)
    from dltrain.solvers import get_solver
    from dlcore.config import load_solver
    param = load_solver("configs/plugins/gram_solver.prototxt", resolve_paths=True)
    param.max_iter = 400
    param.ClearField("snapshot_prefix")
    param.snapshot_after_train = False
    param.test_interval = 1000
    param.display = 0
    solver = get_solver(param)
    solver.solve()
    net = solver.test_nets[0]
    net.share_trained_layers_with(solver.net)
    accuracy = np.mean([float(net.forward()["accuracy"]) for _ in range(3)])
    assert accuracy > 0.6


def test_example_gram_gradcheck_command(isolated, in_tmp, capsys):
    sys.path.insert(0, GRAM_PACKAGE)
    layer_file = os.path.join(ROOT, "configs", "plugins", "gram_layer.prototxt")
    assert main(["gradcheck", layer_file, "--bottom", "2,3,4,5", "--plugin", "dltrain_gram.gram"]) == 0
    assert "gradcheck passed: layer 'gram' (Gram)" in capsys.readouterr().out


# --- `import caffe` -------------------------------------------------------------------------------------
def test_caffe_face():
    import caffe
    import dlcore
    from dltrain.proto import caffe_pb2
    from dltrain.solvers import SGDSolver, get_solver
    assert caffe.Net is dlcore.Net and caffe.get_solver is get_solver and caffe.SGDSolver is SGDSolver
    assert (caffe.TRAIN, caffe.TEST) == (0, 1)
    from caffe.proto import caffe_pb2 as pb2
    assert pb2 is caffe_pb2
    assert "Python" in caffe.layer_type_list()
    caffe.set_mode_cpu()
    caffe.set_device(0)
    caffe.set_random_seed(3)
    assert caffe.solver_count() == 1 and caffe.has_nccl() is False
    from caffe.classifier import Classifier
    assert caffe.Classifier is Classifier
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(caffe.io.array_to_blobproto(arr)), arr)
    datum = caffe.io.array_to_datum(arr.astype(np.uint8), label=3)
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), arr)
    assert datum.label == 3
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([1.0, 2.0, 3.0]))
    image = np.random.default_rng(0).random((4, 5, 3)).astype(np.float32)
    net_input = transformer.preprocess("data", image)
    assert net_input.shape == (3, 4, 5)
    np.testing.assert_allclose(transformer.deprocess("data", net_input), image, rtol=1e-5)


def _run_python(code, extra_path=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DLTRAIN_NO_CAFFE_SHIM")}
    if extra_path:
        env["PYTHONPATH"] = extra_path
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")


def test_import_caffe_never_shadows_a_real_caffe(tmp_path):
    import importlib.util
    if importlib.util.find_spec("_dltrain_caffe_fallback") is None:
        pytest.skip("dltrain is installed without its caffe fallback (reinstall with pip install -e .)")
    real = tmp_path / "real" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text("REAL = True\n")
    shim = _run_python("import caffe; print(caffe.__file__, caffe.dltrain)")
    assert shim.returncode == 0, shim.stderr
    assert "dltrain_caffe" in shim.stdout and "True" in shim.stdout
    on_path = _run_python("import caffe; print(caffe.REAL)", extra_path=str(tmp_path / "real"))
    assert on_path.stdout.strip() == "True", on_path.stderr
    appended = _run_python(f"import sys; sys.path.append({str(tmp_path / 'real')!r}); import caffe; print(caffe.REAL)")
    assert appended.stdout.strip() == "True", appended.stderr


REAL_CAFFE = '''
"""Stands in for a real (Boost.Python) pycaffe."""
REAL = True
TRAIN, TEST = 0, 1


class Layer(object):
    def __init__(self, param):
        raise TypeError("Python argument types did not match C++ signature")

    @property
    def blobs(self):
        raise RuntimeError("no C++ layer")

    @property
    def phase(self):
        raise RuntimeError("no C++ layer")
'''

REAL_USER_LAYER = '''
import caffe


class Twice(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 2

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data * bottom[0].data + self.phase

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.blobs[0].data * top[0].diff
'''


def test_python_layer_on_a_real_caffe_runs_in_dltrain(tmp_path):
    real = tmp_path / "real" / "caffe"
    real.mkdir(parents=True)
    (real / "__init__.py").write_text(REAL_CAFFE)
    (tmp_path / "twice.py").write_text(REAL_USER_LAYER)
    (tmp_path / "net.prototxt").write_text(
        "input: 'data' input_shape { dim: 2 dim: 2 }\n"
        "layer { name: 't' type: 'Python' bottom: 'data' top: 'out' "
        "python_param { module: 'twice' layer: 'Twice' } }\n")
    code = (f"import caffe, dlcore, numpy as np\nassert caffe.REAL\n"
            f"net = dlcore.Net({str(tmp_path / 'net.prototxt')!r}, dlcore.TEST)\n"
            "print(net.forward(data=np.ones((2, 2)))['out'].tolist())\n")
    proc = _run_python(code, extra_path=str(tmp_path / "real"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[[3.0, 3.0], [3.0, 3.0]]"
