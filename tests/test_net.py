"""The layer graph: wiring, splits, in-place, sharing, filtering, need-backward, weights."""
import numpy as np
import pytest

import dlcore
from dlcore import ConfigError, Net
from dlcore.config import net_from_string

IP = """layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra}
  inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.5 }}
                         bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}
"""


def make_net(text, phase=dlcore.TRAIN, dtype=np.float64, **kw):
    return Net(net_from_string(text), phase, dtype=dtype, **kw)


def inputs(*shapes):
    tops = "".join(f' top: "{name}"' for name, _ in shapes)
    dims = "".join(" shape {" + "".join(f" dim: {d}" for d in shape) + " }" for _, shape in shapes)
    return f'layer {{ name: "input" type: "Input"{tops} input_param {{{dims} }} }}\n'


def fill_inputs(net, seed=0):
    rng = np.random.default_rng(seed)
    for name in net.inputs:
        net.blobs[name].data[...] = rng.uniform(-1, 1, net.blobs[name].shape)


def numeric_input_grad(net, name, eps=1e-5):
    """d(net loss)/d(input blob) by central differences."""
    flat = net.blobs[name].data.reshape(-1)
    grad = np.zeros(flat.size)
    for k in range(flat.size):
        orig = flat[k]
        flat[k] = orig + eps
        plus = net.forward_from_to(0, len(net.layers) - 1)
        flat[k] = orig - eps
        minus = net.forward_from_to(0, len(net.layers) - 1)
        flat[k] = orig
        grad[k] = (plus - minus) / (2 * eps)
    return grad.reshape(net.blobs[name].shape)


def analytic_grads(net):
    net.clear_param_diffs()
    net.forward()
    net.backward()


TWO_HEADS = (inputs(("x", (2, 3)), ("y", (2, 4)))
             + IP.format(name="ip_a", bottom="x", top="a", n=4, extra="")
             + IP.format(name="ip_b", bottom="x", top="b", n=4, extra="")
             + 'layer { name: "loss_a" type: "EuclideanLoss" bottom: "a" bottom: "y" top: "loss_a" }\n'
             + 'layer { name: "loss_b" type: "EuclideanLoss" bottom: "b" bottom: "y" top: "loss_b" loss_weight: 3 }\n'
             + "force_backward: true\n")


def test_split_inserted_and_diffs_summed():
    net = make_net(TWO_HEADS)
    # Caffe's names for the inserted splits.
    assert "input_x_0_split" in net.layer_names and "input_y_1_split" in net.layer_names
    assert "input_x_0_split_0" in net.blobs and "input_x_0_split_1" in net.blobs
    fill_inputs(net)
    analytic_grads(net)
    expected = numeric_input_grad(net, "x")
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-6, atol=1e-8)
    # loss = loss_a + 3 * loss_b
    out = net.forward()
    assert net.loss == pytest.approx(float(out["loss_a"]) + 3 * float(out["loss_b"]))
    assert net.outputs == ["loss_a", "loss_b"]
    assert net.inputs == ["x", "y"]


def test_loss_top_also_read_gets_split_with_loss_weight():
    text = (inputs(("x", (2, 3)), ("y", (2, 2)))
            + IP.format(name="ip", bottom="x", top="a", n=2, extra="loss_weight: 2")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "y" top: "loss" }\n'
            + "force_backward: true\n")
    net = make_net(text)
    split = net.layer_dict["ip_a_0_split"]
    assert split.loss_weights == [2.0, 0.0]
    fill_inputs(net)
    analytic_grads(net)
    np.testing.assert_allclose(net.blobs["x"].diff, numeric_input_grad(net, "x"), rtol=1e-6, atol=1e-8)
    out = net.forward()
    assert net.loss == pytest.approx(float(out["loss"]) + 2 * net.blobs["a"].data.sum())


def test_in_place_relu_shares_blob_and_gradient_is_right():
    text = (inputs(("x", (3, 4)), ("y", (3, 2)))
            + IP.format(name="ip1", bottom="x", top="h", n=5, extra="")
            + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }\n'
            + IP.format(name="ip2", bottom="h", top="o", n=2, extra="")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "y" top: "loss" }\n'
            + "force_backward: true\n")
    net = make_net(text)
    assert list(net.blobs) == ["x", "y", "h", "o", "loss"]
    relu = net.layer_names.index("relu")
    assert net._top_vecs[relu][0] is net._bottom_vecs[relu][0]
    fill_inputs(net, seed=3)
    analytic_grads(net)
    np.testing.assert_allclose(net.blobs["x"].diff, numeric_input_grad(net, "x"), rtol=1e-5, atol=1e-8)


