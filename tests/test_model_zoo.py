"""The model zoo as a test: Caffe's deploy nets (configs/zoo/) built with random
weights, run forward and backward, their shapes and parameter counts checked
against the published figures and against a hand count from the layer sizes.

The published counts: AlexNet and CaffeNet 60,965,224 (Krizhevsky et al. 2012,
"60 million parameters"; the BVLC deploy nets' blob sizes), GoogLeNet 6,998,552
(the BVLC deploy net without the auxiliary classifiers; Szegedy et al. 2015,
Table 1, "about 7M"), cifar10_quick 145,578, cifar10_full 89,578, LeNet 431,080.
"""
import os

import numpy as np
import pytest

import dltrain.layers  # noqa: F401  (registers the layer types)
from dlcore import TEST, Net
from dlcore.config import load_net

ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "zoo")


# --- hand counts from the layer sizes -------------------------------------------------------------
def conv(cin, cout, k, group=1):
    return cout * (cin // group) * k * k + cout


def ip(nin, nout):
    return nin * nout + nout


def inception(cin, c1, c3r, c3, c5r, c5, pool_proj):
    return (conv(cin, c1, 1) + conv(cin, c3r, 1) + conv(c3r, c3, 3) + conv(cin, c5r, 1) + conv(c5r, c5, 5)
            + conv(cin, pool_proj, 1))


ALEXNET_COUNT = (conv(3, 96, 11) + conv(96, 256, 5, group=2) + conv(256, 384, 3) + conv(384, 384, 3, group=2)
                 + conv(384, 256, 3, group=2) + ip(256 * 6 * 6, 4096) + ip(4096, 4096) + ip(4096, 1000))
GOOGLENET_COUNT = (conv(3, 64, 7) + conv(64, 64, 1) + conv(64, 192, 3)
                   + inception(192, 64, 96, 128, 16, 32, 32)        # 3a -> 256
                   + inception(256, 128, 128, 192, 32, 96, 64)      # 3b -> 480
                   + inception(480, 192, 96, 208, 16, 48, 64)       # 4a -> 512
                   + inception(512, 160, 112, 224, 24, 64, 64)      # 4b -> 512
                   + inception(512, 128, 128, 256, 24, 64, 64)      # 4c -> 512
                   + inception(512, 112, 144, 288, 32, 64, 64)      # 4d -> 528
                   + inception(528, 256, 160, 320, 32, 128, 128)    # 4e -> 832
                   + inception(832, 256, 160, 320, 32, 128, 128)    # 5a -> 832
                   + inception(832, 384, 192, 384, 48, 128, 128)    # 5b -> 1024
                   + ip(1024, 1000))
CIFAR10_QUICK_COUNT = conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + ip(64 * 4 * 4, 64) + ip(64, 10)
CIFAR10_FULL_COUNT = conv(3, 32, 5) + conv(32, 32, 5) + conv(32, 64, 5) + ip(64 * 4 * 4, 10)
LENET_COUNT = conv(1, 20, 5) + conv(20, 50, 5) + ip(50 * 4 * 4, 500) + ip(500, 10)

ALEXNET_SHAPES = {"conv1": (96, 55, 55), "conv2": (256, 27, 27), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
                  "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
                  "prob": (1000,)}
ALEXNET_PARAMS = {"conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)],
                  "conv4": [(384, 192, 3, 3), (384,)], "fc6": [(4096, 9216), (4096,)], "fc8": [(1000, 4096), (1000,)]}

# file: (name, published count, hand count, published input shape, {blob: per-item shape}, {layer: param shapes})
NETS = {
    "alexnet": ("AlexNet", 60_965_224, ALEXNET_COUNT, (10, 3, 227, 227),
                dict(ALEXNET_SHAPES, norm1=(96, 55, 55), pool1=(96, 27, 27), norm2=(256, 27, 27),
                     pool2=(256, 13, 13)), ALEXNET_PARAMS),
    "caffenet": ("CaffeNet", 60_965_224, ALEXNET_COUNT, (10, 3, 227, 227),
                 dict(ALEXNET_SHAPES, pool1=(96, 27, 27), norm1=(96, 27, 27), pool2=(256, 13, 13),
                      norm2=(256, 13, 13)), ALEXNET_PARAMS),
    "googlenet": ("GoogleNet", 6_998_552, GOOGLENET_COUNT, (10, 3, 224, 224),
                  {"conv1/7x7_s2": (64, 112, 112), "pool1/3x3_s2": (64, 56, 56), "conv2/3x3": (192, 56, 56),
                   "pool2/3x3_s2": (192, 28, 28), "inception_3a/output": (256, 28, 28),
                   "inception_3b/output": (480, 28, 28), "pool3/3x3_s2": (480, 14, 14),
                   "inception_4a/output": (512, 14, 14), "inception_4d/output": (528, 14, 14),
                   "inception_4e/output": (832, 14, 14), "pool4/3x3_s2": (832, 7, 7),
                   "inception_5b/output": (1024, 7, 7), "pool5/7x7_s1": (1024, 1, 1),
                   "loss3/classifier": (1000,), "prob": (1000,)},
                  {"conv1/7x7_s2": [(64, 3, 7, 7), (64,)], "inception_4e/5x5": [(128, 32, 5, 5), (128,)],
                   "loss3/classifier": [(1000, 1024), (1000,)]}),
    "cifar10_quick": ("CIFAR10_quick_test", 145_578, CIFAR10_QUICK_COUNT, (1, 3, 32, 32),
                      {"conv1": (32, 32, 32), "pool1": (32, 16, 16), "pool2": (32, 8, 8), "pool3": (64, 4, 4),
                       "ip1": (64,), "prob": (10,)},
                      {"conv3": [(64, 32, 5, 5), (64,)], "ip1": [(64, 1024), (64,)]}),
    "cifar10_full": ("CIFAR10_full_deploy", 89_578, CIFAR10_FULL_COUNT, (1, 3, 32, 32),
                     {"pool1": (32, 16, 16), "norm1": (32, 16, 16), "norm2": (32, 8, 8), "pool3": (64, 4, 4),
                      "prob": (10,)},
                     {"ip1": [(10, 1024), (10,)]}),
    "lenet": ("LeNet", 431_080, LENET_COUNT, (64, 1, 28, 28),
              {"conv1": (20, 24, 24), "pool1": (20, 12, 12), "conv2": (50, 8, 8), "pool2": (50, 4, 4),
               "ip1": (500,), "prob": (10,)},
              {"ip1": [(500, 800), (500,)]}),
}


def zoo_param(key, batch=None):
    param = load_net(os.path.join(ZOO, f"{key}_deploy.prototxt"))
    if batch is not None:
        param.layer[0].input_param.shape[0].dim[0] = batch
    return param


def test_hand_counts_equal_the_published_figures():
    for key, (_, published, hand, *_rest) in NETS.items():
        assert hand == published, key


@pytest.mark.parametrize("key", sorted(NETS))
def test_deploy_file_declares_the_published_input(key):
    name, _, _, shape, *_ = NETS[key]
    param = zoo_param(key)
    assert param.name == name
    assert param.layer[0].type == "Input" and param.layer[0].top[0] == "data"
    assert tuple(param.layer[0].input_param.shape[0].dim) == shape
    assert param.layer[-1].type == "Softmax" and param.layer[-1].top[0] == "prob"


@pytest.mark.parametrize("key", sorted(NETS))
def test_zoo_net_shapes_parameters_forward_backward(key):
    """Built at batch 1 with random weights: shapes, parameter count, forward, backward."""
    _, published, _, in_shape, shapes, param_shapes = NETS[key]
    param = zoo_param(key, batch=1)
    param.force_backward = True
    net = Net(param, TEST)

    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert sum(blob.count for blob in net.learnable_params) == published
    for layer, expected in param_shapes.items():
        assert [b.shape for b in net.params[layer]] == expected, layer
    assert net.blobs["data"].shape == (1,) + in_shape[1:]

    rng = np.random.default_rng(7)
    x = rng.uniform(-1, 1, net.blobs["data"].shape).astype(np.float32)
    out = net.forward(data=x)["prob"]
    for blob, item_shape in shapes.items():
        assert net.blobs[blob].shape == (1,) + item_shape, blob
    assert out.shape == (1, shapes["prob"][0])
    assert np.all(np.isfinite(out)) and np.all(out >= 0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)

    for blob in net.learnable_params:
        blob.diff[...] = 0
    top_diff = rng.standard_normal(out.shape).astype(np.float32)
    grads = net.backward(prob=top_diff)
    data_diff = grads["data"]
    assert data_diff.shape == x.shape and np.all(np.isfinite(data_diff))
    assert np.abs(data_diff).max() > 0
    # Every weight blob of the first and the last learnable layer gets a gradient.
    first, last = net.learnable_params[0], net.learnable_params[-2]
    for blob in (first, last):
        assert np.all(np.isfinite(blob.diff)) and np.abs(blob.diff).max() > 0
    # The classifier's bias gradient is the softmax backward of the top diff.
    softmax_grad = out * (top_diff - (top_diff * out).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(net.learnable_params[-1].diff, softmax_grad[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("key", ["cifar10_quick", "cifar10_full", "lenet"])
def test_small_zoo_nets_at_their_published_batch(key, tmp_path):
    """The small nets at the file's own batch size, and their weights round-trip through a .caffemodel."""
    _, _, _, in_shape, shapes, _ = NETS[key]
    path = os.path.join(ZOO, f"{key}_deploy.prototxt")
    net = Net(path, TEST)
    x = np.random.default_rng(3).uniform(0, 1, in_shape).astype(np.float32)
    out = net.forward(data=x)["prob"].copy()
    assert out.shape == (in_shape[0], shapes["prob"][0])
    weights = str(tmp_path / f"{key}.caffemodel")
    net.save(weights)
    again = Net(path, TEST, weights=weights)
    np.testing.assert_array_equal(again.forward(data=x)["prob"], out)


# --- against a real BVLC Caffe, when one is at hand ------------------------------------------------------
CAFFE = os.environ.get("DLTRAIN_CAFFE")      # path to a CPU build of BVLC Caffe's `caffe` tool


@pytest.mark.skipif(not CAFFE, reason="set DLTRAIN_CAFFE to a BVLC Caffe `caffe` binary to compare with it")
@pytest.mark.parametrize("key", sorted(NETS))
def test_zoo_scores_match_bvlc_caffe(key, tmp_path):
    """Same weights (saved by dltrain), same input (an HDF5Data layer on Caffe's side): the class
    scores before the softmax agree to the 6 digits `caffe test` prints."""
    import re
    import subprocess
    h5py = pytest.importorskip("h5py")
    from dlcore.config import to_prototxt
    param = zoo_param(key, batch=2)
    net = Net(param, TEST)
    weights = str(tmp_path / "w.caffemodel")
    net.save(weights)
    x = np.random.default_rng(1).uniform(-50, 50, net.blobs["data"].shape).astype(np.float32)
    net.forward(data=x)
    scores = param.layer[-1].bottom[0]
    ours = net.blobs[scores].data.copy()
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["data"] = x
    (tmp_path / "x.txt").write_text(f"{tmp_path / 'x.h5'}\n")
    theirs = zoo_param(key)
    del theirs.layer[-1]                              # the scores become the net's output
    theirs.layer[0].ClearField("input_param")
    theirs.layer[0].type = "HDF5Data"
    theirs.layer[0].hdf5_data_param.source = str(tmp_path / "x.txt")
    theirs.layer[0].hdf5_data_param.batch_size = 2
    (tmp_path / "m.prototxt").write_text(to_prototxt(theirs))
    proc = subprocess.run([CAFFE, "test", "-model", str(tmp_path / "m.prototxt"), "-weights", weights,
                           "-iterations", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    values = np.array(re.findall(r"Batch 0, \S+ = (\S+)", proc.stderr), np.float32).reshape(ours.shape)
    np.testing.assert_allclose(ours, values, rtol=2e-5, atol=2e-5 * np.abs(values).max())
