"""Im2col, SPP and Deconvolution: vision layers built from the convolution and pooling kernels.

* Im2col (Caffe's im2col_layer.cpp): the column matrix of a convolution as
  a layer.  convolution_param gives the kernel, stride, pad, dilation and
  the channel axis; per image the top is (C*kh*kw) x H_out x W_out, rows
  ordered (channel, kernel row, kernel column) as in Caffe's im2col.
* SPP (Caffe's spp_layer.cpp, spatial pyramid pooling): for level l <
  pyramid_height, 2^l bins per side: kernel = ceil(H / 2^l), stride =
  kernel, pad = (kernel * 2^l - H + 1) / 2 (the same for the width); each
  level is pooled (MAX or AVE, Caffe's Pooling rules: ceil rounding, the
  last window starting inside the image), flattened to N x (C*PH*PW), and
  the levels are concatenated along axis 1.  With pyramid_height 1 the top
  is the 4-D pooling output itself.  Computed with the pooling kernels of
  layers/kernels.py (layers/pooling_cuda.py on the GPU).
* Deconvolution (Caffe's deconv_layer.cpp): the transposed convolution.
  Weights (C_in, num_output / group, kh, kw); output size
  stride * (in - 1) + dilation * (k - 1) + 1 - 2 * pad.  Forward is the
  convolution's data gradient (columns W^T x, then col2im, plus the bias),
  backward is the convolution's forward (im2col of the top gradient, then
  W @ col for the bottom gradient and x @ col^T for the weight gradient).
  Built from im2col / col2im / gemm of layers/kernels.py (and the implicit
  GEMM and col2im of layers/kernels_cuda.py on the GPU).

Only 2-D spatial geometry is supported (as for Convolution).
"""
import math

import numpy as np

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K
from .convolution import _spatial_values
from .structural import add_into, copy_block, copy_block_back

# Largest column buffer (elements) before Deconvolution cuts the batch into chunks.
COL_BUFFER_LIMIT = 1 << 24


def _conv_geometry(layer, bottom, type_name):
    """Read convolution_param's channel axis, kernel, stride, pad and dilation (2-D), Caffe's checks."""
    cp = layer.layer_param.convolution_param
    channel_axis = bottom[0].canonical_axis(cp.axis)
    num_spatial = bottom[0].num_axes - channel_axis - 1
    if num_spatial != 2:
        raise ConfigError(f"layer '{layer.name}' ({type_name}): only 2-D geometry is supported (bottom "
                          f"{bottom[0].shape_string()} has {num_spatial} spatial axes after channel axis "
                          f"{channel_axis})")
    kernel = _spatial_values(layer, cp, "kernel_size", cp.kernel_size, "kernel_h", "kernel_w", None, num_spatial)
    stride = _spatial_values(layer, cp, "stride", cp.stride, "stride_h", "stride_w", 1, num_spatial)
    pad = _spatial_values(layer, cp, "pad", cp.pad, "pad_h", "pad_w", 0, num_spatial)
    nd = len(cp.dilation)
    if nd not in (0, 1, num_spatial):
        raise ConfigError(f"layer '{layer.name}' ({type_name}): dilation must be specified once, or once per "
                          f"spatial dimension (dilation specified {nd} times; {num_spatial} spatial dims)")
    dilation = [1] * num_spatial if nd == 0 else [int(cp.dilation[0 if nd == 1 else i]) for i in range(num_spatial)]
    if min(kernel) <= 0:
        raise ConfigError(f"layer '{layer.name}' ({type_name}): filter dimensions must be nonzero "
                          f"(kernel {kernel})")
    if min(stride) <= 0:
        raise ConfigError(f"layer '{layer.name}' ({type_name}): stride dimensions must be nonzero "
                          f"(stride {stride})")
    if min(dilation) <= 0:
        raise ConfigError(f"layer '{layer.name}' ({type_name}): dilation must be nonzero (dilation {dilation})")
    return channel_axis, kernel, stride, pad, dilation


# --- Im2col -------------------------------------------------------------------

