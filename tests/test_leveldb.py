"""LevelDB databases of Datums (plyvel, the [leveldb] extra): the Data layer reads them as it reads LMDBs, the
tools write and read them, and the backend is what the folder holds."""
import gc
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import dlcore
from dlcore import ConfigError, DLTrainError, Net
from dlcore.config import load_message, net_from_string
from dltrain.cli.convert import convert_arrays, convert_imageset
from dltrain.cli.main import main
from dltrain.cli.tools import compute_image_mean, extract_features
from dltrain.layers import db_data
from dltrain.layers.db_data import array_to_datum, open_db, write_leveldb, write_lmdb
from dltrain.proto import caffe_pb2
from dltrain.solvers import get_solver

plyvel = pytest.importorskip("plyvel", reason="the [leveldb] extra (plyvel) is not installed")


def images(n=13, c=2, h=6, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def records(x, y, order=None):
    order = range(len(x)) if order is None else order
    return [(f"{i:08d}", array_to_datum(x[i], y[i])) for i in order]


@pytest.fixture
def both(tmp_path):
    """The same records in an LMDB and in a LevelDB (written in a shuffled order: LevelDB sorts by key)."""
    x, y = images(), np.arange(13) * 7 % 5
    lmdb_path, leveldb_path = str(tmp_path / "x_lmdb"), str(tmp_path / "x_leveldb")
    write_lmdb(lmdb_path, records(x, y))
    write_leveldb(leveldb_path, records(x, y, np.random.default_rng(1).permutation(13)))
    return lmdb_path, leveldb_path, x, y


def data_layer(source, phase="TRAIN", batch=4, transform="", extra="", backend="", name="d"):
    include = f"include {{ phase: {phase} }}" if phase else ""
    return (f'layer {{ name: "{name}" type: "Data" top: "data" top: "label" {include} '
            f'transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} {backend} {extra} }} }}')


def batches(source, count, phase=dlcore.TRAIN, seed=5, **kwargs):
    dlcore.set_random_seed(seed)
    net = Net(net_from_string(data_layer(source, phase=None, **kwargs)), phase)
    out = []
    for _ in range(count):
        net.forward()
        out.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    return out


# --- reading --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phase, transform, extra", [
    (dlcore.TRAIN, "scale: 0.5 mean_value: 10 mean_value: 20", ""),
    (dlcore.TRAIN, "crop_size: 4 mirror: true", "rand_skip: 11"),     # random crops, flips and skip
    (dlcore.TEST, "crop_size: 3", "rand_skip: 40 prefetch: 1"),        # a skip past the end goes round
])
def test_a_leveldb_gives_the_batches_of_the_same_records_in_an_lmdb(both, phase, transform, extra):
    lmdb_path, leveldb_path, x, y = both
    # 9 batches of 4 from 13 records: wraps round twice.
    from_lmdb = batches(lmdb_path, 9, phase, transform=transform, extra=extra, backend="backend: LMDB")
    from_leveldb = batches(leveldb_path, 9, phase, transform=transform, extra=extra, backend="backend: LEVELDB")
    for (a, la), (b, lb) in zip(from_lmdb, from_leveldb):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_records_come_in_key_order_and_wrap_around(both):
    _, leveldb_path, x, y = both
    got = batches(leveldb_path, 4, batch=5)                 # 20 records of 13: 0..12, then 0..6
    order = np.concatenate([np.arange(13), np.arange(7)])
    np.testing.assert_array_equal(np.concatenate([d for d, _ in got]), x[order].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([label for _, label in got]), y[order].astype(np.float32))


def test_a_float_leveldb_and_caffe_style_keys(tmp_path):
    x = np.random.default_rng(2).normal(size=(3, 1, 2, 2)).astype(np.float32)
    path = str(tmp_path / "f_leveldb")
    write_leveldb(path, [(f"{i:08d}_img{i}.png".encode(), array_to_datum(x[i], i)) for i in (2, 0, 1)])
    (data, labels), = batches(path, 1, batch=3)
    np.testing.assert_array_equal(data, x)
    np.testing.assert_array_equal(labels, [0, 1, 2])


