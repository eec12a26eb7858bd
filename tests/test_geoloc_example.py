"""The geoloc example end to end on a short schedule: the real nets on a slice of the data."""
import os
import re

import numpy as np
import pytest

from dlcore.config import load_message
from dltrain.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "configs", "geoloc")


def slice_data(tmp_path, split, blocks):
    """The first ``blocks`` rows (batches) of a split, as an .h5 file and its list."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(os.path.join(EXAMPLE, "data", f"{split}.h5"), "r") as src, \
            h5py.File(tmp_path / f"{split}.h5", "w") as dst:
        for name in ("chars", "cont", "label"):
            dst.create_dataset(name, data=src[name][:blocks])
    (tmp_path / f"{split}.txt").write_text(str(tmp_path / f"{split}.h5") + "\n")
    return str(tmp_path / f"{split}.txt")


def short_solver(tmp_path, solver, iterations):
    """The example's solver and net, reading the slices, for a few iterations."""
    param = load_message(os.path.join(EXAMPLE, solver), caffe_pb2.SolverParameter)
    net = load_message(os.path.join(ROOT, param.net), caffe_pb2.NetParameter)
    sources = {"train.txt": slice_data(tmp_path, "train", 3), "val.txt": slice_data(tmp_path, "val", 1)}
    for layer in net.layer:
        if layer.type == "HDF5Data":
            layer.hdf5_data_param.source = sources[os.path.basename(layer.hdf5_data_param.source)]
    (tmp_path / "net.prototxt").write_text(str(net))
    param.net = str(tmp_path / "net.prototxt")
    param.max_iter = iterations
    param.test_iter[:] = [1]
    param.test_interval = iterations
    param.display = 1
    param.snapshot_prefix = str(tmp_path / "snap")
    (tmp_path / "solver.prototxt").write_text(str(param))
    return str(tmp_path / "solver.prototxt"), str(tmp_path / f"snap_iter_{iterations}.caffemodel")


def test_data_matches_codec_and_layout():
    h5py = pytest.importorskip("h5py")
    from dltrain.cli.predict import CharCodec
    codec = CharCodec.load(os.path.join(EXAMPLE, "charcodec.json"))
    with h5py.File(os.path.join(EXAMPLE, "data", "test.h5"), "r") as f:
        chars, cont, label = f["chars"][0], f["cont"][0], f["label"][0]
        names = f["name"][0].astype(str)
    T, N = chars.shape
    assert T == codec.max_length and label.shape == (N, 2)
    np.testing.assert_array_equal(cont[0], 0)
    np.testing.assert_array_equal(cont[1:], 1)
    encoded, _ = codec.encode(list(names))
    np.testing.assert_array_equal(encoded, chars)
    assert np.all(np.abs(label[:, 0]) <= 90) and np.all(np.abs(label[:, 1]) <= 180)


def test_train_a_few_iterations_then_predict(tmp_path, capsys):
    from dltrain.cli.main import main
    solver, weights = short_solver(tmp_path, "solver.prototxt", 3)
    assert main(["train", "--solver", solver]) == 0
    assert os.path.exists(weights)
    capsys.readouterr()
    names = tmp_path / "names.txt"
    names.write_text("Zürich\nSan Francisco\n\n")
    assert main(["predict", "--model", os.path.join(EXAMPLE, "deploy.prototxt"), "--weights", weights,
                 "Paris", "--file", str(names)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["Paris", "Zürich", "San Francisco"]
    for line in lines:
        name, lat, lon = line.split("\t")
        assert re.fullmatch(r"-?\d+\.\d{4}", lat) and -90 <= float(lat) <= 90
        assert -180 <= float(lon) < 180


def test_bag_baseline_trains(tmp_path):
    from dltrain.cli.main import main
    solver, weights = short_solver(tmp_path, "bag_solver.prototxt", 5)
    assert main(["train", "--solver", solver]) == 0
    import sys
    sys.path.insert(0, EXAMPLE)
    try:
        from evaluate import errors_km, metrics, predict_split
    finally:
        sys.path.remove(EXAMPLE)
    pred, label, names = predict_split(os.path.join(EXAMPLE, "bag_deploy.prototxt"), weights, "val")
    assert pred.shape == label.shape == (5000, 2) and len(names) == 5000
    m = metrics(errors_km(pred, label))
    assert 0 < m["median_km"] < 20016 and 0 <= m["within_750"] <= 1


def test_predict_errors(tmp_path):
    from dltrain.cli.main import main
    assert main(["predict", "--model", os.path.join(EXAMPLE, "deploy.prototxt"), "--weights", "x.caffemodel"]) == 1
    assert main(["predict", "--model", str(tmp_path / "deploy.prototxt"), "--weights", "w", "Paris"]) == 1


def test_codec_encoding():
    from dltrain.cli.predict import CharCodec, normalize_latlon
    codec = CharCodec({"alphabet": "abc", "max_length": 4, "padding": "left"})
    chars, cont = codec.encode(["ab", "cabbage", "é"])
    assert chars.shape == (4, 3) and cont.shape == (4, 3)
    np.testing.assert_array_equal(chars[:, 0], [0, 0, 2, 3])          # left padded
    np.testing.assert_array_equal(chars[:, 1], [4, 2, 3, 3])          # cut to the first 4
    np.testing.assert_array_equal(chars[:, 2], [0, 0, 0, 1])          # é -> e -> unknown here
    np.testing.assert_array_equal(cont[0], 0)
    np.testing.assert_array_equal(cont[1:], 1)
    right = CharCodec({"alphabet": "abc", "max_length": 3, "padding": "right", "layout": "batch_major"})
    np.testing.assert_array_equal(right.encode(["b"])[0], [[3, 0, 0]])
    np.testing.assert_allclose(normalize_latlon(np.array([[95.0, 10.0], [10.0, 190.0], [0.0, -180.0]])),
                               [[85.0, -170.0], [10.0, -170.0], [0.0, -180.0]], atol=1e-9)
