"""`dltrain draw` and `caffe.draw`: Caffe's draw_net pictures (nodes, labels, colours, in-place layers,
phases, rank directions), PNG/SVG through Graphviz's dot, and .dot text without it."""
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET

import pytest

from dltrain.cli.main import main
from dltrain.proto import caffe_pb2
from dltrain_caffe import draw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(REPO, "configs", "lenet", "lenet.prototxt")
DIGITS = os.path.join(REPO, "configs", "digits", "lenet_digits_train_test.prototxt")
GOOGLENET = os.path.join(REPO, "configs", "zoo", "googlenet_deploy.prototxt")

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot program is not installed")


def draw_dot(tmp_path, net, *options):
    out = tmp_path / "net.dot"
    assert main(["draw", net, str(out), *options]) == 0
    return out.read_text()


def node_line(text, name):
    """The dot statement that declares node ``name`` (its quoted id, then its attributes or ';')."""
    lines = [line for line in text.splitlines() if line.startswith(f'"{name}" [') or line == f'"{name}";']
    assert len(lines) == 1, (name, lines)
    return lines[0]


def net_from_text(text):
    from dlcore.config import parse_net_text
    return parse_net_text(text)


# --- what is drawn ---------------------------------------------------------------------------------------------

def test_lenet_labels_colours_and_blobs(tmp_path):
    text = draw_dot(tmp_path, LENET)
    assert text.startswith('digraph "LeNet" {') and "rankdir=LR;" in text
    conv1 = node_line(text, r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0")
    assert 'shape=record' in conv1 and 'fillcolor="#FF5050"' in conv1 and "style=filled" in conv1
    assert 'fillcolor="#FF9900"' in node_line(text, r"pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0")
    assert 'fillcolor="#CC33FF"' in node_line(text, r"ip1\n(InnerProduct)")
    assert 'fillcolor="#6495ED"' in node_line(text, r"loss\n(SoftmaxWithLoss)")
    assert 'fillcolor="#6495ED"' in node_line(text, r"data\n(Input)")
    # Blobs that a layer reads are grey octagons; the loss, which nothing reads, stays a plain node.
    for blob in ("data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2"):
        line = node_line(text, blob)
        assert "shape=octagon" in line and 'fillcolor="#E0E0E0"' in line, line
    assert node_line(text, "loss") == '"loss";'
    # Edges out of a layer carry its output count.
    assert r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0" -> "conv1" [label=20];' in text
    assert r'"ip1\n(InnerProduct)" -> "ip1" [label=500];' in text
    assert r'"ip2\n(InnerProduct)" -> "ip2" [label=10];' in text
    assert r'"label" -> "loss\n(SoftmaxWithLoss)" [label=""];' in text


def test_in_place_layer_is_green_with_an_edge_each_way(tmp_path):
    text = draw_dot(tmp_path, LENET)
    assert 'fillcolor="#90EE90"' in node_line(text, r"relu1\n(ReLU)")
    assert r'"ip1" -> "relu1\n(ReLU)" [label=""];' in text
    assert r'"relu1\n(ReLU)" -> "ip1" [label=""];' in text
    # The in-place layer makes no blob of its own.
    assert not re.search(r'^"relu1"', text, re.M)


def test_rankdir_vertical_separates_with_spaces(tmp_path):
    text = draw_dot(tmp_path, LENET, "--rankdir", "TB")
    assert "rankdir=TB;" in text
    assert 'fillcolor="#FF5050"' in node_line(text, "conv1 (Convolution) kernel size: 5 stride: 1 pad: 0")
    assert "rankdir=BT;" in draw_dot(tmp_path, LENET, "--rankdir", "BT")
    assert r"(Convolution)\nkernel" in draw_dot(tmp_path, LENET, "--rankdir", "RL")


def test_phase_keeps_that_phase_layers(tmp_path):
    every = draw_dot(tmp_path, DIGITS)
    train = draw_dot(tmp_path, DIGITS, "--phase", "TRAIN")
    test = draw_dot(tmp_path, DIGITS, "--phase", "test")
    # The two Data layers share one name and type: one node, with both batch sizes on its edges.
    assert "[label=\"Batch 64\"]" in every and "[label=\"Batch 120\"]" in every
    assert "Batch 64" in train and "Batch 120" not in train
    assert "Batch 120" in test and "Batch 64" not in test
    assert r"accuracy\n(Accuracy)" in every and r"accuracy\n(Accuracy)" in test
    assert "accuracy" not in train


def test_phase_rules(tmp_path):
    net = net_from_text("""
        layer { name: "a" type: "Input" top: "x" input_param { shape { dim: 1 } } }
        layer { name: "train_only" type: "ReLU" bottom: "x" top: "x" include { phase: TRAIN } }
        layer { name: "not_train" type: "Sigmoid" bottom: "x" top: "y" exclude { phase: TRAIN } }
        layer { name: "staged" type: "TanH" bottom: "x" top: "z" include { stage: "deploy" } }
    """)

    def layer_names(phase):
        text = draw.draw_net(net, "LR", "dot", phase=phase).decode()
        return {name for name in ("train_only", "not_train", "staged") if f'"{name}' in text}

    assert layer_names(None) == {"train_only", "not_train", "staged"}
    assert layer_names(caffe_pb2.TRAIN) == {"train_only", "staged"}
    # A rule that names no phase holds in both.
    assert layer_names(caffe_pb2.TEST) == {"not_train", "staged"}


def test_display_lrm(tmp_path):
    text = draw_dot(tmp_path, LENET, "--display_lrm")
    node_line(text, r"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0\nlr mult: 1.0, 2.0")
    node_line(text, r"ip1\n(InnerProduct)\nlr mult: 1.0, 2.0")
    assert "lr mult" not in draw_dot(tmp_path, LENET)


def test_caffe_functions():
    net = net_from_text("""
        name: "n"
        layer { name: "c" type: "Deconvolution" bottom: "x" top: "y" param { lr_mult: 0 } param { lr_mult: 0 }
                convolution_param { num_output: 7 kernel_size: 4 stride: 2 pad: 1 } }
        layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "f" type: "InnerProduct" bottom: "z" top: "f" param { lr_mult: 3 }
                inner_product_param { num_output: 2 } }
    """)
    deconv, pool, fc = net.layer
    assert draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    assert draw.choose_color_by_layertype("Deconvolution") == "#FF5050"
    assert draw.choose_color_by_layertype("ReLU") == "#6495ED"
    assert draw.get_edge_label(deconv) == "7" and draw.get_edge_label(pool) == '""'
    assert draw.get_layer_lr_mult(deconv) == (0.0, 0.0)
    assert draw.get_layer_lr_mult(fc) == (3.0, 1.0)
    # Both multipliers zero: no lr line, as in Caffe.
    assert draw.get_layer_label(deconv, "LR", display_lrm=True) == \
        r'"c\n(Deconvolution)\nkernel size: 4\nstride: 2\npad: 1"'
    assert draw.get_layer_label(pool, "TB") == '"p (Pooling AVE) kernel size: 0 stride: 1 pad: 0"'
    with pytest.raises(ValueError, match="Pooling layers do not have a learning rate multiplier"):
        draw.get_layer_lr_mult(pool)
    graph = draw.get_pydot_graph(net, "LR", label_edges=False)
    assert all(edge.get_label() == '""' for edge in graph.get_edges())


def test_caffe_draw_module_takes_a_net_parameter(tmp_path):
    import caffe.draw
    from caffe.proto import caffe_pb2 as caffe_proto
    from dlcore.config import load_net
    net = load_net(DIGITS)
    assert isinstance(net, caffe_proto.NetParameter)
    text = caffe.draw.draw_net(net, "LR", ext="dot", phase=caffe_pb2.TRAIN).decode()
    assert "Batch 64" in text and "accuracy" not in text
    out = tmp_path / "digits.raw"
    caffe.draw.draw_net_to_file(net, str(out), "TB", caffe_pb2.TEST)
    assert "rankdir=TB;" in out.read_text() and "Batch 120" in out.read_text()


def test_yaml_and_binary_nets_draw_as_the_prototxt(tmp_path):
    from dlcore.config import load_net
    binary = tmp_path / "digits.caffemodel"
    binary.write_bytes(load_net(DIGITS).SerializeToString())
    expected = draw_dot(tmp_path, DIGITS)
    assert draw_dot(tmp_path, DIGITS.replace(".prototxt", ".yaml")) == expected
    assert draw_dot(tmp_path, str(binary)) == expected


def test_old_v1_net_is_upgraded(tmp_path):
    net = tmp_path / "v1.prototxt"
    net.write_text('name: "old"\ninput: "data"\ninput_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8\n'
                   'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"\n'
                   '         convolution_param { num_output: 3 kernel_size: 3 } }\n'
                   'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n')
    text = draw_dot(tmp_path, str(net))
    node_line(text, r"conv\n(Convolution)\nkernel size: 3\nstride: 1\npad: 0")
    assert 'fillcolor="#90EE90"' in node_line(text, r"relu\n(ReLU)")
    assert r'"input\n(Input)" -> "data"' in text


def test_odd_names_are_quoted(tmp_path):
    net = tmp_path / "odd.prototxt"
    net.write_text('name: "odd net"\n'
                   'layer { name: "in|put" type: "Input" top: "node" top: "a:b"\n'
                   '        input_param { shape { dim: 1 } shape { dim: 1 } } }\n'
                   'layer { name: "say \\"hi\\"" type: "Eltwise" bottom: "node" bottom: "a:b" top: "x{1}" }\n')
    text = draw_dot(tmp_path, str(net))
    assert text.startswith('digraph "odd net" {')
    node_line(text, r"in\|put\n(Input)")
    assert 'shape=octagon' in node_line(text, "node") and 'shape=octagon' in node_line(text, "a:b")
    assert r'"node" -> "say \"hi\"\n(Eltwise)" [label=""];' in text
    if shutil.which("dot"):
        svg = tmp_path / "odd.svg"
        assert main(["draw", str(net), str(svg)]) == 0
        labels = svg_texts(svg)
        assert {"in|put", "(Input)", "node", "a:b", 'say "hi"', "(Eltwise)", "x{1}"} <= labels


def test_include_and_exclude_together_is_one_line_error(tmp_path, capsys):
    net = tmp_path / "both.prototxt"
    net.write_text('layer { name: "d" type: "Input" top: "x" input_param { shape { dim: 1 } }\n'
                   '        include { phase: TRAIN } exclude { phase: TEST } }\n')
    assert main(["draw", str(net), str(tmp_path / "both.dot"), "--phase", "TEST"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dltrain: error: layer 'd' has both include and exclude specified"]
    assert not (tmp_path / "both.dot").exists()
    assert main(["draw", str(net), str(tmp_path / "both.dot")]) == 0     # every layer: no phase rule is read


def test_bad_output_path_is_one_line_error(tmp_path, capsys):
    assert main(["draw", LENET, str(tmp_path / "picture")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs an extension" in err[0]
    missing = tmp_path / "no" / "such" / "lenet.dot"
    assert main(["draw", LENET, str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dltrain: error: {missing}: cannot write the picture: No such file or directory"]


# --- without Graphviz or pydot ---------------------------------------------------------------------------------

def test_missing_dot_png_is_one_line_and_dot_text_still_works(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("dot") is None
    for name in ("lenet.png", "lenet.svg"):
        assert main(["draw", LENET, str(tmp_path / name)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dltrain: error: ")
        assert "'dot' program" in err[0] and "apt-get install graphviz" in err[0] and "brew install graphviz" in err[0]
        assert not (tmp_path / name).exists()
    assert main(["draw", LENET, str(tmp_path / "lenet.dot")]) == 0
    assert (tmp_path / "lenet.dot").read_text().startswith('digraph "LeNet" {')


def test_missing_pydot_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pydot", None)        # `import pydot` raises ImportError
    assert main(["draw", LENET, str(tmp_path / "lenet.dot")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dltrain: error: drawing a net needs pydot: pip install 'dltrain[plot]'"]


# --- real pictures ---------------------------------------------------------------------------------------------

def check_png(path, min_width, min_height):
    from PIL import Image
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= min_width and height >= min_height, image.size
        # Seen on white, whether or not this Graphviz makes the background transparent.
        rgb = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA")).convert("RGB")
    histogram = rgb.convert("L").histogram()
    dark = sum(histogram[:128])
    assert dark > 0.002 * width * height, "the picture is blank"
    assert histogram[255] > 0.3 * width * height, "the picture has no white background"
    # The layer colours are there: red convolutions and orange pooling.
    colours = {colour for _, colour in rgb.getcolors(maxcolors=1 << 24)}
    assert (0xFF, 0x50, 0x50) in colours and (0xFF, 0x99, 0x00) in colours


def svg_texts(path):
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return {element.text for element in root.iter("{http://www.w3.org/2000/svg}text")}


@needs_dot
def test_lenet_png_and_svg(tmp_path):
    png = tmp_path / "lenet.png"
    assert main(["draw", LENET, str(png)]) == 0
    check_png(png, 1000, 100)
    svg = tmp_path / "lenet.svg"
    assert main(["draw", LENET, str(svg), "--rankdir", "TB"]) == 0
    texts = svg_texts(svg)
    assert {"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0", "relu1 (ReLU)", "ip1", "loss"} <= texts


@needs_dot
def test_googlenet_png_and_svg(tmp_path):
    png = tmp_path / "googlenet.png"
    assert main(["draw", GOOGLENET, str(png)]) == 0
    check_png(png, 2000, 500)
    svg = tmp_path / "googlenet.svg"
    assert main(["draw", GOOGLENET, str(svg)]) == 0
    root = ET.parse(svg).getroot()
    nodes = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    net = caffe_pb2.NetParameter()
    from dlcore.config import load_net
    net.CopyFrom(load_net(GOOGLENET))
    blobs = {name for layer in net.layer for name in list(layer.bottom) + list(layer.top)}
    layers = {(layer.name, layer.type) for layer in net.layer}
    assert len(nodes) == len(blobs) + len(layers)
    texts = svg_texts(svg)
    assert {"inception_3a/1x1", "(Concat)", "inception_5b/output", "(Softmax)"} <= texts


@needs_dot
def test_dot_failure_is_one_line(tmp_path, capsys):
    assert main(["draw", LENET, str(tmp_path / "lenet.nosuchformat")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Graphviz's dot could not draw a .nosuchformat file" in err[0]
