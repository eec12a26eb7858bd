"""Image data layers: ImageData (a list of image files), MemoryData (arrays fed
from Python) and WindowData (R-CNN's windows of images), as Caffe's
image_data_layer.cpp, memory_data_layer.cpp and window_data_layer.cpp.

All three are CPU-only on purpose: they fill host memory, and in a GPU net
the top blobs copy the batch to the device when the next layer asks for it
(Caffe's data layers likewise fill host memory and then copy the batch to
the GPU).  Images are decoded with Pillow (imported when an image is first
read, with a clear error if it is missing), colour images in BGR channel
order as OpenCV gives them to Caffe, so per-channel ``mean_value``s and
mean files keep their meaning.  Resizing (ImageData's new_height/new_width,
WindowData's warp) is OpenCV's ``cv::resize`` with INTER_LINEAR: half-pixel
centres, two taps, borders clamped, 11-bit fixed-point weights (OpenCV's own
SIMD path rounds slightly differently: a pixel may differ by one grey
level).

ImageData
---------
``image_data_param``: ``source`` (a text file of ``path label`` lines: the
label is the integer after the last space, so paths may contain spaces),
``root_folder`` (prepended to every path, as Caffe does by concatenation),
``batch_size``, ``shuffle`` (the list is shuffled at setup and at the end of
every pass), ``rand_skip`` (start at a random line in ``[0, rand_skip)``),
``new_height``/``new_width`` (resize every image; both or neither),
``is_color`` (true: 3 channels BGR; false: grayscale).  The images go
through ``transform_param`` (crop, mirror, mean, scale: the DataTransformer
of layers/db_data.py).  The batch takes the shape of its first image, so
with batch_size 1 images of different sizes pass, as in Caffe; within a
batch they must agree.  Besides Caffe's behaviour: blank lines are skipped;
trailing whitespace (a Windows ``\\r``) is ignored; a tab also separates the
label; a relative path that does not exist relative to the working
directory (Caffe's only choice) is also looked for beside the list file,
and a root_folder without its trailing ``/`` is also tried as a folder.
Images are read when the net asks for the batch (no read-ahead thread).

MemoryData
----------
``memory_data_param``: ``batch_size``, ``channels``, ``height``, ``width``.
Fed from Python: ``layer.reset(data, labels[, n])`` (Caffe's Reset) or
pycaffe's ``net.set_input_arrays(data, labels)``; ``data`` is n x channels x
height x width (n a multiple of batch_size), ``labels`` n values (or
n x 1 x 1 x 1).  Each forward hands out the next batch_size rows, wrapping
around.  The arrays are used as given when they are C-contiguous and of the
net's dtype (no copy, as pycaffe), so the caller keeps them alive and may
refill them in place.  As in Caffe no transformation is applied to arrays
(a warning says so when the layer has a transform_param).

WindowData
----------
``window_data_param``: ``source`` (Caffe's window file: repeated records
``# image_index`` / ``image_path`` / ``channels`` / ``height`` / ``width`` /
``num_windows`` / then ``class_index overlap x1 y1 x2 y2`` per window),
``batch_size``, ``fg_threshold`` (0.5), ``bg_threshold`` (0.5),
``fg_fraction`` (0.25), ``context_pad``, ``crop_mode`` ("warp" or
"square"), ``cache_images``, ``root_folder``, and ``scale`` (WindowData
multiplies by window_data_param.scale, not transform_param.scale, as
Caffe); from ``transform_param``: ``crop_size`` (required), ``mirror``,
``mean_file`` or ``mean_value``.  Windows with overlap >= fg_threshold are
foreground (their class must be > 0); those with overlap < bg_threshold are
background (label 0); the others are unused.  Each batch samples
``int(batch_size * fg_fraction)`` foreground windows and the rest background,
uniformly with replacement (background first, as Caffe), crops each window
(with context padding, and squared in "square" mode) out of its image,
warps it to crop_size x crop_size with the same geometry and rounding as
Caffe (the part of a padded region outside the image stays 0), mirrors a
random half when ``mirror`` is set, and subtracts the mean (a mean file is
read at its centre crop offset, as Caffe).  Deviations: each window is
matched to the image record carrying its ``image_index`` (Caffe takes the
record at that position in the file: the same for files numbered 0, 1, 2, ...
as R-CNN writes them); a window that lies outside its image (without
context padding) or an image whose channels differ from the file's is an
error instead of undefined behaviour; images are read when the net asks for
the batch (no read-ahead thread).
"""
import math
import os

