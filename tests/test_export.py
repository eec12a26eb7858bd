"""`dltrain export`: every layer family exported to ONNX and run in ONNX Runtime beside dltrain's forward.

Each net is small; weights are seeded random ones (dltrain.export.check.random_weights) so that
biases, BatchNorm statistics and slopes are all exercised.  The export's own check compares every
output (max relative difference, see dltrain.export.check) and fails past the tolerance; the tests
ask for a tighter one.
"""
import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from google.protobuf import text_format  # noqa: E402

from dltrain.export import ExportError, export_onnx, load_net, register_exporter  # noqa: E402
from dltrain.export.check import dltrain_forward, onnx_session, random_inputs, relative_difference  # noqa: E402
from dltrain.proto import caffe_pb2  # noqa: E402

TIGHT = 1e-5


def net_param(text):
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    return param


def input_layer(*shapes, tops=("data",)):
    shape_text = " ".join("shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes)
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return f'layer {{ name: "input" type: "Input" {top_text} input_param {{ {shape_text} }} }}\n'


def export_text(text, seed=1, tolerance=TIGHT, **kwargs):
    net = load_net(net_param(text), random_seed=seed)
    return export_onnx(None, net=net, tolerance=tolerance, **kwargs)


def op_types(result):
    return [n.op_type for n in result.model.graph.node]


# --- vision -------------------------------------------------------------------------------------

CONVOLUTIONS = [
    "num_output: 4 kernel_size: 3",
    "num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 3",
    "num_output: 4 kernel_h: 3 kernel_w: 2 pad_h: 2 pad_w: 0 stride_h: 1 stride_w: 3 bias_term: false",
    "num_output: 3 kernel_size: 3 dilation: 2 pad: 2",
]


@pytest.mark.parametrize("conv", CONVOLUTIONS)
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_convolution_and_deconvolution(conv, kind):
    text = input_layer((2, 3, 9, 8)) + \
        f'layer {{ name: "c" type: "{kind}" bottom: "data" top: "c" convolution_param {{ {conv} }} }}'
    result = export_text(text)
    assert result.differences["c"] <= TIGHT
    assert ("ConvTranspose" if kind == "Deconvolution" else "Conv") in op_types(result)


def test_convolution_on_axis_2_and_two_bottoms_share_weights():
    text = input_layer((2, 2, 3, 7, 6), (1, 3, 5, 5), tops=("a", "b")) + \
        'layer { name: "c5" type: "Convolution" bottom: "a" top: "ya" ' \
        'convolution_param { num_output: 4 kernel_size: 3 axis: 2 } }\n' + \
        'layer { name: "c2" type: "Convolution" bottom: "b" bottom: "b" top: "yb1" top: "yb2" ' \
        'convolution_param { num_output: 2 kernel_size: 2 } }'
    result = export_text(text)
    assert set(result.differences) == {"ya", "yb1", "yb2"}


# Caffe's pooling rules on awkward shapes: odd sizes, pad > 0, stride > 1, ceil-clipped last windows,
# FLOOR rounding, a stride larger than the kernel (an empty last window), global pooling
POOLS = [
    ("kernel_size: 3 stride: 2", (7, 7)),
    ("kernel_size: 3 stride: 2 pad: 1", (6, 9)),
    ("kernel_size: 2 stride: 2 pad: 1", (5, 5)),           # ceil, then clipped (last window in the padding)
    ("kernel_size: 3 stride: 3 pad: 2", (8, 10)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1", (7, 6)),
    ("kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR", (8, 7)),
    ("kernel_size: 1 stride: 3", (5, 7)),                   # ceil: the last window starts beyond the image
    ("kernel_size: 2 stride: 3", (8, 8)),
    ("global_pooling: true", (5, 3)),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("pool,size", POOLS)
def test_pooling_matches_caffe_rules(method, pool, size):
    text = input_layer((2, 3) + size) + \
        f'layer {{ name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param {{ pool: {method} {pool} }} }}'
    result = export_text(text)
    assert result.differences["p"] <= TIGHT


def test_max_pooling_mask_top():
    text = input_layer((2, 3, 7, 6)) + \
        'layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "mask" ' \
        'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }'
    result = export_text(text)
    assert result.differences["mask"] == 0.0


def test_ave_pooling_divisor_correction_is_built_only_where_needed():
    plain = export_text(input_layer((1, 2, 8, 8)) + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                        'pooling_param { pool: AVE kernel_size: 2 stride: 2 } }')
    clipped = export_text(input_layer((1, 2, 8, 8)) + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
                          'pooling_param { pool: AVE kernel_size: 3 stride: 2 } }')
    assert op_types(plain) == ["AveragePool"]
    assert "Mul" in op_types(clipped) and "Pad" in op_types(clipped)


def test_crop_and_spp():
    text = input_layer((2, 3, 9, 8), (2, 3, 5, 4), tops=("a", "b")) + \
        'layer { name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "crop" crop_param { axis: 2 offset: 1 offset: 3 } }\n' + \
        'layer { name: "spp" type: "SPP" bottom: "a" top: "spp" spp_param { pyramid_height: 3 pool: MAX } }\n' + \
        'layer { name: "spp1" type: "SPP" bottom: "b" top: "spp1" spp_param { pyramid_height: 1 pool: AVE } }'
    result = export_text(text)
    assert set(result.differences) == {"crop", "spp", "spp1"}


# --- neurons --------------------------------------------------------------------------------------

NEURONS = [
    ("ReLU", ""), ("ReLU", "relu_param { negative_slope: 0.1 }"), ("Sigmoid", ""), ("TanH", ""),
    ("AbsVal", ""), ("BNLL", ""), ("ELU", "elu_param { alpha: 0.7 }"),
    ("Power", "power_param { power: 2 scale: 0.5 shift: 3 }"), ("Power", "power_param { power: 0 }"),
    ("Power", "power_param { power: 1 scale: 2 }"), ("Power", "power_param { power: 0.5 shift: 10 }"),
    ("Exp", ""), ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }"),
    ("Log", "log_param { shift: 10 }"), ("Log", "log_param { base: 10 scale: 2 shift: 9 }"),
    ("Threshold", "threshold_param { threshold: 0.3 }"), ("Clip", "clip_param { min: -0.5 max: 0.7 }"),
    ("Swish", ""), ("Swish", "swish_param { beta: 1.5 }"), ("Dropout", "dropout_param { dropout_ratio: 0.3 }"),
    ("PReLU", ""), ("PReLU", "prelu_param { channel_shared: true }"),
]


@pytest.mark.parametrize("kind,param", NEURONS)
@pytest.mark.parametrize("in_place", [False, True])
def test_neurons(kind, param, in_place):
    if in_place and kind == "AbsVal":
        pytest.skip("AbsVal does not work in place (as in Caffe)")
    top = "data" if in_place else "y"
    text = input_layer((2, 3, 4, 5)) + \
        f'layer {{ name: "n" type: "{kind}" bottom: "data" top: "{top}" {param} }}\n' + \
        f'layer {{ name: "after" type: "Power" bottom: "{top}" top: "out" power_param {{ scale: 2 }} }}'
    result = export_text(text)
    assert result.differences["out"] <= TIGHT


def test_power_constant_ignores_nonfinite_inputs():
    result = export_text(input_layer((2, 3)) + 'layer { name: "p" type: "Power" bottom: "data" top: "p" '
                         'power_param { power: 2 scale: 0 shift: 3 } }')
    session = onnx_session(result.model.SerializeToString())
    (out,) = session.run(["p"], {"data": np.full((2, 3), np.inf, np.float32)})
    assert np.all(out == 9.0)


# --- normalization --------------------------------------------------------------------------------

NORMALIZATIONS = [
    ('type: "BatchNorm"', (2, 3, 4, 5)),
    ('type: "BatchNorm"', (4, 3)),
    ('type: "BatchNorm" batch_norm_param { use_global_stats: false eps: 0.001 }', (2, 3, 4, 5)),
    ('type: "Scale"', (2, 3, 4, 5)),
    ('type: "Scale" scale_param { bias_term: true axis: 1 num_axes: 2 }', (2, 3, 4, 5)),
    ('type: "Scale" scale_param { axis: 0 num_axes: 0 }', (2, 3, 4)),
    ('type: "Bias" bias_param { axis: -2 num_axes: 2 }', (2, 3, 4, 5)),
    ('type: "LRN" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }', (2, 7, 4, 5)),
    ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 norm_region: WITHIN_CHANNEL }', (2, 3, 6, 5)),
    ('type: "MVN"', (2, 3, 4, 5)),
    ('type: "MVN" mvn_param { normalize_variance: false }', (2, 3, 4, 5)),
    ('type: "MVN" mvn_param { across_channels: true eps: 0.01 }', (2, 3, 4)),
    ('type: "Softmax"', (2, 5, 3)),
    ('type: "Softmax" softmax_param { axis: -1 }', (2, 5, 3)),
]


@pytest.mark.parametrize("layer,shape", NORMALIZATIONS)
def test_normalization(layer, shape):
    text = input_layer(shape) + f'layer {{ name: "n" {layer} bottom: "data" top: "y" }}'
    result = export_text(text)
    assert result.differences["y"] <= TIGHT


def test_scale_and_bias_from_a_second_bottom():
    text = input_layer((2, 3, 4, 5), (2, 3), tops=("x", "s")) + \
        'layer { name: "scale" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 } }\n' + \
        'layer { name: "bias" type: "Bias" bottom: "y" bottom: "s" top: "z" bias_param { axis: 0 } }'
    result = export_text(text, batch="dynamic")
    assert set(result.differences) == {"z"}


# --- structural and element-wise ---------------------------------------------------------------

STRUCTURAL = [
    'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" slice_param { axis: 1 slice_point: 1 slice_point: 3 } }\n'
    'layer { name: "cat" type: "Concat" bottom: "c" bottom: "a" top: "cat" concat_param { axis: 1 } }',
    'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: -1 } }\n'
    'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "a" top: "e" eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1 } }',
    'layer { name: "s" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 3 } }\n'
    'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" eltwise_param { operation: PROD } }\n'
    'layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "e" top: "m" eltwise_param { operation: MAX } }',
    'layer { name: "f" type: "Flatten" bottom: "data" top: "f" flatten_param { axis: 1 end_axis: 2 } }\n'
    'layer { name: "r" type: "Reshape" bottom: "f" top: "r" reshape_param { shape { dim: -1 dim: 2 } axis: 1 num_axes: 1 } }\n'
    'layer { name: "r2" type: "Reshape" bottom: "r" top: "r2" reshape_param { shape { dim: 0 dim: 0 dim: -1 } } }',
    'layer { name: "t" type: "Tile" bottom: "data" top: "t" tile_param { axis: 2 tiles: 3 } }',
    'layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { operation: SUM axis: 2 coeff: 2 } }',
    'layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { operation: ASUM axis: 1 } }',
    'layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { operation: SUMSQ axis: 3 } }',
    'layer { name: "r" type: "Reduction" bottom: "data" top: "r" reduction_param { operation: MEAN axis: 0 } }',
    'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 3 } }',
    'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 2 out_max_val: true } }',
    'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { axis: 1 top_k: 2 } }',
    'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { axis: 3 out_max_val: true } }',
    'layer { name: "sp" type: "Split" bottom: "data" top: "x1" top: "x2" }\n'
    'layer { name: "sum" type: "Eltwise" bottom: "x1" bottom: "x2" top: "sum" }\n'
    'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 4 dim: 3 dim: 4 } } }\n'
    'layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "p" top: "prod" eltwise_param { operation: PROD } }',
]


@pytest.mark.parametrize("layers", STRUCTURAL)
def test_structural(layers):
    result = export_text(input_layer((2, 4, 3, 4)) + layers)
    assert result.differences and max(result.differences.values()) <= TIGHT


def test_argmax_ties_go_to_the_larger_index_as_in_caffe():
    text = input_layer((2, 6)) + 'layer { name: "a" type: "ArgMax" bottom: "data" top: "a" argmax_param { top_k: 2 } }'
    result = export_text(text)
    session = onnx_session(result.model.SerializeToString())
    x = np.array([[1, 3, 3, 0, 3, 2], [5, 5, 1, 1, 0, 0]], np.float32)
    net = load_net(net_param(text))
    want = dltrain_forward(net, {"data": x})["a"]
    (got,) = session.run(["a"], {"data": x})
    np.testing.assert_array_equal(got, want)
    assert want.reshape(2, 2).tolist() == [[4, 2], [1, 0]]


def test_batch_reindex():
    text = input_layer((4, 3, 2), (5,), tops=("x", "idx")) + \
        'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "idx" top: "r" }'
    net = load_net(net_param(text), random_seed=1)
    result = export_onnx(None, net=net, check=False)
    x = np.random.default_rng(0).standard_normal((4, 3, 2)).astype(np.float32)
    idx = np.array([3, 0, 0, 2, 1], np.float32)
    (got,) = onnx_session(result.model.SerializeToString()).run(["r"], {"x": x, "idx": idx})
    np.testing.assert_array_equal(got, dltrain_forward(net, {"x": x, "idx": idx})["r"])


# --- dense ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("param", ["num_output: 5", "num_output: 4 axis: 2", "num_output: 3 transpose: true",
                                   "num_output: 3 bias_term: false axis: -1"])
