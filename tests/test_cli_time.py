"""`dltrain time`: caffe time's report lines, and one-line errors."""
import re

from dltrain.cli.main import main

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 1 dim: 6 dim: 6 } shape { dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_time_prints_caffe_lines(tmp_path, capsys):
    model = tmp_path / "tiny.prototxt"
    model.write_text(NET)
    assert main(["time", "-model", str(model), "-iterations", "3"]) == 0
    err = capsys.readouterr().err
    glog = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ \S+:\d+\] ")
    lines = err.strip().splitlines()
    assert all(glog.match(line) for line in lines)
    assert sum("forward-backward time" in line for line in lines) == 3
    for name in ("conv", "pool", "ip", "loss"):
        assert re.search(rf"\] +{name}\tforward: [\d.e-]+ ms\.", err)
        assert re.search(rf"\] +{name}\tbackward: [\d.e-]+ ms\.", err)
    assert re.search(r"Average Forward pass: [\d.]+ ms\.", err)
    assert re.search(r"Average Backward pass: [\d.]+ ms\.", err)
    assert re.search(r"Average Forward-Backward: [\d.]+ ms\.", err)


def test_time_bad_model_is_one_line_error(tmp_path, capsys):
    model = tmp_path / "bad.prototxt"
    model.write_text('layer { name: "x" type: "Nope" top: "y" }\n')
    assert main(["time", "--model", str(model)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"dltrain: error: {model}:1") and "Nope" in err[0]
