"""Pooling: Caffe's PoolingLayer (MAX with optional argmax top, AVE, global pooling).

Output size follows Caffe: ``ceil((in + 2*pad - k) / stride) + 1`` (or floor
with ``round_mode: FLOOR``), then, when padding, one less if the last window
would start in the padding.  AVE divides by the window clipped to the
PADDED image (padded border cells count), as Caffe does.  STOCHASTIC
pooling is not implemented.
"""
import math

import numpy as np

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K


@register_layer("Pooling")
class PoolingLayer(Layer):
    exact_num_bottom_blobs = 1
    min_top_blobs = 1
    max_top_blobs = 2     # the second (MAX only) is the argmax mask

    def setup(self, bottom, top):
        from dltrain.proto import caffe_pb2
        P = caffe_pb2.PoolingParameter
        pp = self.layer_param.pooling_param
        name = f"layer '{self.name}' (Pooling)"
        self.method = pp.pool
        if self.method == P.STOCHASTIC:
            raise ConfigError(f"{name}: STOCHASTIC pooling is not implemented")
        if self.method not in (P.MAX, P.AVE):
            raise ConfigError(f"{name}: unknown pooling method {self.method}")
        if len(top) > 1 and self.method != P.MAX:
            raise ConfigError(f"{name}: only MAX pooling has a second (mask) top")
        self.global_pooling = pp.global_pooling
        has_k, has_kh, has_kw = pp.HasField("kernel_size"), pp.HasField("kernel_h"), pp.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise ConfigError(f"{name}: with global_pooling: true the filter size cannot be specified")
        else:
            if has_k == (has_kh and has_kw):
                raise ConfigError(f"{name}: filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not (has_k or (has_kh and has_kw)):
                raise ConfigError(f"{name}: for non-square filters both kernel_h and kernel_w are required")
        if (pp.HasField("pad_h") or pp.HasField("pad_w")) and \
                (pp.HasField("pad") or not (pp.HasField("pad_h") and pp.HasField("pad_w"))):
            raise ConfigError(f"{name}: pad is pad OR pad_h and pad_w are required")
        if (pp.HasField("stride_h") or pp.HasField("stride_w")) and \
                (pp.HasField("stride") or not (pp.HasField("stride_h") and pp.HasField("stride_w"))):
            raise ConfigError(f"{name}: stride is stride OR stride_h and stride_w are required")
        if not self.global_pooling:
            self.kernel_h, self.kernel_w = ((pp.kernel_size, pp.kernel_size) if has_k
                                            else (pp.kernel_h, pp.kernel_w))
            if self.kernel_h <= 0 or self.kernel_w <= 0:
                raise ConfigError(f"{name}: filter dimensions cannot be zero")
        self.pad_h, self.pad_w = (pp.pad_h, pp.pad_w) if pp.HasField("pad_h") else (pp.pad, pp.pad)
        self.stride_h, self.stride_w = ((pp.stride_h, pp.stride_w) if pp.HasField("stride_h")
                                        else (pp.stride, pp.stride))
        if self.stride_h <= 0 or self.stride_w <= 0:
            raise ConfigError(f"{name}: stride must be > 0")
        if self.global_pooling and (self.pad_h or self.pad_w or self.stride_h != 1 or self.stride_w != 1):
            raise ConfigError(f"{name}: with global_pooling: true only pad = 0 and stride = 1 are allowed")
        if not self.global_pooling and (self.pad_h or self.pad_w):
            if self.pad_h >= self.kernel_h or self.pad_w >= self.kernel_w:
                raise ConfigError(f"{name}: pad ({self.pad_h}, {self.pad_w}) must be smaller than the kernel "
                                  f"({self.kernel_h}, {self.kernel_w})")
        self.ceil_mode = pp.round_mode == P.CEIL
        self._mask = np.zeros(0, np.int32)

    def reshape(self, bottom, top):
        b = bottom[0]
        if b.num_axes != 4:
            raise ConfigError(f"layer '{self.name}' (Pooling): input must have 4 axes (num, channels, height, "
                              f"width), got {b.shape_string()}")
        self.num, self.channels, self.height, self.width = b.shape
        if self.global_pooling:
            self.kernel_h, self.kernel_w = self.height, self.width
        self.pooled_h = self._pooled(self.height, self.kernel_h, self.pad_h, self.stride_h)
        self.pooled_w = self._pooled(self.width, self.kernel_w, self.pad_w, self.stride_w)
        if self.pooled_h <= 0 or self.pooled_w <= 0:
            raise ConfigError(f"layer '{self.name}' (Pooling): kernel {self.kernel_h}x{self.kernel_w} is larger "
                              f"than the padded input {self.height}x{self.width}")
        shape = (self.num, self.channels, self.pooled_h, self.pooled_w)
        for t in top:
            t.reshape(shape)
        if self._mask.size != top[0].count:
            self._mask = np.zeros(top[0].count, np.int32)

    def _pooled(self, size, kernel, pad, stride):
        span = (size + 2 * pad - kernel) / stride
        pooled = (math.ceil(span) if self.ceil_mode else math.floor(span)) + 1
        if (self.pad_h or self.pad_w) and (pooled - 1) * stride >= size + pad:
            # With any padding (either axis, as Caffe tests), the last window must
            # start inside the image, not in the padding.
            pooled -= 1
        return int(pooled)

    def _geometry(self):
        return (self.num * self.channels, self.height, self.width, self.pooled_h, self.pooled_w)

    def _window(self):
        return (self.kernel_h, self.kernel_w, self.pad_h, self.pad_w, self.stride_h, self.stride_w)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        y = top[0].data.reshape(-1)
        if self.method == 0:   # MAX
            if self.kernel_h == 2 and self.kernel_w == 2:
                K.max_pool_forward_2x2(x, *self._geometry(), *self._window()[2:], y, self._mask)
            else:
                K.max_pool_forward(x, *self._geometry(), *self._window(), y, self._mask)
            if len(top) > 1:
                top[1].data.reshape(-1)[:] = self._mask
        else:
            K.ave_pool_forward(x, *self._geometry(), *self._window(), y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(-1)
        dx = bottom[0].diff.reshape(-1)
        if self.method == 0:
            mask = self._mask
            if len(top) > 1:
                # Caffe routes through the mask top's data.
                mask = top[1].data.reshape(-1).astype(np.int32)
            K.max_pool_backward(dy, mask, *self._geometry(), dx)
        else:
            K.ave_pool_backward(dy, *self._geometry(), *self._window(), dx)

    def forward_gpu(self, bottom, top):
        from . import pooling_cuda
        pooling_cuda.forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        from . import pooling_cuda
        pooling_cuda.backward(self, top, propagate_down, bottom)