def test_param_gradients_match_numeric():
    text = (inputs(("x", (3, 4)), ("y", (3, 2)))
            + IP.format(name="ip1", bottom="x", top="h", n=3, extra="")
            + 'layer { name: "tanh" type: "TanH" bottom: "h" top: "t" }\n'
            + IP.format(name="ip2", bottom="t", top="o", n=2, extra="")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "y" top: "loss" }\n')
    net = make_net(text)
    fill_inputs(net)
    analytic_grads(net)
    for blob in net.learnable_params:
        analytic = blob.diff.copy()
        flat = blob.data.reshape(-1)
        for k in range(flat.size):
            orig = flat[k]
            flat[k] = orig + 1e-5
            plus = net.forward_from_to(0, len(net.layers) - 1)
            flat[k] = orig - 1e-5
            minus = net.forward_from_to(0, len(net.layers) - 1)
            flat[k] = orig
            assert analytic.reshape(-1)[k] == pytest.approx((plus - minus) / 2e-5, rel=1e-5, abs=1e-8)


def test_shared_params_share_data_and_sum_diffs():
    shared = 'param { name: "w" } param { name: "b" }'
    text = (inputs(("x", (2, 3)), ("y", (2, 4)))
            + IP.format(name="ip_a", bottom="x", top="a", n=4, extra=shared)
            + IP.format(name="ip_b", bottom="x", top="b", n=4, extra=shared)
            + 'layer { name: "loss_a" type: "EuclideanLoss" bottom: "a" bottom: "y" top: "loss_a" }\n'
            + 'layer { name: "loss_b" type: "EuclideanLoss" bottom: "b" bottom: "y" top: "loss_b" }\n')
    net = make_net(text)
    a, b = net.params["ip_a"], net.params["ip_b"]
    assert a[0].data is not b[0].data and np.shares_memory(a[0].data, b[0].data)
    assert len(net.learnable_params) == 2 and net.param_owners == [-1, -1, 0, 1]
    fill_inputs(net)
    out = net.forward()
    np.testing.assert_allclose(out["loss_a"], out["loss_b"])   # same weights, same outputs
    net.clear_param_diffs()
    net.backward()
    # each head contributes the same gradient: the shared diff is twice one head's
    single = make_net(inputs(("x", (2, 3)), ("y", (2, 4)))
                      + IP.format(name="ip_a", bottom="x", top="a", n=4, extra="")
                      + 'layer { name: "loss_a" type: "EuclideanLoss" bottom: "a" bottom: "y" top: "loss_a" }\n')
    single.copy_from(net.to_proto())
    single.blobs["x"].data[...] = net.blobs["x"].data
    single.blobs["y"].data[...] = net.blobs["y"].data
    analytic_grads(single)
    np.testing.assert_allclose(a[0].diff, 2 * single.params["ip_a"][0].diff, rtol=1e-10)


def test_shared_param_shape_mismatch_is_an_error():
    text = (inputs(("x", (2, 3)))
            + IP.format(name="ip_a", bottom="x", top="a", n=4, extra='param { name: "w" }')
            + IP.format(name="ip_b", bottom="x", top="b", n=5, extra='param { name: "w" }'))
    with pytest.raises(ConfigError, match="cannot share param 'w' owned by layer 'ip_a'"):
        make_net(text)


FILTERED = """
layer { name: "always" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "train_only" type: "ReLU" bottom: "x" top: "t1" include { phase: TRAIN } }
layer { name: "test_only" type: "ReLU" bottom: "x" top: "t2" include { phase: TEST } }
layer { name: "not_test" type: "ReLU" bottom: "x" top: "t3" exclude { phase: TEST } }
layer { name: "stage_a" type: "ReLU" bottom: "x" top: "t4" include { stage: "a" } }
layer { name: "stage_ab" type: "ReLU" bottom: "x" top: "t5" include { stage: "a" stage: "b" } }
layer { name: "not_b" type: "ReLU" bottom: "x" top: "t6" include { not_stage: "b" } }
layer { name: "level_2" type: "ReLU" bottom: "x" top: "t7" include { min_level: 2 } }
layer { name: "level_max1" type: "ReLU" bottom: "x" top: "t8" include { max_level: 1 } }
layer { name: "a_or_test" type: "ReLU" bottom: "x" top: "t9" include { stage: "a" } include { phase: TEST } }
"""


