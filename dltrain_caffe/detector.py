"""`caffe.Detector`: windowed detection with a classification net (pycaffe's detector.py, after R-CNN).

``Detector(model_file, pretrained_file, mean=None, input_scale=None,
raw_scale=None, channel_swap=None, context_pad=None)``;
``detect_windows([(image_file, windows), ...])`` crops each window
(ymin, xmin, ymax, xmax), with ``context_pad`` pixels of surrounding context
as R-CNN does, warps it to the net's input and returns one
``{'window', 'prediction', 'filename'}`` dict per window.

``detect_selective_search`` calls Caffe's external
``selective_search_ijcv_with_python`` module (MATLAB code, not on PyPI)
when it can be imported, as pycaffe does; otherwise it says so in one line.
"""
import os

import numpy as np

from dlcore import TEST, Net
from dlcore.errors import DLTrainError

from . import io
from .classifier import input_transformer


class Detector(Net):
    """Classify windows of images with a net's first input and first output."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """Detections for (image filename, windows) pairs: a list of {'window', 'prediction', 'filename'}."""
        images_windows = [(fname, list(windows)) for fname, windows in images_windows]
        window_inputs = []
        for image_fname, windows in images_windows:
            image = io.load_image(image_fname).astype(np.float32)
            for window in windows:
                window_inputs.append(self.crop(image, window))
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + self.blobs[in_].data.shape[2:],
                            dtype=np.float32)
        for ix, window_in in enumerate(window_inputs):
            caffe_in[ix] = self.transformer.preprocess(in_, window_in)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections = []
        ix = 0
        for image_fname, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[ix], "filename": image_fname})
                ix += 1
        return detections

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search's proposals (needs Caffe's external module, see above)."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError:
            raise DLTrainError(
                "Detector.detect_selective_search needs Caffe's external selective_search_ijcv_with_python "
                "module (MATLAB code from github.com/sergeyk/selective_search_ijcv_with_python, not on PyPI); "
                "without it, compute the windows (ymin, xmin, ymax, xmax) another way, e.g. with OpenCV's "
                "cv2.ximgproc.segmentation (opencv-contrib-python), and call detect_windows") from None
        image_fnames = [os.path.abspath(f) for f in image_fnames]   # the MATLAB code needs absolute paths
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The window (ymin, xmin, ymax, xmax) of H×W×K image ``im``; with ``context_pad``, the window
        grown so that a border of context_pad pixels of the net's input is context, scaled to the input
        size, and padded with the mean where it leaves the image (R-CNN's warp with context)."""
        crop = im[window[0]:window[2], window[1]:window[3]]
        if not self.context_pad:
            return crop
        box = np.array(window, dtype=float)
        crop_size = self.blobs[self.inputs[0]].width    # a square input, as pycaffe assumes
        scale = crop_size / (1.0 * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.0
        half_w = (box[3] - box[1] + 1) / 2.0
        center = (box[0] + half_h, box[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))     # how far the box leaves the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise DLTrainError(f"Detector.crop: window {list(window)} lies outside the {im_h}x{im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        box = box.astype(int)
        context_crop = io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """Set the crop size (the input's, as H×W×K) and the context padding; with context, the mean to
        pad with, taken back to raw image space (untransposed, channels unswapped, raw scale undone)."""
        in_ = self.inputs[0]
        inverse = np.argsort(self.transformer.transpose[in_])
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(inverse)
        channel_order = self.transformer.channel_swap.get(in_)
        if channel_order is not None:
            crop_mean = crop_mean[:, :, np.argsort(channel_order)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean
