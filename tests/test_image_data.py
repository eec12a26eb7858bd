"""ImageData (after Caffe's test_image_data_layer.cpp) and the OpenCV-style resize it uses."""
import os
import sys

import numpy as np
import pytest

from dlcore import TEST, TRAIN, Blob, ConfigError, DLTrainError, Net, create_layer, set_random_seed
from dlcore.config import net_from_string

Image = pytest.importorskip("PIL.Image")


def rgb_image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write_png(path, array):
    Image.fromarray(array).save(path)
    return str(path)


def bgr_chw(rgb):
    return rgb[:, :, ::-1].transpose(2, 0, 1)


@pytest.fixture
def images(tmp_path):
    """Three 6 x 5 RGB PNGs labelled 0, 1, 2, and their list file; returns (list path, [rgb arrays])."""
    arrays = [rgb_image(6, 5, i) for i in range(3)]
    for i, a in enumerate(arrays):
        write_png(tmp_path / f"img{i}.png", a)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/img{i}.png {i}\n" for i in range(3)))
    return str(listing), arrays


def layer_of(source, batch_size, extra="", transform="", phase=TRAIN, dtype=np.float32):
    return create_layer(f'name: "img" type: "ImageData" top: "data" top: "label" '
                        f'image_data_param {{ source: "{source}" batch_size: {batch_size} {extra} }} '
                        f'{transform}', phase=phase, dtype=dtype)


def setup(layer):
    top = [Blob(dtype=layer.dtype), Blob(dtype=layer.dtype)]
    layer.initialize([], top)
    return top


def forward(layer, top):
    layer.forward([], top)
    return top[0].data.copy(), top[1].data.copy()


def test_read_in_order_and_wrap(images):
    source, arrays = images
    layer = layer_of(source, 2)
    top = setup(layer)
    assert top[0].shape == (2, 3, 6, 5) and top[1].shape == (2,)
    data, labels = forward(layer, top)
    np.testing.assert_array_equal(labels, [0, 1])
    np.testing.assert_array_equal(data[0], bgr_chw(arrays[0]))      # BGR, as OpenCV gives Caffe
    np.testing.assert_array_equal(data[1], bgr_chw(arrays[1]))
    data, labels = forward(layer, top)
    np.testing.assert_array_equal(labels, [2, 0])                   # restarts from the first line
    np.testing.assert_array_equal(data[1], bgr_chw(arrays[0]))


def test_transform_param_crop_mean_scale(images):
    source, arrays = images
    transform = 'transform_param { crop_size: 3 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 }'
    layer = layer_of(source, 1, transform=transform, phase=TEST)
    top = setup(layer)
    assert top[0].shape == (1, 3, 3, 3)
    data, _ = forward(layer, top)
    centre = bgr_chw(arrays[0]).astype(np.float64)[:, 1:4, 1:4]     # (6-3)//2 = 1, (5-3)//2 = 1
    expected = (centre - np.array([10, 20, 30])[:, None, None]) * 0.5
    np.testing.assert_allclose(data[0], expected)


def test_resize_and_grayscale(images):
    source, arrays = images
    layer = layer_of(source, 3, "new_height: 4 new_width: 7 is_color: false")
    top = setup(layer)
    assert top[0].shape == (3, 1, 4, 7)
    data, labels = forward(layer, top)
    gray = np.asarray(Image.fromarray(arrays[2]).convert("L"), np.float64)
    # the bilinear resize of the grayscale image, within one grey level of a float reference
    np.testing.assert_allclose(data[2, 0], reference_resize(gray, 4, 7), atol=1.0)


def reference_resize(image, h, w):
    """Bilinear sampling at half-pixel centres with clamped borders (what OpenCV's INTER_LINEAR computes)."""
    H, W = image.shape

    def taps(src, dst):
        f = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        s = np.floor(f).astype(int)
        f = f - s
        f[s < 0] = 0
        s[s < 0] = 0
        over = s >= src - 1
        f[over] = 0
        s[over] = src - 1
        return s, f

    ys, fy = taps(H, h)
    xs, fx = taps(W, w)
    y1, x1 = np.minimum(ys + 1, H - 1), np.minimum(xs + 1, W - 1)
    top = image[ys][:, xs] * (1 - fx) + image[ys][:, x1] * fx
    bottom = image[y1][:, xs] * (1 - fx) + image[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def test_resize_matches_opencv_on_known_cases():
    from dltrain.layers.image_data import resize_image
    up = resize_image(np.array([[[0, 100]]], np.uint8), 1, 4)
    np.testing.assert_array_equal(up, [[[0, 25, 75, 100]]])          # cv2.resize(..., (4, 1)) gives these
    down = resize_image(np.array([[[10, 20, 30, 41]]], np.uint8), 1, 2)
    np.testing.assert_array_equal(down, [[[15, 36]]])                # halves rounded up, as OpenCV's fixed point
    same = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert resize_image(same, 3, 4) is same
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3, 13, 17), dtype=np.uint8)
    for h, w in ((5, 9), (26, 34), (13, 40)):
        out = resize_image(big, h, w)
        for c in range(3):
            np.testing.assert_allclose(out[c], reference_resize(big[c].astype(float), h, w), atol=1.0)