def test_the_backend_is_what_the_folder_holds_with_one_line_when_declared_otherwise(both, capfd):
    lmdb_path, leveldb_path, x, _ = both
    cases = [(leveldb_path, "", None),                          # Caffe's default, LEVELDB: nothing to say
             (leveldb_path, "backend: LEVELDB", None),
             (lmdb_path, "backend: LMDB", None),
             (leveldb_path, "backend: LMDB", "is a LevelDB, not LMDB as data_param.backend says: reading it as "
                                             "LevelDB"),
             (lmdb_path, "", "is an LMDB; data_param.backend is not set, which is LEVELDB in Caffe: reading it "
                             "as LMDB")]
    for source, backend, note in cases:
        capfd.readouterr()
        (data, _), = batches(source, 1, backend=backend)
        np.testing.assert_array_equal(data, x[:4].astype(np.float32))
        lines = [line for line in capfd.readouterr().err.splitlines() if "data_param.backend" in line]
        if note is None:
            assert lines == []
        else:
            assert len(lines) == 1 and note in lines[0] and "layer 'd' (Data)" in lines[0], lines


def test_a_folder_that_is_neither_and_an_empty_leveldb_are_errors(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match=r"layer 'd' \(Data\).*not an LMDB .* nor a LevelDB"):
        Net(net_from_string(data_layer(str(tmp_path / "nothing"), phase=None)), dlcore.TRAIN)
    write_leveldb(str(tmp_path / "empty"), [])
    with pytest.raises(ConfigError, match="LevelDB .*empty' has no records"):
        Net(net_from_string(data_layer(str(tmp_path / "empty"), phase=None)), dlcore.TRAIN)


def test_a_corrupt_leveldb_record_names_its_key(tmp_path):
    good = array_to_datum(np.zeros((1, 2, 2), np.uint8))
    bad = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x00")       # 1 byte for 4 pixels
    path = str(tmp_path / "bad_leveldb")
    write_leveldb(path, [("a", good), ("b", bad)])
    net = Net(net_from_string(data_layer(path, phase=None, batch=2)), dlcore.TRAIN)
    with pytest.raises(DLTrainError, match=r"layer 'd' \(Data\).*4.*record 'b'"):
        net.forward()


def test_without_plyvel_the_error_names_the_extra(both, monkeypatch):
    _, leveldb_path, _, _ = both
    gc.collect()                                   # no handle of an earlier test left open
    monkeypatch.setitem(sys.modules, "plyvel", None)
    monkeypatch.setattr(db_data, "_LEVELDBS", type(db_data._LEVELDBS)())
    with pytest.raises(ConfigError) as info:
        Net(net_from_string(data_layer(leveldb_path, phase=None)), dlcore.TRAIN)
    message = str(info.value)
    assert "\n" not in message and "layer 'd' (Data)" in message and "pip install 'dltrain[leveldb]'" in message


# --- one database, several readers ------------------------------------------------------------------------

