"""Caffe Python layers (`type: "Python"`), written as Caffe users write them.

Covers Caffe's python/caffe/test/test_python_layer.py and
test_python_layer_with_param_str.py cases (three chained x10 layers give
10^3 x forward and backward, reshape, exceptions, parameter blobs with
save/load/share, phase, param_str), a Euclidean loss in the style of
examples/pycaffe/layers/pyloss.py, a data layer fed by a Python generator,
learnable blobs updated by a solver and kept in snapshots, a class whose
base is a real Caffe's caffe.Layer, and errors naming the layer.
"""
import itertools
import os
import sys
import textwrap
import types

import numpy as np
import pytest

import dltrain_caffe.fallback  # noqa: F401  (`import caffe` even where dltrain's .pth is not installed)
from dltrain.cli.main import main
from dlcore import TEST, TRAIN, ConfigError, Net, PluginError
from dlcore.gradcheck import GradientCheckError, check_layer
from dltrain.solvers import get_solver

LAYERS = '''
"""Python layers as Caffe users write them."""
import numpy as np
import yaml

import caffe


class SimpleLayer(caffe.Layer):
    """Multiplies by ten."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class SimpleParamLayer(caffe.Layer):
    """Multiplies by the number in param_str."""

    def setup(self, bottom, top):
        try:
            self.value = float(self.param_str)
        except ValueError:
            raise ValueError("Parameter string must be a legible float")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class ExceptionLayer(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup failed on purpose")


class ParameterLayer(caffe.Layer):
    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class PhaseLayer(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        top[0].data[()] = self.phase


class EuclideanLossLayer(caffe.Layer):
    """pyloss.py style: 1/2N sum (a - b)^2; needs loss_weight: 1."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise Exception("Need two inputs to compute distance.")

    def reshape(self, bottom, top):
        if bottom[0].count != bottom[1].count:
            raise Exception("Inputs must have the same dimension.")
        self.diff = np.zeros_like(bottom[0].data, dtype=np.float32)
        top[0].reshape(1)

    def forward(self, bottom, top):
        self.diff[...] = bottom[0].data - bottom[1].data
        top[0].data[...] = np.sum(self.diff ** 2) / bottom[0].num / 2.

    def backward(self, top, propagate_down, bottom):
        for i in range(2):
            if not propagate_down[i]:
                continue
            sign = 1 if i == 0 else -1
            bottom[i].diff[...] = sign * self.diff / bottom[i].num


class GeneratorDataLayer(caffe.Layer):
    """Feeds (x, y) batches from a Python generator; param_str is YAML:
    batch_size, dim, seed, target: dot (y = x.w + 0.5) or scale (y = x*w + 0.5)."""

    def setup(self, bottom, top):
        params = yaml.safe_load(self.param_str)
        self.batch_size = params["batch_size"]
        self.dim = params["dim"]
        self.target = params.get("target", "dot")
        self.batches = self.generate(params["seed"])
        top[0].reshape(self.batch_size, self.dim)
        top[1].reshape(self.batch_size, 1 if self.target == "dot" else self.dim)

    def generate(self, seed):
        rng = np.random.RandomState(seed)
        w = np.arange(1, self.dim + 1, dtype=np.float32) / self.dim
        while True:
            x = rng.randn(self.batch_size, self.dim).astype(np.float32)
            y = x.dot(w)[:, None] if self.target == "dot" else x * w
            yield x, y + 0.5

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        x, y = next(self.batches)
        top[0].data[...] = x
        top[1].data[...] = y

    def backward(self, top, propagate_down, bottom):
        pass


class ScaleBiasLayer(caffe.Layer):
    """y = w * x + b: a learnable w per feature and one b, in self.blobs."""

    def setup(self, bottom, top):
        self.blobs.add_blob(bottom[0].data.shape[1])
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 1.0
        self.blobs[1].data[...] = 0.0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data + self.blobs[1].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += (top[0].diff * bottom[0].data).sum(axis=0)
        self.blobs[1].diff[...] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data


class WrongBackwardLayer(caffe.Layer):
    """y = x^2, with a backward that forgets the factor 2."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 2

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff * bottom[0].data


class FailingLayer(caffe.Layer):
    """Passes data through; raises in forward from call number `fail_at`
    (param_str), or in backward when param_str is 'backward'."""

    calls = 0

    def setup(self, bottom, top):
        self.fail_at = None if self.param_str == "backward" else int(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        FailingLayer.calls += 1
        if self.fail_at is not None and FailingLayer.calls >= self.fail_at:
            raise ValueError("the plugin broke in forward")
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if self.fail_at is None:
            raise KeyError("the plugin broke in backward")
        bottom[0].diff[...] = top[0].diff
'''