def test_inner_product(param):
    text = input_layer((2, 3, 4, 2)) + f'layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" ' \
                                       f'inner_product_param {{ {param} }} }}'
    assert export_text(text, batch="dynamic").differences["ip"] <= TIGHT


def test_embed():
    text = input_layer((3, 4)) + 'layer { name: "e" type: "Embed" bottom: "data" top: "e" ' \
                                 'embed_param { input_dim: 11 num_output: 5 } }'
    result = export_text(text)
    assert result.differences["e"] == 0.0


# --- recurrent ---------------------------------------------------------------------------------

def recurrent_net(kind, static=False, expose=False, T=5, N=3, D=4, H=6):
    tops = ["x", "cont"]
    shapes = [(T, N, D), (T, N)]
    if static:
        tops.append("xs")
        shapes.append((N, 2))
    states = ["h0", "c0"][:2 if kind == "LSTM" else 1] if expose else []
    for s in states:
        tops.append(s)
        shapes.append((1, N, H))
    bottoms = " ".join(f'bottom: "{t}"' for t in tops)
    out_tops = " ".join(f'top: "{t}"' for t in ["y"] + [s.replace("0", "T") for s in states])
    return input_layer(*shapes, tops=tops) + \
        f'layer {{ name: "r" type: "{kind}" {bottoms} {out_tops} ' \
        f'recurrent_param {{ num_output: {H} expose_hidden: {str(expose).lower()} }} }}'


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("static,expose", [(False, False), (True, False), (False, True), (True, True)])
def test_recurrent_exact_scan_with_restarts(kind, static, expose):
    result = export_text(recurrent_net(kind, static, expose), tolerance=1e-4)
    assert "Scan" in op_types(result)
    assert max(result.differences.values()) <= 1e-4


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
@pytest.mark.parametrize("expose", [False, True])
def test_recurrent_onnx_operator(kind, expose):
    result = export_text(recurrent_net(kind, expose=expose), tolerance=1e-4, recurrent="onnx")
    assert kind in op_types(result)
    assert max(result.differences.values()) <= 1e-4


def test_onnx_lstm_operator_is_exact_only_without_restarts():
    """The ONNX operator ignores cont after the first step: a restart in the middle differs (and the
    exact export does not)."""
    text = recurrent_net("LSTM", T=6, N=2)
    net = load_net(net_param(text), random_seed=3)
    op_model = export_onnx(None, net=net, recurrent="onnx", check=False).model.SerializeToString()
    scan_model = export_onnx(None, net=net, check=False).model.SerializeToString()
    inputs = random_inputs(net, seed=0)
    inputs["cont"][3, 1] = 0
    want = dltrain_forward(net, inputs)["y"]
    (by_op,) = onnx_session(op_model).run(["y"], inputs)
    (by_scan,) = onnx_session(scan_model).run(["y"], inputs)
    assert np.abs(by_scan - want).max() < 1e-5
    assert np.abs(by_op[:3] - want[:3]).max() < 1e-5
    assert np.abs(by_op[3:, 1] - want[3:, 1]).max() > 1e-3


def test_onnx_operator_refuses_x_static():
    with pytest.raises(ExportError, match=r"layer 'r' \(LSTM\).*x_static"):
        export_text(recurrent_net("LSTM", static=True), recurrent="onnx")


# --- the whole export ------------------------------------------------------------------------------

def test_names_weights_and_in_place_blobs():
    text = input_layer((2, 3, 6, 6)) + \
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n' + \
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n' + \
        'layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 2 } }\n' + \
        'layer { name: "relu2" type: "ReLU" bottom: "fc" top: "fc" }'
    result = export_text(text)
    graph = result.model.graph
    assert [i.name for i in graph.input] == ["data"]
    assert [o.name for o in graph.output] == ["fc"]
    assert {"conv1/weight", "conv1/bias", "fc/weight", "fc/bias"} <= {i.name for i in graph.initializer}
    assert [n.name for n in graph.node if n.op_type != "Reshape"] == ["conv1", "relu1", "fc/Gemm", "relu2"]
    assert all("Caffe layer" in n.doc_string for n in graph.node)
    # every layer's top is checked, an in-place top as it was right after its layer
    assert [(layer, top) for layer, _, top, _ in result.top_differences] == \
        [("conv1", "conv1"), ("relu1", "conv1"), ("fc", "fc"), ("relu2", "fc")]
    assert all(d <= TIGHT for *_, d in result.top_differences)
    assert [o.name for o in onnx_session(result.model.SerializeToString()).get_outputs()] == ["fc"]


