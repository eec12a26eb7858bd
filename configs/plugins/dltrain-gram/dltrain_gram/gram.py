"""The Gram-matrix layer: second-order statistics of feature maps.

For a bottom ``F`` of shape N x C x (spatial...), flattened to N x C x M,

    G[n, i, j] = s * sum_m F[n, i, m] * F[n, j, m]           top: N x C x C

with ``s = scale / norm`` and ``norm`` = 1 (``normalize: none``), M
(``spatial``, the default) or C*M (``all``).  This is the Gram matrix of
Gatys, Ecker and Bethge's style-transfer loss ("A Neural Algorithm of
Artistic Style", 2015) and the bilinear pooling of Lin, RoyChowdhury and
Maji ("Bilinear CNN Models for Fine-grained Visual Recognition", 2015).
Its gradient:

    dF[n, i, m] = s * sum_j (dG[n, i, j] + dG[n, j, i]) * F[n, j, m]

In a net file (parameters as YAML in param_str, checked by the schema below):

    layer { name: "gram" type: "Gram" bottom: "conv1" top: "gram"
            python_param { param_str: "normalize: spatial\\nscale: 1.0" } }

CPU kernels: ``gram_forward`` / ``gram_backward`` (@njit, any float dtype).
GPU: ``gram_cuda.py`` beside this file (named by ``cuda_module``, imported
only when the layer runs on the GPU, so a CPU run never loads
``numba.cuda``): batched products of dltrain's shared CUDA matrix product
(``dltrain.layers.kernels_cuda.gemm``) on the blobs' device arrays, the
same layout as dltrain's own layers.
"""
from numba import njit

from dlcore import ConfigError, Layer, Param, register_layer

__all__ = ["GramLayer", "gram_forward", "gram_backward"]


@njit(cache=True)
def gram_forward(x, y, scale):
    """y[n] = scale * x[n] @ x[n].T for x (N, C, M), y (N, C, C); symmetric, so
    each pair (i, j) is computed once (accumulated in float64)."""
    batch, channels, size = x.shape
    for n in range(batch):
        for i in range(channels):
            for j in range(i, channels):
                acc = 0.0
                for m in range(size):
                    acc += x[n, i, m] * x[n, j, m]
                y[n, i, j] = acc * scale
                y[n, j, i] = acc * scale


@njit(cache=True)
def gram_backward(x, dy, dx, scale):
    """dx[n] = scale * (dy[n] + dy[n].T) @ x[n]  (writes dx)."""
    batch, channels, size = x.shape
    for n in range(batch):
        for i in range(channels):
            for m in range(size):
                dx[n, i, m] = 0.0
            for j in range(channels):
                g = (dy[n, i, j] + dy[n, j, i]) * scale
                if g != 0.0:
                    for m in range(size):
                        dx[n, i, m] += g * x[n, j, m]


@register_layer("Gram")
class GramLayer(Layer):
    """Gram matrix of each sample's C feature maps: N x C x ... -> N x C x C."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = ".gram_cuda"           # the GPU code, beside this file
    params = {
        "normalize": Param(str, "spatial", choices=("none", "spatial", "all"),
                           doc="divide by 1, by the number of positions M, or by C*M"),
        "scale": Param(float, 1.0, check=lambda v: v > 0, why="must be positive",
                       doc="a factor on top of the normalization"),
    }

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) < 2:
            raise ConfigError(f"layer '{self.name}' (Gram): the bottom needs at least 2 axes (N x C x ...), "
                              f"got shape {shape}")
        self.batch, self.channels = shape[0], shape[1]
        self.size = bottom[0].count_range(2)
        top[0].reshape(self.batch, self.channels, self.channels)
        norm = {"none": 1, "spatial": self.size, "all": self.channels * self.size}[self.normalize]
        self.factor = self.scale / max(norm, 1)

    def _features(self, array):
        return array.reshape(self.batch, self.channels, self.size)

    def forward_cpu(self, bottom, top):
        gram_forward(self._features(bottom[0].data), top[0].data, self.factor)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            gram_backward(self._features(bottom[0].data), top[0].diff, self._features(bottom[0].diff),
                          self.factor)
