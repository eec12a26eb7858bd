"""The Data layer (LMDB of Datums), its DataTransformer, the converters, and the digits LMDBs."""
import gc
import os
import time

import numpy as np
import pytest

import dlcore
from dlcore import ConfigError, DLTrainError, Net
from dlcore.config import net_from_string, write_binary
from dltrain.proto import caffe_pb2

from dltrain.cli.convert import convert_arrays, convert_imageset, read_image_list
from dltrain.layers.db_data import array_to_datum, count_lmdb, open_lmdb, write_lmdb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:                      # Pillow: the optional image support (encoded Datums, convert_imageset)
    from PIL import Image
except ImportError:       # pragma: no cover - depends on the install
    Image = None
needs_pil = pytest.mark.skipif(Image is None, reason="Pillow is not installed")


def data_net(source, phase=dlcore.TRAIN, batch=4, transform="", data_extra="", tops=("data", "label"),
             dtype=np.float32):
    top_text = " ".join(f'top: "{t}"' for t in tops)
    text = (f'layer {{ name: "mydata" type: "Data" {top_text} '
            f'transform_param {{ {transform} }} '
            f'data_param {{ source: "{source}" batch_size: {batch} backend: LMDB {data_extra} }} }}')
    return Net(net_from_string(text), phase, dtype=dtype)


def images(n=10, c=2, h=5, w=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


@pytest.fixture
def raw_db(tmp_path):
    x = images()
    y = np.arange(10) * 3 % 10      # labels differ from the index
    db = str(tmp_path / "raw_lmdb")
    assert convert_arrays(x, y, db) == 10
    return db, x, y


def f32(a):
    return np.asarray(a, np.float32)


# --- the transform ------------------------------------------------------------

def test_scale_and_per_channel_mean_value_exact(raw_db):
    db, x, y = raw_db
    net = data_net(db, transform="scale: 0.0125 mean_value: 100.5 mean_value: 20")
    net.forward()
    mean = f32([100.5, 20])[None, :, None, None]
    expected = (x[:4].astype(np.float32) - mean) * np.float32(0.0125)
    assert net.blobs["data"].data.dtype == np.float32
    assert np.array_equal(net.blobs["data"].data, expected)
    assert np.array_equal(net.blobs["label"].data, f32(y[:4]))


def test_single_mean_value_applies_to_every_channel(raw_db):
    db, x, _ = raw_db
    net = data_net(db, transform="mean_value: 7")
    net.forward()
    assert np.array_equal(net.blobs["data"].data, x[:4].astype(np.float32) - np.float32(7))


def test_no_transform_gives_the_raw_pixels(raw_db):
    db, x, _ = raw_db
    net = data_net(db, dtype=np.float64)
    net.forward()
    assert net.blobs["data"].data.dtype == np.float64
    assert np.array_equal(net.blobs["data"].data, x[:4].astype(np.float64))


def test_mean_file_exact(raw_db, tmp_path):
    db, x, _ = raw_db
    mean = np.random.default_rng(1).uniform(0, 255, (1, 2, 5, 6)).astype(np.float32)
    proto = caffe_pb2.BlobProto(num=1, channels=2, height=5, width=6)
    proto.data.extend(mean.ravel().tolist())
    path = str(tmp_path / "mean.binaryproto")
    write_binary(path, proto)
    net = data_net(db, transform=f'scale: 0.5 mean_file: "{path}"')
    net.forward()
    assert np.array_equal(net.blobs["data"].data, (x[:4].astype(np.float32) - mean) * np.float32(0.5))


def test_mean_file_with_center_crop_uses_the_uncropped_position(raw_db, tmp_path):
    db, x, _ = raw_db
    mean = np.random.default_rng(2).uniform(0, 255, (2, 5, 6)).astype(np.float32)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 2, 5, 6])
    proto.data.extend(mean.ravel().tolist())
    path = str(tmp_path / "mean.binaryproto")
    write_binary(path, proto)
    net = data_net(db, phase=dlcore.TEST, transform=f'crop_size: 3 mean_file: "{path}"')
    net.forward()
    ho, wo = (5 - 3) // 2, (6 - 3) // 2
    expected = x[:4, :, ho:ho + 3, wo:wo + 3].astype(np.float32) - mean[:, ho:ho + 3, wo:wo + 3]
    assert net.blobs["data"].shape == (4, 2, 3, 3)
    assert np.array_equal(net.blobs["data"].data, expected)


