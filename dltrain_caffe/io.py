"""`caffe.io`: pycaffe's conversions between arrays, BlobProtos and Datums,
image loading and resizing, oversampling, and the input Transformer.

Caffe 1.0's names, arguments and results.  Where pycaffe calls scikit-image,
dltrain uses Pillow (the ``[images]`` extra) and SciPy:

- ``load_image`` decodes with Pillow and turns color into gray with
  scikit-image's weights (0.2125 R + 0.7154 G + 0.0721 B), so the values
  are pycaffe's (up to the last float32 digit).
- ``resize_image`` of a 1- or 3-channel image samples as scikit-image's
  ``resize(..., mode='constant')`` does (pixel centers, zero beyond the
  border, the result clipped to the input's range): enlarging gives
  pycaffe's numbers.  When shrinking, scikit-image 0.15 and later first blur
  the image (``anti_aliasing``) and dltrain does not, as scikit-image did
  when Caffe 1.0 came out, so shrunk pixels can differ.  Other channel counts
  use ``scipy.ndimage.zoom`` exactly as pycaffe does.
"""
import numpy as np

from dlcore.errors import require_module
from dltrain.proto import caffe_pb2

__all__ = ["blobproto_to_array", "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "blobprotovector_str_to_arraylist", "array_to_datum", "datum_to_array", "load_image",
           "resize_image", "oversample", "Transformer"]

# scikit-image's rgb2gray weights (ITU-R 709 luma), which pycaffe's load_image(color=False) uses.
GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


# --- protobuf conversions -----------------------------------------------------------------------
def blobproto_to_array(blob, return_diff=False):
    """The data (or diff) of a BlobProto as an array of its shape (the legacy 4-D num/channels/height/width
    when any of them is set)."""
    values = np.array(blob.diff if return_diff else blob.data)
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr, diff=None):
    """A BlobProto holding ``arr`` (and ``diff``, if given)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist):
    """A serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(arr) for arr in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text):
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None):
    """A Datum of a C×H×W array: uint8 arrays as bytes, others as float_data."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum):
    """The C×H×W array of an (unencoded) Datum: uint8 from ``data``, float from ``float_data``."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data).astype(float).reshape(shape)


# --- images -------------------------------------------------------------------------------------
def load_image(filename, color=True):
    """An H×W×3 (color) or H×W×1 (gray) float32 image in [0, 1]; an alpha channel is dropped."""
    Image = require_module("PIL.Image", "caffe.io.load_image", "Pillow", "images", error=ImportError)
    with Image.open(filename) as image:
        if image.mode in ("1", "L"):
            img = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
        elif image.mode.startswith("I;16"):
            img = np.asarray(image, dtype=np.float64) / 65535.0
        else:
            img = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    if not color and img.ndim == 3:
        img = img @ GRAY_WEIGHTS
    img = img.astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    return img


def resize_image(im, new_dims, interp_order=1):
    """An H×W×K image resized to ``new_dims`` (height, width), spline order ``interp_order`` (1: linear)."""
    from scipy.ndimage import zoom
    im = np.asarray(im)
    new_dims = (int(new_dims[0]), int(new_dims[1]))
    if im.shape[-1] in (1, 3):
        im_min, im_max = im.min(), im.max()
        if not im_max > im_min:      # a constant image: no range to scale by
            return np.full(new_dims + (im.shape[-1],), im_min, dtype=np.float32)
        im_std = (im.astype(np.float64) - im_min) / (im_max - im_min)
        scale = (new_dims[0] / im.shape[0], new_dims[1] / im.shape[1], 1.0)
        # scikit-image's resize: pixel centers map to pixel centers, zero beyond the border, clipped.
        resized = zoom(im_std, scale, order=interp_order, mode="grid-constant", cval=0.0, grid_mode=True)
        resized = np.clip(resized, 0.0, 1.0) * (im_max - im_min) + im_min
    else:
        scale = tuple(np.array(new_dims, dtype=float) / np.array(im.shape[:2]))
        resized = zoom(im, scale + (1,), order=interp_order)
    return resized.astype(np.float32)


