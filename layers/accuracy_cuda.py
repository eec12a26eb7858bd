"""CUDA kernel of Accuracy (the GPU side of layers/accuracy.py).

One thread per (outer, inner) position counts, as the CPU kernel, the
classes scoring at least as high as the label's (a tie counts against the
prediction).  Counts go into a small int64 device array with atomics:
[correct, counted, first bad position (or a large number)], then
``correct`` and ``seen`` per class; the host reads it back once and writes
the (tiny) tops.
"""
import numba
import numpy as np
from numba import cuda

from .kernels_cuda import grid, jit

_INT_LIMIT = 2147483648.0
NO_BAD = np.iinfo(np.int64).max


@jit
def _accuracy(scores, label, outer, channels, inner, top_k, has_ignore, ignore_label, counts):
    dim = channels * inner
    for t in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
        raw = numba.float64(label[t])
        if not (-_INT_LIMIT < raw < _INT_LIMIT):
            cuda.atomic.min(counts, 2, t)
            continue
        value = int(raw)
        if has_ignore and value == ignore_label:
            continue
        if value < 0 or value >= channels:
            cuda.atomic.min(counts, 2, t)
            continue
        i = t // inner
        j = t - i * inner
        cuda.atomic.add(counts, 3 + channels + value, 1)
        true_score = scores[i * dim + value * inner + j]
        better = -1
        c = 0
        while c < channels and better < top_k:
            if scores[i * dim + c * inner + j] >= true_score:
                better += 1
            c += 1
        if better < top_k:
            cuda.atomic.add(counts, 0, 1)
            cuda.atomic.add(counts, 3 + value, 1)
        cuda.atomic.add(counts, 1, 1)


def accuracy_counts(scores, label, outer, channels, inner, top_k, has_ignore, ignore_label):
    """(correct, counted, first bad position or -1, correct per class, seen per class) as host values."""
    host = np.zeros(3 + 2 * channels, np.int64)
    host[2] = NO_BAD
    counts = cuda.to_device(host)
    n = outer * inner
    if n:
        _accuracy[grid(n)](scores, label, outer, channels, inner, int(top_k), bool(has_ignore), int(ignore_label),
                           counts)
    host = counts.copy_to_host()
    bad = int(host[2])
    return (int(host[0]), int(host[1]), -1 if bad == NO_BAD else bad, host[3:3 + channels],
            host[3 + channels:])