def test_mean_file_and_mean_value_together_is_an_error(raw_db, tmp_path):
    db, _, _ = raw_db
    path = str(tmp_path / "mean.binaryproto")
    write_binary(path, caffe_pb2.BlobProto(num=1, channels=2, height=5, width=6, data=[0.0] * 60))
    with pytest.raises(ConfigError, match="mean_file and mean_value"):
        data_net(db, transform=f'mean_file: "{path}" mean_value: 1')


def test_mean_file_of_the_wrong_shape_is_an_error(raw_db, tmp_path):
    db, _, _ = raw_db
    path = str(tmp_path / "mean.binaryproto")
    write_binary(path, caffe_pb2.BlobProto(num=1, channels=1, height=5, width=6, data=[0.0] * 30))
    with pytest.raises(ConfigError, match="mydata.*mean_file"):
        data_net(db, transform=f'mean_file: "{path}"')


def test_float_data_records(tmp_path):
    x = np.random.default_rng(3).normal(size=(5, 1, 3, 4)).astype(np.float32)
    db = str(tmp_path / "float_lmdb")
    convert_arrays(x, np.arange(5), db)
    net = data_net(db, batch=5, transform="scale: 2 mean_value: 0.25")
    net.forward()
    assert np.array_equal(net.blobs["data"].data, (x - np.float32(0.25)) * np.float32(2))


def test_center_crop_in_test(raw_db):
    db, x, _ = raw_db
    net = data_net(db, phase=dlcore.TEST, transform="crop_size: 4")
    net.forward()
    ho, wo = (5 - 4) // 2, (6 - 4) // 2
    assert np.array_equal(net.blobs["data"].data, x[:4, :, ho:ho + 4, wo:wo + 4].astype(np.float32))


def _windows(image, crop):
    c, h, w = image.shape
    return {(i, j): image[:, i:i + crop, j:j + crop] for i in range(h - crop + 1) for j in range(w - crop + 1)}


def _match(item, image, crop, allow_flip):
    for (i, j), window in _windows(image, crop).items():
        if np.array_equal(item, window):
            return (i, j, False)
        if allow_flip and np.array_equal(item, window[:, :, ::-1]):
            return (i, j, True)
    return None


def test_random_crop_in_train_stays_inside_and_varies(raw_db):
    db, x, _ = raw_db
    dlcore.set_random_seed(11)
    net = data_net(db, batch=10, transform="crop_size: 3")
    offsets = []
    for _ in range(3):
        net.forward()
        data = net.blobs["data"].data
        assert data.shape == (10, 2, 3, 3)
        for n in range(10):
            found = _match(data[n], x[n].astype(np.float32), 3, allow_flip=False)
            assert found is not None, "a crop must be a window of its own image"
            offsets.append(found[:2])
    assert len(set(offsets)) > 3


def test_random_crop_and_mirror_are_reproducible_with_a_seed(raw_db):
    db, _, _ = raw_db
    runs = []
    for _ in range(2):
        dlcore.set_random_seed(5)
        net = data_net(db, batch=7, transform="crop_size: 3 mirror: true")
        batches = []
        for _ in range(3):
            net.forward()
            batches.append(net.blobs["data"].data.copy())
        runs.append(batches)
        del net
    for a, b in zip(*runs):
        assert np.array_equal(a, b)
    dlcore.set_random_seed(6)
    net = data_net(db, batch=7, transform="crop_size: 3 mirror: true")
    net.forward()
    assert not np.array_equal(net.blobs["data"].data, runs[0][0])


def test_mirror_flips_some_items_horizontally(raw_db):
    db, x, _ = raw_db
    dlcore.set_random_seed(3)
    net = data_net(db, batch=10, transform="mirror: true")
    flipped = kept = 0
    for _ in range(4):
        net.forward()
        data = net.blobs["data"].data
        for n in range(10):
            image = x[n].astype(np.float32)
            if np.array_equal(data[n], image[:, :, ::-1]):
                flipped += 1
            else:
                assert np.array_equal(data[n], image)
                kept += 1
    assert flipped > 5 and kept > 5