def test_paths_with_spaces_root_folder_and_list_relative_paths(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    a = rgb_image(4, 4, 1)
    write_png(folder / "my cat.png", a)
    listing = tmp_path / "list.txt"
    listing.write_text("my cat.png 7\r\n\n")                          # label after the last space; CRLF
    layer = layer_of(str(listing), 1, f'root_folder: "{folder}/"')
    data, labels = forward(layer, setup(layer))
    assert labels[0] == 7
    np.testing.assert_array_equal(data[0], bgr_chw(a))
    listing.write_text("pics/my cat.png 3\n")                         # relative to the list file's folder
    layer = layer_of(str(listing), 1)
    data, labels = forward(layer, setup(layer))
    assert labels[0] == 3


def test_reshape_per_batch_with_batch_size_one(tmp_path):
    # Caffe's TestReshape: images of different sizes, batch_size 1: the top follows each image
    write_png(tmp_path / "a.png", rgb_image(4, 6, 0))
    write_png(tmp_path / "b.png", rgb_image(5, 3, 1))
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/a.png 0\n{tmp_path}/b.png 1\n")
    layer = layer_of(str(listing), 1)
    top = setup(layer)
    assert forward(layer, top)[0].shape == (1, 3, 4, 6)
    assert forward(layer, top)[0].shape == (1, 3, 5, 3)
    layer = layer_of(str(listing), 2)
    top = setup(layer)
    with pytest.raises(DLTrainError, match="this batch's first image is 3x4x6"):
        forward(layer, top)


def test_shuffle_is_a_permutation_per_pass_and_repeats_with_the_seed(tmp_path):
    write_png(tmp_path / "a.png", rgb_image(2, 2, 0))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/a.png {i}\n" for i in range(6)))
    runs = []
    for _ in range(2):
        set_random_seed(5)
        layer = layer_of(str(listing), 3, "shuffle: true")
        top = setup(layer)
        labels = np.concatenate([forward(layer, top)[1] for _ in range(4)])
        assert sorted(labels[:6]) == list(range(6)) and sorted(labels[6:]) == list(range(6))
        runs.append(labels)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_rand_skip(tmp_path):
    write_png(tmp_path / "a.png", rgb_image(2, 2, 0))
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{tmp_path}/a.png {i}\n" for i in range(5)))
    firsts = set()
    for seed in range(12):
        set_random_seed(seed)
        layer = layer_of(str(listing), 1, "rand_skip: 3")
        firsts.add(int(forward(layer, setup(layer))[1][0]))
    assert firsts <= {0, 1, 2} and len(firsts) > 1


def test_errors(tmp_path, images):
    source, _ = images
    with pytest.raises(ConfigError, match="new_height and new_width must be set together"):
        setup(layer_of(source, 1, "new_height: 4"))
    with pytest.raises(ConfigError, match="cannot read the list file: No such file"):
        setup(layer_of(str(tmp_path / "none.txt"), 1))
    with pytest.raises(ConfigError, match="batch_size must be positive"):
        setup(layer_of(source, 0))
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{tmp_path}/img0.png 0\n{tmp_path}/missing.png 1\n")
    layer = layer_of(str(bad), 2)
    top = setup(layer)
    with pytest.raises(DLTrainError, match="missing.png"):
        forward(layer, top)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    bad.write_text(f"{tmp_path}/junk.png 0\n")
    with pytest.raises(ConfigError, match="could not decode image"):
        setup(layer_of(str(bad), 1))
    with pytest.raises(ConfigError, match="crop_size 9 is larger than the image"):
        setup(layer_of(source, 1, transform="transform_param { crop_size: 9 }"))


def test_without_pillow_the_error_says_so(images, monkeypatch):
    source, _ = images
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DLTrainError, match="Pillow"):
        setup(layer_of(source, 1))


def test_in_a_net(images):
    source, arrays = images
    text = f"""
    layer {{ name: "img" type: "ImageData" top: "data" top: "label"
             image_data_param {{ source: "{source}" batch_size: 3 new_height: 3 new_width: 3 }}
             transform_param {{ scale: 0.00390625 }} }}
    layer {{ name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param {{ num_output: 3 }} }}
    layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
    """
    net = Net(net_from_string(text), phase=TRAIN)
    assert net.blobs["data"].shape == (3, 3, 3, 3)
    loss = net.forward_backward()
    assert np.isfinite(loss)
    assert 0 <= net.blobs["data"].data.min() and net.blobs["data"].data.max() <= 1
    np.testing.assert_array_equal(net.blobs["label"].data, [0, 1, 2])


def test_data_layers_have_no_gpu_code():
    # CPU only by design: they fill host memory, the blobs copy the batch to the device
    from dlcore.registry import get_layer_class
    for name in ("ImageData", "MemoryData", "WindowData"):
        assert not get_layer_class(name).has_gpu_forward()
    assert os.path.exists(os.path.join(os.path.dirname(__file__), "..", "layers", "image_data.py"))