_counter = itertools.count()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A folder (not on sys.path) holding a fresh copy of LAYERS under a unique
    module name; returns (folder, module name).  sys.path and sys.modules are
    restored afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"pylayers_{os.getpid()}_{next(_counter)}"
    (tmp_path / f"{name}.py").write_text(LAYERS)
    yield tmp_path, name
    sys.modules.pop(name, None)


def write_net(folder, text, module, name="net.prototxt"):
    path = folder / name
    path.write_text(textwrap.dedent(text).replace("MODULE", module))
    return str(path)


CHAIN = """
name: 'pythonnet' force_backward: true
input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
layer { type: 'Python' name: 'one' bottom: 'data' top: 'one'
  python_param { module: 'MODULE' layer: 'SimpleLayer' } }
layer { type: 'Python' name: 'two' bottom: 'one' top: 'two'
  python_param { module: 'MODULE' layer: 'SimpleLayer' } }
layer { type: 'Python' name: 'three' bottom: 'two' top: 'three'
  python_param { module: 'MODULE' layer: 'SimpleLayer' } }
"""


# --- Caffe's test_python_layer.py ------------------------------------------------------------
def test_chained_forward_backward_and_reshape(workdir):
    folder, module = workdir
    import caffe
    net = caffe.Net(write_net(folder, CHAIN, module), caffe.TRAIN)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["three"].data == 10 ** 3 * 8)
    net.blobs["three"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 10 ** 3 * 7)
    net.blobs["data"].reshape(4, 4, 4, 4)
    net.forward()
    for blob in net.blobs.values():
        assert blob.data.shape == (4, 4, 4, 4)


def test_exception_in_setup_propagates(workdir):
    folder, module = workdir
    path = write_net(folder, """
        name: 'pythonnet' force_backward: true
        input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: 'Python' name: 'layer' bottom: 'data' top: 'top'
          python_param { module: 'MODULE' layer: 'ExceptionLayer' } }""", module)
    with pytest.raises(RuntimeError) as info:          # as pycaffe's test expects
        Net(path, TEST)
    err = info.value
    assert isinstance(err, PluginError)
    assert "layer 'layer'" in str(err) and "'Python'" in str(err)
    assert f"module '{module}'" in str(err) and "ExceptionLayer" in str(err) and "setup" in str(err)
    assert isinstance(err.__cause__, RuntimeError) and "on purpose" in str(err.__cause__)


def test_parameter_blobs_save_load_share(workdir, tmp_path):
    folder, module = workdir
    path = write_net(folder, """
        name: 'pythonnet' force_backward: true
        input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: 'Python' name: 'layer' bottom: 'data' top: 'top'
          python_param { module: 'MODULE' layer: 'ParameterLayer' } }""", module)
    net = Net(path, TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0
    assert layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1
    assert net.params["layer"][0] is layer.blobs[0]
    assert layer.blobs[0] in net.learnable_params

    model = str(tmp_path / "p.caffemodel")
    net.save(model)
    layer.blobs[0].data[0] = -1
    net.copy_from(model)
    assert layer.blobs[0].data[0] == 1

    net2 = Net(path, TRAIN)
    net2.share_with(net)
    assert net2.layer_dict["layer"].blobs[0].data[0] == 1


def test_phase(workdir):
    folder, module = workdir
    path = write_net(folder, """
        name: 'pythonnet' force_backward: true
        layer { type: 'Python' name: 'layer' top: 'phase'
          python_param { module: 'MODULE' layer: 'PhaseLayer' } }""", module)
    import caffe
    for phase in (caffe.TRAIN, caffe.TEST):
        net = caffe.Net(path, phase)
        assert net.forward()["phase"] == phase


def test_param_str(workdir):
    folder, module = workdir
    path = write_net(folder, """
        name: 'pythonnet' force_backward: true
        input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
        layer { type: 'Python' name: 'mul10' bottom: 'data' top: 'mul10'
          python_param { module: 'MODULE' layer: 'SimpleParamLayer' param_str: '10' } }
        layer { type: 'Python' name: 'mul2' bottom: 'mul10' top: 'mul2'
          python_param { module: 'MODULE' layer: 'SimpleParamLayer' param_str: '2' } }""", module)
    net = Net(path, TRAIN)
    net.blobs["data"].data[...] = 8
    net.forward()
    assert np.all(net.blobs["mul2"].data == 2 * 10 * 8)
    net.blobs["mul2"].diff[...] = 7
    net.backward()
    assert np.all(net.blobs["data"].diff == 2 * 10 * 7)
    impl = net.layer_dict["mul10"].impl
    assert impl.param_str == "10" and impl.param_str_ == "10"


def test_yaml_net_file(workdir):
    folder, module = workdir
    path = folder / "net.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: pythonnet
        force_backward: true
        layer:
          - {{name: data, type: Input, top: data, input_param: {{shape: {{dim: [2, 3]}}}}}}
          - name: one
            type: Python
            bottom: data
            top: one
            python_param: {{module: {module}, layer: SimpleParamLayer, param_str: "3"}}
        """))
    net = Net(str(path), TEST)
    net.blobs["data"].data[...] = 2
    assert np.all(net.forward()["one"] == 6)


# --- losses, data layers and solvers -----------------------------------------------------------
EUCLID = """
name: 'euclid' force_backward: true
layer { name: 'in' type: 'Input' top: 'a' top: 'b'
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } } }
layer { type: 'Python' name: 'pyloss' bottom: 'a' bottom: 'b' top: 'pyloss'
        python_param { module: 'MODULE' layer: 'EuclideanLossLayer' } LOSS_WEIGHT }
