"""HDF5Data (after Caffe's test_hdf5data_layer.cpp): shapes, order, cycling, shuffling, errors."""
import os

import numpy as np
import pytest

from dlcore import Blob, ConfigError, DLTrainError, create_layer, set_random_seed

h5py = pytest.importorskip("h5py")


def write_h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, values in datasets.items():
            f.create_dataset(name, data=values)
    return str(path)


def write_list(path, files):
    path.write_text("\n".join(str(f) for f in files) + "\n")
    return str(path)


def layer_of(source, tops, batch_size, extra=""):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    return create_layer(f'name: "h5" type: "HDF5Data" {top_text} hdf5_data_param {{ source: "{source}" '
                        f'batch_size: {batch_size} {extra} }}')


def make_files(tmp_path, rows=(10, 10)):
    files, start = [], 0
    for i, n in enumerate(rows):
        data = np.arange(start, start + n, dtype=np.float64)[:, None, None] * np.ones((1, 2, 3))
        label = np.arange(start, start + n, dtype=np.int32)[:, None]
        files.append(write_h5(tmp_path / f"part{i}.h5", data=data, label=label))
        start += n
    return files


def forward(layer, ntops):
    tops = [Blob() for _ in range(ntops)]
    layer.initialize([], tops)
    return tops


def test_shapes_and_order_cycle_through_files(tmp_path):
    files = make_files(tmp_path, (10, 6))
    source = write_list(tmp_path / "list.txt", files)
    layer = layer_of(source, ["data", "label"], 4)
    data, label = tops = forward(layer, 2)
    assert data.shape == (4, 2, 3) and label.shape == (4, 1)
    seen = []
    for _ in range(8):                                 # 32 rows: two passes over 16
        layer.forward([], tops)
        assert data.data.dtype == np.float32
        np.testing.assert_array_equal(data.data[:, 1, 2], label.data[:, 0])
        seen += label.data[:, 0].astype(int).tolist()
    assert seen == list(range(16)) * 2


def test_single_file_batch_larger_than_file_wraps(tmp_path):
    files = make_files(tmp_path, (3,))
    layer = layer_of(write_list(tmp_path / "list.txt", files), ["label"], 5)
    (label,) = tops = forward(layer, 1)
    layer.forward([], tops)
    assert label.data[:, 0].tolist() == [0, 1, 2, 0, 1]
    layer.forward([], tops)
    assert label.data[:, 0].tolist() == [2, 0, 1, 2, 0]


def test_shuffle_visits_every_row_once_per_pass_and_repeats_with_seed(tmp_path):
    files = make_files(tmp_path, (8, 8))
    source = write_list(tmp_path / "list.txt", files)

    def passes(seed):
        set_random_seed(seed)
        layer = layer_of(source, ["data", "label"], 4, "shuffle: true")
        tops = forward(layer, 2)
        out = []
        for _ in range(8):
            layer.forward([], tops)
            np.testing.assert_array_equal(tops[0].data[:, 0, 0], tops[1].data[:, 0])   # rows stay paired
            out += tops[1].data[:, 0].astype(int).tolist()
        return out
    first = passes(5)
    assert sorted(first[:16]) == list(range(16)) and sorted(first[16:]) == list(range(16))
    assert first[:16] != list(range(16))
    # Rows of one file stay together within a pass (files are shuffled, then rows within each).
    assert {frozenset(first[:8]), frozenset(first[8:16])} == {frozenset(range(8)), frozenset(range(8, 16))}
    assert passes(5) == first


def test_relative_names_are_resolved_beside_the_list(tmp_path, monkeypatch):
    make_files(tmp_path, (4,))
    source = write_list(tmp_path / "list.txt", ["part0.h5"])
    monkeypatch.chdir(os.path.dirname(os.path.dirname(str(tmp_path))))
    layer = layer_of(source, ["label"], 2)
    tops = forward(layer, 1)
    layer.forward([], tops)
    assert tops[0].data[:, 0].tolist() == [0, 1]


def test_in_a_net(tmp_path):
    from dlcore import Net
    from dlcore.config import parse_text
    from dltrain.proto import caffe_pb2
    files = make_files(tmp_path, (6,))
    source = write_list(tmp_path / "list.txt", files)
    text = f"""
    layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
             hdf5_data_param {{ source: "{source}" batch_size: 3 }} }}
    layer {{ name: "r" type: "Reshape" bottom: "data" top: "flat" reshape_param {{ shape {{ dim: 3 dim: -1 }} }} }}
    layer {{ name: "s" type: "Silence" bottom: "flat" bottom: "label" }}
    """
    net = Net(parse_text(text, caffe_pb2.NetParameter), 1)
    net.forward()
    assert net.blobs["flat"].shape == (3, 6)
    net.forward()
    assert net.blobs["label"].data[:, 0].tolist() == [3, 4, 5]


def test_errors(tmp_path):
    files = make_files(tmp_path, (4,))
    source = write_list(tmp_path / "list.txt", files)
    with pytest.raises(ConfigError, match="cannot read the list file: No such file"):
        forward(layer_of(str(tmp_path / "missing.txt"), ["data"], 2), 1)
    with pytest.raises(ConfigError, match="lists no HDF5 files"):
        forward(layer_of(write_list(tmp_path / "empty.txt", []), ["data"], 2), 1)
    with pytest.raises(DLTrainError, match="no dataset 'nope'.*data, label"):
        forward(layer_of(source, ["nope"], 2), 1)
    with pytest.raises(ConfigError, match="batch_size"):
        forward(layer_of(source, ["data"], 0), 1)
    with pytest.raises(ConfigError, match="does not transform"):
        forward(create_layer(f'name: "h5" type: "HDF5Data" top: "data" transform_param {{ scale: 2 }} '
                             f'hdf5_data_param {{ source: "{source}" batch_size: 2 }}'), 1)
    bad = write_h5(tmp_path / "bad.h5", data=np.zeros((4, 2)), label=np.zeros((3, 1)))
    with pytest.raises(DLTrainError, match="differ in their number of rows"):
        forward(layer_of(write_list(tmp_path / "bad.txt", [bad]), ["data", "label"], 2), 2)
    other = write_h5(tmp_path / "other.h5", data=np.zeros((4, 5)), label=np.zeros((4, 1)))
    layer = layer_of(write_list(tmp_path / "mixed.txt", [files[0], other]), ["data", "label"], 4)
    tops = forward(layer, 2)
    with pytest.raises(DLTrainError, match="rows of shape"):
        layer.forward([], tops)        # the next file is read as the first one runs out (as Caffe)


def test_ranks_of_a_data_parallel_run_deal_the_rows_out(tmp_path, monkeypatch):
    """Rank r of N takes rows r, r+N, ... of the stream one process reads (across files, wrapping)."""
    from dlcore import parallel
    source = write_list(tmp_path / "list.txt", make_files(tmp_path, (3, 4)))

    def labels(rank, size, batch, forwards):
        world = parallel.World()
        world.rank, world.size = rank, size
        monkeypatch.setattr(parallel, "_world", world)
        layer = layer_of(source, ["data", "label"], batch)
        tops = forward(layer, 2)
        seen = []
        for _ in range(forwards):
            layer.forward([], tops)
            seen += tops[1].data[:, 0].astype(int).tolist()
        return seen

    single = labels(0, 1, 6, 3)
    assert single == list(range(7)) * 2 + list(range(4))
    assert labels(0, 2, 3, 3) == single[0::2] and labels(1, 2, 3, 3) == single[1::2]