import numpy as np
from numba import njit

from dlcore import log, parallel
from dlcore.config import MAX_BINARY_BYTES, read_regular_file, read_text_file
from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import TRAIN, Layer
from dlcore.registry import register_layer
from dlcore.resume import generator_state, new_generator, set_generator_state
from dlcore.rng import get_rng

from .data import read_list_file
from .db_data import DataTransformer, decode_image

__all__ = ["ImageDataLayer", "MemoryDataLayer", "WindowDataLayer", "resize_linear", "read_image_list",
           "read_window_file", "load_image"]


# ---------------------------------------------------------------------------
# OpenCV's INTER_LINEAR resize (uint8, C x H x W)
# ---------------------------------------------------------------------------

COEF_BITS = 11                 # OpenCV's INTER_RESIZE_COEF_BITS
COEF_SCALE = 1 << COEF_BITS


@njit(cache=True)
def _linear_taps(src, dst):
    """For each destination index: the first source index and the two fixed-point weights."""
    index = np.empty(dst, np.int64)
    w0 = np.empty(dst, np.int64)
    w1 = np.empty(dst, np.int64)
    scale = 1.0 / (dst / src)                 # OpenCV: scale_x = 1 / inv_scale_x
    one = np.float32(1.0)
    for d in range(dst):
        f = np.float32((d + 0.5) * scale - 0.5)
        s = int(math.floor(f))
        f = np.float32(f - np.float32(s))
        if s < 0:
            f = np.float32(0.0)
            s = 0
        if s >= src - 1:
            f = np.float32(0.0)
            s = src - 1
        index[d] = s
        w0[d] = int(np.rint((one - f) * COEF_SCALE))
        w1[d] = int(np.rint(f * COEF_SCALE))
    return index, w0, w1


@njit(cache=True)
def resize_linear(src, out):
    """``out`` (C, h, w) = ``src`` (C, H, W) resized as cv::resize(..., INTER_LINEAR); uint8 pixels."""
    C, H, W = src.shape
    h, w = out.shape[1], out.shape[2]
    xi, xa0, xa1 = _linear_taps(W, w)
    yi, yb0, yb1 = _linear_taps(H, h)
    half = 1 << (2 * COEF_BITS - 1)
    for c in range(C):
        for y in range(h):
            sy0 = yi[y]
            sy1 = min(sy0 + 1, H - 1)
            b0 = yb0[y]
            b1 = yb1[y]
            for x in range(w):
                sx0 = xi[x]
                sx1 = min(sx0 + 1, W - 1)
                d0 = np.int64(src[c, sy0, sx0]) * xa0[x] + np.int64(src[c, sy0, sx1]) * xa1[x]
                d1 = np.int64(src[c, sy1, sx0]) * xa0[x] + np.int64(src[c, sy1, sx1]) * xa1[x]
                v = (b0 * d0 + b1 * d1 + half) >> (2 * COEF_BITS)
                out[c, y, x] = min(max(v, 0), 255)


def resize_image(image, height, width):
    """A (C, H, W) uint8 image resized to (C, height, width) (no copy when the size is unchanged)."""
    if image.shape[1] == height and image.shape[2] == width:
        return image
    out = np.empty((image.shape[0], height, width), np.uint8)
    resize_linear(np.ascontiguousarray(image), out)
    return out


def load_image(path, height=0, width=0, color=True):
    """Caffe's ReadImageToCVMat: the file's pixels as (C, H, W) uint8, BGR (``color``) or grayscale,
    resized to height x width when both are > 0.  Raises DLTrainError naming the file."""
    try:
        data = read_regular_file(path, MAX_BINARY_BYTES, "the image")
    except ConfigError as err:
        raise DLTrainError(f"could not open or find file: {err}") from None
    return decode_file_bytes(data, path, height, width, color)


def decode_file_bytes(data, path, height=0, width=0, color=True):
    try:
        image = decode_image(data, color)
    except DLTrainError:
        raise
    except Exception as err:          # PIL.UnidentifiedImageError, truncated files, ...
        raise DLTrainError(f"could not decode image '{path}': {err}") from None
    if height > 0 and width > 0:
        image = resize_image(image, height, width)
    return image


def _atoi(text):
    """C's atoi: an optional sign and the leading digits, after leading whitespace; 0 if none."""
    text = text.lstrip()
    sign, i = 1, 0
    if text[:1] in ("+", "-"):
        sign, i = (-1 if text[0] == "-" else 1), 1
    j = i
    while j < len(text) and text[j].isdigit() and text[j].isascii():
        j += 1
    return sign * int(text[i:j]) if j > i else 0


