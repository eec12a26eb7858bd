"""caffe.net_spec (NetSpec, layers as L, params as P, to_proto) as pycaffe's python/caffe/net_spec.py behaves.

The LeNet of Caffe's tutorial (examples/01-learning-lenet.ipynb), written in NetSpec, equals
configs/lenet and builds a dltrain Net with the same shapes; automatic names, ntop, in_place,
the keyword-to-field mapping, enums, repeated and nested fields; a Python layer and a net that
trains, all written with NetSpec.
"""
import os
import textwrap

import numpy as np
import pytest
from google.protobuf import text_format

import dltrain_caffe.fallback  # noqa: F401  (`import caffe` even where dltrain's .pth is not installed)
import caffe
from caffe import layers as L, params as P
from dlcore import Net
from dlcore.config import load_net, parse_text
from dltrain.cli.convert import convert_arrays
from dltrain.proto import caffe_pb2
from dltrain.solvers import get_solver

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET_CONFIG = os.path.join(REPO, "configs", "lenet", "lenet.prototxt")


# The tutorial's function, unchanged (examples/01-learning-lenet.ipynb).
def lenet(lmdb, batch_size):
    # our version of LeNet: a series of linear and simple nonlinear transformations
    n = caffe.NetSpec()

    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1./255), ntop=2)

    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 =   L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss =  L.SoftmaxWithLoss(n.score, n.label)

    return n.to_proto()


# The tutorial names two blobs differently from configs/lenet (Caffe's examples/mnist/lenet_train_test).
TUTORIAL_TO_CONFIG = {"fc1": "ip1", "score": "ip2"}


@pytest.fixture(scope="module")
def mnist_like_lmdb(tmp_path_factory):
    """Eight 28x28 one-channel images with labels: what the tutorial's Data layer reads."""
    rng = np.random.default_rng(0)
    db = str(tmp_path_factory.mktemp("netspec") / "mnist_train_lmdb")
    convert_arrays(rng.integers(0, 256, size=(8, 1, 28, 28), dtype=np.uint8), np.arange(8) % 10, db)
    return db


def _renamed(names):
    return [TUTORIAL_TO_CONFIG.get(name, name) for name in names]


def test_tutorial_lenet_equals_configs_lenet(mnist_like_lmdb):
    spec = lenet(mnist_like_lmdb, 64)
    config = load_net(LENET_CONFIG)
    assert [layer.type for layer in spec.layer[1:]] == [layer.type for layer in config.layer[1:]]
    assert [layer.name for layer in spec.layer] == ["data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1",
                                                   "score", "loss"]
    for got, want in zip(spec.layer, config.layer):
        assert _renamed(got.bottom) == list(want.bottom), got.name
        assert _renamed(got.top) == list(want.top), got.name
        if got.type == "Convolution":
            g, w = got.convolution_param, want.convolution_param
            # stride unset means 1, as configs/lenet writes it
            assert (g.num_output, list(g.kernel_size), list(g.stride) or [1], list(g.pad)) == \
                (w.num_output, list(w.kernel_size), list(w.stride) or [1], list(w.pad))
            # the tutorial leaves bias_filler unset: its default is the config's "constant"
            assert (g.weight_filler.type, g.bias_filler.type) == (w.weight_filler.type, w.bias_filler.type)
        if got.type == "Pooling":
            assert got.pooling_param == want.pooling_param
        if got.type == "InnerProduct":
            g, w = got.inner_product_param, want.inner_product_param
            assert (g.num_output, g.weight_filler.type, g.bias_filler.type) == \
                (w.num_output, w.weight_filler.type, w.bias_filler.type)
    # Different by design: the tutorial reads an LMDB through a Data layer where configs/lenet has an
    # Input layer, and it gives no lr_mult params (Caffe's lenet_train_test gives the biases lr_mult 2).
    data = spec.layer[0]
    assert (data.type, list(data.top)) == ("Data", ["data", "label"])
    assert (data.data_param.source, data.data_param.batch_size, data.data_param.backend) == \
        (mnist_like_lmdb, 64, caffe_pb2.DataParameter.LMDB)
    assert data.transform_param.scale == pytest.approx(1 / 255)
    assert config.layer[0].type == "Input" and not any(layer.param for layer in spec.layer)
    assert spec.layer[6].bottom == spec.layer[6].top == ["fc1"]     # relu1 in place


def test_tutorial_lenet_builds_the_same_net_as_configs_lenet(mnist_like_lmdb):
    built = Net(lenet(mnist_like_lmdb, 64), caffe.TRAIN)
    reference = Net(LENET_CONFIG, caffe.TEST)
    assert _renamed(built.blobs) == list(reference.blobs)
    for name, blob in built.blobs.items():
        assert blob.data.shape == reference.blobs[TUTORIAL_TO_CONFIG.get(name, name)].data.shape, name
    assert _renamed(built.params) == list(reference.params)
    for name, params in built.params.items():
        want = reference.params[TUTORIAL_TO_CONFIG.get(name, name)]
        assert [p.data.shape for p in params] == [p.data.shape for p in want], name
    out = built.forward()
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert built.blobs["data"].data.max() <= 1.0          # transform_param's scale reached the Data layer