def test_a_train_and_a_test_net_read_the_same_leveldb(both, tmp_path):
    _, leveldb_path, x, y = both
    net_text = (data_layer(leveldb_path, "TRAIN", batch=3) + data_layer(leveldb_path, "TEST", batch=5) +
                'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                'inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
    (tmp_path / "net.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/net.prototxt" base_lr: 0.001 lr_policy: "fixed" max_iter: 6 test_iter: 3 '
        f'test_interval: 3 display: 0 random_seed: 1 solver_mode: CPU snapshot_prefix: "{tmp_path}/s"')
    solver = get_solver(str(tmp_path / "solver.prototxt"))
    solver.solve()
    train, test = solver.net, solver.test_nets[0]
    # 6 train batches of 3 (18 records) and 3 tests x 3 batches of 5 (45 records), each from its own cursor.
    np.testing.assert_array_equal(train.blobs["label"].data, y[[2, 3, 4]].astype(np.float32))
    np.testing.assert_array_equal(test.blobs["label"].data, y[[6, 7, 8, 9, 10]].astype(np.float32))
    assert train.layers[0]._db.handle is test.layers[0]._db.handle       # one open LevelDB in the process


def test_a_leveldb_another_process_holds_is_read_through_a_view(both):
    _, leveldb_path, x, y = both
    holder = subprocess.Popen([sys.executable, "-c", "import plyvel, sys; db = plyvel.DB(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", leveldb_path],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        gc.collect()
        got = batches(leveldb_path, 4, batch=5)
        np.testing.assert_array_equal(np.concatenate([d for d, _ in got])[:13], x.astype(np.float32))
        parent = os.path.dirname(leveldb_path)
        assert [n for n in os.listdir(parent) if ".view-" in n]          # the view, beside the database
    finally:
        holder.communicate("", timeout=30)
    del got
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [n for n in os.listdir(parent) if ".view-" in n]:
        gc.collect()
        time.sleep(0.05)
    assert not [n for n in os.listdir(parent) if ".view-" in n]           # removed once closed


def test_a_leveldb_this_user_cannot_write_is_read_through_a_view(both, monkeypatch, capfd):
    """LevelDB writes into the folder it opens; where it cannot (a read-only dataset), the view is read."""
    _, leveldb_path, x, _ = both
    real_db = plyvel.DB

    def read_only_db(path, **options):
        if os.path.realpath(path) == os.path.realpath(leveldb_path):
            raise plyvel.IOError(f"IO error: {path}/LOCK: Permission denied".encode())
        return real_db(path, **options)
    gc.collect()
    monkeypatch.setattr(plyvel, "DB", read_only_db)
    (data, _), = batches(leveldb_path, 1, batch=13)
    np.testing.assert_array_equal(data, x.astype(np.float32))
    assert "Permission denied): reading it through a private view" in capfd.readouterr().err


# --- exact resume -------------------------------------------------------------------------------------------

def test_a_leveldb_run_resumes_exactly(both, tmp_path):
    _, leveldb_path, _, _ = both
    net_text = (data_layer(leveldb_path, "TRAIN", batch=3, transform="crop_size: 4 mirror: true",
                           extra="rand_skip: 5 prefetch: 2") +
                data_layer(leveldb_path, "TEST", batch=2, transform="crop_size: 4") +
                'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                'inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }'
                'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')

    def solver(folder, max_iter):
        folder.mkdir(exist_ok=True)
        (folder / "net.prototxt").write_text(net_text)
        (folder / "solver.prototxt").write_text(
            f'net: "{folder}/net.prototxt" type: "Adam" base_lr: 0.01 lr_policy: "fixed" max_iter: {max_iter} '
            f'test_iter: 2 test_interval: 3 snapshot: 4 display: 1 random_seed: 7 solver_mode: CPU '
            f'snapshot_prefix: "{folder}/snaps/run"')
        return get_solver(str(folder / "solver.prototxt"))

    full = solver(tmp_path / "full", 8)
    full.solve()
    solver(tmp_path / "part", 4).solve()
    state = load_message(str(tmp_path / "part" / "snaps" / "run_iter_4.solverstate"), caffe_pb2.SolverState)
    assert state.HasField("resume")
    resumed = solver(tmp_path / "part", 8)
    resumed.solve(str(tmp_path / "part" / "snaps" / "run_iter_4.solverstate"))
    for a, b in zip(resumed.net.learnable_params, full.net.learnable_params):
        np.testing.assert_array_equal(a.data, b.data)

    def logged(folder):
        with open(folder / "snaps" / "run_log.jsonl") as f:
            return [(r["iter"], r["phase"], r["loss"]) for r in map(json.loads, f) if r["iter"] > 4]
    assert logged(tmp_path / "part")[-6:] == logged(tmp_path / "full")[-6:]


# --- a siamese net on a pair database ------------------------------------------------------------------------

SIAMESE_TOWER = """
layer {{ name: "conv1{s}" type: "Convolution" bottom: "{bottom}" top: "conv1{s}"
  param {{ name: "conv1_w" lr_mult: 1 }} param {{ name: "conv1_b" lr_mult: 2 }}
  convolution_param {{ num_output: 4 kernel_size: 3 stride: 1 weight_filler {{ type: "xavier" }}
                      bias_filler {{ type: "constant" }} }} }}
layer {{ name: "pool1{s}" type: "Pooling" bottom: "conv1{s}" top: "pool1{s}"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "ip1{s}" type: "InnerProduct" bottom: "pool1{s}" top: "ip1{s}"
  param {{ name: "ip1_w" lr_mult: 1 }} param {{ name: "ip1_b" lr_mult: 2 }}
  inner_product_param {{ num_output: 16 weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
layer {{ name: "relu1{s}" type: "ReLU" bottom: "ip1{s}" top: "ip1{s}" }}
layer {{ name: "feat{s}" type: "InnerProduct" bottom: "ip1{s}" top: "feat{s}"
  param {{ name: "feat_w" lr_mult: 1 }} param {{ name: "feat_b" lr_mult: 2 }}
  inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" }} }} }}
"""


def pair_database(path, n, seed):
    """Caffe's siamese MNIST layout: 2 x H x W Datums (two images stacked as channels), label 1 when both show
    the same class (here: one of 3 noisy patterns), else 0."""
    patterns = np.random.default_rng(0).integers(0, 256, (3, 10, 10))      # the same classes in every database
    rng = np.random.default_rng(seed)

    def image(cls):
        return np.clip(patterns[cls] + rng.normal(0, 30, (10, 10)), 0, 255).astype(np.uint8)
    items = []
    for i in range(n):
        a, b = rng.integers(0, 3, 2)
        items.append((f"{i:08d}", array_to_datum(np.stack([image(a), image(b)]), int(a == b))))
    write_leveldb(path, items)


def test_a_siamese_net_trains_on_a_leveldb_of_pairs(tmp_path):
    pair_database(str(tmp_path / "pairs_train_leveldb"), 96, 1)
    pair_database(str(tmp_path / "pairs_test_leveldb"), 40, 2)
    net_text = ('name: "siamese"\n' +
                data_layer(tmp_path / "pairs_train_leveldb", "TRAIN", 16, "scale: 0.00390625", name="pair_data")
                .replace('top: "data" top: "label"', 'top: "pair_data" top: "sim"') +
                data_layer(tmp_path / "pairs_test_leveldb", "TEST", 20, "scale: 0.00390625", name="pair_data")
                .replace('top: "data" top: "label"', 'top: "pair_data" top: "sim"') +
                'layer { name: "slice_pair" type: "Slice" bottom: "pair_data" top: "data" top: "data_p" '
                'slice_param { slice_dim: 1 slice_point: 1 } }' +
                SIAMESE_TOWER.format(s="", bottom="data") + SIAMESE_TOWER.format(s="_p", bottom="data_p") +
                'layer { name: "loss" type: "ContrastiveLoss" bottom: "feat" bottom: "feat_p" bottom: "sim" '
                'top: "loss" contrastive_loss_param { margin: 1.0 } }')
    (tmp_path / "siamese.prototxt").write_text(net_text)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path}/siamese.prototxt" test_iter: 2 test_interval: 30 base_lr: 0.01 momentum: 0.9 '
        f'weight_decay: 0 lr_policy: "inv" gamma: 0.0001 power: 0.75 display: 10 max_iter: 30 '
        f'snapshot_prefix: "{tmp_path}/siamese" random_seed: 3 solver_mode: CPU')
    solver = get_solver(str(tmp_path / "solver.prototxt"))
    net = solver.net
    assert net.blobs["pair_data"].data.shape == (16, 2, 10, 10)
    assert net.blobs["data"].data.shape == net.blobs["data_p"].data.shape == (16, 1, 10, 10)
    tower, twin = net.layer_dict["conv1"], net.layer_dict["conv1_p"]
    assert tower.blobs[0] is twin.blobs[0] or np.shares_memory(tower.blobs[0].data, twin.blobs[0].data)
    solver.solve()
    with open(solver.log_path) as f:
        tests = [r["outputs"]["loss"] for r in map(json.loads, f) if r["phase"] == "test"]
    assert len(tests) == 2 and np.isfinite(tests[-1])                 # at iterations 0 and 30
    assert tests[-1] < 0.8 * tests[0]                                  # the pairs' embedding was learned
    np.testing.assert_array_equal(net.layer_dict["feat"].blobs[0].data, net.layer_dict["feat_p"].blobs[0].data)