def oversample(images, crop_dims):
    """The 4 corner and the center crops of each H×W×K image, then their mirrors: 10 crops per image
    (N·10 × h × w × K)."""
    im_shape = np.array(images[0].shape)
    crop_dims = np.array(crop_dims)
    center = im_shape[:2] / 2.0
    h_indices = (0, im_shape[0] - crop_dims[0])
    w_indices = (0, im_shape[1] - crop_dims[1])
    crops_ix = np.empty((5, 4), dtype=int)
    k = 0
    for i in h_indices:
        for j in w_indices:
            crops_ix[k] = (i, j, i + crop_dims[0], j + crop_dims[1])
            k += 1
    crops_ix[4] = np.tile(center, (1, 2)) + np.concatenate([-crop_dims / 2.0, crop_dims / 2.0])
    crops_ix = np.tile(crops_ix, (2, 1))
    crops = np.empty((10 * len(images), crop_dims[0], crop_dims[1], im_shape[-1]), dtype=np.float32)
    ix = 0
    for im in images:
        for crop in crops_ix:
            crops[ix] = im[crop[0]:crop[2], crop[1]:crop[3], :]
            ix += 1
        crops[ix - 5:ix] = crops[ix - 5:ix, :, ::-1, :]      # mirrored
    return crops


class Transformer:
    """Turns H×W×K images into a net's C×H×W input and back (pycaffe's Transformer).

    ``Transformer({'data': net.blobs['data'].data.shape})``, then per input
    ``set_transpose``, ``set_channel_swap``, ``set_raw_scale``, ``set_mean``,
    ``set_input_scale``; ``preprocess(name, image)`` applies resize,
    transpose, channel swap, raw scale, mean subtraction and input scale,
    in that order; ``deprocess`` undoes them.
    """

    def __init__(self, inputs):
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose, self.channel_swap, self.raw_scale = {}, {}, {}
        self.mean, self.input_scale = {}, {}

    def _check_input(self, name):
        if name not in self.inputs:
            raise Exception(f"{name} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_, data):
        """An H'×W'×K image as the net's K×H×W input."""
        self._check_input(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != tuple(in_dims):
            caffe_in = resize_image(caffe_in, in_dims)
        if self.transpose.get(in_) is not None:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if self.channel_swap.get(in_) is not None:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        if self.raw_scale.get(in_) is not None:
            caffe_in = caffe_in * self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            caffe_in = caffe_in - self.mean[in_]
        if self.input_scale.get(in_) is not None:
            caffe_in = caffe_in * self.input_scale[in_]
        return caffe_in

    def deprocess(self, in_, data):
        """Undo preprocess (but not the resize): the net's K×H×W input as an H×W×K image."""
        self._check_input(in_)
        decaf_in = np.array(data, copy=True).squeeze()
        if self.input_scale.get(in_) is not None:
            decaf_in = decaf_in / self.input_scale[in_]
        if self.mean.get(in_) is not None:
            decaf_in = decaf_in + self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            decaf_in = decaf_in / self.raw_scale[in_]
        if self.channel_swap.get(in_) is not None:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if self.transpose.get(in_) is not None:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        return decaf_in

    def set_transpose(self, in_, order):
        """The order of the image's axes in the input, e.g. (2, 0, 1) for H×W×K -> K×H×W."""
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_, order):
        """The order to take the channels in (after the transpose): (2, 1, 0) turns RGB into BGR."""
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_, scale):
        """Multiply the raw image by ``scale`` (255 for models trained on [0, 255] pixels), before the mean."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean):
        """The mean to subtract: one value per channel (K), or an image (K×H×W or H×W, resized to the input
        when its size differs)."""
        self._check_input(in_)
        mean = np.asarray(mean)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                in_shape = self.inputs[in_][1:]
                m_min, m_max = mean.min(), mean.max()
                normal_mean = (mean - m_min) / (m_max - m_min)
                mean = resize_image(normal_mean.transpose((1, 2, 0)),
                                    in_shape[1:]).transpose((2, 0, 1)) * (m_max - m_min) + m_min
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale):
        """Multiply the input by ``scale`` after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale
