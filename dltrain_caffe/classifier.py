"""`caffe.Classifier`: a Net that classifies images (pycaffe's classifier.py).

``Classifier(model_file, pretrained_file, image_dims=None, mean=None,
input_scale=None, raw_scale=None, channel_swap=None)`` builds the TEST net
with its weights and a :class:`caffe.io.Transformer` for its first input;
``predict(images, oversample=True)`` resizes each H×W×K image to
``image_dims``, takes the ten oversampled crops (or the center crop), runs
them in batches and returns one row of class scores per image (the mean
over the ten crops).
"""
import numpy as np

from dlcore import TEST, Net

from . import io


def input_transformer(net, mean, input_scale, raw_scale, channel_swap):
    """The io.Transformer of ``net``'s first input as Classifier and Detector configure it (HxWxK images in)."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """Image classification with a net's first input and first output, by center crop or oversampling."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = input_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        if image_dims is None or len(image_dims) == 0:
            image_dims = self.crop_dims
        self.image_dims = image_dims

    def predict(self, inputs, oversample=True):
        """(N × classes) scores of N H×W×K images: averaged over the 4 corner and center crops and their
        mirrors with ``oversample``, else of the center crop."""
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
                          dtype=np.float32)
        for ix, in_ in enumerate(inputs):
            input_[ix] = io.resize_image(in_, self.image_dims)
        if oversample:
            input_ = io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.tile(center, (1, 2))[0] + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])
            crop = crop.astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for ix, in_ in enumerate(input_):
            caffe_in[ix] = self.transformer.preprocess(self.inputs[0], in_)
        out = self.forward_all(**{self.inputs[0]: caffe_in})
        predictions = out[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions
