"""MemoryData (after Caffe's test_memory_data_layer.cpp, and pycaffe's Net.set_input_arrays) and WindowData."""
import numpy as np
import pytest

from dlcore import TEST, TRAIN, Blob, ConfigError, DLTrainError, Net, create_layer, set_random_seed
from dlcore.config import net_from_string
from dltrain.proto import caffe_pb2

# --- MemoryData ------------------------------------------------------------------------------------

BATCHES, BATCH, C, H, W = 3, 4, 2, 3, 5


def memory_layer(batch=BATCH, dtype=np.float32, extra=""):
    return create_layer(f'name: "mem" type: "MemoryData" top: "data" top: "label" memory_data_param {{ '
                        f'batch_size: {batch} channels: {C} height: {H} width: {W} }} {extra}', dtype=dtype)


def setup(layer):
    top = [Blob(dtype=layer.dtype), Blob(dtype=layer.dtype)]
    layer.initialize([], top)
    return top


def memory_arrays(rows=BATCHES * BATCH, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, C, H, W)).astype(np.float32), np.arange(rows, dtype=np.float32)


def test_memory_setup_shapes():
    top = setup(memory_layer())
    assert top[0].shape == (BATCH, C, H, W) and top[1].shape == (BATCH,)


def test_memory_forward_hands_out_batches_and_wraps():
    layer = memory_layer()
    top = setup(layer)
    data, labels = memory_arrays()
    layer.reset(data, labels, len(data))
    for step in range(2 * BATCHES + 1):                    # past the end: wraps to the first batch
        layer.forward([], top)
        k = (step % BATCHES) * BATCH
        np.testing.assert_array_equal(top[0].data, data[k:k + BATCH])
        np.testing.assert_array_equal(top[1].data, labels[k:k + BATCH])


def test_memory_uses_the_arrays_without_copying():
    layer = memory_layer()
    top = setup(layer)
    data, labels = memory_arrays()
    layer.reset(data, labels)
    data[0] = 42                                           # pycaffe keeps a pointer: later writes are seen
    layer.forward([], top)
    assert (top[0].data[0] == 42).all()


def test_memory_set_batch_size():
    layer = memory_layer()
    top = setup(layer)
    data, labels = memory_arrays()
    layer.reset(data, labels)
    layer.set_batch_size(6)
    layer.forward([], top)
    assert top[0].shape == (6, C, H, W)
    np.testing.assert_array_equal(top[1].data, labels[:6])


def test_memory_errors():
    layer = memory_layer()
    top = setup(layer)
    with pytest.raises(DLTrainError, match="call its reset"):
        layer.forward([], top)
    data, labels = memory_arrays()
    with pytest.raises(DLTrainError, match="multiple of batch_size"):
        layer.reset(data[:6], labels[:6])
    with pytest.raises(DLTrainError, match=f"n x {C} x {H} x {W}"):
        layer.reset(data.reshape(12, C, W, H)[:, :1], labels)
    with pytest.raises(DLTrainError, match="same first dimension"):
        layer.reset(data, labels[:8])
    with pytest.raises(ConfigError, match="must be specified and positive"):
        setup(create_layer('name: "m" type: "MemoryData" memory_data_param { batch_size: 2 channels: 1 }'))


NET = f"""
layer {{ name: "mem" type: "MemoryData" top: "data" top: "label"
         memory_data_param {{ batch_size: {BATCH} channels: {C} height: {H} width: {W} }} }}
layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 3 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"""


def test_net_set_input_arrays():
    net = Net(net_from_string(NET), phase=TRAIN)
    data, _ = memory_arrays(2 * BATCH)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.float32)
    net.set_input_arrays(data, labels[:, None, None, None])     # pycaffe's 4-D labels
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:BATCH])
    np.testing.assert_array_equal(net.blobs["label"].data, labels[:BATCH])
    net.set_input_arrays(data, labels)                          # 1-D labels too (pycaffe's wrapper)
    net.forward()
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, labels[BATCH:])
    with pytest.raises(DLTrainError, match="multiple of batch_size"):
        net.set_input_arrays(data[:3], labels[:3])


def test_net_set_input_arrays_needs_a_memory_data_layer():
    net = Net(net_from_string('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }'),
              phase=TEST)
    with pytest.raises(DLTrainError, match="MemoryData"):
        net.set_input_arrays(np.zeros((1, 1, 1, 1)), np.zeros(1))


# --- WindowData ---------------------------------------------------------------------------------------

def png(path, rgb):
    from PIL import Image
    Image.fromarray(rgb).save(path)
    return str(path)