@pytest.mark.parametrize("phase, level, stages, expected", [
    (dlcore.TRAIN, 0, [], ["train_only", "not_test", "not_b", "level_max1"]),
    (dlcore.TEST, 0, [], ["test_only", "not_b", "level_max1", "a_or_test"]),
    (dlcore.TRAIN, 0, ["a"], ["train_only", "not_test", "stage_a", "not_b", "level_max1", "a_or_test"]),
    (dlcore.TRAIN, 2, ["a", "b"], ["train_only", "not_test", "stage_a", "stage_ab", "level_2", "a_or_test"]),
])
def test_phase_level_stage_filtering(phase, level, stages, expected):
    net = make_net(FILTERED, phase, level=level, stages=stages)
    kept = [n for n in net.layer_names if n != "always" and not n.endswith("_split")]
    assert kept == expected


def test_include_and_exclude_together_is_an_error():
    text = inputs(("x", (1, 2))) + ('layer { name: "r" type: "ReLU" bottom: "x" top: "y" '
                                    'include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(ConfigError, match="not both"):
        make_net(text)


NEED_BACKWARD = (inputs(("x", (2, 3)), ("y", (2, 2)))
                 + IP.format(name="frozen", bottom="x", top="h", n=3,
                             extra="param { lr_mult: 0 } param { lr_mult: 0 }")
                 + IP.format(name="learned", bottom="h", top="o", n=2, extra="")
                 + 'layer { name: "loss" type: "EuclideanLoss" bottom: "o" bottom: "y" top: "loss" }\n'
                 + IP.format(name="dangling", bottom="x", top="unused", n=2, extra=""))


def test_need_backward_rules():
    net = make_net(NEED_BACKWARD)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["input"] is False and need["frozen"] is False
    assert need["learned"] is True and need["loss"] is True
    assert need["dangling"] is False          # contributes to no loss
    assert net.layer_dict["frozen"].param_propagate_down == [False, False]
    loss_bottoms = net.bottom_need_backward[net.layer_names.index("loss")]
    assert loss_bottoms == [True, False]
    forced = make_net(NEED_BACKWARD + "force_backward: true\n")
    need = dict(zip(forced.layer_names, forced.layer_need_backward))
    assert need["frozen"] is True
    assert forced.layer_dict["frozen"].param_propagate_down == [True, True]
    fill_inputs(forced)
    analytic_grads(forced)
    assert np.abs(forced.blobs["x"].diff).sum() > 0


def test_propagate_down_false_skips_a_bottom():
    text = (inputs(("x", (2, 3)))
            + IP.format(name="ip_a", bottom="x", top="a", n=2, extra="")
            + IP.format(name="ip_b", bottom="x", top="b", n=2, extra="")
            + 'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" '
              'propagate_down: true propagate_down: false }\n')
    net = make_net(text)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["ip_a"] is True and need["ip_b"] is False   # nothing asks for b's gradient
    fill_inputs(net)
    net.forward()
    net.blobs["b"].diff[...] = 7.0
    net.clear_param_diffs()
    net.backward()
    assert np.all(net.blobs["b"].diff == 7.0)
    assert np.all(net.params["ip_b"][0].diff == 0)
    np.testing.assert_allclose(net.blobs["a"].diff, (net.blobs["a"].data - net.blobs["b"].data) / 2)
    # force_backward overrides propagate_down, as in Caffe
    forced = make_net(text + "force_backward: true\n")
    assert forced.bottom_need_backward[forced.layer_names.index("loss")] == [True, True]


def test_forward_start_end_and_inputs_by_keyword():
    text = (inputs(("x", (2, 3)))
            + IP.format(name="ip1", bottom="x", top="h", n=4, extra="")
            + 'layer { name: "relu" type: "ReLU" bottom: "h" top: "r" }\n')
    net = make_net(text)
    x = np.arange(6.0).reshape(2, 3)
    out = net.forward(x=x)
    assert list(out) == ["r"]
    np.testing.assert_allclose(out["r"], np.maximum(x @ net.params["ip1"][0].data.T + net.params["ip1"][1].data, 0))
    net.blobs["h"].data[...] = -1
    out = net.forward(start="relu", end="relu")     # the end layer's tops come back
    assert list(out) == ["r"] and np.all(out["r"] == 0)


def test_reshape_follows_a_new_input_shape():
    net = make_net(inputs(("x", (2, 3))) + IP.format(name="ip", bottom="x", top="h", n=4, extra=""))
    net.blobs["x"].reshape(5, 3)
    net.blobs["x"].data[...] = 1.0
    out = net.forward()
    assert out["h"].shape == (5, 4)


def test_legacy_input_fields_become_an_input_layer():
    text = ('input: "data" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3\n'
            'layer { name: "relu" type: "ReLU" bottom: "data" top: "out" }\n')
    net = make_net(text)
    assert net.inputs == ["data"] and net.blobs["data"].shape == (1, 2, 3, 3)
    text = 'input: "data" input_shape { dim: 4 dim: 2 }\nlayer { name: "r" type: "ReLU" bottom: "data" top: "o" }'
    assert make_net(text).blobs["o"].shape == (4, 2)


def test_save_and_copy_from_round_trip(tmp_path):
    text = inputs(("x", (2, 3))) + IP.format(name="ip", bottom="x", top="h", n=4, extra="") \
        + IP.format(name="ip2", bottom="h", top="o", n=2, extra="")
    net = make_net(text, dtype=np.float32)
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    other = make_net(text, dtype=np.float32)
    other.copy_from(str(path))
    for name in ("ip", "ip2"):
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    # The file decodes with the schema and names every layer's blobs.
    from dltrain.proto import caffe_pb2
    decoded = caffe_pb2.NetParameter.FromString(path.read_bytes())
    ip = [layer for layer in decoded.layer if layer.name == "ip"][0]
    assert list(ip.blobs[0].shape.dim) == [4, 3] and len(ip.blobs[0].data) == 12
    # Layers the file lacks keep their values; a shape mismatch names both shapes.
    partial = make_net(inputs(("x", (2, 3))) + IP.format(name="fresh", bottom="x", top="h", n=4, extra=""),
                       dtype=np.float32)
    before = partial.params["fresh"][0].data.copy()
    partial.copy_from(str(path))
    np.testing.assert_array_equal(partial.params["fresh"][0].data, before)
    wrong = make_net(inputs(("x", (2, 3))) + IP.format(name="ip", bottom="x", top="h", n=5, extra=""),
                     dtype=np.float32)
    with pytest.raises(ConfigError, match=r"layer 'ip': shape mismatch; source 4 3 \(12\), target 5 3 \(15\)"):
        wrong.copy_from(str(path))


def test_weights_argument_and_pycaffe_argument_order(tmp_path):
    text = inputs(("x", (2, 3))) + IP.format(name="ip", bottom="x", top="h", n=4, extra="")
    model = tmp_path / "net.prototxt"
    model.write_text(text)
    net = Net(str(model), dlcore.TEST)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    a = Net(str(model), weights, dlcore.TEST)          # pycaffe's order
    b = Net(str(model), dlcore.TEST, weights=weights)
    np.testing.assert_array_equal(a.params["ip"][0].data, net.params["ip"][0].data)
    np.testing.assert_array_equal(b.params["ip"][0].data, net.params["ip"][0].data)
    assert a.phase == dlcore.TEST


@pytest.mark.parametrize("text, message", [
    ('layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }', "unknown bottom blob 'nope'"),
    ('layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
     'layer { name: "b" type: "Bogus" bottom: "x" top: "y" }', "unknown layer type 'Bogus'"),
    ('layer { name: "i" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
     'layer { name: "j" type: "Input" top: "x" input_param { shape { dim: 1 } } }', "more than one layer"),
])
def test_bad_nets_name_file_line_and_layer(tmp_path, text, message):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        Net(str(path), dlcore.TRAIN)
    err = info.value
    assert err.path == str(path) and err.line == 2 - (message.startswith("unknown bottom"))
    assert str(err).startswith(f"{path}:{err.line}")