layer { type: 'EuclideanLoss' name: 'loss' bottom: 'a' bottom: 'b' top: 'loss' loss_weight: 0 }
"""


def test_python_euclidean_loss_matches_the_builtin(workdir):
    folder, module = workdir
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    net = Net(write_net(folder, EUCLID.replace("LOSS_WEIGHT", "loss_weight: 1"), module), TRAIN)
    out = net.forward(a=a, b=b)
    assert float(out["pyloss"][0]) == pytest.approx(float(out["loss"]), rel=1e-6)
    assert net.loss == pytest.approx(float(out["loss"]), rel=1e-6)
    net.backward()
    np.testing.assert_allclose(net.blobs["a"].diff, (a - b) / 4, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["b"].diff, -(a - b) / 4, rtol=1e-5)


def test_python_loss_needs_an_explicit_loss_weight(workdir):
    # As in Caffe: a Python layer is not a LossLayer, so its loss weight defaults to 0.
    folder, module = workdir
    net = Net(write_net(folder, EUCLID.replace("LOSS_WEIGHT", ""), module), TRAIN)
    assert net.layer_dict["pyloss"].loss_weights == [0.0]
    rng = np.random.default_rng(3)
    net.forward(a=rng.normal(size=(4, 3)), b=rng.normal(size=(4, 3)))
    assert net.loss == 0.0


REGRESSION = """
name: 'regression'
layer { type: 'Python' name: 'data' top: 'x' top: 'y'
        python_param { module: 'MODULE' layer: 'GeneratorDataLayer'
                       param_str: 'batch_size: 16\\ndim: 3\\nseed: 7\\ntarget: TARGET' } }
MODEL
layer { type: 'Python' name: 'loss' bottom: 'pred' bottom: 'y' top: 'loss'
        python_param { module: 'MODULE' layer: 'EuclideanLossLayer' } loss_weight: 1 }