def test_to_proto_text_round_trips(mnist_like_lmdb):
    spec = lenet(mnist_like_lmdb, 64)
    text = str(spec)            # what the tutorial writes to lenet_auto_train.prototxt
    assert text_format.Parse(text, caffe_pb2.NetParameter()) == spec
    assert text_format.Parse(text_format.MessageToString(spec), caffe_pb2.NetParameter()) == spec
    assert parse_text(text, caffe_pb2.NetParameter) == spec          # dltrain's own prototxt reader
    assert 'pool: MAX' in text and 'backend: LMDB' in text and 'kernel_size: 5' in text


def test_unnamed_tops_and_layers_are_named_by_type_and_count():
    data, label = L.DummyData(shape=[dict(dim=[2, 3]), dict(dim=[2])], ntop=2)
    ip = L.InnerProduct(data, num_output=4)
    relu = L.ReLU(ip, in_place=True)
    ip2 = L.InnerProduct(relu, num_output=3)
    loss = L.SoftmaxWithLoss(ip2, label)
    net = loss.to_proto()
    assert [layer.name for layer in net.layer] == ["DummyData1", "InnerProduct1", "ReLU1", "InnerProduct2",
                                                  "SoftmaxWithLoss1"]
    assert [list(layer.top) for layer in net.layer] == [["DummyData1", "DummyData2"], ["InnerProduct1"],
                                                        ["InnerProduct1"], ["InnerProduct2"], ["SoftmaxWithLoss1"]]
    assert list(net.layer[4].bottom) == ["InnerProduct2", "DummyData2"]
    # caffe.to_proto of several tops writes each layer once
    both = caffe.to_proto(loss, ip)
    assert [layer.name for layer in both.layer] == [layer.name for layer in net.layer]


def test_netspec_names_assigned_tops_and_counts_the_rest():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 4]))
    n.out = L.ReLU(L.InnerProduct(L.InnerProduct(n.data, num_output=3), num_output=2))
    n.first, n.second = L.Slice(n.out, ntop=2, slice_point=1)
    n.silenced = L.Silence(n.second, ntop=0)
    net = n.to_proto()
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in net.layer] == [
        ("data", [], ["data"]),
        ("InnerProduct1", ["data"], ["InnerProduct1"]),
        ("InnerProduct2", ["InnerProduct1"], ["InnerProduct2"]),
        ("out", ["InnerProduct2"], ["out"]),
        ("first", ["out"], ["first", "second"]),     # a layer takes its first top's name
        ("silenced", ["second"], []),                 # ntop=0: the layer itself, named by its key
    ]
    assert n.keys() == ["data", "out", "first", "second", "silenced"]
    assert n.vals()[0] is n.data and n["out"] is n.out
    n["extra"] = L.ReLU(n.first)
    assert n.to_proto().layer[-1].name == "extra"
    del n["extra"]
    del n["silenced"]
    assert "silenced" not in n.keys() and len(n.to_proto().layer) == 5


def test_in_place_layers_write_over_their_bottoms_and_keep_their_own_names():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.ip = L.InnerProduct(n.data, num_output=3)
    n.relu = L.ReLU(n.ip, in_place=True)
    n.drop = L.Dropout(n.relu, in_place=True, dropout_ratio=0.25)
    layers = n.to_proto().layer
    assert [(layer.name, list(layer.bottom), list(layer.top)) for layer in layers[2:]] == [
        ("relu", ["ip"], ["ip"]), ("drop", ["ip"], ["ip"])]
    assert layers[3].dropout_param.dropout_ratio == 0.25
    assert "in_place" not in str(layers[3]) and "ntop" not in str(layers[3])


def test_keywords_go_to_the_layers_own_parameters_or_to_the_layer():
    x = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    conv = L.Convolution(x, num_output=4, kernel_size=[3, 5], pad=[1, 2], bias_term=False,
                         weight_filler=dict(type="gaussian", std=0.01),
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                         include=dict(phase=caffe.TRAIN), loss_weight=0.5, propagate_down=[True])
    layer = conv.to_proto().layer[1]
    c = layer.convolution_param
    assert (c.num_output, list(c.kernel_size), list(c.pad), c.bias_term) == (4, [3, 5], [1, 2], False)
    assert (c.weight_filler.type, c.weight_filler.std) == ("gaussian", pytest.approx(0.01))
    assert [(p.lr_mult, p.decay_mult) for p in layer.param] == [(1, 1), (2, 0)]   # a list of dicts: repeated messages
    assert [rule.phase for rule in layer.include] == [caffe.TRAIN]              # a dict given to a repeated field
    assert list(layer.loss_weight) == [0.5] and list(layer.propagate_down) == [True]
    # beyond pycaffe: tuples, NumPy values and messages are taken too
    more = L.Convolution(x, num_output=np.int64(4), kernel_size=np.array([3, 5]), pad=(1, 2), bias_term=False,
                         weight_filler=caffe_pb2.FillerParameter(type="gaussian", std=0.01),
                         param=[dict(lr_mult=1, decay_mult=1), caffe_pb2.ParamSpec(lr_mult=2, decay_mult=0)],
                         include=dict(phase=caffe.TRAIN), loss_weight=0.5, propagate_down=[True])
    assert more.to_proto().layer[1] == layer
    # Deconvolution keeps its fields in convolution_param: keywords and convolution_param=dict(...) agree
    by_keywords = L.Deconvolution(x, num_output=2, kernel_size=4, stride=2).to_proto().layer[1]
    by_message = L.Deconvolution(x, convolution_param=dict(num_output=2, kernel_size=4, stride=2)).to_proto().layer[1]
    assert by_keywords == by_message and list(by_keywords.convolution_param.stride) == [2]