def test_dynamic_batch():
    text = input_layer((2, 3, 8, 8)) + \
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }\n' + \
        'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }\n' + \
        'layer { name: "f" type: "Flatten" bottom: "p" top: "f" }\n' + \
        'layer { name: "ip" type: "InnerProduct" bottom: "f" top: "ip" inner_product_param { num_output: 3 } }'
    result = export_text(text, batch="dynamic")
    assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnx_session(result.model.SerializeToString())
    (out,) = session.run(["ip"], {"data": np.zeros((7, 3, 8, 8), np.float32)})
    assert out.shape == (7, 3)


def test_fixed_batch_and_opsets():
    text = input_layer((2, 3, 5, 5)) + 'layer { name: "b" type: "BatchNorm" bottom: "data" top: "b" ' \
                                       'batch_norm_param { use_global_stats: false } }\n' + \
        'layer { name: "r" type: "Reduction" bottom: "b" top: "r" reduction_param { operation: SUMSQ axis: 1 } }'
    for opset in (13, 17, 18, 21):
        result = export_text(text, batch=4, opset=opset)
        assert result.model.opset_import[0].version == opset
        assert result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4
    with pytest.raises(ExportError, match="opset 9"):
        export_text(text, opset=9)


@pytest.mark.parametrize("layer,message", [
    ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }',
     r"layer 'loss' \(SoftmaxWithLoss\) cannot be exported to ONNX: loss layers"),
    ('layer { name: "acc" type: "Accuracy" bottom: "data" bottom: "label" top: "acc" }',
     r"layer 'acc' \(Accuracy\) cannot be exported to ONNX"),
])
def test_layers_that_do_not_export_name_themselves(layer, message):
    text = input_layer((2, 3), (2,), tops=("data", "label")) + layer
    with pytest.raises(ExportError, match=message):
        export_text(text, check=False)


