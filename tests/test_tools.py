"""Caffe's data tools as subcommands: compute_image_mean and extract_features (cli/tools.py)."""
import os

import numpy as np
import pytest

import dltrain.layers  # noqa: F401  (registers the layer types)
from dltrain.cli.convert import convert_arrays
from dltrain.cli.main import main as dltrain
from dltrain.cli.tools import compute_image_mean, extract_features
from dlcore import TEST, ConfigError, DLTrainError, Net
from dlcore.config import net_from_string
from dltrain.layers.db_data import array_to_datum, write_lmdb
from dltrain.proto import caffe_pb2


def read_lmdb(path):
    import lmdb
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in txn.cursor()]
    finally:
        env.close()


def read_blob(path):
    with open(path, "rb") as f:
        return caffe_pb2.BlobProto.FromString(f.read())


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (7, 3, 4, 5)).astype(np.uint8)
    y = rng.integers(0, 10, 7)
    db = str(tmp_path / "images_lmdb")
    convert_arrays(x, y, db)
    return x, y, db


# --- compute_image_mean ---------------------------------------------------------------------------------
def test_compute_image_mean_writes_caffes_binaryproto(images, tmp_path, capsys):
    x, _, db = images
    out = str(tmp_path / "mean.binaryproto")
    assert dltrain(["compute_image_mean", "--backend", "lmdb", db, out]) == 0
    blob = read_blob(out)
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 4, 5)
    assert not blob.HasField("shape")                        # Caffe writes the legacy 4-D fields
    expected = (x.astype(np.float32).sum(axis=0) / np.float32(7)).ravel()
    np.testing.assert_array_equal(np.asarray(blob.data, np.float32), expected)
    err = capsys.readouterr().err
    assert "Processed 7 files." in err and f"Write to {out}" in err
    for c in range(3):
        assert f"mean_value channel [{c}]: {x[:, c].mean():g}" in err


def test_the_mean_file_is_what_a_data_layer_subtracts(images, tmp_path):
    _, _, db = images
    out = str(tmp_path / "mean.binaryproto")
    compute_image_mean(db, out)
    param = net_from_string(f"""
layer {{ name: 'd' type: 'Data' top: 'data' top: 'label'
        data_param {{ source: '{db}' batch_size: 7 backend: LMDB }} transform_param {{ mean_file: '{out}' }} }}""")
    data = Net(param, TEST).forward()["data"]
    np.testing.assert_allclose(data.mean(axis=0), 0, atol=1e-4)


def test_compute_image_mean_of_float_and_encoded_records(tmp_path):
    float_db = str(tmp_path / "float_lmdb")
    values = np.arange(2 * 1 * 2 * 3, dtype=np.float32).reshape(2, 1, 2, 3) / 4
    write_lmdb(float_db, ((f"{i:08d}", array_to_datum(values[i])) for i in range(2)))
    _, mean = compute_image_mean(float_db)
    np.testing.assert_array_equal(mean, values.mean(axis=0))

    import io
    from PIL import Image
    pixels = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)       # one gray 2x3 image
    buffer = io.BytesIO()
    Image.fromarray(pixels[0]).save(buffer, format="PNG")
    encoded_db = str(tmp_path / "png_lmdb")
    write_lmdb(encoded_db, [("a", caffe_pb2.Datum(data=buffer.getvalue(), encoded=True)),
                            ("b", array_to_datum(pixels + 2))])
    _, mean = compute_image_mean(encoded_db)
    np.testing.assert_array_equal(mean, pixels + 1)


def test_compute_image_mean_rejects_records_of_another_size(tmp_path):
    db = str(tmp_path / "mixed_lmdb")
    write_lmdb(db, [("a", array_to_datum(np.zeros((1, 2, 2), np.uint8))),
                    ("b", array_to_datum(np.zeros((1, 3, 3), np.uint8)))])
    with pytest.raises(DLTrainError, match="record 'b': incorrect data field size 9"):
        compute_image_mean(db)
    with pytest.raises(DLTrainError, match="unknown database backend 'rocksdb'"):
        compute_image_mean(db, backend="rocksdb")


# --- extract_features --------------------------------------------------------------------------------------
NET = """
name: 'features'
layer {{ name: 'data' type: 'Data' top: 'data' top: 'label'
        data_param {{ source: '{db}' batch_size: {batch} backend: LMDB }} transform_param {{ scale: 0.00390625 }} }}
layer {{ name: 'fc' type: 'InnerProduct' bottom: 'data' top: 'fc'
        inner_product_param {{ num_output: 4 weight_filler {{ type: 'gaussian' std: 0.1 }}
                              bias_filler {{ type: 'constant' value: 0.5 }} }} }}
layer {{ name: 'relu' type: 'ReLU' bottom: 'fc' top: 'fc' }}
layer {{ name: 'pool' type: 'Pooling' bottom: 'data' top: 'pool' pooling_param {{ pool: AVE kernel_size: 2 stride: 2 }} }}
"""