def test_enum_values_come_from_the_parameter_messages():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Pooling.AVE == caffe_pb2.PoolingParameter.AVE != P.Pooling.MAX
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    assert P.Eltwise.PROD == caffe_pb2.EltwiseParameter.PROD
    x = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    text = str(L.Eltwise(L.Pooling(x, pool=P.Pooling.AVE, kernel_size=2), x, operation=P.Eltwise.PROD).to_proto())
    assert "pool: AVE" in text and "operation: PROD" in text
    with pytest.raises(AttributeError, match="NOPE"):
        P.Pooling.NOPE
    with pytest.raises(AttributeError, match="NoSuchTypeParameter"):
        P.NoSuchType.MAX


def test_python_layer_with_param_str_runs(tmp_path, monkeypatch):
    (tmp_path / "netspec_scale_layer.py").write_text(textwrap.dedent('''
        import caffe

        class Scale(caffe.Layer):
            def setup(self, bottom, top):
                self.factor = float(self.param_str)

            def reshape(self, bottom, top):
                top[0].reshape(*bottom[0].data.shape)

            def forward(self, bottom, top):
                top[0].data[...] = self.factor * bottom[0].data

            def backward(self, top, propagate_down, bottom):
                bottom[0].diff[...] = self.factor * top[0].diff
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.scaled = L.Python(n.data, module="netspec_scale_layer", layer="Scale", param_str="2.5")
    layer = n.to_proto().layer[1]
    assert (layer.type, layer.python_param.module, layer.python_param.layer, layer.python_param.param_str) == \
        ("Python", "netspec_scale_layer", "Scale", "2.5")
    net = Net(n.to_proto(), caffe.TEST)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = net.forward(data=x)
    np.testing.assert_allclose(out["scaled"], 2.5 * x)


def test_a_netspec_net_forwards_and_trains():
    """A least-squares fit written with NetSpec: forward equals numpy, and SGD lowers the loss."""
    n = caffe.NetSpec()
    n.data, n.target = L.Input(shape=[dict(dim=[8, 3]), dict(dim=[8, 1])], ntop=2)
    n.pred = L.InnerProduct(n.data, num_output=1, weight_filler=dict(type="constant", value=0.5),
                            bias_filler=dict(type="constant", value=0.25))
    n.loss = L.EuclideanLoss(n.pred, n.target)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1).astype(np.float32)

    net = Net(n.to_proto(), caffe.TEST)
    out = net.forward(data=x, target=y)
    expected = np.sum((x @ np.full((3, 1), 0.5) + 0.25 - y) ** 2) / 2 / 8
    assert out["loss"] == pytest.approx(expected, rel=1e-5)

    solver_param = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", momentum=0.9, max_iter=30,
                                             display=0, snapshot_after_train=False)
    solver_param.net_param.CopyFrom(n.to_proto())
    solver = get_solver(solver_param)
    losses = []
    for _ in range(30):
        solver.net.blobs["data"].data[...] = x
        solver.net.blobs["target"].data[...] = y
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert losses[-1] < losses[0] / 10


def test_errors_name_the_layer_and_keep_pycaffes_exception_types():
    data = L.DummyData(shape=dict(dim=[2]), ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)
    x = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    with pytest.raises(AttributeError, match=r"layer 'Convolution1' \(Convolution\), kernel_sze=3: unknown field"):
        L.Convolution(x, kernel_sze=3).to_proto()
    with pytest.raises(AttributeError, match="FillerParameter has no field 'tpye'"):
        L.Convolution(x, num_output=2, kernel_size=1, weight_filler=dict(tpye="xavier")).to_proto()
    with pytest.raises(TypeError, match="num_output is not a repeated field"):
        L.Convolution(x, num_output=[2, 3]).to_proto()
    n = caffe.NetSpec()
    n.pair = L.DummyData(shape=dict(dim=[2]), ntop=2)
    with pytest.raises(TypeError, match="NetSpec 'pair' holds a tuple"):
        n.to_proto()
    with pytest.raises(KeyError):
        n.missing
    assert not hasattr(n, "missing")     # also an AttributeError, so hasattr/getattr with a default work
