"""HDF5Output (after Caffe's test_hdf5_output_layer.cpp): what it writes, read back with h5py and HDF5Data."""
import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, Net, create_layer
from dlcore.config import net_from_string

h5py = pytest.importorskip("h5py")


def layer_of(path, dtype=np.float32):
    return create_layer(f'name: "out" type: "HDF5Output" bottom: "data" bottom: "label" '
                        f'hdf5_output_param {{ file_name: "{path}" }}', dtype=dtype)


def blobs(data, label, dtype=np.float32):
    out = []
    for values in (data, label):
        values = np.asarray(values)
        blob = Blob(*values.shape, dtype=dtype)
        blob.data[...] = values
        out.append(blob)
    return out


def test_writes_data_and_label_as_caffe(tmp_path):
    # Caffe's test: a 5 x 2 x 3 x 4 data blob and a 5 x 1 x 1 x 1 label blob round-trip exactly
    rng = np.random.default_rng(0)
    data, label = rng.normal(size=(5, 2, 3, 4)), np.arange(5.0).reshape(5, 1, 1, 1)
    path = tmp_path / "out.h5"
    layer = layer_of(path)
    bottom = blobs(data, label)
    layer.initialize(bottom, [])
    assert path.exists()                        # created at setup, as Caffe's H5Fcreate
    layer.forward(bottom, [])
    with h5py.File(path, "r") as f:
        assert sorted(f.keys()) == ["data", "label"]
        assert f["data"].dtype == np.float32 and f["label"].dtype == np.float32
        np.testing.assert_array_equal(f["data"][()], data.astype(np.float32))
        np.testing.assert_array_equal(f["label"][()], label.astype(np.float32))


def test_fewer_axes_are_written_4d_and_float64_nets_write_doubles(tmp_path):
    path = tmp_path / "out.h5"
    layer = layer_of(path, np.float64)
    bottom = blobs(np.arange(6.0).reshape(3, 2), [1.0, 2.0, 3.0], np.float64)
    layer.initialize(bottom, [])
    layer.forward(bottom, [])
    with h5py.File(path, "r") as f:
        assert f["data"].shape == (3, 2, 1, 1) and f["label"].shape == (3, 1, 1, 1)
        assert f["data"].dtype == np.float64
        np.testing.assert_array_equal(f["data"][()].reshape(3, 2), np.arange(6.0).reshape(3, 2))


def test_later_batches_are_appended(tmp_path):
    path = tmp_path / "out.h5"
    layer = layer_of(path)
    bottom = blobs(np.zeros((2, 3)), np.zeros(2))
    layer.initialize(bottom, [])
    for k in range(3):
        bottom[0].data[...] = k
        bottom[1].data[...] = [10 * k, 10 * k + 1]
        layer.forward(bottom, [])
    with h5py.File(path, "r") as f:
        assert f["data"].shape == (6, 3, 1, 1)
        np.testing.assert_array_equal(f["data"][:, 0, 0, 0], [0, 0, 1, 1, 2, 2])
        np.testing.assert_array_equal(f["label"][()].ravel(), [0, 1, 10, 11, 20, 21])
    bottom[0].reshape(2, 4)
    with pytest.raises(DLTrainError, match="items already written"):
        layer.forward(bottom, [])


def test_setup_truncates_an_existing_file(tmp_path):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("old", data=[1, 2])
    layer = layer_of(path)
    layer.initialize(blobs(np.zeros((1, 1)), np.zeros(1)), [])
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == []


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="file_name is not set"):
        create_layer('name: "o" type: "HDF5Output" hdf5_output_param { }').initialize(blobs([[1]], [1]), [])
    with pytest.raises(ConfigError, match="failed to create HDF5 file"):
        layer_of(tmp_path / "no" / "such" / "dir.h5").initialize(blobs([[1]], [1]), [])
    layer = layer_of(tmp_path / "o.h5")
    bottom = blobs(np.zeros((3, 2)), np.zeros(2))
    layer.initialize(bottom, [])
    with pytest.raises(DLTrainError, match="same batch size"):
        layer.forward(bottom, [])
    with pytest.raises(ConfigError, match="takes 2 bottom"):
        create_layer(f'name: "o" type: "HDF5Output" hdf5_output_param {{ file_name: "{tmp_path}/x.h5" }}').initialize(
            blobs([[1]], [1])[:1], [])


def test_in_a_net_hdf5data_reads_back_what_hdf5output_wrote(tmp_path):
    rng = np.random.default_rng(1)
    source = tmp_path / "in.h5"
    with h5py.File(source, "w") as f:
        f.create_dataset("data", data=rng.normal(size=(4, 2, 3)).astype(np.float32))
        f.create_dataset("label", data=np.arange(4, dtype=np.float32))
    (tmp_path / "list.txt").write_text(f"{source}\n")
    out = tmp_path / "out.h5"
    text = f"""
    layer {{ name: "in" type: "HDF5Data" top: "data" top: "label"
             hdf5_data_param {{ source: "{tmp_path / 'list.txt'}" batch_size: 4 }} }}
    layer {{ name: "out" type: "HDF5Output" bottom: "data" bottom: "label" hdf5_output_param {{ file_name: "{out}" }} }}
    """
    net = Net(net_from_string(text), phase=1)
    net.forward()
    with h5py.File(out, "r") as f, h5py.File(source, "r") as g:
        np.testing.assert_array_equal(f["data"][()].reshape(4, 2, 3), g["data"][()])
        np.testing.assert_array_equal(f["label"][()].ravel(), g["label"][()])
