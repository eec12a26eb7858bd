"""pycaffe's API surface on dltrain's `caffe`: Net's batched passes, HDF5 weights, hooks and views;
the solver's callbacks, lr and share_weights; Timer, NCCL, set_mode_gpu's CPU fall-back;
Classifier, Detector and caffe.io.  (Caffe's own pycaffe tests run unchanged against the same face.)
"""
import time

import numpy as np
import pytest

import caffe
import dlcore
from dlcore import DLTrainError, backend
from dlcore.config import net_from_string
from dlcore.errors import ConfigError
from dltrain.proto import caffe_pb2

DEPLOY = """
name: "tiny"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

TRAIN = """
name: "train"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "label" top: "loss" loss_weight: 2 }
"""

# Two inner products sharing their weights (param name "w"), so one weight blob is owned by "a".
SHARED = """
name: "shared"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "data" top: "a" param { name: "w" } param { }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
layer { name: "b" type: "InnerProduct" bottom: "a" top: "b" param { name: "w" } param { }
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
"""


def deploy_net():
    return caffe.Net(net_from_string(DEPLOY), caffe.TEST)


def one_sample(net, name, x):
    """``x`` alone through the net (the batch filled with copies of it): what each output row must be."""
    batch = np.repeat(np.asarray(x)[None], net.blobs["data"].shape[0], axis=0)
    return {k: v[0].copy() for k, v in net.forward(blobs=["ip"], **{name: batch}).items()}


# --- Net: batched passes ---------------------------------------------------------------------------
@pytest.mark.parametrize("count", [10, 8, 3])
def test_forward_all_batches_pads_and_trims(count):
    net = deploy_net()
    rng = np.random.default_rng(count)
    x = rng.standard_normal((count, 2)).astype(np.float32)
    out = net.forward_all(blobs=["ip"], data=x)
    assert set(out) == {"prob", "ip"}
    assert out["prob"].shape == (count, 3) and out["ip"].shape == (count, 3)
    for i in range(count):
        expected = one_sample(net, "data", x[i])
        np.testing.assert_allclose(out["prob"][i], expected["prob"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out["ip"][i], expected["ip"], rtol=1e-6, atol=1e-6)


def test_batch_pads_the_last_batch_with_zeros():
    net = deploy_net()
    x = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    batches = list(net._batch({"data": x}))
    assert [len(b["data"]) for b in batches] == [4, 4, 4]
    np.testing.assert_array_equal(batches[2]["data"][:2], x[8:])
    assert not batches[2]["data"][2:].any()
    with pytest.raises(DLTrainError, match="differ in length"):
        list(net._batch({"data": x, "other": x[:3]}))


def test_forward_backward_all_matches_per_sample_passes():
    net = deploy_net()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 2)).astype(np.float32)
    top_diff = rng.standard_normal((6, 3)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=top_diff)
    assert outs["prob"].shape == (6, 3) and diffs["data"].shape == (6, 2)
    for i in range(6):
        batch = np.repeat(x[i:i + 1], 4, axis=0)
        prob = net.forward(data=batch)["prob"][0].copy()
        grad = net.backward(prob=np.repeat(top_diff[i:i + 1], 4, axis=0))["data"][0]
        np.testing.assert_allclose(outs["prob"][i], prob, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(diffs["data"][i], grad, rtol=1e-5, atol=1e-6)


# --- Net: views --------------------------------------------------------------------------------------
def test_blob_names_indices_and_loss_weights():
    net = caffe.Net(net_from_string(TRAIN), caffe.TRAIN)
    assert net._blob_names == list(net.blobs) == ["data", "label", "ip", "loss"]
    assert net._layer_names == ["data", "ip", "loss"]
    assert net.blob_loss_weights == {"data": 0.0, "label": 0.0, "ip": 0.0, "loss": 2.0}
    assert list(net.blob_loss_weights) == net._blob_names
    assert net._blob_loss_weights == [0.0, 0.0, 0.0, 2.0]
    assert net._outputs == [3] and net._inputs == []
    assert net._bottom_ids(2) == [2, 1] and net._top_ids(0) == [0, 1]
    assert [b is net.blobs[n] for b, n in zip(net._blobs, net._blob_names)] == [True] * 4


# --- Net: hooks --------------------------------------------------------------------------------------
def test_hooks_fire_in_caffes_order():
    net = caffe.Net(net_from_string(TRAIN), caffe.TRAIN)
    events = []
    net.before_forward(lambda i: events.append(("before_forward", i)))
    net.after_forward(lambda i: events.append(("after_forward", i)))
    net.before_backward(lambda i: events.append(("before_backward", i)))
    net.after_backward(lambda i: events.append(("after_backward", i)))
    net.forward()
    net.backward()
    forward = [(w, i) for i in range(3) for w in ("before_forward", "after_forward")]
    # Backward hooks fire for every layer, the data layer (which computes no gradient) included.
    backward = [(w, i) for i in (2, 1, 0) for w in ("before_backward", "after_backward")]
    assert events == forward + backward
    events.clear()
    net.forward(start="ip", end="ip")
    assert events == [("before_forward", 1), ("after_forward", 1)]


def test_hooks_see_the_layer_run_between_them():
    net = deploy_net()
    before, after = {}, {}
    net.before_forward(lambda i: before.__setitem__(i, net.blobs["prob"].data.copy()))
    net.after_forward(lambda i: after.__setitem__(i, net.blobs["prob"].data.copy()))
    net.blobs["prob"].data[...] = -1
    net.forward(data=np.ones((4, 2), np.float32))
    assert (before[2] == -1).all()                      # the softmax (layer 2) had not run yet
    np.testing.assert_allclose(after[2].sum(axis=1), 1, rtol=1e-6)


# --- Net: HDF5 weights -------------------------------------------------------------------------------
def test_save_hdf5_writes_caffes_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    net = caffe.Net(net_from_string(SHARED), caffe.TEST)
    rng = np.random.default_rng(2)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.diff[...] = rng.standard_normal(blob.shape)
    path = str(tmp_path / "w.h5")
    net.save_hdf5(path)
    with h5py.File(path, "r") as f:
        assert list(f) == ["data"]
        assert sorted(f["data"]) == ["a", "b", "data"]          # every layer, parameterless ones too
        assert sorted(f["data/a"]) == ["0", "1"] and sorted(f["data/b"]) == ["1"]    # b's "0" is a's
        np.testing.assert_array_equal(f["data/a/0"][()], net.params["a"][0].data)
        np.testing.assert_array_equal(f["data/b/1"][()], net.params["b"][1].data)
        assert f["data/a/0"].dtype == np.float32 and f["data/a/0"].shape == (3, 3)
    net.save_hdf5(path, write_diff=True)
    with h5py.File(path, "r") as f:
        assert sorted(f) == ["data", "diff"]
        assert sorted(f["diff/b"]) == ["0", "1"]                # diffs regardless of sharing
        np.testing.assert_array_equal(f["diff/a/1"][()], net.params["a"][1].diff)
        np.testing.assert_array_equal(f["diff/b/0"][()], net.params["b"][0].diff)


def test_hdf5_round_trip(tmp_path):
    pytest.importorskip("h5py")
    source = caffe.Net(net_from_string(SHARED), caffe.TEST)
    path = str(tmp_path / "weights")          # no extension: HDF5 is known by its signature
    source.save_hdf5(path, write_diff=True)
    for load in ("load_hdf5", "copy_from"):
        target = caffe.Net(net_from_string(SHARED), caffe.TEST)
        assert not np.array_equal(target.params["a"][0].data, source.params["a"][0].data)
        getattr(target, load)(path)
        for name in source.params:
            for mine, theirs in zip(target.params[name], source.params[name]):
                np.testing.assert_array_equal(mine.data, theirs.data)
        assert target.params["b"][0].data is not None
        target.params["a"][0].data[0, 0] = 42.0                  # still shared after loading
        assert target.params["b"][0].data[0, 0] == 42.0
    weights = str(tmp_path / "w.caffemodel")
    source.save(weights)
    loaded = caffe.Net(net_from_string(SHARED), caffe.TEST, weights=weights)
    np.testing.assert_array_equal(loaded.params["b"][1].data, source.params["b"][1].data)


def test_load_hdf5_errors_and_skipped_layers(tmp_path, capsys):
    pytest.importorskip("h5py")
    path = str(tmp_path / "w.h5")
    caffe.Net(net_from_string(SHARED), caffe.TEST).save_hdf5(path)
    wider = SHARED.replace("num_output: 3", "num_output: 4")
    with pytest.raises(ConfigError, match="shape mismatch"):
        caffe.Net(net_from_string(wider), caffe.TEST).load_hdf5(path)
    only_a = "\n".join(SHARED.strip().splitlines()[:6])
    caffe.Net(net_from_string(only_a), caffe.TEST).load_hdf5(path)
    assert "Ignoring source layer b" in capsys.readouterr().err
    not_hdf5 = tmp_path / "plain.h5"
    not_hdf5.write_text("hello")
    with pytest.raises(ConfigError, match="cannot read HDF5 weights"):
        caffe.Net(net_from_string(SHARED), caffe.TEST).load_hdf5(str(not_hdf5))


# --- the solver ---------------------------------------------------------------------------------------
def train_solver(**fields):
    fields = {"base_lr": 0.1, "lr_policy": "fixed", "display": 0, "max_iter": 10, "snapshot_after_train": False,
              **fields}
    param = caffe_pb2.SolverParameter(**fields)
    param.net_param.CopyFrom(net_from_string(TRAIN))
    return caffe.get_solver(param)


def test_callbacks_wrap_forward_backward_and_come_before_the_update():
    solver = train_solver()
    net = solver.net
    weight = net.params["ip"][0]
    events = []
    net.after_forward(lambda i: events.append(("forward", i)))
    net.after_backward(lambda i: events.append(("backward", i)))
    starts, readies = [], []

    def on_start():
        events.append(("start", solver.iter))
        starts.append(weight.data.copy())

    def on_gradients_ready():
        events.append(("ready", solver.iter))
        readies.append((weight.data.copy(), weight.diff.copy()))

    solver.add_callback(on_start, on_gradients_ready)
    solver.step(3)
    one_iteration = [("forward", 0), ("forward", 1), ("forward", 2),
                     ("backward", 2), ("backward", 1), ("backward", 0)]
    assert events == [e for it in range(3) for e in [("start", it)] + one_iteration + [("ready", it)]]
    for it in range(3):
        data, diff = readies[it]
        np.testing.assert_array_equal(data, starts[it])             # no update yet
        assert diff.any()                                            # but the gradients are there
        after = starts[it + 1] if it < 2 else weight.data
        np.testing.assert_allclose(after, data - 0.1 * diff, rtol=1e-6, atol=1e-7)   # then SGD's update


def test_add_callback_takes_an_object_and_refuses_non_callables():
    solver = train_solver()
    calls = []

    class Both:
        def on_start(self):
            calls.append("start")

        def on_gradients_ready(self):
            calls.append("ready")

    solver.add_callback(Both())
    solver.step(2)
    assert calls == ["start", "ready", "start", "ready"]
    with pytest.raises(TypeError, match="two callables"):
        solver.add_callback(lambda: None)


def test_lr_follows_the_policy_and_param_base_lr():
    solver = train_solver(lr_policy="step", stepsize=2, gamma=0.1)
    assert solver.lr == pytest.approx(0.1)
    solver.step(1)
    assert solver.lr == pytest.approx(0.1)
    solver.step(1)
    assert solver.iter == 2 and solver.lr == pytest.approx(0.01)
    solver.param.base_lr = 1.0                       # pycaffe scripts change it through param
    assert solver.lr == pytest.approx(0.1)
    weight = solver.net.params["ip"][0]
    weight.data[...] = 0
    weight.diff[...] = 1
    solver.apply_update()
    np.testing.assert_allclose(weight.data, -0.1, rtol=1e-6)


def test_share_weights_and_get_solver_from_file(tmp_path):
    solver = train_solver()
    other = caffe.Net(net_from_string(TRAIN), caffe.TEST)
    solver.share_weights(other)
    solver.step(1)
    np.testing.assert_array_equal(other.params["ip"][0].data, solver.net.params["ip"][0].data)
    (tmp_path / "net.prototxt").write_text(TRAIN)
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt" base_lr: 0.1 lr_policy: "fixed" '
                                             'type: "Adam" snapshot_after_train: false')
    assert type(caffe.get_solver_from_file(str(tmp_path / "solver.prototxt"))) is caffe.AdamSolver


# --- module level ---------------------------------------------------------------------------------------
def test_timer():
    timer = caffe.Timer()
    assert timer.ms == 0.0                              # never started: 0 (and a warning)
    timer.start()
    time.sleep(0.02)
    timer.stop()
    first = timer.ms
    assert first >= 19.0
    timer.stop()                                        # stopping a stopped timer changes nothing
    assert timer.ms == first
    timer.start()
    time.sleep(0.005)
    running = timer.ms                                  # reading while running stops it
    assert running >= 4.0
    assert timer.ms == running


def test_nccl_says_what_to_use_instead():
    assert caffe.has_nccl() is False
    with pytest.raises(DLTrainError, match=r"mpirun -n N dltrain train"):
        caffe.NCCL.new_uid()
    with pytest.raises(DLTrainError, match=r"has_nccl\(\) is False"):
        caffe.NCCL(None, b"uid")


def test_set_mode_gpu_without_a_gpu_warns_once_and_runs_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(backend, "gpu_available", lambda device_id=None: (False, "no NVIDIA driver found (test)"))
    capsys.readouterr()
    try:
        caffe.set_mode_gpu()
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("W")
        assert lines[0].endswith("caffe.set_mode_gpu() was called but no GPU can be used "
                                 "(no NVIDIA driver found (test)); running on the CPU")
        assert dlcore.get_mode() == "cpu"
        assert not caffe.Net(net_from_string(DEPLOY), caffe.TEST).gpu
        with pytest.raises(DLTrainError, match="cannot be used"):
            dlcore.set_mode_gpu()                        # the strict form stays strict
    finally:
        dlcore.set_mode_cpu()


def test_set_mode_gpu_with_a_gpu_selects_it(monkeypatch):
    chosen = []
    monkeypatch.setattr(backend, "gpu_available", lambda device_id=None: (True, "a GPU"))
    monkeypatch.setattr(dlcore, "set_mode_gpu", lambda device_id=None: chosen.append(device_id))
    caffe.set_mode_gpu()
    assert chosen == [0]


# --- Classifier and Detector ------------------------------------------------------------------------
IMAGE_NET = """
name: "images"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 3 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


@pytest.fixture
def image_model(tmp_path):
    model = tmp_path / "deploy.prototxt"
    model.write_text(IMAGE_NET)
    weights = str(tmp_path / "w.caffemodel")
    caffe.Net(str(model), caffe.TEST).save(weights)
    return str(model), weights


def scores(net, chw):
    """The net's scores for one 3×4×4 input."""
    return net.forward(data=np.repeat(chw[None], 3, axis=0))["prob"][0].copy()


def test_net_constructor_forms(image_model):
    model, weights = image_model
    reference = caffe.Net(model, caffe.TEST, weights=weights)
    for net in (caffe.Net(model, weights, caffe.TEST),
                caffe.Net(model, caffe.TEST, level=0, stages=None, weights=weights),
                caffe.Net(model, phase=caffe.TEST, weights=weights)):
        assert net.phase == caffe.TEST
        np.testing.assert_array_equal(net.params["ip"][0].data, reference.params["ip"][0].data)


def test_classifier_center_crop_and_oversample(image_model):
    model, weights = image_model
    mean = np.array([0.1, 0.2, 0.3])
    clf = caffe.Classifier(model, weights, image_dims=(6, 6), mean=mean, raw_scale=2.0, channel_swap=(2, 1, 0))
    rng = np.random.default_rng(3)
    images = [rng.random((6, 6, 3)).astype(np.float32) for _ in range(2)]

    def to_input(crop):           # H×W×K -> the net's K×H×W, by hand: BGR, ×2, minus the mean
        return crop.transpose(2, 0, 1)[::-1] * 2.0 - mean[:, None, None]

    center = clf.predict(images, oversample=False)
    assert center.shape == (2, 5)
    for image, row in zip(images, center):
        np.testing.assert_allclose(row, scores(clf, to_input(image[1:5, 1:5])), rtol=1e-5, atol=1e-6)
    ten = clf.predict(images)
    assert ten.shape == (2, 5)
    for image, row in zip(images, ten):
        crops = [image[y:y + 4, x:x + 4] for y in (0, 2) for x in (0, 2)] + [image[1:5, 1:5]]
        crops += [c[:, ::-1] for c in crops]
        expected = np.mean([scores(clf, to_input(c)) for c in crops], axis=0)
        np.testing.assert_allclose(row, expected, rtol=1e-5, atol=1e-6)


def test_detector_windows_and_context_crop(image_model, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    model, weights = image_model
    pixels = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = str(tmp_path / "im.png")
    Image.fromarray(pixels).save(path)
    image = pixels.astype(np.float32) / 255.0
    det = caffe.Detector(model, weights, raw_scale=255.0)
    windows = [np.array([0, 0, 4, 4]), np.array([3, 2, 7, 6])]
    found = det.detect_windows([(path, windows)])
    assert [d["filename"] for d in found] == [path, path]
    for d, w in zip(found, windows):
        assert d["window"] is w
        expected = scores(det, image[w[0]:w[2], w[1]:w[3]].transpose(2, 0, 1) * 255.0)
        np.testing.assert_allclose(d["prediction"], expected, rtol=1e-5, atol=1e-6)

    mean = np.array([10.0, 20.0, 30.0])
    padded = caffe.Detector(model, weights, mean=mean, raw_scale=255.0, context_pad=1)
    crop = padded.crop(image, np.array([0, 0, 3, 3]))
    # By hand: the box grows to (-2,-2,6,6); one row and column of the 4×4 crop lie outside the image
    # (mean, back in raw [0, 1] space); the rest is image[0:6, 0:6] scaled to 3×3.
    assert crop.shape == (4, 4, 3)
    np.testing.assert_allclose(crop[0], np.tile(mean / 255.0, (4, 1)), rtol=1e-6)
    np.testing.assert_allclose(crop[:, 0], np.tile(mean / 255.0, (4, 1)), rtol=1e-6)
    np.testing.assert_allclose(crop[1:, 1:], caffe.io.resize_image(image[0:6, 0:6], (3, 3)), rtol=1e-6)
    with pytest.raises(DLTrainError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search([path])


# --- caffe.io ----------------------------------------------------------------------------------------
def reference_resize(im, height, width):
    """scikit-image's resize(order=1, mode='constant') written out: each output pixel center maps to
    (out + 0.5) * in / new - 0.5; linear interpolation, zero outside the image; clipped to [0, 1]."""
    def weights(n_in, n_out):
        w = np.zeros((n_out, n_in))
        for o in range(n_out):
            x = (o + 0.5) * n_in / n_out - 0.5
            lo = int(np.floor(x))
            for i, f in ((lo, 1 - (x - lo)), (lo + 1, x - lo)):
                if 0 <= i < n_in:
                    w[o, i] += f
        return w
    lo, hi = im.min(), im.max()
    std = (im - lo) / (hi - lo)
    out = np.einsum("oh,hwk,pw->opk", weights(im.shape[0], height), std, weights(im.shape[1], width))
    return np.clip(out, 0, 1) * (hi - lo) + lo


@pytest.mark.parametrize("size", [(5, 7), (2, 3), (4, 4)])
def test_resize_image_samples_as_scikit_image(size):
    im = np.random.default_rng(5).random((4, 5, 3)).astype(np.float32) * 3 + 1
    np.testing.assert_allclose(caffe.io.resize_image(im, size), reference_resize(im, *size), rtol=1e-5, atol=1e-6)
    flat = caffe.io.resize_image(np.full((3, 3, 1), 0.5), (2, 5))
    assert flat.shape == (2, 5, 1) and (flat == 0.5).all() and flat.dtype == np.float32
    four = caffe.io.resize_image(np.ones((2, 2, 4)), (4, 4))        # other channel counts: ndimage.zoom
    assert four.shape == (4, 4, 4)


def test_load_image_color_and_gray(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(6).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[:, :, 0]).save(tmp_path / "g.png")
    color = caffe.io.load_image(str(tmp_path / "c.png"))
    assert color.shape == (3, 4, 3) and color.dtype == np.float32
    np.testing.assert_allclose(color, rgb / 255.0, rtol=1e-6)
    gray = caffe.io.load_image(str(tmp_path / "c.png"), color=False)
    expected = (rgb / 255.0) @ [0.2125, 0.7154, 0.0721]
    np.testing.assert_allclose(gray[:, :, 0], expected, rtol=1e-6)
    tiled = caffe.io.load_image(str(tmp_path / "g.png"))
    assert tiled.shape == (3, 4, 3) and (tiled[:, :, 2] == rgb[:, :, 0] / np.float32(255)).all()
    assert caffe.io.load_image(str(tmp_path / "g.png"), color=False).shape == (3, 4, 1)


def test_transformer_round_trip_and_mean_resize():
    t = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([1.0, 2.0, 3.0]))
    t.set_input_scale("data", 0.5)
    im = np.random.default_rng(7).random((4, 4, 3)).astype(np.float32)
    x = t.preprocess("data", im)
    np.testing.assert_allclose(x, (im.transpose(2, 0, 1)[::-1] * 255 - [[[1]], [[2]], [[3]]]) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), im, rtol=1e-5, atol=1e-6)
    mean = np.random.default_rng(8).random((3, 2, 2)) * 2 + 1             # an image mean of another size
    t.set_mean("data", mean)
    lo, hi = mean.min(), mean.max()
    expected = reference_resize(((mean - lo) / (hi - lo)).transpose(1, 2, 0), 4, 4).transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean["data"], expected * (hi - lo) + lo, rtol=1e-5)
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("label", im)