@pytest.fixture
def feature_net(images, tmp_path):
    """(net file, weights file, images, labels): a net whose fc features are checked by hand."""
    x, y, db = images
    path = tmp_path / "net.prototxt"
    path.write_text(NET.format(db=db, batch=3))
    weights = str(tmp_path / "weights.caffemodel")
    Net(str(path), TEST).save(weights)
    return str(path), weights, x, y


def expected_fc(weights, x):
    model = caffe_pb2.NetParameter()
    with open(weights, "rb") as f:
        model.ParseFromString(f.read())
    fc = next(layer for layer in model.layer if layer.name == "fc")
    w = np.asarray(fc.blobs[0].data, np.float32).reshape(4, -1)
    b = np.asarray(fc.blobs[1].data, np.float32)
    data = x.reshape(len(x), -1).astype(np.float32) * np.float32(0.00390625)
    return np.maximum(data @ w.T + b, 0)


def test_extract_features_to_npy(feature_net, tmp_path):
    path, weights, x, y = feature_net
    outs = [str(tmp_path / "fc.npy"), str(tmp_path / "label.npy"), str(tmp_path / "pool.npy")]
    assert dltrain(["extract_features", weights, path, "fc,label,pool", ",".join(outs), "2"]) == 0
    fc, label, pool = (np.load(o) for o in outs)
    # Two batches of 3 from a 7-record database: the first 6 items, in key order.
    assert fc.shape == (6, 4) and label.shape == (6,) and pool.shape == (6, 3, 2, 3)
    assert fc.dtype == np.float32
    np.testing.assert_allclose(fc, expected_fc(weights, x[:6]), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, y[:6])


def test_extract_features_to_lmdb_as_caffe_writes_them(feature_net, tmp_path, capsys):
    path, weights, x, y = feature_net
    fc_db, pool_db = str(tmp_path / "fc_lmdb"), str(tmp_path / "pool_lmdb")
    # Caffe's own argument order: ... num_mini_batches db_type [CPU|GPU].
    assert dltrain(["extract_features", weights, path, "fc,pool", f"{fc_db},{pool_db}", "3", "lmdb", "CPU"]) == 0
    records = read_lmdb(fc_db)
    assert [k for k, _ in records] == [f"{i:010d}" for i in range(9)]
    datum = records[0][1]
    assert (datum.channels, datum.height, datum.width) == (4, 1, 1)
    assert not datum.HasField("label") and not datum.HasField("data") and not datum.encoded
    fc = np.array([d.float_data for _, d in records], np.float32)
    order = list(range(7)) + [0, 1]                  # the data layer wraps around after record 7
    np.testing.assert_allclose(fc, expected_fc(weights, x[order]), rtol=1e-5, atol=1e-6)
    pool = read_lmdb(pool_db)[4][1]
    assert (pool.channels, pool.height, pool.width) == (3, 2, 3) and len(pool.float_data) == 18
    assert "Successfully extracted the features!" in capsys.readouterr().err


def test_extract_features_function_returns_the_arrays(feature_net, tmp_path):
    path, weights, x, _ = feature_net
    result = extract_features(weights, path, ["fc"], [str(tmp_path / "f_lmdb")], 1, fmt="lmdb")
    np.testing.assert_allclose(result["fc"], expected_fc(weights, x[:3]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blobs, outs, n, message", [
    ("fc,label", "one.npy", 1, "must be the same"),
    ("nope", "x.npy", 1, "unknown feature blob name 'nope'"),
    ("fc", "x.npy", 0, "must be positive"),
    ("fc", "x.rocksdb", 1, "unknown feature format 'rocksdb'"),
])
def test_extract_features_errors(feature_net, tmp_path, blobs, outs, n, message):
    path, weights, _, _ = feature_net
    outs = ",".join(str(tmp_path / o) for o in outs.split(","))
    fmt = "rocksdb" if "rocksdb" in outs else None
    with pytest.raises((DLTrainError, ConfigError), match=message):
        extract_features(weights, path, blobs.split(","), outs.split(","), n, fmt=fmt)


def test_extract_features_refuses_to_overwrite(feature_net, tmp_path, capsys):
    path, weights, _, _ = feature_net
    out = tmp_path / "exists.npy"
    out.write_bytes(b"keep me")
    assert dltrain(["extract_features", weights, path, "fc", str(out), "1"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"


def test_digits_feature_extractor_example_is_importable():
    """configs/digits/features.py's classifiers on separable toy data (the full run trains a LeNet)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "digits_features", os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "digits",
                                        "features.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = np.eye(3)[y] * 3 + rng.normal(0, 0.3, (90, 3))
    w, b = module.least_squares(x, y, 3)
    assert np.mean((x @ w + b).argmax(axis=1) == y) > 0.95
    w, b = module.softmax_regression(x, y, 3, steps=200)
    assert np.mean((x @ w + b).argmax(axis=1) == y) > 0.95
    assert module.largest_divisor(1437) == 479 and module.largest_divisor(360) == 360
