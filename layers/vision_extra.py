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
  is the 4-D pooling output itself.  Computed with Pooling's loops
  (layers/pooling.py; pooling_cuda.py's kernels on the GPU), the levels
  joined and split as Concat does (layers/structural.py).
* Deconvolution (Caffe's deconv_layer.cpp): the transposed convolution.
  Weights (C_in, num_output / group, kh, kw); output size
  stride * (in - 1) + dilation * (k - 1) + 1 - 2 * pad.  Forward is the
  convolution's data gradient (columns W^T x, then col2im, plus the bias),
  backward is the convolution's forward (im2col of the top gradient, then
  W @ col for the bottom gradient and x @ col^T for the weight gradient).
  Built from im2col / col2im / matmul of layers/kernels.py (and the
  convolution's implicit GEMMs, layers/convolution_cuda.py, on the GPU).

Only 2-D spatial geometry is supported (as for Convolution).
"""
import numpy as np

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K
from .convolution import WeightedConvolution, read_geometry, set_output_geometry
from .pooling import PoolGeometry, check_method, pool_backward, pool_forward, pooled_size
from .structural import add_into, copy_block, copy_block_back, join_parts, split_parts

# Largest column buffer (elements) before Deconvolution cuts the batch into chunks.
COL_BUFFER_LIMIT = 1 << 24


def flat(array):
    return array.reshape(-1)


# --- Im2col -------------------------------------------------------------------

@register_layer("Im2col")
class Im2colLayer(Layer):
    """Caffe's Im2col: the column matrix of a convolution (convolution_param) as a layer."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    allows_in_place = False
    cuda_module = ".vision_extra_cuda"

    def setup(self, bottom, top):
        self.channel_axis, self.kernel, self.stride, self.pad, self.dilation = read_geometry(self, bottom)

    def reshape(self, bottom, top):
        ax = self.channel_axis
        shape = bottom[0].shape
        if len(shape) != ax + 3:
            raise ConfigError(f"layer '{self.name}' (Im2col): bottom num_axes may not change "
                              f"(now {bottom[0].shape_string()})")
        self.num = bottom[0].count_range(0, ax)
        self.channels, self.height, self.width = shape[ax], shape[ax + 1], shape[ax + 2]
        set_output_geometry(self)
        self.rows = self.channels * self.kernel[0] * self.kernel[1]
        top[0].reshape(shape[:ax] + (self.rows, self.out_h, self.out_w))

    def strides(self):
        """The top's column layout: (row_stride, image_stride) of the image layout."""
        P = self.out_h * self.out_w
        return P, self.rows * P

    def forward_cpu(self, bottom, top):
        if top[0].count:
            K.im2col(flat(bottom[0].data), self.num, self.geometry, flat(top[0].data), *self.strides())

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0] and bottom[0].count:
            K.col2im(flat(top[0].diff), self.num, self.geometry, flat(bottom[0].diff), *self.strides())


# --- SPP ----------------------------------------------------------------------

def pyramid_level(num, channels, height, width, bins):
    """The pooling of one pyramid level, ``bins`` bins per side (Caffe's spp_layer.cpp): kernel =
    ceil(size / bins), stride = kernel, pad = (kernel * bins - size + 1) / 2; the output size by
    Pooling's rules (ceil rounding, the last window starting inside the image)."""
    kh, kw = -(-height // bins), -(-width // bins)
    ph, pw = (kh * bins - height + 1) // 2, (kw * bins - width + 1) // 2
    padded = bool(ph or pw)
    return PoolGeometry(num * channels, height, width, pooled_size(height, kh, ph, kh, True, padded),
                        pooled_size(width, kw, pw, kw, True, padded), kh, kw, ph, pw, kh, kw)


def pyramid_forward(layer, x, y, outs, masks, pool_forward, copy_block):
    """Pool the flat images ``x`` at every level (into ``outs``, argmaxes into ``masks``) and lay
    the levels side by side in ``y`` (num, sum of the sizes); ``pool_forward`` and ``copy_block``:
    the CPU's or the GPU's (device arrays)."""
    for g, mask, out in zip(layer.levels, masks, outs):
        pool_forward(layer.method, g, x, out, mask)
    join_parts(copy_block, list(zip(outs, layer.sizes)), y, layer.num, 1)


def pyramid_backward(layer, dy, dx, parts, masks, scratch, pool_backward, copy_block_back, add_into):
    """The gradient of :func:`pyramid_forward`: each level's block of ``dy`` into ``parts``, then
    ``dx`` = the sum of the levels' pooling gradients (``scratch``: one bottom-sized array)."""
    split_parts(copy_block_back, dy, list(zip(parts, layer.sizes)), layer.num, 1)
    for i, (g, mask, part) in enumerate(zip(layer.levels, masks, parts)):
        pool_backward(layer.method, g, part, mask, dx if i == 0 else scratch)
        if i:
            add_into(dx, scratch)


@register_layer("SPP")
class SPPLayer(Layer):
    """Caffe's spatial pyramid pooling (spp_param: pyramid_height, pool)."""

    exact_num_bottom_blobs = 1
    exact_num_top_blobs = 1
    allows_in_place = False
    cuda_module = ".vision_extra_cuda"

    def setup(self, bottom, top):
        param = self.layer_param.spp_param
        self.pyramid_height = int(param.pyramid_height)
        if self.pyramid_height < 1:
            raise ConfigError(f"layer '{self.name}' (SPP): spp_param.pyramid_height must be at least 1")
        # (SPPParameter's PoolMethod has PoolingParameter's values: pooling.MAX, AVE, STOCHASTIC)
        self.method = check_method(self, int(param.pool))
        self.work = K.Workspace()
        self._key = None

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (SPP)"
        if bottom[0].num_axes != 4:
            raise ConfigError(f"{name}: input must have 4 axes, corresponding to (num, channels, height, width); "
                              f"got {bottom[0].shape_string()}")
        num, channels, height, width = bottom[0].shape
        if height <= 0 or width <= 0:
            raise ConfigError(f"{name}: input dimensions cannot be zero ({bottom[0].shape_string()})")
        key = bottom[0].shape
        if key != self._key:
            self.levels = []             # each level's PoolGeometry
            for i in range(self.pyramid_height):
                g = pyramid_level(num, channels, height, width, 2 ** i)
                if g.ph >= g.kh or g.pw >= g.kw:
                    raise ConfigError(f"{name}: pyramid level {i} needs pooling pad ({g.ph}, {g.pw}) not smaller "
                                      f"than its kernel ({g.kh}, {g.kw}) for a {height}x{width} input, which "
                                      "Caffe's Pooling rejects; use a lower pyramid_height or a larger input")
                self.levels.append(g)
            self.num = num
            self.sizes = [channels * g.PH * g.PW for g in self.levels]      # per image, flattened
            self.masks = [np.zeros(num * size, np.int32) for size in self.sizes]
            self._key = key
        if self.pyramid_height == 1:
            g = self.levels[0]
            top[0].reshape((num, channels, g.PH, g.PW))
        else:
            top[0].reshape((num, sum(self.sizes)))

    def _levels(self, stem):
        """A flat scratch array per level (``stem``0, ``stem``1...)."""
        return [self.work.get(f"{stem}{i}", (self.num * size,), self.dtype) for i, size in enumerate(self.sizes)]

    def forward_cpu(self, bottom, top):
        pyramid_forward(self, flat(bottom[0].data), flat(top[0].data), self._levels("level"), self.masks,
                        pool_forward, copy_block)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            pyramid_backward(self, flat(top[0].diff), flat(bottom[0].diff), self._levels("level"), self.masks,
                             self.work.get("dx", (bottom[0].count,), self.dtype), pool_backward, copy_block_back,
                             add_into)


# --- Deconvolution ------------------------------------------------------------

@register_layer("Deconvolution")
class DeconvolutionLayer(WeightedConvolution):
    """The transposed convolution (Caffe's DeconvolutionLayer)."""

    cuda_module = ".vision_extra_cuda"
    transposed = True

    def reshape(self, bottom, top):
        name = f"layer '{self.name}' (Deconvolution)"
        self.num, self.in_h, self.in_w = self.check_bottoms(bottom)
        ax = self.channel_axis
        kh, kw = self.kernel
        self.out_h = self.stride[0] * (self.in_h - 1) + self.dilation[0] * (kh - 1) + 1 - 2 * self.pad[0]
        self.out_w = self.stride[1] * (self.in_w - 1) + self.dilation[1] * (kw - 1) + 1 - 2 * self.pad[1]
        if self.out_h <= 0 or self.out_w <= 0:
            raise ConfigError(f"{name}: the output would be {self.out_h}x{self.out_w} (input "
                              f"{self.in_h}x{self.in_w}, kernel {kh}x{kw}, stride {self.stride}, pad {self.pad})")
        for t in top:
            t.reshape(bottom[0].shape[:ax] + (self.num_output, self.out_h, self.out_w))
        # the convolution this layer transposes maps the top (num_output channels,
        # out_h x out_w) to the bottom (channels, in_h x in_w)
        # (its output size, by the convolution's rule, is in_h x in_w again)
        self.geometry = K.conv_geometry(self.num_output, self.out_h, self.out_w, self.kernel, self.pad, self.stride,
                                        self.dilation)
        self.kernel_dim = (self.num_output // self.group) * kh * kw      # column rows per group
        self.rows = self.kernel_dim * self.group                           # num_output * kh * kw
        per_image = self.rows * self.in_h * self.in_w
        self.chunk = max(1, min(self.num, COL_BUFFER_LIMIT // max(per_image, 1)))

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
                    K.matmul(weight[g * Cg:(g + 1) * Cg].T, x[n0:n1, g * Cg:(g + 1) * Cg],
                             col[:, g * Kg:(g + 1) * Kg])
                yc = y[n0:n1].reshape(-1)
                K.col2im(col.reshape(-1), cnt, self.geometry, yc, P_in, self.rows * P_in)
                if self.bias_term:
                    K.add_channel_bias(yc, self.blobs[1].data, cnt, self.num_output, P_out)

    def backward_cpu(self, top, propagate_down, bottom):
        G, Kg = self.group, self.kernel_dim
        Cg = self.channels // G
        P_in, P_out = self.in_h * self.in_w, self.out_h * self.out_w
        weight = self.blobs[0].data.reshape(self.channels, Kg)
        weight_diff = self.blobs[0].diff.reshape(self.channels, Kg)
        do_weight = K.param_down(self, 0)
        do_bias = self.bias_term and K.param_down(self, 1)
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
                K.im2col(dy[n0:n1].reshape(-1), cnt, self.geometry, col.reshape(-1), P_in, self.rows * P_in)
                for g in range(G):
                    cg = col[:, g * Kg:(g + 1) * Kg]                     # (cnt, Kg, P_in)
                    if do_weight:
                        # dW_g (Cg x Kg) += sum over images of x_g (Cg x P_in) @ col_g^T
                        per_image = self.work.get("wstack", (cnt, Cg, Kg), self.dtype)
                        K.matmul(x[n0:n1, g * Cg:(g + 1) * Cg], cg.transpose(0, 2, 1), per_image)
                        wd = weight_diff[g * Cg:(g + 1) * Cg]
                        np.add(wd, per_image.sum(axis=0), out=wd)
                    if down:
                        # bottom gradient: the convolution's forward, W_g (Cg x Kg) @ col_g
                        K.matmul(weight[g * Cg:(g + 1) * Cg], cg, dx[n0:n1, g * Cg:(g + 1) * Cg])
