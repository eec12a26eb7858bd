"""Accuracy: top-k classification accuracy, overall and (optionally) per class.

Counting follows Caffe's accuracy_layer.cpp: a prediction is correct when
fewer than ``top_k`` *other* classes score at least as high as the label's
class (``>=``: a tie with another class counts against the prediction).
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from .softmax import canonical_axis

_INT_LIMIT = 2147483648.0


@njit(cache=True)
def accuracy_count(scores, label, outer, channels, inner, top_k, has_ignore, ignore_label,
                   correct_per_class, seen_per_class):
    """Returns (correct, counted, index of the first bad label or -1).

    ``correct_per_class``/``seen_per_class`` (length ``channels``) are
    incremented per non-ignored label.
    """
    dim = channels * inner
    correct = 0
    counted = 0
    for i in range(outer):
        for j in range(inner):
            raw = label[i * inner + j]
            if not (-_INT_LIMIT < raw < _INT_LIMIT):
                return correct, counted, i * inner + j
            value = int(raw)
            if has_ignore and value == ignore_label:
                continue
            if value < 0 or value >= channels:
                return correct, counted, i * inner + j
            seen_per_class[value] += 1
            true_score = scores[i * dim + value * inner + j]
            better = -1            # the true class itself is counted below
            c = 0
            while c < channels and better < top_k:
                if scores[i * dim + c * inner + j] >= true_score:
                    better += 1
                c += 1
            if better < top_k:
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
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(self.channels)

    def forward_cpu(self, bottom, top):
        correct_per_class = np.zeros(self.channels, np.int64)
        seen_per_class = np.zeros(self.channels, np.int64)
        correct, counted, bad = accuracy_count(
            bottom[0].data.reshape(-1), bottom[1].data.reshape(-1), self.outer, self.channels, self.inner,
            self.top_k, self.has_ignore_label, self.ignore_label, correct_per_class, seen_per_class)
        self._write_tops(bottom, top, correct, counted, bad, correct_per_class, seen_per_class)

    def forward_gpu(self, bottom, top):
        from . import accuracy_cuda as C
        correct, counted, bad, correct_per_class, seen_per_class = C.accuracy_counts(
            bottom[0].gpu_data(), bottom[1].gpu_data(), self.outer, self.channels, self.inner, self.top_k,
            self.has_ignore_label, self.ignore_label)
        self._write_tops(bottom, top, correct, counted, bad, correct_per_class, seen_per_class)

    def _write_tops(self, bottom, top, correct, counted, bad, correct_per_class, seen_per_class):
        if bad >= 0:
            value = bottom[1].cpu_data().reshape(-1)[bad]
            raise DLTrainError(f"layer '{self.name}' (Accuracy): label {float(value):g} at position {bad} of bottom 1 "
                               f"is outside [0, {self.channels})"
                               + (f" and is not the ignore_label {self.ignore_label}"
                                  if self.has_ignore_label else ""))
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
