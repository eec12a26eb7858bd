"""Accuracy: top-k classification accuracy, overall and (optionally) per class.

Counting follows Caffe's accuracy_layer.cpp: a prediction is correct when
fewer than ``top_k`` *other* classes score at least as high as the label's
class (``>=``: a tie with another class counts against the prediction).
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .losses import BAD_LABEL, IGNORED, Labels, bad_label_error, flat, label_class
from .softmax import canonical_axis


@formula
def in_top_k(scores, base, stride, channels, label, top_k):
    """Caffe's test at one position (class c's score at base + c * stride): fewer than ``top_k``
    other classes score at least as high as the label's (a tie counts against the prediction)."""
    true_score = scores[base + label * stride]
    better = -1            # the true class itself is counted below
    c = 0
    while c < channels and better < top_k:
        if scores[base + c * stride] >= true_score:
            better += 1
        c += 1
    return better < top_k


@njit(cache=True)
def accuracy_count(scores, label, labels, top_k, correct_per_class, seen_per_class):
    """Returns (correct, counted, index of the first bad label or -1).

    ``correct_per_class``/``seen_per_class`` (length ``channels``) are
    incremented per non-ignored label.
    """
    correct = counted = 0
    for i in range(labels.outer):
        for j in range(labels.inner):
            value = label_class(label[i * labels.inner + j], labels)
            if value == IGNORED:
                continue
            if value == BAD_LABEL:
                return correct, counted, i * labels.inner + j
            seen_per_class[value] += 1
            if in_top_k(scores, i * labels.channels * labels.inner + j, labels.inner, labels.channels, value, top_k):
                correct += 1
                correct_per_class[value] += 1
            counted += 1
    return correct, counted, -1


@register_layer("Accuracy")
class AccuracyLayer(Layer):
    """Bottoms: scores (N x C x ...), labels.  Tops: accuracy (scalar), per-class accuracy (C,)."""

    exact_num_bottom_blobs = 2
    min_top_blobs = 1
    max_top_blobs = 2
    cuda_module = ".accuracy_cuda"

    allows_in_place = False

    def setup(self, bottom, top):
        param = self.layer_param.accuracy_param
        self.top_k = int(param.top_k)
        self.has_ignore_label = param.HasField("ignore_label")
        self.ignore_label = int(param.ignore_label)

    def reshape(self, bottom, top):
        if bottom[1].count == 0 or self.top_k > bottom[0].count // bottom[1].count:
            raise ConfigError(f"layer '{self.name}' (Accuracy): top_k ({self.top_k}) must be less than or equal "
                              f"to the number of classes ({bottom[0].shape_string()} scores for "
                              f"{bottom[1].count} labels)")
        axis = canonical_axis(self, bottom[0], self.layer_param.accuracy_param.axis)
        self.outer = bottom[0].count_range(0, axis)
        self.channels = bottom[0].shape[axis]
        self.inner = bottom[0].count_range(axis + 1)
        if self.outer * self.inner != bottom[1].count:
            raise ConfigError(
                f"layer '{self.name}' (Accuracy): number of labels must match number of predictions: "
                f"scores {bottom[0].shape_string()} with label axis {axis} need {self.outer * self.inner} "
                f"labels, bottom 1 has {bottom[1].count}")
        self.labels = Labels(self.outer, self.channels, self.inner, self.has_ignore_label, self.ignore_label)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(self.channels)

    def forward_cpu(self, bottom, top):
        correct_per_class = np.zeros(self.channels, np.int64)
        seen_per_class = np.zeros(self.channels, np.int64)
        correct, counted, bad = accuracy_count(flat(bottom[0].data), flat(bottom[1].data), self.labels, self.top_k,
                                               correct_per_class, seen_per_class)
        self.set_accuracy(bottom, top, correct, counted, bad, correct_per_class, seen_per_class)

    def set_accuracy(self, bottom, top, correct, counted, bad, correct_per_class, seen_per_class):
        """The end of a forward, on the host (both devices): the label check and the tops."""
        if bad >= 0:
            raise bad_label_error(self, bottom[1].cpu_data(), bad, self.channels)
        top[0].data[...] = correct / counted if counted else 0.0
        if len(top) > 1:
            seen = np.maximum(seen_per_class, 1)
            top[1].data[...] = np.where(seen_per_class == 0, 0.0, correct_per_class / seen)

    def allow_force_backward(self, bottom_index):
        return False   # Caffe would abort on force_backward; dltrain just skips it

    def backward_cpu(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise DLTrainError(f"layer '{self.name}' (Accuracy) has no backward: it cannot be used as a loss "
                               "or backpropagated through")
