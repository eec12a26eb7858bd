"""Embed: Caffe's lookup table (a one-hot InnerProduct without the one-hot).

``embed_param``: ``input_dim`` (the vocabulary size K), ``num_output`` (N),
``bias_term`` (default true), ``weight_filler``, ``bias_filler``.  The
weights are (K, N), row k the vector for index k (Caffe stores them
transposed from InnerProduct's for locality); the bias is (N,).

The bottom holds indices stored as floats, of any shape; the top has the
bottom's shape plus (N,): ``top[..., :] = weight[index] + bias``.

As in Caffe, an index must be an integer in [0, K); Caffe checks this only
in debug builds, dltrain always: a value that is not (a fraction, a
negative number, K or more, NaN) is a DLTrainError naming the layer, the
value and its position.  The indices get no gradient: asking for one (a
``propagate_down: true`` on the bottom, or force_backward) is an error, as
in Caffe.

The lookup is written once (``@formula``, below) for the CPU loop here and
the CUDA kernel in ``embed_cuda.py``.
"""
import numpy as np
from numba import njit

from dlcore.errors import ConfigError, DLTrainError
from dlcore.formula import formula
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K


@formula(inline_cpu=True)
def lookup_row(value, k_dim):
    """The weight row an index names: ``int(value)``, or -1 if it is not an integer in [0, K)
    (NaN included)."""
    if not (value >= 0 and value < k_dim):
        return -1
    index = int(value)
    if index != value:
        return -1
    return index


@njit(cache=True)
def embed_forward(indices, weight, bias, has_bias, top):
    """``top[m, :] = weight[int(indices[m]), :] (+ bias)``; (M,), (K, N), (N,), (M, N).

    Returns the position of the first index that is not an integer in
    [0, K), or -1 when all are valid (the rows before it are written).
    """
    k_dim, n_dim = weight.shape
    for m in range(indices.shape[0]):
        index = lookup_row(indices[m], k_dim)
        if index < 0:
            return m
        if has_bias:
            for j in range(n_dim):
                top[m, j] = weight[index, j] + bias[j]
        else:
            for j in range(n_dim):
                top[m, j] = weight[index, j]
    return -1


@njit(cache=True)
def embed_backward_weight(indices, top_diff, weight_diff):
    """``weight_diff[int(indices[m]), :] += top_diff[m, :]`` (indices already checked)."""
    n_dim = weight_diff.shape[1]
    for m in range(indices.shape[0]):
        index = int(indices[m])
        for j in range(n_dim):
            weight_diff[index, j] += top_diff[m, j]


@register_layer("Embed")
class EmbedLayer(Layer):
    """Caffe's lookup table: the top's rows are the weight rows the bottom's indices name (+ bias)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = ".embed_cuda"

    allows_in_place = False    # the top (one row per index) would overwrite the indices it reads

    def setup(self, bottom, top):
        p = self.layer_param.embed_param
        self.num_output = int(p.num_output)
        self.input_dim = int(p.input_dim)
        if self.num_output <= 0:
            raise ConfigError(f"layer '{self.name}' (Embed): embed_param.num_output must be positive "
                              f"(got {self.num_output})", field="embed_param.num_output")
        if self.input_dim <= 0:
            raise ConfigError(f"layer '{self.name}' (Embed): embed_param.input_dim must be positive "
                              f"(got {self.input_dim})", field="embed_param.input_dim")
        self.bias_term = bool(p.bias_term)
        K.learnable_blobs(self, p, (self.input_dim, self.num_output), (self.num_output,) if self.bias_term else None)
        self.param_propagate_down = [True] * len(self.blobs)
        self._no_bias = np.zeros(1, self.dtype)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.num_output,))

    def forward_cpu(self, bottom, top):
        indices = bottom[0].data.reshape(-1)
        bias = self.blobs[1].data if self.bias_term else self._no_bias
        bad = embed_forward(indices, self.blobs[0].data, bias, self.bias_term,
                            top[0].data.reshape(-1, self.num_output))
        if bad >= 0:
            raise self.bad_index(bottom, bad)

    def bad_index(self, bottom, bad):
        """The error for the index at flat position ``bad`` of the bottom."""
        value = float(bottom[0].cpu_data().reshape(-1)[bad])
        position = np.unravel_index(bad, bottom[0].shape) if bottom[0].shape else ()
        return DLTrainError(
            f"layer '{self.name}' (Embed): index {value:g} at position {tuple(int(i) for i in position)} "
            f"of bottom 0 (shape {bottom[0].shape_string()}) is not an integer in [0, {self.input_dim}) "
            f"(embed_param.input_dim)")

    def check_propagate_down(self, propagate_down):
        if propagate_down and propagate_down[0]:
            raise DLTrainError(f"layer '{self.name}' (Embed): cannot backpropagate to the indices (bottom 0)")

    def backward_cpu(self, top, propagate_down, bottom):
        self.check_propagate_down(propagate_down)
        top_diff = top[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            embed_backward_weight(bottom[0].data.reshape(-1), top_diff, self.blobs[0].diff)
        if self.bias_term and self.param_propagate_down[1]:
            K.channel_sum(top_diff.reshape(-1), top_diff.shape[0], self.num_output, 1, self.blobs[1].diff)

    def allow_force_backward(self, bottom_index):
        return False