def test_mirror_with_crop_in_train(raw_db):
    db, x, _ = raw_db
    dlcore.set_random_seed(4)
    net = data_net(db, batch=10, transform="crop_size: 4 mirror: true")
    flips = set()
    for _ in range(3):
        net.forward()
        for n in range(10):
            found = _match(net.blobs["data"].data[n], x[n].astype(np.float32), 4, allow_flip=True)
            assert found is not None
            flips.add(found[2])
    assert flips == {True, False}


def test_no_mirror_no_crop_in_train_is_deterministic(raw_db):
    db, x, _ = raw_db
    net = data_net(db, batch=10)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, x.astype(np.float32))


def test_crop_larger_than_the_image_is_an_error(raw_db):
    db, _, _ = raw_db
    with pytest.raises(ConfigError, match="mydata.*crop_size 7"):
        data_net(db, transform="crop_size: 7")


# --- order, wrap-around, labels --------------------------------------------------

def test_batches_follow_the_key_order_and_wrap_at_the_end(raw_db):
    db, x, y = raw_db
    net = data_net(db, batch=4, phase=dlcore.TEST)
    order = []
    for _ in range(5):
        net.forward()
        labels = net.blobs["label"].data.copy()
        data = net.blobs["data"].data
        start = len(order)
        idx = [(start + i) % 10 for i in range(4)]
        assert np.array_equal(data, x[idx].astype(np.float32))
        assert np.array_equal(labels, f32(y[idx]))
        order += idx
    assert order[8:12] == [8, 9, 0, 1]


def test_batch_larger_than_the_database_wraps_inside_the_batch(raw_db):
    db, x, y = raw_db
    net = data_net(db, batch=25)
    net.forward()
    idx = [i % 10 for i in range(25)]
    assert np.array_equal(net.blobs["label"].data, f32(y[idx]))
    net.forward()
    idx = [i % 10 for i in range(25, 50)]
    assert np.array_equal(net.blobs["data"].data, x[idx].astype(np.float32))


def test_data_only_top(raw_db):
    db, x, _ = raw_db
    net = data_net(db, tops=("data",))
    net.forward()
    assert net.blobs["data"].shape == (4, 2, 5, 6)
    assert "label" not in net.blobs


def test_setup_shapes_the_tops(raw_db):
    db, _, _ = raw_db
    net = data_net(db, batch=3, phase=dlcore.TEST, transform="crop_size: 2")
    assert net.blobs["data"].shape == (3, 2, 2, 2)
    assert net.blobs["label"].shape == (3,)


def test_rand_skip_starts_inside_the_skip_range(raw_db):
    db, x, _ = raw_db
    starts = set()
    for seed in range(6):
        dlcore.set_random_seed(seed)
        net = data_net(db, batch=1, data_extra="rand_skip: 5")
        net.forward()
        match = [i for i in range(10) if np.array_equal(net.blobs["data"].data[0], x[i])]
        assert len(match) == 1 and match[0] < 5
        starts.add(match[0])
    assert len(starts) > 1


# --- the reader thread -------------------------------------------------------------

def test_reads_ahead_up_to_prefetch_batches(raw_db):
    db, _, _ = raw_db
    net = data_net(db, batch=2, data_extra="prefetch: 3")
    prefetcher = net.layers[0]._prefetcher
    deadline = time.time() + 20
    while prefetcher.queue.qsize() < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert prefetcher.queue.qsize() == 3
    time.sleep(0.05)
    assert prefetcher.queue.qsize() == 3     # bounded: no more than prefetch batches


def test_thread_stops_when_the_net_is_deleted(raw_db):
    db, _, _ = raw_db
    net = data_net(db)
    net.forward()
    thread = net.layers[0]._prefetcher.thread
    assert thread.is_alive() and thread.daemon
    del net
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()