@register_layer("Im2col")
class Im2colLayer(Layer):
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        self.channel_axis, self.kernel, self.stride, self.pad, self.dilation = _conv_geometry(self, bottom, "Im2col")

    def reshape(self, bottom, top):
        ax = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != ax + 3:
            raise ConfigError(f"layer '{self.name}' (Im2col): bottom num_axes may not change "
                              f"(now {bottom[0].shape_string()})")
        if top[0] is bottom[0]:
            raise ConfigError(f"layer '{self.name}' (Im2col) does not allow in-place computation")
        self.num = bottom[0].count_range(0, ax)
        self.channels, self.height, self.width = shape[ax], shape[ax + 1], shape[ax + 2]
        kh, kw = self.kernel
        self.out_h = K.conv_out_size(self.height, kh, self.pad[0], self.stride[0], self.dilation[0])
        self.out_w = K.conv_out_size(self.width, kw, self.pad[1], self.stride[1], self.dilation[1])
        if self.out_h <= 0 or self.out_w <= 0:
            raise ConfigError(f"layer '{self.name}' (Im2col): the (dilated) kernel {kh}x{kw} does not fit the "
                              f"padded input {self.height}x{self.width}")
        self.rows = self.channels * kh * kw
        top[0].reshape(shape[:ax] + (self.rows, self.out_h, self.out_w))

    def _args(self):
        return (self.kernel[0], self.kernel[1], self.pad[0], self.pad[1],
                self.stride[0], self.stride[1], self.dilation[0], self.dilation[1])

    def forward_cpu(self, bottom, top):
        P = self.out_h * self.out_w
        if top[0].count:
            K.im2col(bottom[0].data.reshape(-1), self.num, self.channels, self.height, self.width, *self._args(),
                     top[0].data.reshape(-1), P, self.rows * P)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and bottom[0].count:
            P = self.out_h * self.out_w
            K.col2im(top[0].diff.reshape(-1), self.num, self.channels, self.height, self.width, *self._args(),
                     bottom[0].diff.reshape(-1), P, self.rows * P)

    def forward_gpu(self, bottom, top):
        from . import vision_extra_cuda as C
        C.im2col_forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import vision_extra_cuda as C
            C.im2col_backward(self, top, bottom)


# --- SPP ----------------------------------------------------------------------

