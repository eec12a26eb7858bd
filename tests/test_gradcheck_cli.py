"""`dltrain gradcheck` and dlcore.gradcheck.check_layer: Caffe's GradientChecker
on a layer described in a small prototxt/YAML file."""
import os
import sys
import textwrap

import numpy as np
import pytest

import dltrain_caffe.fallback  # noqa: F401  (`import caffe` in the layer modules below)
from dltrain.cli.main import main
from dlcore import ConfigError
from dlcore.gradcheck import GradientCheckError, check_layer

WRONG_LAYER = '''
import caffe


class Cube(caffe.Layer):
    """y = x^3 with a deliberately wrong backward (3x instead of 3x^2)."""

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data ** 3

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * bottom[0].data * top[0].diff


class GoodCube(Cube):
    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 3 * bottom[0].data ** 2 * top[0].diff
'''


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"cube_{os.getpid()}_{id(tmp_path)}"
    (tmp_path / f"{name}.py").write_text(WRONG_LAYER)
    (tmp_path / "wrong.prototxt").write_text(f'name: "cube" type: "Python" '
                                             f'python_param {{ module: "{name}" layer: "Cube" }}\n')
    (tmp_path / "good.yaml").write_text(f"name: cube\ntype: Python\npython_param: {{module: {name}, layer: GoodCube}}\n")
    yield tmp_path
    sys.modules.pop(name, None)


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_deliberately_wrong_layer_fails_with_its_worst_elements(folder, capsys):
    code, out, _ = run(["gradcheck", str(folder / "wrong.prototxt"), "--bottom", "2,3"], capsys)
    assert code == 1
    lines = out.splitlines()
    assert lines[0].startswith("gradcheck FAILED: layer 'cube' (Python): ")
    assert "gradient element(s) off by more than 0.001 relative; worst:" in lines[0]
    worst = [line for line in lines[1:] if line.startswith("  bottom 0[")]
    assert worst and "analytic" in worst[0] and "numeric" in worst[0] and "relative error" in worst[0]
    errors = [float(line.rsplit(" ", 1)[1]) for line in worst]
    assert errors == sorted(errors, reverse=True)


def test_a_correct_python_layer_passes_from_yaml(folder, capsys):
    code, out, _ = run(["gradcheck", str(folder / "good.yaml"), "--bottom", "2,3", "--exhaustive"], capsys)
    assert code == 0, out
    assert out.startswith("gradcheck passed: layer 'cube' (Python), 36 gradient elements checked in float64 "
                          "(exhaustive, bottom 0: 36)")
    assert "worst: bottom 0 at (" in out


def test_builtin_layer_with_parameters(tmp_path, capsys):
    layer = tmp_path / "ip.prototxt"
    layer.write_text('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"\n'
                     '  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 }\n'
                     '                        bias_filler { type: "gaussian" std: 1 } } }\n')
    code, out, _ = run(["gradcheck", str(layer), "-bottom", "3,4", "--threshold", "1e-3", "--stepsize", "1e-2"],
                       capsys)
    assert code == 0, out
    assert "(param 0: 8, param 1: 2, bottom 0: 12)" in out


def test_labels_are_not_checked(tmp_path, capsys):
    layer = tmp_path / "loss.prototxt"
    layer.write_text('type: "SoftmaxWithLoss"')
    code, out, _ = run(["gradcheck", str(layer), "--bottom", "4,5", "--bottom", "4", "--labels", "1:5"], capsys)
    assert code == 0, out
    assert "(bottom 0: 20)" in out


def test_layer_chosen_from_a_net_file(tmp_path, capsys):
    net = tmp_path / "net.prototxt"
    net.write_text(textwrap.dedent("""\
        layer { name: "a" type: "ReLU" bottom: "x" top: "x" }
        layer { name: "b" type: "TanH" bottom: "x" top: "y" }
        """))
    code, out, err = run(["gradcheck", str(net), "--bottom", "2,3"], capsys)
    assert code == 1 and "expected one layer definition, found 2; name one with layer_name / --layer" in err
    code, out, _ = run(["gradcheck", str(net), "--bottom", "2,3", "--layer", "b"], capsys)
    assert code == 0 and "layer 'b' (TanH)" in out
    code, out, _ = run(["gradcheck", str(net), "--bottom", "2,3", "--layer", "a", "--kink", "0",
                        "--kink-range", "0.01", "--seed", "3"], capsys)
    assert code == 0 and "layer 'a' (ReLU)" in out


@pytest.mark.parametrize("text, argv, message", [
    ('type: "NoSuchLayerType"', ["--bottom", "2"], "unknown layer type 'NoSuchLayerType'"),
    ('type: "ReLU" relu_param { slope: 1 }', ["--bottom", "2"], "unknown field 'slope'"),
    ('type: "ReLU" bottom: "a" bottom: "b"', ["--bottom", "2"], "names 2 bottoms; 1 bottom shapes were given"),
    ('type: "Softmax"', ["--bottom", "2", "--labels", "3:2"], "bottom index 3 out of range"),
])
def test_errors(tmp_path, capsys, text, argv, message):
    layer = tmp_path / "layer.prototxt"
    layer.write_text(text)
    code, _, err = run(["gradcheck", str(layer)] + argv, capsys)
    assert code == 1
    assert err.startswith("dltrain: error: ") and message in err


def test_bad_shape_argument(tmp_path, capsys):
    layer = tmp_path / "layer.prototxt"
    layer.write_text('type: "ReLU"')
    with pytest.raises(SystemExit):
        main(["gradcheck", str(layer), "--bottom", "2,a"])
    assert "a shape is comma-separated integers" in capsys.readouterr().err


def test_check_layer_function():
    report = check_layer('type: "Sigmoid"', [(2, 3)])
    assert report.passed and report.checked == 6 and report.layer.dtype == np.float64
    report = check_layer('type: "EuclideanLoss"', [(3, 2), (3, 2)], check_bottom=[1])
    assert report.per_blob == {"bottom 1": 6}
    report = check_layer(
        'type: "InnerProduct" inner_product_param { num_output: 2 weight_filler { type: "gaussian" } }',
        [(2, 3)], bottom_data={0: np.arange(6.0).reshape(2, 3) / 6})
    np.testing.assert_allclose(report.layer.blobs[0].shape, (2, 3))
    with pytest.raises(ConfigError, match="expected one layer definition, found 0"):
        check_layer('name: "empty"\nlayer: []', [(2,)], fmt="yaml")


def test_threshold_matters(folder):
    # Cube's backward is 3x: with x in [0.9, 1.1] it is close to 3x^2, and a loose threshold passes it.
    with pytest.raises(GradientCheckError):
        check_layer(str(folder / "wrong.prototxt"), [(4,)], fill=(0.9, 1.1))
    assert check_layer(str(folder / "wrong.prototxt"), [(4,)], fill=(0.9, 1.1), threshold=0.5).passed
