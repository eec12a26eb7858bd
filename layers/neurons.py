"""Neuron layers: element-wise activations (ReLU, Sigmoid, TanH, Dropout).

Every neuron layer takes one bottom and gives one top of the same shape,
and works in place (``top[0] is bottom[0]``): backward then uses only what
survives the forward pass (ReLU the sign of the output, Sigmoid/TanH the
output, Dropout its mask), as Caffe's neuron layers do.

Each formula is written once (``@formula``, below) and used by the CPU
loops here and the CUDA kernels in ``neurons_cuda.py``.  Kernels run on
flat 1-D views of the blobs' arrays (``flat``); they are dtype-generic
(float32 in training, float64 in gradient checks).
"""
import math

import numpy as np
from numba import njit

from dlcore.errors import ConfigError
from dlcore.formula import formula
from dlcore.layer import TRAIN, Layer
from dlcore.registry import register_layer
from dlcore.rng import get_rng



def flat(array):
    """A 1-D view of a C-contiguous array (no copy): what the kernels take."""
    return array.reshape(-1)


class NeuronLayer(Layer):
    """Base of the element-wise layers: one bottom, one top of its shape."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = ".neurons_cuda"

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])


# --- ReLU ---------------------------------------------------------------------

@formula
def relu(x, negative_slope):
    # + 0.0: no negative zeros (Caffe's max(x,0) + s*min(x,0))
    return x if x > 0 else x * negative_slope + 0.0


@formula
def relu_grad(x, dy, negative_slope):
    # x is the bottom data: in place it is the top data, whose sign matches
    # the bottom's for any negative_slope >= 0 (as in Caffe).
    return dy if x > 0 else dy * negative_slope


@njit(cache=True)
def relu_forward(x, y, negative_slope):
    for i in range(x.shape[0]):
        y[i] = relu(x[i], negative_slope)


@njit(cache=True)
def relu_backward(x, dy, dx, negative_slope):
    for i in range(x.shape[0]):
        dx[i] = relu_grad(x[i], dy[i], negative_slope)


@register_layer("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)."""

    def setup(self, bottom, top):
        self.negative_slope = float(self.layer_param.relu_param.negative_slope)

    def forward_cpu(self, bottom, top):
        relu_forward(flat(bottom[0].data), flat(top[0].data), self.negative_slope)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            relu_backward(flat(bottom[0].data), flat(top[0].diff), flat(bottom[0].diff), self.negative_slope)


# --- Sigmoid ------------------------------------------------------------------

@formula
def sigmoid(x):
    # Caffe's form: 0.5 * tanh(0.5 x) + 0.5 never overflows.
    return 0.5 * math.tanh(0.5 * x) + 0.5


@formula
def sigmoid_grad(y, dy):
    return dy * y * (1 - y)


@njit(cache=True)
def sigmoid_forward(x, y):
    for i in range(x.shape[0]):
        y[i] = sigmoid(x[i])


@njit(cache=True)
def sigmoid_backward(y, dy, dx):
    for i in range(y.shape[0]):
        dx[i] = sigmoid_grad(y[i], dy[i])


class TopDataNeuronLayer(NeuronLayer):
    """An activation y = f(x) whose gradient needs only y (so it works in place).

    A subclass names its two CPU loops: ``cpu_forward(x, y)`` and ``cpu_backward(y, dy, dx)``.
    """

    cpu_forward = cpu_backward = None

    def forward_cpu(self, bottom, top):
        self.cpu_forward(flat(bottom[0].data), flat(top[0].data))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self.cpu_backward(flat(top[0].data), flat(top[0].diff), flat(bottom[0].diff))


@register_layer("Sigmoid")
class SigmoidLayer(TopDataNeuronLayer):
    """y = 1 / (1 + exp(-x)); backward from the top data."""

    cpu_forward = staticmethod(sigmoid_forward)
    cpu_backward = staticmethod(sigmoid_backward)


# --- TanH ---------------------------------------------------------------------

@formula
def tanh_grad(y, dy):
    return dy * (1 - y * y)


@njit(cache=True)
def tanh_forward(x, y):
    for i in range(x.shape[0]):
        y[i] = math.tanh(x[i])


@njit(cache=True)
def tanh_backward(y, dy, dx):
    for i in range(y.shape[0]):
        dx[i] = tanh_grad(y[i], dy[i])


@register_layer("TanH")
class TanHLayer(TopDataNeuronLayer):
    """y = tanh(x); backward from the top data."""

    cpu_forward = staticmethod(tanh_forward)
    cpu_backward = staticmethod(tanh_backward)


# --- Dropout ------------------------------------------------------------------

@formula
def masked(x, keep, scale):
    """Dropout's forward and backward in TRAIN: x * mask * scale."""
    return x * scale if keep else x * 0


@njit(cache=True)
def masked_scale(x, mask, y, scale):
    """y = x * mask * scale."""
    for i in range(x.shape[0]):
        y[i] = masked(x[i], mask[i], scale)


@njit(cache=True)
def scale_copy(x, y, scale):
    for i in range(x.shape[0]):
        y[i] = x[i] * scale


@register_layer("Dropout")
class DropoutLayer(NeuronLayer):
    """Caffe's (inverted) dropout.

    TRAIN: keep each element with probability 1 - p and scale the kept ones
    by 1 / (1 - p); TEST: identity.  If the schema carries ``scale_train``
    (some Caffe forks do; BVLC's does not) and it is false, TRAIN keeps
    without scaling and TEST scales by 1 - p instead.  The mask comes from
    dltrain's one RNG (``dlcore.rng``), so a reseed repeats it.
    """

    def setup(self, bottom, top):
        param = self.layer_param.dropout_param
        self.threshold = float(param.dropout_ratio)
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"layer '{self.name}' (Dropout): dropout_ratio must be in [0, 1), "
                              f"got {self.threshold}")
        self.scale = 1.0 / (1.0 - self.threshold)
        self.scale_train = bool(getattr(param, "scale_train", True))
        self.mask = np.zeros(0, np.uint8)

    @property
    def train_scale(self):
        """The factor kept units get in TRAIN."""
        return self.scale if self.scale_train else 1.0

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.mask.size != bottom[0].count:
            self.mask = np.zeros(bottom[0].count, np.uint8)

    def draw_mask(self):
        """Bernoulli(1 - p), 1 = keep: drawn through get_rng() at every TRAIN forward, on either
        device, so that set_random_seed (the gradient checker's too) applies."""
        self.mask[...] = get_rng().random(self.mask.size) < (1.0 - self.threshold)

    def forward_cpu(self, bottom, top):
        if self.phase == TRAIN:
            self.draw_mask()
        self._apply(flat(bottom[0].data), flat(top[0].data), top[0] is bottom[0])

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            self._apply(flat(top[0].diff), flat(bottom[0].diff), top[0] is bottom[0])

    def _apply(self, src, dst, in_place):
        # The same map forward (data) and backward (diffs).
        if self.phase == TRAIN:
            masked_scale(src, self.mask, dst, self.train_scale)
        elif self.scale_train:
            if not in_place:
                dst[...] = src
        else:
            scale_copy(src, dst, 1.0 / self.scale)