@pytest.fixture
def window_set(tmp_path):
    """Two 12 x 12 RGB images and a window file with foreground and background windows."""
    pytest.importorskip("PIL")
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 256, (12, 12, 3), dtype=np.uint8) for _ in range(2)]
    for i, rgb in enumerate(rgbs):
        png(tmp_path / f"im{i}.png", rgb)
    text = (f"# 0\nim0.png\n3\n12\n12\n3\n"
            "1 0.9 0 0 7 7\n"          # foreground, class 1: the top-left 8 x 8
            "0 0.1 4 4 11 11\n"        # background
            "2 0.4 2 2 5 5\n"          # neither (0.4 is between bg 0.3 and fg 0.5): unused
            f"# 1\nim1.png\n3\n12\n12\n2\n"
            "3 0.7 4 0 11 7\n"
            "5 0.05 0 4 7 11\n")
    (tmp_path / "windows.txt").write_text(text)
    return tmp_path, rgbs


def window_layer(folder, batch=4, extra="", transform="crop_size: 8", phase=TRAIN, dtype=np.float32):
    return create_layer(f'name: "win" type: "WindowData" top: "data" top: "label" window_data_param {{ '
                        f'source: "{folder}/windows.txt" root_folder: "{folder}/" batch_size: {batch} '
                        f'bg_threshold: 0.3 {extra} }} transform_param {{ {transform} }}', phase=phase, dtype=dtype)


def bgr(rgb):
    return rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float64)


def test_window_file_parsing(window_set):
    from dltrain.layers.image_data import read_window_file
    folder, _ = window_set
    images, fg, bg, hist = read_window_file(f"{folder}/windows.txt", "root/", 0.5, 0.3)
    assert images == {0: ("root/im0.png", [3, 12, 12]), 1: ("root/im1.png", [3, 12, 12])}
    assert [(w.image, w.label, (w.x1, w.y1, w.x2, w.y2)) for w in fg] == [(0, 1, (0, 0, 7, 7)), (1, 3, (4, 0, 11, 7))]
    assert [(w.image, w.label, w.overlap) for w in bg] == [(0, 0, 0.0), (1, 0, 0.0)]   # label and overlap forced to 0
    assert hist == {0: 2, 1: 1, 3: 1}


def test_window_batches_sample_background_then_foreground(window_set):
    folder, rgbs = window_set
    set_random_seed(3)
    layer = window_layer(folder, batch=8, extra="fg_fraction: 0.25")
    top = [Blob(), Blob()]
    layer.initialize([], top)
    assert top[0].shape == (8, 3, 8, 8) and top[1].shape == (8,)
    layer.forward([], top)
    labels = top[1].data
    assert (labels[:6] == 0).all() and set(labels[6:]) <= {1, 3}     # int(8 * 0.25) = 2 foreground, last
    for k in range(8):
        if labels[k] == 1:      # the 8 x 8 top-left window of image 0, warped to 8 x 8: the pixels themselves
            np.testing.assert_array_equal(top[0].data[k], bgr(rgbs[0])[:, 0:8, 0:8])
        if labels[k] == 3:
            np.testing.assert_array_equal(top[0].data[k], bgr(rgbs[1])[:, 0:8, 4:12])


def test_window_mean_values_scale_and_mirror(window_set):
    folder, rgbs = window_set
    set_random_seed(1)
    layer = window_layer(folder, batch=16, extra="fg_fraction: 1 scale: 0.5",
                         transform="crop_size: 8 mirror: true mean_value: 1 mean_value: 2 mean_value: 3")
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.initialize([], top)
    layer.forward([], top)
    mean = np.array([1.0, 2, 3])[:, None, None]
    plain = (bgr(rgbs[0])[:, 0:8, 0:8] - mean) * 0.5
    flipped = plain[:, :, ::-1]
    seen = set()
    for k in np.flatnonzero(top[1].data == 1):
        got = top[0].data[k]
        assert np.array_equal(got, plain) or np.array_equal(got, flipped)
        seen.add(np.array_equal(got, flipped))
    assert seen == {False, True}


def test_window_mean_file_is_read_at_its_centre(window_set, tmp_path):
    folder, rgbs = window_set
    mean = np.arange(3 * 12 * 12, dtype=np.float32).reshape(3, 12, 12)
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([1, 3, 12, 12])
    proto.data.extend(mean.ravel().tolist())
    (tmp_path / "mean.binaryproto").write_bytes(proto.SerializeToString())
    set_random_seed(2)
    layer = window_layer(folder, batch=8, extra="fg_fraction: 1",
                         transform=f'crop_size: 8 mean_file: "{tmp_path}/mean.binaryproto"')
    top = [Blob(dtype=np.float64), Blob(dtype=np.float64)]
    layer.initialize([], top)
    layer.forward([], top)
    assert set(top[1].data) == {1, 3}
    centre = mean[:, 2:10, 2:10]                   # offset (12 - 8) // 2 on both axes
    for k, label in enumerate(top[1].data):
        pixels = bgr(rgbs[0])[:, 0:8, 0:8] if label == 1 else bgr(rgbs[1])[:, 0:8, 4:12]
        np.testing.assert_allclose(top[0].data[k], pixels - centre)


