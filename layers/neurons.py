"""Neuron layers: element-wise activations (ReLU, Sigmoid, TanH, Dropout).

Every neuron layer takes one bottom and gives one top of the same shape,
and works in place (``top[0] is bottom[0]``): backward then uses only what
survives the forward pass (ReLU the sign of the output, Sigmoid/TanH the
output, Dropout its mask), as Caffe's neuron layers do.

Kernels run on flat 1-D views of the blobs' arrays (``flat``); they are
dtype-generic (float32 in training, float64 in gradient checks).
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError
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

    def reshape(self, bottom, top):
        if top[0] is not bottom[0]:
            top[0].reshape_like(bottom[0])


# --- ReLU ---------------------------------------------------------------------

@njit(cache=True)
def relu_forward(x, y, negative_slope):
    for i in range(x.shape[0]):
        v = x[i]
        if v > 0:
            y[i] = v
        else:
            y[i] = v * negative_slope + 0.0   # + 0.0: no negative zeros (Caffe's max(x,0) + s*min(x,0))


@njit(cache=True)
def relu_backward(x, dy, dx, negative_slope):
    # x is the bottom data: in place it is the top data, whose sign matches
    # the bottom's for any negative_slope >= 0 (as in Caffe).
    for i in range(x.shape[0]):
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * negative_slope


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

    def forward_gpu(self, bottom, top):
        from . import neurons_cuda as C
        C.relu_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count, self.negative_slope)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import neurons_cuda as C
            C.relu_backward(bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count,
                            self.negative_slope)


# --- Sigmoid ------------------------------------------------------------------

@njit(cache=True)
def sigmoid_forward(x, y):
    # Caffe's form: 0.5 * tanh(0.5 x) + 0.5 never overflows.
    for i in range(x.shape[0]):
        y[i] = 0.5 * np.tanh(0.5 * x[i]) + 0.5


@njit(cache=True)
def sigmoid_backward(y, dy, dx):
    for i in range(y.shape[0]):
        s = y[i]
        dx[i] = dy[i] * s * (1 - s)


@register_layer("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)); backward from the top data."""

    def forward_cpu(self, bottom, top):
        sigmoid_forward(flat(bottom[0].data), flat(top[0].data))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            sigmoid_backward(flat(top[0].data), flat(top[0].diff), flat(bottom[0].diff))

    def forward_gpu(self, bottom, top):
        from . import neurons_cuda as C
        C.sigmoid_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import neurons_cuda as C
            C.sigmoid_backward(top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)


# --- TanH ---------------------------------------------------------------------

@njit(cache=True)
def tanh_forward(x, y):
    for i in range(x.shape[0]):
        y[i] = np.tanh(x[i])


@njit(cache=True)
def tanh_backward(y, dy, dx):
    for i in range(y.shape[0]):
        t = y[i]
        dx[i] = dy[i] * (1 - t * t)


@register_layer("TanH")
class TanHLayer(NeuronLayer):
    """y = tanh(x); backward from the top data."""

    def forward_cpu(self, bottom, top):
        tanh_forward(flat(bottom[0].data), flat(top[0].data))

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            tanh_backward(flat(top[0].data), flat(top[0].diff), flat(bottom[0].diff))

    def forward_gpu(self, bottom, top):
        from . import neurons_cuda as C
        C.tanh_forward(bottom[0].gpu_data(), top[0].mutable_gpu_data(), top[0].count)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import neurons_cuda as C
            C.tanh_backward(top[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)


# --- Dropout ------------------------------------------------------------------

@njit(cache=True)
def masked_scale(x, mask, y, scale):
    """y = x * mask * scale (Dropout's forward and backward in TRAIN)."""
    for i in range(x.shape[0]):
        if mask[i]:
            y[i] = x[i] * scale
        else:
            y[i] = 0


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

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.mask.size != bottom[0].count:
            self.mask = np.zeros(bottom[0].count, np.uint8)

    def forward_cpu(self, bottom, top):
        x, y = flat(bottom[0].data), flat(top[0].data)
        if self.phase == TRAIN:
            # Bernoulli(1 - p): 1 = keep.  Drawn through get_rng() every time
            # so that set_random_seed (the gradient checker's too) applies.
            self.mask[...] = get_rng().random(x.shape[0]) < (1.0 - self.threshold)
            masked_scale(x, self.mask, y, self.scale if self.scale_train else 1.0)
        elif self.scale_train:
            if top[0] is not bottom[0]:
                y[...] = x
        else:
            scale_copy(x, y, 1.0 / self.scale)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = flat(top[0].diff), flat(bottom[0].diff)
        if self.phase == TRAIN:
            masked_scale(dy, self.mask, dx, self.scale if self.scale_train else 1.0)
        elif self.scale_train:
            if top[0] is not bottom[0]:
                dx[...] = dy
        else:
            scale_copy(dy, dx, 1.0 / self.scale)

    # GPU: the mask is drawn on the host from the same RNG (see layers/neurons_cuda.py) and copied over.
    def forward_gpu(self, bottom, top):
        from . import kernels_cuda as K
        from . import neurons_cuda as C
        n = bottom[0].count
        if self.phase == TRAIN:
            self.mask[...] = get_rng().random(n) < (1.0 - self.threshold)
            if getattr(self, "_gpu_mask", None) is None or self._gpu_mask.size != max(n, 1):
                self._gpu_mask = K.device_array(n, np.uint8)
            if n:
                self._gpu_mask.copy_to_device(self.mask)
            C.masked_scale(bottom[0].gpu_data(), self._gpu_mask, top[0].mutable_gpu_data(), n,
                           self.scale if self.scale_train else 1.0)
        elif self.scale_train:
            if top[0] is not bottom[0]:
                K.copy(bottom[0].gpu_data(), top[0].mutable_gpu_data(), n)
        else:
            K.scale(bottom[0].gpu_data(), top[0].mutable_gpu_data(), 1.0 / self.scale, n)

    def backward_gpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        from . import kernels_cuda as K
        from . import neurons_cuda as C
        n = bottom[0].count
        if self.phase == TRAIN:
            C.masked_scale(top[0].gpu_diff(), self._gpu_mask, bottom[0].mutable_gpu_diff(), n,
                           self.scale if self.scale_train else 1.0)
        elif self.scale_train:
            if top[0] is not bottom[0]:
                K.copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), n)
        else:
            K.scale(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), 1.0 / self.scale, n)
