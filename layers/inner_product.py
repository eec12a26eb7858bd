"""InnerProduct: Caffe's fully connected layer.

The bottom is viewed as (M, K): M = product of the axes before ``axis``,
K = product of the axes from ``axis`` on.  Weights are (N, K), or (K, N)
with ``transpose: true``; the top is bottom.shape[:axis] + (N,).
The GPU side (``inner_product_cuda.py``) is three products of kernels_cuda.gemm.
"""
import numpy as np

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K

# Forward with at most this many rows computes y^T = W x^T, then moves it into y with the bias:
# OpenBLAS is 1.2-1.9x faster this way round than y = x W^T (CaffeNet's fc layers at batch 10,
# LeNet's at 64, the LSTM's hidden product at 32), but 1.2x slower for 320-640 rows of 64-256.
SMALL_BATCH = 64


@register_layer("InnerProduct")
class InnerProductLayer(Layer):
    """Caffe's fully connected layer: y = x W^T + b over the bottom viewed as (M, K)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    cuda_module = ".inner_product_cuda"

    allows_in_place = False    # the top's new shape would resize the input under the product

    def setup(self, bottom, top):
        ip = self.layer_param.inner_product_param
        self.num_output = int(ip.num_output)
        if self.num_output <= 0:
            raise ConfigError(f"layer '{self.name}' (InnerProduct): inner_product_param.num_output must be > 0 "
                              f"(got {self.num_output})")
        self.bias_term = bool(ip.bias_term)
        self.transpose = bool(ip.transpose)
        self.axis = bottom[0].canonical_axis(ip.axis)
        self.K = bottom[0].count_range(self.axis)
        K.learnable_blobs(self, ip, (self.K, self.num_output) if self.transpose else (self.num_output, self.K),
                          (self.num_output,) if self.bias_term else None)
        self.work = K.Workspace()

    def matrix_work(self):
        return self.blobs[0].count * self.M

    def reshape(self, bottom, top):
        b = bottom[0]
        axis = b.canonical_axis(self.layer_param.inner_product_param.axis)
        k = b.count_range(axis)
        if k != self.K:
            raise ConfigError(f"layer '{self.name}' (InnerProduct): input size incompatible with inner product "
                              f"parameters: bottom {b.shape_string()} gives {k} inputs per row from axis {axis}, "
                              f"the weights expect {self.K}")
        self.M = b.count_range(0, axis)
        top[0].reshape(b.shape[:axis] + (self.num_output,))

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(self.M, self.K)
        y = top[0].data.reshape(self.M, self.num_output)
        w = self.blobs[0].data
        if self.transpose or self.M > SMALL_BATCH:
            K.matmul(x, w if self.transpose else w.T, y)
            if self.bias_term:
                np.add(y, self.blobs[1].data, out=y)
            return
        y_t = self.work.get("y_t", (self.num_output, self.M), self.dtype)
        K.matmul(w, x.T, y_t)
        if self.bias_term:
            np.add(y_t.T, self.blobs[1].data, out=y)
        else:
            y[...] = y_t.T

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.M, self.num_output)
        x = bottom[0].data.reshape(self.M, self.K)
        w = self.blobs[0].data
        if K.param_down(self, 0):
            dw = self.blobs[0].diff
            if self.transpose:
                K.matmul(x.T, dy, dw, accumulate=True, work=self.work)      # (K, N) += x^T dy
            else:
                K.matmul(dy.T, x, dw, accumulate=True, work=self.work)      # (N, K) += dy^T x
        if self.bias_term and K.param_down(self, 1):
            db = self.blobs[1].diff
            np.add(db, dy.sum(axis=0, dtype=self.dtype), out=db)
        if propagate_down[0]:
            dx = bottom[0].diff.reshape(self.M, self.K)
            K.matmul(dy, w.T if self.transpose else w, dx)