def test_datum_and_blobproto_conversions():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(arr, label=3)
    back = caffe.io.datum_to_array(datum)
    np.testing.assert_array_equal(back, arr)
    back[0, 0, 0] = 9                                   # a writable copy, as pycaffe's
    floats = caffe.io.datum_to_array(caffe.io.array_to_datum(arr.astype(np.float32)))
    assert floats.dtype == np.float64 and (floats == arr).all()
    arrays = [np.ones((2, 3)), np.arange(4.0)]
    text = caffe.io.arraylist_to_blobprotovector_str(arrays)
    for a, b in zip(caffe.io.blobprotovector_str_to_arraylist(text), arrays):
        np.testing.assert_array_equal(a, b)
    blob = caffe.io.array_to_blobproto(np.ones((2, 2)), diff=np.zeros((2, 2)))
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), np.zeros((2, 2)))


def test_pycaffe_and_caffe_modules_and_the_network_file_keyword(tmp_path):
    import caffe
    import caffe._caffe
    import caffe.pycaffe
    assert caffe.pycaffe.Net is caffe.Net and caffe._caffe.Net is caffe.Net
    assert caffe._caffe.SGDSolver is caffe.SGDSolver and caffe._caffe.Timer is caffe.Timer
    path = tmp_path / "n.prototxt"
    path.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }')
    net = caffe.Net(network_file=str(path), phase=caffe.TEST)
    assert net.blobs["x"].data.shape == (2, 3)
    with pytest.raises(TypeError, match="is missing"):
        caffe.Net(phase=caffe.TEST)