# --- the tools ------------------------------------------------------------------------------------------------

def test_convert_arrays_and_compute_image_mean_round_trip_through_a_leveldb(tmp_path, capsys):
    x, y = images(5, 1, 4, 4), np.array([4, 3, 2, 1, 0])
    np.save(tmp_path / "x.npy", x[:, 0])
    np.save(tmp_path / "y.npy", y)
    db = str(tmp_path / "arrays_leveldb")
    assert main(["convert_arrays", "--images", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "-backend", "leveldb", db]) == 0                  # Caffe's single-dash flag
    assert os.path.isfile(os.path.join(db, "CURRENT")) and not os.path.exists(os.path.join(db, "data.mdb"))
    with plyvel.DB(db) as raw:                                      # a plain LevelDB of Datums, as Caffe's
        items = [(key, caffe_pb2.Datum.FromString(value)) for key, value in raw]
    assert [key for key, _ in items] == [f"{i:08d}".encode() for i in range(5)]
    assert [(d.channels, d.height, d.width, d.label) for _, d in items[:2]] == [(1, 4, 4, 4), (1, 4, 4, 3)]
    (data, labels), = batches(db, 1, batch=5)
    np.testing.assert_array_equal(data, x.astype(np.float32))
    np.testing.assert_array_equal(labels, y.astype(np.float32))

    capsys.readouterr()
    out = str(tmp_path / "mean.binaryproto")
    assert main(["compute_image_mean", "-backend", "leveldb", db, out]) == 0
    assert "not lmdb" not in capsys.readouterr().err
    blob = load_message(out, caffe_pb2.BlobProto)
    np.testing.assert_allclose(np.asarray(blob.data).reshape(1, 4, 4), x.mean(axis=0), rtol=1e-6)
    _, mean = compute_image_mean(db)                             # --backend lmdb (Caffe's default) over a LevelDB
    assert "is a LevelDB, not lmdb as --backend says: reading it as LevelDB" in capsys.readouterr().err
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)
    with pytest.raises(DLTrainError, match="'.*' already exists"):
        convert_arrays(x, y, db, backend="leveldb")