def test_default_prefetch_is_four(raw_db):
    db, _, _ = raw_db
    net = data_net(db)
    assert net.layers[0]._prefetcher.queue.maxsize == 4


# --- errors -------------------------------------------------------------------------

def test_missing_source_is_a_config_error_naming_the_layer(tmp_path):
    missing = str(tmp_path / "nowhere_lmdb")
    with pytest.raises(ConfigError) as info:
        data_net(missing)
    assert "mydata" in str(info.value) and "nowhere_lmdb" in str(info.value)


def test_missing_source_in_a_net_file_names_the_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text('name: "n"\nlayer {\n  name: "mydata"\n  type: "Data"\n  top: "data"\n'
                    '  data_param { source: "/no/such/db" batch_size: 2 backend: LMDB }\n}\n')
    with pytest.raises(ConfigError) as info:
        Net(str(path), dlcore.TRAIN)
    assert info.value.path == str(path)
    assert "mydata" in str(info.value) and "/no/such/db" in str(info.value)


def test_a_folder_without_lmdb_data_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="mydata.*not an LMDB"):
        data_net(str(tmp_path / "empty"))


def test_a_leveldb_backend_over_an_lmdb_reads_the_lmdb_with_one_line(raw_db, capfd):
    db, x, _ = raw_db
    text = (f'layer {{ name: "mydata" type: "Data" top: "data" '
            f'data_param {{ source: "{db}" batch_size: 2 backend: LEVELDB }} }}')
    net = Net(net_from_string(text), dlcore.TRAIN)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, x[:2].astype(np.float32))
    notes = [line for line in capfd.readouterr().err.splitlines() if "data_param.backend" in line]
    assert len(notes) == 1 and "is an LMDB, not LEVELDB" in notes[0] and "mydata" in notes[0]


def test_unset_backend_reads_an_lmdb(raw_db):
    db, x, _ = raw_db
    text = f'layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "{db}" batch_size: 2 }} }}'
    net = Net(net_from_string(text), dlcore.TRAIN)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, x[:2].astype(np.float32))


def test_zero_batch_size_is_an_error(raw_db):
    db, _, _ = raw_db
    with pytest.raises(ConfigError, match="batch_size"):
        data_net(db, batch=0)


def test_a_record_of_the_wrong_size_fails_in_forward_naming_layer_source_and_key(tmp_path):
    good = array_to_datum(np.zeros((1, 2, 2), np.uint8), 1)
    bad = caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x00" * 3, label=2)
    db = str(tmp_path / "bad_lmdb")
    write_lmdb(db, [("00000000", good), ("00000001", bad)])
    net = data_net(db, batch=2)
    with pytest.raises(DLTrainError) as info:
        net.forward()
    message = str(info.value)
    assert "mydata" in message and "bad_lmdb" in message and "00000001" in message
    assert "3 bytes" in message


def test_a_bad_first_record_fails_at_setup(tmp_path):
    db = str(tmp_path / "bad_lmdb")
    write_lmdb(db, [("a", caffe_pb2.Datum(channels=1, height=2, width=2, data=b"\x00", label=0))])
    with pytest.raises(ConfigError, match="mydata.*1 bytes"):
        data_net(db, batch=2)


def test_an_empty_database_is_an_error(tmp_path):
    db = str(tmp_path / "empty_lmdb")
    write_lmdb(db, [])
    with pytest.raises(ConfigError, match="no records"):
        data_net(db)


def test_two_layers_may_read_one_database(raw_db):
    db, x, _ = raw_db
    a = data_net(db, batch=3)
    b = data_net(db, batch=3, phase=dlcore.TEST)
    a.forward()
    b.forward()
    assert np.array_equal(a.blobs["data"].data, b.blobs["data"].data)


# --- encoded images and convert_imageset ------------------------------------------------