def read_image_list(source, owner="ImageData"):
    """The ``(path, label)`` pairs of an ImageData list file (label: the integer after the last space)."""
    pairs = []
    for line in read_list_file(source, owner, "image_data_param.source", "images"):
        line = line.rstrip()
        if not line.strip():
            continue
        cut = max(line.rfind(" "), line.rfind("\t"))
        if cut < 0:
            pairs.append((line, _atoi(line)))          # Caffe: no space, the whole line is both
        else:
            pairs.append((line[:cut], _atoi(line[cut + 1:])))
    return pairs


def resolve_path(path, root_folder, list_file):
    """``root_folder + path`` as Caffe, with two fallbacks when that does not exist (see the module docstring)."""
    full = root_folder + path
    if os.path.exists(full):
        return full
    candidates = []
    if root_folder and not root_folder.endswith(("/", os.sep)):
        candidates.append(os.path.join(root_folder, path))
    if not root_folder and not os.path.isabs(path):
        candidates.append(os.path.join(os.path.dirname(os.path.abspath(list_file)), path))
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    return full


def _warn_deprecated(layer, param, param_name):
    old = [f"{param_name}.{f}" for f in ("scale", "mean_file", "crop_size", "mirror") if param.HasField(f)]
    if old:
        verb = "is" if len(old) == 1 else "are"
        log.warning(f"layer '{layer.name}' ({layer.type}): {', '.join(old)} {verb} deprecated and ignored "
                    "(as in Caffe): set them in transform_param")


# ---------------------------------------------------------------------------
# ImageData
# ---------------------------------------------------------------------------