def test_convert_imageset_writes_a_leveldb(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 5, 4, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(pixels[i]).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "list.txt").write_text("0.png 2\n1.png 0\n2.png 1\n")
    raw, encoded = str(tmp_path / "raw_leveldb"), str(tmp_path / "png_leveldb")
    assert convert_imageset(str(tmp_path / "imgs"), str(tmp_path / "list.txt"), raw, backend="LEVELDB") == 3
    assert main(["convert_imageset", "--encoded", "--backend", "leveldb", str(tmp_path / "imgs"),
                 str(tmp_path / "list.txt"), encoded]) == 0
    bgr = pixels[:, :, :, ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    for db in (raw, encoded):
        (data, labels), = batches(db, 1, batch=3)
        np.testing.assert_array_equal(data, bgr)
        np.testing.assert_array_equal(labels, [2, 0, 1])
    assert [key for key, _ in open_db(encoded).records()] == [b"00000000_0.png", b"00000001_1.png",
                                                              b"00000002_2.png"]


def test_extract_features_writes_a_leveldb(both, tmp_path, capsys):
    lmdb_path, leveldb_path, x, _ = both
    net = tmp_path / "features.prototxt"
    net.write_text(data_layer(leveldb_path, "TEST", batch=4) +
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }')
    dlcore.set_random_seed(1)
    weights = str(tmp_path / "w.caffemodel")
    Net(str(net), dlcore.TEST).save(weights)
    by_function = extract_features(weights, str(net), ["ip"], [str(tmp_path / "f_leveldb")], 2, fmt="leveldb")
    assert main(["extract_features", weights, str(net), "ip,label", f"{tmp_path}/g_leveldb,{tmp_path}/l_leveldb",
                 "2", "-backend", "leveldb"]) == 0
    assert main(["extract_features", weights, str(net), "ip", f"{tmp_path}/h", "2", "leveldb", "CPU"]) == 0
    for out in ("f_leveldb", "g_leveldb", "h"):
        database = open_db(str(tmp_path / out))
        assert database.backend == "leveldb"
        items = [(key, caffe_pb2.Datum.FromString(value)) for key, value in database.records()]
        assert [key for key, _ in items] == [f"{n:010d}".encode() for n in range(8)]
        features = np.array([list(datum.float_data) for _, datum in items], np.float32)
        np.testing.assert_array_equal(features, by_function["ip"])
        assert (items[0][1].channels, items[0][1].height, items[0][1].width) == (3, 1, 1)
    capsys.readouterr()
    assert main(["extract_features", weights, str(net), "ip", f"{tmp_path}/k", "2", "--format", "npy",
                 "--backend", "leveldb"]) == 1
    assert "disagree" in capsys.readouterr().err


def test_an_unknown_backend_is_one_line(tmp_path, capsys):
    assert main(["convert_arrays", "--images", "x.npy", "--labels", "y.npy", "--backend", "rocksdb",
                 str(tmp_path / "db")]) == 1
    assert "unknown database backend 'rocksdb' (use lmdb or leveldb)" in capsys.readouterr().err


# --- two ranks --------------------------------------------------------------------------------------------

MPIRUN = shutil.which("mpirun", path=os.path.dirname(sys.executable)) or shutil.which("mpirun")
try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None


@pytest.mark.skipif(MPIRUN is None or mpi4py is None, reason="the [mpi] extra (mpi4py, mpirun) is not installed")
def test_two_ranks_train_on_one_leveldb(both, tmp_path):
    """Both ranks open the same LevelDB (train and test net on rank 0): equal to one process at twice the batch."""
    _, leveldb_path, _, _ = both
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    models = {}
    for ranks, batch in ((1, 4), (2, 2)):
        folder = tmp_path / f"ranks{ranks}"
        folder.mkdir()
        (folder / "net.prototxt").write_text(
            data_layer(leveldb_path, "TRAIN", batch=batch, transform="scale: 0.01") +
            data_layer(leveldb_path, "TEST", batch=3, transform="scale: 0.01") +
            'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
            'inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }'
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }')
        (folder / "solver.prototxt").write_text(
            f'net: "{folder}/net.prototxt" base_lr: 0.1 lr_policy: "fixed" max_iter: 6 test_iter: 2 '
            f'test_interval: 3 display: 3 random_seed: 2 solver_mode: CPU snapshot_prefix: "{folder}/run"')
        command = [os.path.join(os.path.dirname(sys.executable), "dltrain"), "train", "--solver",
                   str(folder / "solver.prototxt")]
        if ranks > 1:
            command = [MPIRUN, "-n", str(ranks), *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=str(folder))
        assert result.returncode == 0, result.stderr[-2000:]
        model = load_message(str(folder / "run_iter_6.caffemodel"), caffe_pb2.NetParameter)
        models[ranks] = [np.asarray(b.data) for layer in model.layer for b in layer.blobs]
    for a, b in zip(models[2], models[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert not [n for n in os.listdir(os.path.dirname(leveldb_path)) if ".view-" in n]
