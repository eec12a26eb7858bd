"""`dltrain export` on whole nets: the model zoo deploy nets (configs/zoo), the digits LeNet with its
trained weights, the geolocation LSTM deploy net, and the command line."""
import os

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from dltrain.cli.main import main  # noqa: E402
from dltrain.export import export_onnx, load_net  # noqa: E402
from dltrain.export.check import onnx_session  # noqa: E402
from dltrain.proto import caffe_pb2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO = os.path.join(ROOT, "configs", "zoo")
GEOLOC = os.path.join(ROOT, "configs", "geoloc")
DIGITS = os.path.join(ROOT, "configs", "digits")


@pytest.mark.parametrize("name,batch", [
    ("lenet", None), ("cifar10_quick", None), ("cifar10_full", None),
    # the ImageNet nets on one image (their forward passes are the slow part on two cores)
    ("caffenet", 1), ("alexnet", 1), ("googlenet", 1),
])
def test_zoo_nets(name, batch):
    path = os.path.join(ZOO, f"{name}_deploy.prototxt")
    net = load_net(path, random_seed=1)
    result = export_onnx(path, net=net, batch=batch, tolerance=1e-5)
    assert list(result.differences) == ["prob"]
    assert result.differences["prob"] <= 1e-5


def digits_deploy():
    """configs/digits' LeNet as a deploy net: an Input for the Data layer, no loss or accuracy."""
    from dlcore.config import load_net as read_net
    param = read_net(os.path.join(DIGITS, "lenet_digits_train_test.prototxt"))
    deploy = caffe_pb2.NetParameter(name=param.name)
    deploy.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[5, 1, 8, 8])
    for layer in param.layer:
        if layer.type not in ("Data", "SoftmaxWithLoss", "Accuracy"):
            deploy.layer.add().CopyFrom(layer)
    deploy.layer.add(name="prob", type="Softmax", bottom=[deploy.layer[-1].top[0]], top=["prob"])
    return deploy


def test_digits_lenet_with_trained_weights():
    weights = os.path.join(DIGITS, "snapshots", "digits_iter_3000.caffemodel")
    if not os.path.exists(weights):
        pytest.skip("no trained digits snapshot")
    net = load_net(digits_deploy(), weights)
    result = export_onnx(None, net=net, batch="dynamic", tolerance=1e-5)
    assert result.differences["prob"] <= 1e-5


@pytest.mark.parametrize("recurrent", ["exact", "onnx"])
@pytest.mark.parametrize("batch", [None, 7, "dynamic"])
def test_geoloc_lstm_deploy(recurrent, batch):
    path = os.path.join(GEOLOC, "deploy.prototxt")
    net = load_net(path, random_seed=2)
    result = export_onnx(path, net=net, batch=batch, recurrent=recurrent, tolerance=1e-4)
    assert result.differences["pred"] <= 1e-4
    names = [i.name for i in result.model.graph.input]
    assert names == ["chars", "cont"]


def test_geoloc_in_onnxruntime_as_the_readme_shows(tmp_path):
    """The README's five lines: export, then names through the codec into ONNX Runtime."""
    from dltrain.cli.predict import CharCodec, normalize_latlon, predict
    model = os.path.join(GEOLOC, "deploy.prototxt")
    weights = tmp_path / "geoloc.caffemodel"
    net = load_net(model, random_seed=4)
    net.save(str(weights))
    out = tmp_path / "geoloc.onnx"
    assert main(["export", "--model", model, "--weights", str(weights), str(out), "--batch", "dynamic"]) == 0

    import onnxruntime as ort
    codec = CharCodec.load(os.path.join(GEOLOC, "charcodec.json"))
    chars, cont = codec.encode(["Zürich", "Springfield", "Nairobi"])
    pred = normalize_latlon(ort.InferenceSession(str(out)).run(["pred"], {"chars": chars, "cont": cont})[0])

    want = predict(load_net(model, str(weights)), CharCodec.load(os.path.join(GEOLOC, "charcodec.json")),
                   ["Zürich", "Springfield", "Nairobi"])
    np.testing.assert_allclose(pred, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_cli(tmp_path, capsys):
    out = tmp_path / "lenet.onnx"
    assert main(["export", "--model", os.path.join(ZOO, "lenet_deploy.prototxt"), str(out), "--batch", "2"]) == 0
    printed = capsys.readouterr()
    assert "check: output 'prob': max relative difference" in printed.out
    assert "random weights" in printed.err
    assert out.stat().st_size > 1_000_000          # the weights are embedded
    assert main(["export", "--model", os.path.join(ZOO, "lenet_deploy.prototxt"), str(out), "--no-check",
                 "--opset", "18"]) == 0
    assert "not checked" in capsys.readouterr().out
    session = onnx_session(out.read_bytes())
    assert [i.name for i in session.get_inputs()] == ["data"]


def test_cli_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "train.prototxt"
    bad.write_text('layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 2 dim: 3 } '
                   'shape { dim: 2 } } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }\n')
    assert main(["export", "--model", str(bad), str(tmp_path / "x.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("dltrain: error: layer 'loss' (SoftmaxWithLoss) cannot be exported to ONNX: loss layers are for "
                   "training; remove it from the deploy net")
    assert not (tmp_path / "x.onnx").exists()
    assert main(["export", "--model", os.path.join(ZOO, "lenet_deploy.prototxt"), str(tmp_path / "y.onnx"),
                 "--batch-axis", "nope"]) == 1
    assert "--batch-axis takes INPUT=AXIS" in capsys.readouterr().err