def test_python_layer_refused(tmp_path, monkeypatch):
    (tmp_path / "mylayers.py").write_text(
        "import caffe\n"
        "class Double(caffe.Layer):\n"
        "    def setup(self, bottom, top): pass\n"
        "    def reshape(self, bottom, top): top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top): top[0].data[...] = 2 * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = input_layer((2, 3)) + 'layer { name: "double" type: "Python" bottom: "data" top: "y" ' \
                                 'python_param { module: "mylayers" layer: "Double" } }'
    with pytest.raises(ExportError, match=r"layer 'double' \(Python\) cannot be exported.*Python layers"):
        export_text(text, check=False)


def register_plugin_layer(kind, fn):
    """Register plugin layer type ``kind``: one bottom, one top of its shape holding ``fn(bottom data)``."""
    import dlcore
    from dlcore import Layer

    @dlcore.register_layer(kind)
    class Plugin(Layer):
        exact_num_bottom_blobs = 1
        exact_num_top_blobs = 1

        def reshape(self, bottom, top):
            top[0].reshape_like(bottom[0])

        def forward_cpu(self, bottom, top):
            top[0].data[...] = fn(bottom[0].data)


def test_plugin_layer_with_its_own_exporter():
    """A plugin registers its layer with dltrain and its exporter with dltrain.export."""
    register_plugin_layer("TestExportCube", lambda x: x ** 3)
    text = input_layer((2, 3)) + 'layer { name: "cube" type: "TestExportCube" bottom: "data" top: "y" }'
    with pytest.raises(ExportError, match=r"layer 'cube' \(TestExportCube\).*register_exporter"):
        export_text(text)

    def export_cube(ctx):
        x = ctx.bottoms[0]
        return [ctx.node("Mul", [ctx.node("Mul", [x, x]), x])]

    register_exporter("TestExportCube", export_cube)
    result = export_text(text)
    assert result.differences["y"] <= TIGHT
    assert [n.name for n in result.model.graph.node][0] == "cube"


def test_check_compares_a_top_that_passes_an_input_through():
    """A plugin exporter may return its bottom's value as its top: a graph input is then checked too (the
    check-only copy exposes it through an Identity)."""
    register_plugin_layer("TestExportPassThrough", lambda x: x)
    register_exporter("TestExportPassThrough", lambda ctx: [ctx.bottoms[0]])
    text = input_layer((2, 3)) + 'layer { name: "pass" type: "TestExportPassThrough" bottom: "data" top: "y" }\n' + \
        'layer { name: "twice" type: "Power" bottom: "y" top: "z" power_param { scale: 2 } }'
    result = export_text(text)
    assert result.top_differences == [("pass", "TestExportPassThrough", "y", 0.0), ("twice", "Power", "z", 0.0)]


def test_check_fails_past_the_tolerance():
    def wrong_relu(ctx):
        return [ctx.node("Abs", ctx.bottoms)]
    text = input_layer((2, 3)) + 'layer { name: "n" type: "TestExportWrong" bottom: "data" top: "y" }'
    import dlcore
    from dltrain.layers.neurons import ReLULayer

    @dlcore.register_layer("TestExportWrong")
    class Wrong(ReLULayer):
        pass

    register_exporter("TestExportWrong", wrong_relu)
    with pytest.raises(ExportError, match=r"layer 'n' \(TestExportWrong\): top 'y' differs by 8\.4e-01 relative "
                                          r"\(tolerance 1\.0e-03\)"):
        export_text(text, tolerance=1e-3)


SATURATED = input_layer((2, 3, 8, 8)) + \
    'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n' + \
    'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n' + \
    'layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.5 } }\n' + \
    'layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }\n' + \
    'layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip" inner_product_param { num_output: 5 } }\n' + \
    'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }'


@pytest.mark.parametrize("batch", [None, "dynamic"])
def test_check_names_the_first_wrong_layer_behind_a_saturated_softmax(batch):
    """Large logits make the Softmax one-hot on both sides: only the intermediate tops show a wrong LRN
    (5% off, as from a wrong alpha), and the check names it rather than the layers after it."""
    from dltrain.export import registry
    net = load_net(net_param(SATURATED), random_seed=1)
    net.params["ip"][0].data[...] *= 1e4
    net.params["ip"][1].data[...] *= 1e4
    right = export_onnx(None, net=net, batch=batch, tolerance=TIGHT)
    assert [layer for layer, *_ in right.top_differences] == ["conv1", "relu1", "norm1", "pool1", "ip", "prob"]
    probs = dltrain_forward(net, random_inputs(net))["prob"]
    assert np.all(probs.max(axis=1) == 1.0)                 # saturated

    lrn = registry.get_exporter("LRN")
    register_exporter("LRN", lambda ctx: [ctx.node("Mul", [lrn(ctx)[0], ctx.scalar(1.05)])])
    try:
        wrong = export_onnx(None, net=net, batch=batch, check=False)
        inputs = random_inputs(net)
        (got,) = onnx_session(wrong.model.SerializeToString()).run(["prob"], inputs)
        assert relative_difference(got, dltrain_forward(net, inputs)["prob"]) <= 1e-3   # the output alone passes
        with pytest.raises(ExportError, match=r"layer 'norm1' \(LRN\): top 'norm1' differs by 5\.0e-02 relative"):
            export_onnx(None, net=net, batch=batch)
    finally:
        register_exporter("LRN", lrn)


def test_cli_prints_the_worst_layer_top(tmp_path, capsys):
    from dltrain.cli.main import main
    model = tmp_path / "deploy.prototxt"
    model.write_text(SATURATED)
    assert main(["export", "--model", str(model), str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "check: output 'prob': max relative difference" in printed
    assert "check: 6 layer tops compared, worst: '" in printed