def _write_pngs(root, n=6, size=(7, 5), seed=0):
    """n color PNGs (W x H = size) and their list file; returns (listfile, RGB arrays)."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir()
    arrays, lines = [], []
    for i in range(n):
        rgb = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        name = f"imgs/im {i}.png"            # a space in the name: the label is after the last one
        Image.fromarray(rgb, "RGB").save(root / name)
        arrays.append(rgb)
        lines.append(f"{name} {i % 3}")
    listfile = root / "list.txt"
    listfile.write_text("\n".join(lines) + "\n")
    return str(listfile), arrays


def _bgr_chw(rgb):
    return rgb[:, :, ::-1].transpose(2, 0, 1)


def _gray(rgb):
    return np.asarray(Image.fromarray(rgb, "RGB").convert("L"))


def test_read_image_list(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("a/b c.png 3\n\nd.jpg 0\n")
    assert read_image_list(str(path)) == [("a/b c.png", 3), ("d.jpg", 0)]
    path.write_text("a.png x\n")
    with pytest.raises(ConfigError) as info:
        read_image_list(str(path))
    assert info.value.line == 1


@needs_pil
def test_convert_imageset_color_keys_and_bgr_order(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path)
    db = str(tmp_path / "color_lmdb")
    assert convert_imageset(str(tmp_path) + "/", listfile, db) == 6
    env = open_lmdb(db)
    with env.begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
        first = caffe_pb2.Datum.FromString(txn.get(keys[0].encode()))
    assert keys == [f"{i:08d}_imgs/im {i}.png" for i in range(6)]
    assert (first.channels, first.height, first.width, first.label, first.encoded) == (3, 5, 7, 0, False)
    assert first.data == _bgr_chw(rgbs[0]).tobytes()
    net = data_net(db, batch=6)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, np.stack([_bgr_chw(a) for a in rgbs]).astype(np.float32))
    assert np.array_equal(net.blobs["label"].data, f32([0, 1, 2, 0, 1, 2]))


@needs_pil
def test_convert_imageset_gray_and_resize(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path)
    db = str(tmp_path / "gray_lmdb")
    convert_imageset(str(tmp_path), listfile, db, gray=True, resize_height=4, resize_width=3)
    net = data_net(db, batch=6)
    net.forward()
    assert net.blobs["data"].shape == (6, 1, 4, 3)
    expected = [np.asarray(Image.fromarray(_gray(a), "L").resize((3, 4), Image.BILINEAR)) for a in rgbs]
    assert np.array_equal(net.blobs["data"].data[:, 0], np.stack(expected).astype(np.float32))


@needs_pil
def test_convert_imageset_gray_without_resize(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path, n=2)
    db = str(tmp_path / "g_lmdb")
    convert_imageset(str(tmp_path), listfile, db, gray=True)
    net = data_net(db, batch=2)
    net.forward()
    assert np.array_equal(net.blobs["data"].data[:, 0], np.stack([_gray(a) for a in rgbs]).astype(np.float32))


@needs_pil
def test_encoded_png_records_decode_to_the_raw_pixels(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path)
    db = str(tmp_path / "enc_lmdb")
    convert_imageset(str(tmp_path), listfile, db, encoded=True)
    with open_lmdb(db).begin() as txn:
        datum = caffe_pb2.Datum.FromString(next(iter(txn.cursor()))[1])
    assert datum.encoded and datum.data.startswith(b"\x89PNG")
    with open(tmp_path / "imgs" / "im 0.png", "rb") as f:
        assert datum.data == f.read()            # the file itself, as Caffe stores it
    net = data_net(db, batch=6, phase=dlcore.TEST, transform="scale: 0.5 mean_value: 1 mean_value: 2 "
                                                           "mean_value: 3 crop_size: 3")
    net.forward()
    src = np.stack([_bgr_chw(a) for a in rgbs]).astype(np.float32)
    ho, wo = (5 - 3) // 2, (7 - 3) // 2
    expected = (src[:, :, ho:ho + 3, wo:wo + 3] - f32([1, 2, 3])[None, :, None, None]) * np.float32(0.5)
    assert np.array_equal(net.blobs["data"].data, expected)


@needs_pil
def test_encoded_gray_resize_and_force_color(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path, n=3)
    db = str(tmp_path / "encg_lmdb")
    convert_imageset(str(tmp_path), listfile, db, gray=True, resize_height=4, resize_width=4,
                     encode_type="png")
    net = data_net(db, batch=3)
    net.forward()
    expected = np.stack([np.asarray(Image.fromarray(_gray(a), "L").resize((4, 4), Image.BILINEAR))
                         for a in rgbs]).astype(np.float32)
    assert np.array_equal(net.blobs["data"].data[:, 0], expected)
    net = data_net(db, batch=3, transform="force_color: true")
    net.forward()
    assert net.blobs["data"].shape == (3, 3, 4, 4)
    for c in range(3):
        assert np.array_equal(net.blobs["data"].data[:, c], expected)


@needs_pil
def test_encoded_color_force_gray(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path, n=2)
    db = str(tmp_path / "enc_lmdb")
    convert_imageset(str(tmp_path), listfile, db, encoded=True)
    net = data_net(db, batch=2, transform="force_gray: true")
    net.forward()
    assert np.array_equal(net.blobs["data"].data[:, 0], np.stack([_gray(a) for a in rgbs]).astype(np.float32))
    with pytest.raises(ConfigError, match="force_color and force_gray"):
        data_net(db, transform="force_gray: true force_color: true")


@needs_pil
def test_encoded_jpg_from_png_decodes(tmp_path):
    listfile, _ = _write_pngs(tmp_path, n=2)
    db = str(tmp_path / "jpg_lmdb")
    convert_imageset(str(tmp_path), listfile, db, encode_type="jpg")
    with open_lmdb(db).begin() as txn:
        datum = caffe_pb2.Datum.FromString(next(iter(txn.cursor()))[1])
    assert datum.encoded and datum.data[:2] == b"\xff\xd8"
    net = data_net(db, batch=2)
    net.forward()
    assert net.blobs["data"].shape == (2, 3, 5, 7)


@needs_pil
def test_convert_imageset_shuffle_with_seed_and_skips_unreadable(tmp_path):
    listfile, rgbs = _write_pngs(tmp_path)
    with open(listfile, "a") as f:
        f.write("imgs/missing.png 1\n")
    db = str(tmp_path / "shuf_lmdb")
    count = convert_imageset(str(tmp_path), listfile, db, shuffle=True, seed=0)
    assert count == 6
    with open_lmdb(db).begin() as txn:
        keys = [k.decode() for k, _ in txn.cursor()]
    lines = [f"imgs/im {i}.png" for i in range(6)] + ["imgs/missing.png"]
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(7)]
    expected = [f"{i:08d}_{name}" for i, name in enumerate(shuffled) if "missing" not in name]
    assert keys == expected                  # the line index after shuffling; the unreadable one skipped


def test_convert_refuses_an_existing_database(raw_db):
    db, x, y = raw_db
    with pytest.raises(DLTrainError, match="already exists"):
        convert_arrays(x, y, db)


@needs_pil
def test_converters_from_the_command_line(tmp_path, capsys):
    from dltrain.cli.main import main
    listfile, rgbs = _write_pngs(tmp_path, n=3)
    db = str(tmp_path / "cli_lmdb")
    assert main(["convert_imageset", "--gray", "--resize_height", "2", "-resize_width", "2",
                 str(tmp_path) + "/", listfile, db]) == 0
    assert count_lmdb(db) == 3
    x = images(4, 1, 3, 3)
    np.save(tmp_path / "x.npy", x[:, 0])               # N x H x W
    np.save(tmp_path / "y.npy", np.array([1, 2, 3, 4]))
    db2 = str(tmp_path / "arr_lmdb")
    assert main(["convert_arrays", "--images", str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy"), db2]) == 0
    net = data_net(db2, batch=4)
    net.forward()
    assert np.array_equal(net.blobs["data"].data, x.astype(np.float32))
    assert main(["convert_arrays", "--images", str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy"), "--backend", "rocksdb", str(tmp_path / "l")]) == 1
    assert "unknown database backend 'rocksdb'" in capsys.readouterr().err


def test_convert_arrays_checks_its_input(tmp_path):
    with pytest.raises(DLTrainError, match="one per image"):
        convert_arrays(np.zeros((3, 2, 2), np.uint8), np.zeros(2, int), str(tmp_path / "a"))
    with pytest.raises(DLTrainError, match="0..255"):
        convert_arrays(np.full((1, 2, 2), 300), np.zeros(1, int), str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_a_failed_conversion_leaves_nothing(tmp_path):
    def records():
        yield "00000000", array_to_datum(np.zeros((1, 1, 1), np.uint8))
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        write_lmdb(str(tmp_path / "db"), records())
    assert os.listdir(tmp_path) == []


def test_write_lmdb_grows_its_map(tmp_path):
    db = str(tmp_path / "big")
    big = np.zeros((3, 100, 100), np.uint8)
    n = write_lmdb(db, ((f"{i:08d}", array_to_datum(big, i)) for i in range(50)), map_size=64 * 1024)
    assert n == 50 and count_lmdb(db) == 50
    assert os.listdir(db) == ["data.mdb"]


# --- the committed digits databases ---------------------------------------------------------

DIGITS = os.path.join(REPO, "configs", "digits")


@pytest.mark.parametrize("name, count", [("digits_train_lmdb", 1437), ("digits_test_lmdb", 360)])
def test_committed_digits_databases(name, count):
    db = os.path.join(DIGITS, name)
    assert os.listdir(db) == ["data.mdb"]
    assert os.path.getsize(os.path.join(db, "data.mdb")) < 400 * 1024
    assert count_lmdb(db) == count
    labels = []
    with open_lmdb(db).begin() as txn:
        for key, value in txn.cursor():
            datum = caffe_pb2.Datum.FromString(value)
            assert (datum.channels, datum.height, datum.width, datum.encoded) == (1, 8, 8, False)
            assert len(datum.data) == 64
            labels.append(datum.label)
    assert sorted(set(labels)) == list(range(10))
    assert min(np.bincount(labels)) >= count // 10 - 6     # stratified: every digit about equally


@pytest.mark.parametrize("phase, batch", [(dlcore.TRAIN, 64), (dlcore.TEST, 120)])
def test_digits_net_data_layers_in_both_phases(monkeypatch, phase, batch):
    from dlcore.config import load_net
    monkeypatch.chdir(REPO)                 # sources are relative to the repository root
    param = load_net(os.path.join(DIGITS, "lenet_digits_train_test.prototxt"))
    kept = [layer for layer in param.layer if layer.type == "Data"]
    del param.layer[:]
    param.layer.extend(kept)
    net = Net(param, phase)
    net.forward()
    data = net.blobs["data"].data
    assert data.shape == (batch, 1, 8, 8)
    assert data.min() >= 0 and data.max() <= 255 / 256 and data.max() > 0.9
    assert set(np.unique(net.blobs["label"].data)) <= set(range(10))


def test_digits_yaml_files_match_the_prototxt_files():
    from dlcore.config import load_net, load_solver
    assert load_net(os.path.join(DIGITS, "lenet_digits_train_test.yaml")) == \
        load_net(os.path.join(DIGITS, "lenet_digits_train_test.prototxt"))
    solver_yaml = load_solver(os.path.join(DIGITS, "solver.yaml"))
    solver_text = load_solver(os.path.join(DIGITS, "solver.prototxt"))
    assert solver_yaml.net == "configs/digits/lenet_digits_train_test.yaml"
    assert solver_text.net == "configs/digits/lenet_digits_train_test.prototxt"
    solver_yaml.net = solver_text.net
    assert solver_yaml == solver_text
    # The test pass covers the 360 test images exactly once.
    assert solver_text.test_iter[0] * 120 == 360


def test_digits_example_trains_on_a_short_schedule(monkeypatch, tmp_path):
    from dltrain.cli.main import main
    from dlcore.config import load_solver, to_prototxt
    monkeypatch.chdir(REPO)
    solver = load_solver(os.path.join(DIGITS, "solver.prototxt"))
    solver.max_iter = 20
    solver.test_interval = 20
    solver.display = 10
    solver.snapshot_prefix = str(tmp_path / "digits")
    path = tmp_path / "solver.prototxt"
    path.write_text(to_prototxt(solver))
    assert main(["train", "--solver", str(path)]) == 0
    assert (tmp_path / "digits_iter_20.caffemodel").exists()