def test_window_geometry_context_pad_and_square():
    from dltrain.layers.image_data import window_geometry
    # crop 10, context_pad 2: the region grows by 10/6 about its centre
    assert window_geometry(2, 2, 7, 7, 20, 20, 10, 2, False, False, np.float64) == ((0, 0, 10, 10), (10, 10), (0, 0))
    # near the corner the grown region leaves the image: clipped, warped smaller, padded (mirrored padding)
    assert window_geometry(0, 0, 5, 5, 20, 20, 10, 2, False, False, np.float64) == ((0, 0, 8, 8), (8, 8), (2, 2))
    assert window_geometry(0, 0, 5, 5, 20, 20, 10, 2, False, True, np.float64) == ((0, 0, 8, 8), (8, 8), (2, 0))
    # square: the shorter side grows to the longer one (4 x 8 about centre (6, 4) -> x 2..10, y 0..8)
    assert window_geometry(4, 0, 7, 7, 20, 20, 10, 0, True, False, np.float64) == ((2, 0, 10, 8), (10, 10), (0, 0))
    # ... and clipped at the right edge of an image 9 columns wide: 2 of its 9 columns cut, the rest warped
    # to round(7 * 10/9) = 8 columns; the padding (round(2 * 10/9) = 2) goes to the left when mirrored
    assert window_geometry(4, 0, 7, 7, 20, 9, 10, 0, True, False, np.float64) == ((2, 0, 8, 8), (10, 8), (0, 0))
    assert window_geometry(4, 0, 7, 7, 20, 9, 10, 0, True, True, np.float64) == ((2, 0, 8, 8), (10, 8), (0, 2))
    # warp without padding: the window itself, to crop x crop
    assert window_geometry(3, 4, 9, 6, 20, 20, 10, 0, False, False) == ((3, 4, 9, 6), (10, 10), (0, 0))


def test_window_context_padding_leaves_zeros(window_set):
    folder, rgbs = window_set
    set_random_seed(2)
    layer = window_layer(folder, batch=8, extra="fg_fraction: 1 context_pad: 2",
                         transform="crop_size: 10 mean_value: 100")
    top = [Blob(), Blob()]
    layer.initialize([], top)
    layer.forward([], top)
    assert set(top[1].data) == {1, 3}
    for k, label in enumerate(top[1].data):
        out = top[0].data[k]
        assert (out[:, 0, :] == 0).all()              # both windows grow past the top of their image
        if label == 1:                                # (0, 0, 7, 7) also past the left edge
            assert (out[:, :, 0] == 0).all()
        else:                                         # (4, 0, 11, 7) past the right edge
            assert (out[:, :, -1] == 0).all()
        assert (out[:, 3:7, 3:7] != 0).any()


def test_window_cache_images_gives_the_same_batches(window_set):
    folder, _ = window_set
    out = []
    for extra in ("", "cache_images: true"):
        set_random_seed(9)
        layer = window_layer(folder, batch=6, extra=extra, transform="crop_size: 5 mirror: true")
        top = [Blob(), Blob()]
        layer.initialize([], top)
        layer.forward([], top)
        out.append((top[0].data.copy(), top[1].data.copy()))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_window_errors(window_set):
    folder, _ = window_set
    with pytest.raises(ConfigError, match="crop_size must be set"):
        window_layer(folder, transform="").initialize([], [Blob(), Blob()])
    with pytest.raises(ConfigError, match="no foreground windows"):
        window_layer(folder, extra="fg_threshold: 0.99").initialize([], [Blob(), Blob()])
    text = (folder / "windows.txt").read_text()
    (folder / "windows.txt").write_text(text.replace("# 1", "% 1"))
    with pytest.raises(ConfigError, match="line 10: expected '#'"):
        window_layer(folder).initialize([], [Blob(), Blob()])
    (folder / "windows.txt").write_text(text.replace("1 0.9 0 0 7 7", "0 0.9 0 0 7 7"))
    with pytest.raises(ConfigError, match="foreground classes must be > 0"):
        window_layer(folder).initialize([], [Blob(), Blob()])
    (folder / "windows.txt").write_text(text.replace("1 0.9 0 0 7 7", "1 0.9 0 0 7 12"))
    layer = window_layer(folder, extra="fg_fraction: 1")
    top = [Blob(), Blob()]
    layer.initialize([], top)
    with pytest.raises(DLTrainError, match="lies outside its image"):
        for _ in range(5):
            layer.forward([], top)