"""
IP_MODEL = """layer { name: 'ip' type: 'InnerProduct' bottom: 'x' top: 'pred'
        inner_product_param { num_output: 1 weight_filler { type: 'gaussian' std: 0.1 } } }"""
SCALE_MODEL = """layer { type: 'Python' name: 'scale' bottom: 'x' top: 'pred'
        python_param { module: 'MODULE' layer: 'ScaleBiasLayer' } }"""

SOLVER = """net: "net.prototxt"
base_lr: 0.1
momentum: 0.9
lr_policy: "fixed"
display: 0
max_iter: MAX_ITER
snapshot: SNAPSHOT
snapshot_prefix: "snap/reg"
random_seed: 1
solver_mode: CPU
"""


def write_regression(folder, module, model, target, max_iter=150, snapshot=0):
    net = REGRESSION.replace("MODEL", model).replace("TARGET", target)
    write_net(folder, net, module)
    (folder / "solver.prototxt").write_text(SOLVER.replace("MAX_ITER", str(max_iter))
                                            .replace("SNAPSHOT", str(snapshot)))
    return str(folder / "solver.prototxt")


def test_generator_data_layer_feeds_a_regression_that_trains(workdir, monkeypatch):
    folder, module = workdir
    monkeypatch.chdir(folder)
    solver = get_solver(write_regression(folder, module, IP_MODEL, "dot"))
    first = solver.net.forward_backward()
    solver.step(150)
    weights, bias = solver.net.params["ip"]
    np.testing.assert_allclose(weights.data.ravel(), [1 / 3, 2 / 3, 1], atol=2e-2)
    assert bias.data[0] == pytest.approx(0.5, abs=2e-2)
    assert solver.net.forward_backward() < first / 100


def test_python_layer_blobs_are_learned_and_snapshotted(workdir, monkeypatch):
    folder, module = workdir
    monkeypatch.chdir(folder)
    solver = get_solver(write_regression(folder, module, SCALE_MODEL, "scale", max_iter=100, snapshot=50))
    solver.solve()
    w, b = solver.net.params["scale"]
    np.testing.assert_allclose(w.data, [1 / 3, 2 / 3, 1], atol=2e-2)
    assert b.data[0] == pytest.approx(0.5, abs=2e-2)

    model = folder / "snap" / "reg_iter_100.caffemodel"
    assert model.exists() and (folder / "snap" / "reg_iter_50.solverstate").exists()
    fresh = Net(str(folder / "net.prototxt"), TEST, weights=str(model))
    np.testing.assert_array_equal(fresh.params["scale"][0].data, w.data)

    again = get_solver(str(folder / "solver.prototxt"))
    again.restore(str(folder / "snap" / "reg_iter_50.solverstate"))
    assert again.iter == 50
    assert not np.array_equal(again.net.params["scale"][0].data, np.ones(3, np.float32))


# --- a class built on a real Caffe's caffe.Layer ---------------------------------------------------
class _BoostLikeLayer:
    """Mimics pycaffe's Boost.Python caffe.Layer: its constructor wants Caffe's
    C++ LayerParameter, and blobs/phase are read-only views of the C++ layer."""

    def __init__(self, param):
        raise TypeError("Python argument types did not match C++ signature")

    @property
    def blobs(self):
        raise RuntimeError("no C++ layer behind this object")

    @property
    def phase(self):
        raise RuntimeError("no C++ layer behind this object")


def test_layer_subclassing_a_real_caffe_layer_runs(workdir, monkeypatch):
    folder, _ = workdir
    real = types.ModuleType("caffe")
    real.Layer, real.TRAIN, real.TEST = _BoostLikeLayer, 0, 1
    monkeypatch.setitem(sys.modules, "caffe", real)
    name = f"reallayers_{os.getpid()}_{next(_counter)}"
    (folder / f"{name}.py").write_text(textwrap.dedent('''
        import caffe

        class Affine(caffe.Layer):
            def setup(self, bottom, top):
                self.k = float(self.param_str)
                self.blobs.add_blob(1)
                self.blobs[0].data[...] = 1.0 if self.phase == caffe.TRAIN else -1.0

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.k * bottom[0].data + self.blobs[0].data

            def backward(self, top, propagate_down, bottom):
                self.blobs[0].diff[...] += top[0].diff.sum()
                if propagate_down[0]:
                    bottom[0].diff[...] = self.k * top[0].diff
        '''))
    path = write_net(folder, """
        name: 'real' force_backward: true
        input: 'data' input_shape { dim: 2 dim: 3 }
        layer { type: 'Python' name: 'affine' bottom: 'data' top: 'out'
          python_param { module: 'MODULE' layer: 'Affine' param_str: '3' } }""", name)
    try:
        for phase, offset in ((TRAIN, 1.0), (TEST, -1.0)):
            net = Net(path, phase)
            out = net.forward(data=np.ones((2, 3)))["out"]
            np.testing.assert_allclose(out, 3 + offset)
        net.blobs["out"].diff[...] = 1
        net.backward()
        np.testing.assert_allclose(net.blobs["data"].diff, 3)
        assert net.params["affine"][0].diff[0] == 6
        assert isinstance(net.layer_dict["affine"].impl, _BoostLikeLayer)
    finally:
        sys.modules.pop(name, None)


# --- errors ------------------------------------------------------------------------------------------
def test_missing_module_names_layer_module_and_file(workdir):
    folder, _ = workdir
    path = write_net(folder, CHAIN, "no_such_layer_module")
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    text = str(info.value)
    assert text.startswith(path + ":")
    assert "layer 'one'" in text and "'Python'" in text and "no_such_layer_module" in text


def test_missing_class_lists_what_the_module_defines(workdir):
    folder, module = workdir
    path = write_net(folder, CHAIN.replace("SimpleLayer", "SimpelLayer"), module)
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    text = str(info.value)
    assert "no class 'SimpelLayer'" in text and "SimpleLayer" in text and module in text


def test_module_whose_own_import_fails(workdir):
    folder, _ = workdir
    name = f"brokenlayers_{os.getpid()}_{next(_counter)}"
    (folder / f"{name}.py").write_text("import caffe\nimport no_such_dependency_xyz\n")
    try:
        with pytest.raises(PluginError) as info:
            Net(write_net(folder, CHAIN, name), TRAIN)
        assert "no_such_dependency_xyz" in str(info.value) and name in str(info.value)
    finally:
        sys.modules.pop(name, None)


FAILING = """
name: 'failing' force_backward: true
input: 'data' input_shape { dim: 2 dim: 3 }
layer { type: 'Python' name: 'flaky' bottom: 'data' top: 'out'
  python_param { module: 'MODULE' layer: 'FailingLayer' param_str: 'PARAM' } }