class _Level:
    """One pyramid level's pooling geometry (the attribute names of layers/pooling.py)."""

    def __init__(self, num, channels, height, width, bins, method):
        self.num, self.channels, self.height, self.width = num, channels, height, width
        self.method = method
        self.kernel_h = int(math.ceil(height / bins))
        self.kernel_w = int(math.ceil(width / bins))
        self.pad_h = (self.kernel_h * bins - height + 1) // 2
        self.pad_w = (self.kernel_w * bins - width + 1) // 2
        self.stride_h, self.stride_w = self.kernel_h, self.kernel_w
        self.pooled_h = self._pooled(height, self.kernel_h, self.pad_h, self.stride_h)
        self.pooled_w = self._pooled(width, self.kernel_w, self.pad_w, self.stride_w)
        self.size = channels * self.pooled_h * self.pooled_w     # per image, flattened
        self.mask = np.zeros(num * self.size, np.int32)
        self._gpu_mask = None

    def _pooled(self, size, kernel, pad, stride):
        # Caffe's Pooling output size: ceil rounding; with any padding the last
        # window must start inside the image.
        pooled = -(-(size + 2 * pad - kernel) // stride) + 1
        if (self.pad_h or self.pad_w) and (pooled - 1) * stride >= size + pad:
            pooled -= 1
        return pooled

    def geometry(self):
        return (self.num * self.channels, self.height, self.width, self.pooled_h, self.pooled_w)

    def window(self):
        return (self.kernel_h, self.kernel_w, self.pad_h, self.pad_w, self.stride_h, self.stride_w)


@register_layer("SPP")
class SPPLayer(Layer):
    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1

    def setup(self, bottom, top):
        from dltrain.proto import caffe_pb2
        P = caffe_pb2.SPPParameter
        param = self.layer_param.spp_param
        self.pyramid_height = int(param.pyramid_height)
        if self.pyramid_height < 1:
            raise ConfigError(f"layer '{self.name}' (SPP): spp_param.pyramid_height must be at least 1")
        self.method = int(param.pool)
        if self.method == P.STOCHASTIC:
            raise ConfigError(f"layer '{self.name}' (SPP): STOCHASTIC pooling is not implemented")
        if self.method not in (P.MAX, P.AVE):
            raise ConfigError(f"layer '{self.name}' (SPP): unknown pooling method {self.method}")
        self.work = K.Workspace()
        self._key = None

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (SPP)"
        if bottom[0].num_axes != 4:
            raise ConfigError(f"{name}: input must have 4 axes, corresponding to (num, channels, height, width); "
                              f"got {bottom[0].shape_string()}")
        if top[0] is bottom[0]:
            raise ConfigError(f"{name} does not allow in-place computation")
        num, channels, height, width = bottom[0].shape
        if height <= 0 or width <= 0:
            raise ConfigError(f"{name}: input dimensions cannot be zero ({bottom[0].shape_string()})")
        key = bottom[0].shape
        if key != self._key:
            self.levels = []
            for i in range(self.pyramid_height):
                level = _Level(num, channels, height, width, 2 ** i, self.method)
                if level.pad_h >= level.kernel_h or level.pad_w >= level.kernel_w:
                    raise ConfigError(f"{name}: pyramid level {i} needs pooling pad ({level.pad_h}, {level.pad_w}) "
                                      f"not smaller than its kernel ({level.kernel_h}, {level.kernel_w}) for a "
                                      f"{height}x{width} input, which Caffe's Pooling rejects; use a lower "
                                      "pyramid_height or a larger input")
                self.levels.append(level)
            self._key = key
        if self.pyramid_height == 1:
            lv = self.levels[0]
            top[0].reshape((num, channels, lv.pooled_h, lv.pooled_w))
        else:
            top[0].reshape((num, sum(lv.size for lv in self.levels)))

    def _pool(self, lv, x, y):
        if lv.method == 0:
            K.max_pool_forward(x, *lv.geometry(), *lv.window(), y, lv.mask)
        else:
            K.ave_pool_forward(x, *lv.geometry(), *lv.window(), y)

    def _unpool(self, lv, dy, dx):
        if lv.method == 0:
            K.max_pool_backward(dy, lv.mask, *lv.geometry(), dx)
        else:
            K.ave_pool_backward(dy, *lv.geometry(), *lv.window(), dx)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(-1)
        y = top[0].data.reshape(-1)
        if self.pyramid_height == 1:
            self._pool(self.levels[0], x, y)
            return
        num, total, offset = bottom[0].shape[0], top[0].shape[1], 0
        for lv in self.levels:
            out = self.work.get("pool", (num * lv.size,), self.dtype)
            self._pool(lv, x, out)
            copy_block(out, y, num, lv.size, total, offset, 1)
            offset += lv.size

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff.reshape(-1)
        dx = bottom[0].diff.reshape(-1)
        if self.pyramid_height == 1:
            self._unpool(self.levels[0], dy, dx)
            return
        num, total, offset = bottom[0].shape[0], top[0].shape[1], 0
        for i, lv in enumerate(self.levels):
            part = self.work.get("pool", (num * lv.size,), self.dtype)
            copy_block_back(dy, part, num, total, lv.size, offset, 1)
            offset += lv.size
            if i == 0:
                self._unpool(lv, part, dx)
            else:
                scratch = self.work.get("dx", (bottom[0].count,), self.dtype)
                self._unpool(lv, part, scratch)
                add_into(dx, scratch)

    def forward_gpu(self, bottom, top):
        from . import vision_extra_cuda as C
        C.spp_forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            from . import vision_extra_cuda as C
            C.spp_backward(self, top, bottom)


# --- Deconvolution ------------------------------------------------------------

@register_layer("Deconvolution")
class DeconvolutionLayer(Layer):
    """The transposed convolution (Caffe's DeconvolutionLayer), one top per bottom, shared weights."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True

    def setup(self, bottom, top):
        name = f"layer '{self.name}' (Deconvolution)"
        cp = self.layer_param.convolution_param
        self.channel_axis, self.kernel, self.stride, self.pad, self.dilation = _conv_geometry(
            self, bottom, "Deconvolution")
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output = int(cp.num_output)
        self.group = int(cp.group)
        if self.num_output <= 0:
            raise ConfigError(f"{name}: convolution_param.num_output must be > 0 (got {self.num_output})")
        if self.group <= 0:
            raise ConfigError(f"{name}: convolution_param.group must be > 0 (got {self.group})")
        if self.channels % self.group:
            raise ConfigError(f"{name}: the input channels ({self.channels}) must be a multiple of group "
                              f"({self.group})")
        if self.num_output % self.group:
            raise ConfigError(f"{name}: num_output ({self.num_output}) must be a multiple of group ({self.group})")
        self.bias_term = bool(cp.bias_term)
        weight_shape = (self.channels, self.num_output // self.group) + tuple(self.kernel)
        if self.blobs:
            if len(self.blobs) != 1 + self.bias_term:
                raise ConfigError(f"{name}: incorrect number of weight blobs (expected {1 + self.bias_term}, "
                                  f"got {len(self.blobs)})")
            if self.blobs[0].shape != weight_shape:
                raise ConfigError(f"{name}: incorrect weight shape: expected shape "
                                  f"{' '.join(map(str, weight_shape))}; instead, shape was "
                                  f"{self.blobs[0].shape_string()}")
            if self.bias_term and self.blobs[1].shape != (self.num_output,):
                raise ConfigError(f"{name}: incorrect bias shape: expected shape {self.num_output}; instead, "
                                  f"shape was {self.blobs[1].shape_string()}")
        else:
            self.blobs = [Blob(*weight_shape, dtype=self.dtype)]
            fill(self.blobs[0], cp.weight_filler)
            if self.bias_term:
                self.blobs.append(Blob(self.num_output, dtype=self.dtype))
                fill(self.blobs[1], cp.bias_filler)
        self.work = K.Workspace()

    def _param_down(self, i):
        ppd = self.param_propagate_down
        return i >= len(ppd) or bool(ppd[i])

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (Deconvolution)"
        ax = self.channel_axis
        shape0 = bottom[0].shape
        if len(shape0) != ax + 3:
            raise ConfigError(f"{name}: bottom num_axes may not change (now {bottom[0].shape_string()})")
        if shape0[ax] != self.channels:
            raise ConfigError(f"{name}: bottom has {shape0[ax]} channels, the weights expect {self.channels}")
        for b in bottom[1:]:
            if b.shape != shape0:
                raise ConfigError(f"{name}: all inputs must have the same shape ({bottom[0].shape_string()} vs "
                                  f"{b.shape_string()})")
        for b, t in zip(bottom, top):
            if t is b:
                raise ConfigError(f"{name} does not allow in-place computation")
        self.num = bottom[0].count_range(0, ax)
        self.in_h, self.in_w = shape0[ax + 1], shape0[ax + 2]
        kh, kw = self.kernel
        self.out_h = self.stride[0] * (self.in_h - 1) + self.dilation[0] * (kh - 1) + 1 - 2 * self.pad[0]
        self.out_w = self.stride[1] * (self.in_w - 1) + self.dilation[1] * (kw - 1) + 1 - 2 * self.pad[1]
        if self.out_h <= 0 or self.out_w <= 0:
            raise ConfigError(f"{name}: the output would be {self.out_h}x{self.out_w} (input "
                              f"{self.in_h}x{self.in_w}, kernel {kh}x{kw}, stride {self.stride}, pad {self.pad})")
        for t in top:
            t.reshape(shape0[:ax] + (self.num_output, self.out_h, self.out_w))
        # the convolution this layer transposes maps the top (num_output channels,
        # out_h x out_w) to the bottom (channels, in_h x in_w)
        self.kernel_dim = (self.num_output // self.group) * kh * kw      # column rows per group
        self.rows = self.kernel_dim * self.group                           # num_output * kh * kw
        per_image = self.rows * self.in_h * self.in_w
        self.chunk = max(1, min(self.num, COL_BUFFER_LIMIT // max(per_image, 1)))

    def _args(self):
        return (self.kernel[0], self.kernel[1], self.pad[0], self.pad[1],
                self.stride[0], self.stride[1], self.dilation[0], self.dilation[1])

    def _chunks(self):
        for n0 in range(0, self.num, self.chunk):
            yield n0, min(self.num, n0 + self.chunk)

    def forward_cpu(self, bottom, top):
        G, Kg = self.group, self.kernel_dim
        Cg = self.channels // G
        P_in, P_out = self.in_h * self.in_w, self.out_h * self.out_w
        weight = self.blobs[0].data.reshape(self.channels, Kg)
        for b, t in zip(bottom, top):
            x = b.data.reshape(self.num, self.channels, P_in)
            y = t.data.reshape(self.num, self.num_output, P_out)
            for n0, n1 in self._chunks():
                cnt = n1 - n0
                col = self.work.get("col", (cnt, self.rows, P_in), self.dtype)
                for g in range(G):
                    # columns of group g: W_g^T (Kg x Cg) @ x_g (Cg x P_in), per image
                    K.gemm(weight[g * Cg:(g + 1) * Cg].T, x[n0:n1, g * Cg:(g + 1) * Cg],
                           col[:, g * Kg:(g + 1) * Kg])
                yc = y[n0:n1].reshape(-1)
                K.col2im(col.reshape(-1), cnt, self.num_output, self.out_h, self.out_w, *self._args(), yc,
                         P_in, self.rows * P_in)
                if self.bias_term:
                    K.add_channel_bias(yc, self.blobs[1].data, cnt, self.num_output, P_out)

    def backward_cpu(self, top, propagate_down, bottom):
        G, Kg = self.group, self.kernel_dim
        Cg = self.channels // G
        P_in, P_out = self.in_h * self.in_w, self.out_h * self.out_w
        weight = self.blobs[0].data.reshape(self.channels, Kg)
        weight_diff = self.blobs[0].diff.reshape(self.channels, Kg)
        do_weight = self._param_down(0)
        do_bias = self.bias_term and self._param_down(1)
        for i, (t, b) in enumerate(zip(top, bottom)):
            down = i < len(propagate_down) and propagate_down[i]
            dy = t.diff.reshape(self.num, self.num_output, P_out)
            if do_bias:
                K.channel_sum(dy.reshape(-1), self.num, self.num_output, P_out, self.blobs[1].diff)
            if not (do_weight or down):
                continue
            x = b.data.reshape(self.num, self.channels, P_in)
            dx = b.diff.reshape(self.num, self.channels, P_in)
            for n0, n1 in self._chunks():
                cnt = n1 - n0
                col = self.work.get("col", (cnt, self.rows, P_in), self.dtype)
                K.im2col(dy[n0:n1].reshape(-1), cnt, self.num_output, self.out_h, self.out_w, *self._args(),
                         col.reshape(-1), P_in, self.rows * P_in)
                for g in range(G):
                    cg = col[:, g * Kg:(g + 1) * Kg]                     # (cnt, Kg, P_in)
                    if do_weight:
                        # dW_g (Cg x Kg) += sum over images of x_g (Cg x P_in) @ col_g^T
                        per_image = self.work.get("wstack", (cnt, Cg, Kg), self.dtype)
                        K.gemm(x[n0:n1, g * Cg:(g + 1) * Cg], cg.transpose(0, 2, 1), per_image)
                        wd = weight_diff[g * Cg:(g + 1) * Cg]
                        np.add(wd, per_image.sum(axis=0), out=wd)
                    if down:
                        # bottom gradient: the convolution's forward, W_g (Cg x Kg) @ col_g
                        K.gemm(weight[g * Cg:(g + 1) * Cg], cg, dx[n0:n1, g * Cg:(g + 1) * Cg])

    def forward_gpu(self, bottom, top):
        from . import vision_extra_cuda as C
        C.deconv_forward(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        from . import vision_extra_cuda as C
        C.deconv_backward(self, top, propagate_down, bottom)
