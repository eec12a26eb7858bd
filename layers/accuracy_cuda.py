"""GPU code of Accuracy (the CUDA side of layers/accuracy.py).

One thread per (outer, inner) position runs the CPU's test (``in_top_k``:
the classes scoring at least as high as the label's; a tie counts against
the prediction) and label rule (``label_class``).  Counts go into a small
int64 device array with atomics: [correct, counted, first bad position (or
NO_BAD)], then ``correct`` and ``seen`` per class; the host reads it back
once and writes the (tiny) tops as the CPU forward does.
"""
import numpy as np
from numba import cuda

from dlcore.device import grid, jit
from dlcore.layer import gpu_forward

from .accuracy import AccuracyLayer, in_top_k
from .losses import BAD_LABEL, IGNORED, label_class
from .losses_cuda import class_base

NO_BAD = np.iinfo(np.int64).max
CORRECT, COUNTED, BAD, PER_CLASS = 0, 1, 2, 3      # the counts array: then correct per class, then seen per class


@jit
def _accuracy(scores, label, labels, top_k, counts):
    for t in range(cuda.grid(1), labels.outer * labels.inner, cuda.gridsize(1)):
        value = label_class(label[t], labels)
        if value == BAD_LABEL:
            cuda.atomic.min(counts, BAD, t)
        elif value != IGNORED:
            cuda.atomic.add(counts, PER_CLASS + labels.channels + value, 1)
            if in_top_k(scores, class_base(t, labels), labels.inner, labels.channels, value, top_k):
                cuda.atomic.add(counts, CORRECT, 1)
                cuda.atomic.add(counts, PER_CLASS + value, 1)
            cuda.atomic.add(counts, COUNTED, 1)


@gpu_forward(AccuracyLayer)
def accuracy_forward(layer, bottom, top):
    channels = layer.channels
    host = np.zeros(PER_CLASS + 2 * channels, np.int64)
    host[BAD] = NO_BAD
    counts = layer.workspace.get("counts", host.size, np.int64)
    counts[:host.size].copy_to_device(host)
    n = layer.outer * layer.inner
    _accuracy[grid(n)](bottom[0].gpu_data(), bottom[1].gpu_data(), layer.labels, layer.top_k, counts)
    counts[:host.size].copy_to_host(host)
    bad = int(host[BAD])
    layer.set_accuracy(bottom, top, int(host[CORRECT]), int(host[COUNTED]), -1 if bad == NO_BAD else bad,
                       host[PER_CLASS:PER_CLASS + channels], host[PER_CLASS + channels:])