"""


def test_exceptions_in_forward_and_backward_name_the_layer(workdir):
    folder, module = workdir
    net = Net(write_net(folder, FAILING.replace("PARAM", "1"), module), TRAIN)
    with pytest.raises(ValueError) as info:
        net.forward()
    err = info.value
    assert isinstance(err, PluginError) and err.stage == "forward" and err.layer_name == "flaky"
    assert str(err).startswith("layer 'flaky' (type 'Python', module '")
    assert "FailingLayer" in str(err) and "the plugin broke in forward" in str(err)
    assert isinstance(err.original, ValueError) and err.__cause__ is err.original

    net = Net(write_net(folder, FAILING.replace("PARAM", "backward"), module, "net2.prototxt"), TRAIN)
    net.forward()
    with pytest.raises(KeyError) as info:
        net.backward()
    assert isinstance(info.value, PluginError) and "raised in backward: KeyError" in str(info.value)


def test_training_run_dying_in_a_python_layer_keeps_its_snapshots(workdir, monkeypatch, capsys):
    folder, module = workdir
    monkeypatch.chdir(folder)
    # FailingLayer passes the data through and raises in the forward pass of iteration 7.
    model = ("layer { type: 'Python' name: 'flaky' bottom: 'x' top: 'xf'\n"
             "  python_param { module: 'MODULE' layer: 'FailingLayer' param_str: '7' } }\n"
             + IP_MODEL.replace("'x'", "'xf'"))
    net = REGRESSION.replace("MODEL", model).replace("TARGET", "dot")
    write_net(folder, net, module)
    (folder / "solver.prototxt").write_text(SOLVER.replace("MAX_ITER", "20").replace("SNAPSHOT", "2"))
    sys.modules.pop(module, None)
    code = main(["train", "--solver", "solver.prototxt"])
    err = capsys.readouterr().err
    assert code == 1
    assert "dltrain: error: layer 'flaky' (type 'Python'" in err and "raised in forward" in err
    assert "--debug" in err
    for it in (2, 4, 6):
        assert (folder / "snap" / f"reg_iter_{it}.caffemodel").exists()
        assert (folder / "snap" / f"reg_iter_{it}.solverstate").exists()
    Net("net.prototxt", TEST, weights="snap/reg_iter_6.caffemodel")     # whole and loadable

    sys.modules.pop(module, None)
    with pytest.raises(PluginError) as info:                           # --debug: the plugin's traceback
        main(["--debug", "train", "--solver", "solver.prototxt"])
    frames = []
    tb = info.value.__cause__.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    assert any(f.endswith(f"{module}.py") for f in frames)


# --- gradient checks of Python layers -----------------------------------------------------------------
def test_gradcheck_python_layers(workdir):
    folder, module = workdir
    layer_file = folder / "scale.prototxt"
    layer_file.write_text(f"type: 'Python' python_param {{ module: '{module}' layer: 'ScaleBiasLayer' }}")
    report = check_layer(str(layer_file), [(4, 3)])
    assert report.passed and report.per_blob == {"param 0": 3, "param 1": 1, "bottom 0": 12}
    report = check_layer(f"type: 'Python' python_param {{ module: '{module}' layer: 'SimpleLayer' }}",
                         [(2, 3)], source=str(layer_file), exhaustive=True)
    assert report.passed and report.checked == 36

    layer_file.write_text(f"type: 'Python' python_param {{ module: '{module}' layer: 'WrongBackwardLayer' }}")
    with pytest.raises(GradientCheckError) as info:
        check_layer(str(layer_file), [(2, 3)])
    assert "bottom 0" in str(info.value) and "analytic" in str(info.value)