@register_layer("ImageData")
class ImageDataLayer(Layer):
    """Batches of images listed in a text file with their labels; tops ``data`` and ``label``."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom, top):
        p = self.layer_param.image_data_param
        self.owner = owner = f"layer '{self.name}' (ImageData)"
        self.new_height, self.new_width = int(p.new_height), int(p.new_width)
        if (self.new_height > 0) != (self.new_width > 0):
            raise ConfigError(f"{owner}: new_height and new_width must be set together (or neither), got "
                              f"new_height {self.new_height} and new_width {self.new_width}",
                              field="image_data_param.new_height")
        if p.batch_size <= 0:
            raise ConfigError(f"{owner}: image_data_param.batch_size must be positive",
                              field="image_data_param.batch_size")
        if not p.source:
            raise ConfigError(f"{owner}: image_data_param.source is not set", field="image_data_param.source")
        _warn_deprecated(self, p, "image_data_param")
        self.batch_size = int(p.batch_size)
        self.is_color = bool(p.is_color)
        self.root_folder = p.root_folder
        self.source = p.source
        self.shuffle = bool(p.shuffle)
        # As Caffe: the transformer seeds its generator first, then the shuffling one, then rand_skip.
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.dtype, owner=owner)
        log.info(f"Opening file {p.source}")
        self.file_lines = read_image_list(p.source, owner)
        self.lines = self.file_lines
        self.order = np.arange(len(self.lines))      # self.lines[i] is self.file_lines[self.order[i]]
        self.rng = None
        if self.shuffle:
            log.info("Shuffling data")
            self.rng = np.random.default_rng(int(get_rng().integers(0, 2 ** 63 - 1)))
            self._shuffle()
        log.info(f"A total of {len(self.lines)} images.")
        self.pos = 0
        if p.rand_skip:
            skip = int(get_rng().integers(0, p.rand_skip))
            log.info(f"Skipping first {skip} data points.")
            if skip >= len(self.lines):
                raise ConfigError(f"{owner}: not enough images to skip ({skip} of {len(self.lines)} drawn from "
                                  f"rand_skip {p.rand_skip})", field="image_data_param.rand_skip")
            self.pos = skip
        offset, self.stride = parallel.data_share(self.phase == TRAIN)     # a data-parallel run's share
        self._advance(offset)
        try:
            shape = self.transformer.output_shape(self._load(self.pos).shape)
        except DLTrainError as err:
            message = err.message if isinstance(err, ConfigError) else str(err)
            raise ConfigError(message if message.startswith(owner) else f"{owner}: {message}") from None
        top[0].reshape((self.batch_size,) + shape)
        top[1].reshape(self.batch_size)
        log.info(f"output data size: {self.batch_size},{shape[0]},{shape[1]},{shape[2]}")

    def _advance(self, lines):
        for _ in range(lines):
            self.pos += 1
            if self.pos >= len(self.lines):
                self.pos = 0                    # Caffe restarts from the first line
                if self.shuffle:
                    self._shuffle()

    def _shuffle(self):
        # New objects, never changed in place: resume_state hands out references.
        self.order = self.order[self.rng.permutation(len(self.lines))]
        self.lines = [self.file_lines[i] for i in self.order]

    def _load(self, index):
        path, _ = self.lines[index]
        full = resolve_path(path, self.root_folder, self.source)
        try:
            return load_image(full, self.new_height, self.new_width, self.is_color)
        except DLTrainError as err:
            raise DLTrainError(f"{self.owner}: {err} (listed as '{path}' in '{self.source}')") from None

    def reshape(self, bottom, top):
        pass   # each batch takes the shape of its first image, in forward

    def forward_cpu(self, bottom, top):
        images, labels = [], np.empty(self.batch_size, self.dtype)
        for k in range(self.batch_size):
            image = self._load(self.pos)
            if images and image.shape != images[0].shape:
                shape, first = "x".join(map(str, image.shape)), "x".join(map(str, images[0].shape))
                raise DLTrainError(f"{self.owner}: image '{self.lines[self.pos][0]}' is {shape} (channels x height "
                                   f"x width) but this batch's first image is {first}; set new_height and new_width "
                                   "to resize them all, or use batch_size 1")
            images.append(image)
            labels[k] = self.lines[self.pos][1]
            self._advance(self.stride)
        data = self.transformer.transform(np.stack(images))
        top[0].reshape(data.shape)
        top[0].data[...] = data
        top[1].reshape(self.batch_size)
        top[1].data[...] = labels

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    # --- exact resume (dlcore.resume) -------------------------------------------------------------
    def resume_state(self):
        """The next line, the shuffled order, and the shuffling and transforming generators."""
        return {"pos": self.pos, "lines": len(self.file_lines), "order": self.order if self.shuffle else None,
                "shuffle_rng": generator_state(self.rng), "transform_rng": generator_state(self.transformer.rng)}

    def restore_resume_state(self, state):
        if int(state["lines"]) != len(self.file_lines):
            raise ValueError(f"it was written for a list of {state['lines']} images; '{self.source}' lists "
                             f"{len(self.file_lines)}")
        if (state["shuffle_rng"] is None) != (self.rng is None) or \
                (state["transform_rng"] is None) != (self.transformer.rng is None):
            raise ValueError("its shuffle or random crop/mirror setting differs from the net's")
        if state["order"] is not None:
            order = np.asarray(state["order"], np.int64)
            if order.shape != self.order.shape or not np.array_equal(np.sort(order), np.arange(order.size)):
                raise ValueError("its image order is not a permutation of the list")
            self.order = order
            self.lines = [self.file_lines[i] for i in order]
        self.pos = int(state["pos"]) % len(self.lines)
        self.rng = new_generator(state["shuffle_rng"])
        self.transformer.rng = new_generator(state["transform_rng"])


# ---------------------------------------------------------------------------
# MemoryData
# ---------------------------------------------------------------------------

@register_layer("MemoryData")
class MemoryDataLayer(Layer):
    """Batches from arrays given from Python (``reset`` / ``Net.set_input_arrays``)."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom, top):
        p = self.layer_param.memory_data_param
        self.owner = f"layer '{self.name}' (MemoryData)"
        self.batch_size, self.channels, self.height, self.width = (int(v) for v in (p.batch_size, p.channels,
                                                                                    p.height, p.width))
        self.size = self.channels * self.height * self.width
        if self.batch_size * self.size <= 0:
            raise ConfigError(f"{self.owner}: batch_size, channels, height, and width must be specified and "
                              "positive in memory_data_param", field="memory_data_param")
        top[0].reshape(self.batch_size, self.channels, self.height, self.width)
        top[1].reshape(self.batch_size)
        self.data = None
        self.labels = None
        self.n = 0
        self.pos = 0
        self._resume_pos = None

    def reset(self, data, labels, n=None):
        """Use ``data`` (n x channels x height x width) and ``labels`` (n) from now on, from their first row.

        ``n`` (default: the rows of ``data``) must be a multiple of batch_size.
        """
        data = np.ascontiguousarray(data, dtype=self.dtype)
        labels = np.ascontiguousarray(labels, dtype=self.dtype)
        rows = data.shape[0] if data.ndim else 0
        if data.ndim < 2 or data.size != rows * self.size:
            raise DLTrainError(f"{self.owner}: the data array must be n x {self.channels} x {self.height} x "
                               f"{self.width} (channels x height x width of memory_data_param), got shape "
                               f"{data.shape}")
        if labels.ndim < 1 or labels.shape[0] != rows or labels.size != rows:
            raise DLTrainError(f"{self.owner}: data and labels must have the same first dimension, one label per "
                               f"row: got shapes {data.shape} and {labels.shape}")
        n = rows if n is None else int(n)
        if n <= 0 or n > rows:
            raise DLTrainError(f"{self.owner}: n = {n}, but the data array has {rows} rows")
        if n % self.batch_size:
            raise DLTrainError(f"{self.owner}: n = {n} must be a multiple of batch_size ({self.batch_size})")
        if self.layer_param.HasField("transform_param"):
            log.warning(f"{self.owner} does not transform array data on reset()")
        self.data = data.reshape(rows, self.channels, self.height, self.width)
        self.labels = labels.reshape(-1)
        self.n = n
        self.pos = 0
        resumed, self._resume_pos = self._resume_pos, None
        if resumed is not None and resumed[1] == n:
            self.pos = resumed[0]         # restored before the arrays were given: continue where the run was

    Reset = reset       # Caffe's name

    def set_batch_size(self, batch_size):
        """Caffe's set_batch_size: the next forwards hand out ``batch_size`` rows."""
        batch_size = int(batch_size)
        if batch_size <= 0:
            raise DLTrainError(f"{self.owner}: batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        if self.data is None:
            raise DLTrainError(f"{self.owner} has no data: call its reset(data, labels) or the net's "
                               "set_input_arrays(data, labels) before forward")
        if self.n % self.batch_size:
            raise DLTrainError(f"{self.owner}: the {self.n} rows given are not a multiple of batch_size "
                               f"({self.batch_size}); call reset again")
        b = self.batch_size
        top[0].reshape(b, self.channels, self.height, self.width)
        top[1].reshape(b)
        top[0].data[...] = self.data[self.pos:self.pos + b]
        top[1].data[...] = self.labels[self.pos:self.pos + b]
        self.pos = (self.pos + b) % self.n

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    # --- exact resume (dlcore.resume) -------------------------------------------------------------
    def resume_state(self):
        """The next row of the arrays given (which the run gives again; the arrays are not stored)."""
        return {"pos": self.pos, "n": self.n}

    def restore_resume_state(self, state):
        pos, n = int(state["pos"]), int(state["n"])
        if self.data is not None and n == self.n:
            self.pos = pos % self.n
        else:
            self._resume_pos = (pos, n)   # the arrays come later (set_input_arrays after restore)


# ---------------------------------------------------------------------------
# WindowData
# ---------------------------------------------------------------------------

class Window:
    __slots__ = ("image", "label", "overlap", "x1", "y1", "x2", "y2")

    def __init__(self, image, label, overlap, x1, y1, x2, y2):
        self.image, self.label, self.overlap = image, label, overlap
        self.x1, self.y1, self.x2, self.y2 = x1, y1, x2, y2

    def __repr__(self):
        return (f"Window(image={self.image}, label={self.label}, overlap={self.overlap:g}, "
                f"box=({self.x1}, {self.y1}, {self.x2}, {self.y2}))")


def read_window_file(source, root_folder="", fg_threshold=0.5, bg_threshold=0.5, owner="WindowData"):
    """Parse Caffe's window file; returns (images, foreground windows, background windows, label histogram).

    ``images`` maps image_index -> (path, [channels, height, width]).
    """
    field = "window_data_param.source"
    try:
        text = read_text_file(source, "the window file")
    except ConfigError as err:
        raise ConfigError(f"{owner}: failed to open window file: {err}", field=field) from None
    tokens = [(tok, number) for number, line in enumerate(text.splitlines(), 1) for tok in line.split()]
    if not tokens:
        raise ConfigError(f"{owner}: window file '{source}' is empty", field=field)
    pos = 0

    def take(kind, what):
        nonlocal pos
        if pos >= len(tokens):
            raise ConfigError(f"{owner}: window file '{source}' ends early: expected the {what}", field=field)
        tok, number = tokens[pos]
        pos += 1
        try:
            return kind(tok)
        except ValueError:
            raise ConfigError(f"{owner}: window file '{source}' line {number}: expected the {what}, found "
                              f"'{tok}'", field=field) from None

    fg_threshold, bg_threshold = np.float32(fg_threshold), np.float32(bg_threshold)
    images, fg, bg = {}, [], []
    histogram = {0: 0}
    while pos < len(tokens):
        tok, number = tokens[pos]
        if tok != "#":
            raise ConfigError(f"{owner}: window file '{source}' line {number}: expected '#' starting an image "
                              f"record, found '{tok}'", field=field)
        pos += 1
        index = take(int, "image index after '#'")
        if index in images:
            raise ConfigError(f"{owner}: window file '{source}' line {number}: image index {index} appears twice",
                              field=field)
        path = root_folder + take(str, "image path")
        size = [take(int, "image channels"), take(int, "image height"), take(int, "image width")]
        images[index] = (path, size)
        for _ in range(take(int, "number of windows")):
            label = take(int, "window's class index")
            overlap = take(np.float32, "window's overlap")
            x1, y1, x2, y2 = (take(int, f"window's {c}") for c in ("x1", "y1", "x2", "y2"))
            if overlap >= fg_threshold:
                if label <= 0:
                    raise ConfigError(f"{owner}: window file '{source}': a foreground window (overlap {overlap:g} "
                                      f">= fg_threshold) of image {index} has class {label}; foreground classes "
                                      "must be > 0 (0 is the background)", field=field)
                fg.append(Window(index, label, float(overlap), x1, y1, x2, y2))
                histogram[label] = histogram.get(label, 0) + 1
            elif overlap < bg_threshold:
                bg.append(Window(index, 0, 0.0, x1, y1, x2, y2))      # background: label and overlap forced to 0
                histogram[0] += 1
        if index % 100 == 0:
            log.info(f"num: {index} {path} {size[0]} {size[1]} {size[2]}")
    return images, fg, bg, histogram


@njit(cache=True)
def place_window(image, out, pad_h, pad_w, flip, mean, mean_off, scale):
    """out[c, y + pad_h, x + pad_w] = (pixel - mean[c, y + mean_off + pad_h, x + mean_off + pad_w]) * scale,
    for the (optionally horizontally flipped) warped window ``image`` (C, h, w)."""
    C, h, w = image.shape
    for c in range(C):
        for y in range(h):
            for x in range(w):
                sx = w - 1 - x if flip else x
                m = mean[c, y + mean_off + pad_h, x + mean_off + pad_w]
                out[c, y + pad_h, x + pad_w] = (image[c, y, sx] - m) * scale


def _cround(value):
    """C's round(): halves away from zero."""
    value = float(value)
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def window_geometry(x1, y1, x2, y2, rows, cols, crop, context_pad, square, mirror, real=np.float32):
    """Caffe's WindowDataLayer geometry (in the net's float type ``real``).

    Returns (x1, y1, x2, y2) of the region to cut out of the image (clipped to
    it), the size (height, width) to warp it to, and where it goes in the
    crop_size x crop_size output (pad_h, pad_w).
    """
    pad_h = pad_w = 0
    out_h = out_w = crop
    if context_pad > 0 or square:
        context_scale = real(crop) / real(crop - 2 * context_pad)
        half_height = real((y2 - y1 + 1) / 2.0)
        half_width = real((x2 - x1 + 1) / 2.0)
        center_x = real(x1) + half_width
        center_y = real(y1) + half_height
        if square:
            if half_height > half_width:
                half_width = half_height
            else:
                half_height = half_width
        x1 = _cround(center_x - half_width * context_scale)
        x2 = _cround(center_x + half_width * context_scale)
        y1 = _cround(center_y - half_height * context_scale)
        y2 = _cround(center_y + half_height * context_scale)
        unclipped_height = y2 - y1 + 1
        unclipped_width = x2 - x1 + 1
        pad_x1, pad_y1 = max(0, -x1), max(0, -y1)
        pad_x2, pad_y2 = max(0, x2 - cols + 1), max(0, y2 - rows + 1)
        x1, x2, y1, y2 = x1 + pad_x1, x2 - pad_x2, y1 + pad_y1, y2 - pad_y2
        clipped_height = y2 - y1 + 1
        clipped_width = x2 - x1 + 1
        scale_x = real(crop) / real(unclipped_width)
        scale_y = real(crop) / real(unclipped_height)
        out_w = _cround(real(clipped_width) * scale_x)
        out_h = _cround(real(clipped_height) * scale_y)
        pad_x1 = _cround(real(pad_x1) * scale_x)
        pad_x2 = _cround(real(pad_x2) * scale_x)
        pad_y1 = _cround(real(pad_y1) * scale_y)
        pad_h = pad_y1
        pad_w = pad_x2 if mirror else pad_x1      # a mirrored window mirrors its padding too
        if pad_h + out_h > crop:
            out_h = crop - pad_h
        if pad_w + out_w > crop:
            out_w = crop - pad_w
    return (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w)


@register_layer("WindowData")
class WindowDataLayer(Layer):
    """Foreground/background windows of images (R-CNN fine-tuning); tops ``data`` and ``label``."""

    exact_num_bottom_blobs = 0
    exact_num_top_blobs = 2

    def setup(self, bottom, top):
        p = self.layer_param.window_data_param
        tp = self.layer_param.transform_param
        self.owner = owner = f"layer '{self.name}' (WindowData)"
        if not p.source:
            raise ConfigError(f"{owner}: window_data_param.source is not set", field="window_data_param.source")
        if p.batch_size <= 0:
            raise ConfigError(f"{owner}: window_data_param.batch_size must be positive",
                              field="window_data_param.batch_size")
        old = [f for f in ("mean_file", "crop_size", "mirror") if p.HasField(f)]
        if old:
            log.warning(f"{owner}: window_data_param.{', window_data_param.'.join(old)} "
                        f"{'is' if len(old) == 1 else 'are'} deprecated and ignored (as in Caffe): set them in "
                        "transform_param")
        self.crop_size = int(tp.crop_size)
        if self.crop_size <= 0:
            raise ConfigError(f"{owner}: transform_param.crop_size must be set (> 0): windows are warped to "
                              "crop_size x crop_size", field="transform_param.crop_size")
        self.context_pad = int(p.context_pad)
        if 2 * self.context_pad >= self.crop_size:
            raise ConfigError(f"{owner}: context_pad {self.context_pad} leaves nothing of a {self.crop_size} crop",
                              field="window_data_param.context_pad")
        if p.crop_mode not in ("warp", "square"):
            log.warning(f"{owner}: crop_mode '{p.crop_mode}' is neither 'warp' nor 'square'; using 'warp' (as Caffe)")
        self.square = p.crop_mode == "square"
        self.batch_size = int(p.batch_size)
        self.fg_fraction = float(p.fg_fraction)
        self.scale = self.dtype.type(p.scale)
        self.mirror = bool(tp.mirror)
        self.cache_images = bool(p.cache_images)
        log.info(f"Window data layer: foreground (object) overlap threshold: {p.fg_threshold:g}, background "
                 f"(non-object) overlap threshold: {p.bg_threshold:g}, foreground sampling fraction: "
                 f"{p.fg_fraction:g}, cache_images: {int(self.cache_images)}, root_folder: {p.root_folder}")
        # As Caffe: the transformer (mean file / values) seeds its generator, then the window sampler its own.
        self.transformer = DataTransformer(tp, self.phase, self.dtype, owner=owner)
        self.rng = np.random.default_rng(int(get_rng().integers(0, 2 ** 63 - 1)))
        self.images, self.fg_windows, self.bg_windows, histogram = read_window_file(
            p.source, p.root_folder, p.fg_threshold, p.bg_threshold, owner)
        log.info(f"Number of images: {len(self.images)}")
        for label in sorted(histogram):
            log.info(f"class {label} has {histogram[label]} samples")
        log.info(f"Amount of context padding: {self.context_pad}")
        log.info(f"Crop mode: {p.crop_mode}")
        channels = {size[0] for _, size in self.images.values()}
        if len(channels) != 1:
            raise ConfigError(f"{owner}: the images of window file '{p.source}' have different channel counts "
                              f"{sorted(channels)}", field="window_data_param.source")
        self.channels = channels.pop()
        for kind, windows in (("foreground", self.fg_windows), ("background", self.bg_windows)):
            if not windows:
                raise ConfigError(f"{owner}: window file '{p.source}' has no {kind} windows (fg_threshold "
                                  f"{p.fg_threshold:g}, bg_threshold {p.bg_threshold:g}); Caffe needs both",
                                  field="window_data_param.source")
            for window in windows:
                if window.image not in self.images:
                    raise ConfigError(f"{owner}: window file '{p.source}': a window refers to image index "
                                      f"{window.image}, which has no record", field="window_data_param.source")
        self.cache = {}
        if self.cache_images:
            for index, (path, _) in self.images.items():
                try:
                    with open(path, "rb") as f:
                        self.cache[index] = f.read()
                except OSError as err:
                    raise ConfigError(f"{owner}: could not open or find file '{path}': {err.strerror or err}") \
                        from None
        self._set_mean()
        top[0].reshape(self.batch_size, self.channels, self.crop_size, self.crop_size)
        top[1].reshape(self.batch_size)
        log.info(f"output data size: {self.batch_size},{self.channels},{self.crop_size},{self.crop_size}")

    def _set_mean(self):
        crop, c = self.crop_size, self.channels
        t = self.transformer
        if t.mean_file is not None:
            mean = t.mean_file
            off = (mean.shape[2] - crop) // 2                # Caffe: from the width, for both axes
            if mean.shape[0] != c or off < 0 or mean.shape[1] < crop + off or mean.shape[2] < crop + off:
                raise ConfigError(f"{self.owner}: the mean_file blob is {mean.shape[0]}x{mean.shape[1]}x"
                                  f"{mean.shape[2]}; WindowData needs {c} channels and at least {crop} x {crop} "
                                  "around its centre", field="transform_param.mean_file")
            self.mean, self.mean_off = np.ascontiguousarray(mean, self.dtype), off
            return
        self.mean_off = 0
        self.mean = np.zeros((c, crop, crop), self.dtype)
        if t.mean_values:
            if len(t.mean_values) not in (1, c):
                raise ConfigError(f"{self.owner}: specify either 1 mean_value or as many as channels: {c}",
                                  field="transform_param.mean_value")
            values = t.mean_values * (c if len(t.mean_values) == 1 else 1)
            self.mean[...] = np.asarray(values, np.float32).astype(self.dtype)[:, None, None]

    def resume_state(self):
        """The window sampler's generator (the windows are drawn at random, with no position)."""
        return {"sampler_rng": generator_state(self.rng)}

    def restore_resume_state(self, state):
        set_generator_state(self.rng, state["sampler_rng"])

    def _rand(self):
        """Caffe's PrefetchRand: an unsigned 32-bit draw."""
        return int(self.rng.integers(0, 2 ** 32))

    def _image(self, index):
        path, _ = self.images[index]
        try:
            if self.cache_images:
                image = decode_file_bytes(self.cache[index], path, color=True)
            else:
                image = load_image(path, color=True)
        except DLTrainError as err:
            raise DLTrainError(f"{self.owner}: {err}") from None
        if image.shape[0] != self.channels:
            raise DLTrainError(f"{self.owner}: image '{path}' has {image.shape[0]} channels, the window file says "
                               f"{self.channels}")
        return image

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        crop = self.crop_size
        batch = self.batch_size
        data = np.zeros((batch, self.channels, crop, crop), self.dtype)    # Caffe zeroes the batch first
        labels = np.empty(batch, self.dtype)
        num_fg = int(np.float32(batch) * np.float32(self.fg_fraction))
        item = 0
        for windows, count in ((self.bg_windows, batch - num_fg), (self.fg_windows, num_fg)):
            for _ in range(count):
                window = windows[self._rand() % len(windows)]
                flip = self.mirror and self._rand() % 2 == 1
                image = self._image(window.image)
                self._warp(window, image, flip, data[item])
                labels[item] = window.label
                item += 1
        top[0].reshape(data.shape)
        top[0].data[...] = data
        top[1].reshape(batch)
        top[1].data[...] = labels

    def _warp(self, window, image, flip, out):
        rows, cols = image.shape[1], image.shape[2]
        (x1, y1, x2, y2), (out_h, out_w), (pad_h, pad_w) = window_geometry(
            window.x1, window.y1, window.x2, window.y2, rows, cols, self.crop_size, self.context_pad, self.square,
            flip, self.dtype.type)
        if not (0 <= x1 <= x2 < cols and 0 <= y1 <= y2 < rows):
            raise DLTrainError(f"{self.owner}: {window} lies outside its image "
                               f"'{self.images[window.image][0]}' ({cols} x {rows})")
        if out_h <= 0 or out_w <= 0:
            return                      # rounding left nothing to draw (cv::resize would refuse an empty size)
        warped = resize_image(np.ascontiguousarray(image[:, y1:y2 + 1, x1:x2 + 1]), out_h, out_w)
        place_window(np.ascontiguousarray(warped), out, pad_h, pad_w, flip, self.mean, self.mean_off, self.scale)

    def backward_cpu(self, top, propagate_down, bottom):
        pass
