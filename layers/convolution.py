"""Convolution: Caffe's ConvolutionLayer (2-D, with groups, pad, stride, dilation).

No Python loop over the batch: one im2col turns the whole batch into
columns, then BLAS does the products (layers/kernels.py):

* small output planes (< IMAGE_LAYOUT_MIN_PIXELS pixels, e.g. LeNet's conv2):
  the batch layout, ONE GEMM per group for all images, then one pass that
  moves the result into (N, M, H, W) and adds the bias;
* large output planes (e.g. LeNet's conv1): the image layout, a stacked GEMM
  (one per image, issued by NumPy in C) that writes each top image directly;
  with one group the bias rides in the GEMM as a row of ones;
* 1x1 kernels, stride 1, no pad, in the image layout: the bottom images are
  the columns and the column gradient is the bottom gradient (no im2col or
  col2im; GoogLeNet's inception 1x1 convolutions).

Very large batches are cut into equal chunks so the column buffer stays under
COL_BUFFER_LIMIT elements.  Buffers are kept on the layer between calls.
The columns of the last forward are reused by backward for the weight
gradient (no second im2col): backward differentiates the forward that was
last run, so the bottom data must not be changed in between.

The GPU side (``convolution_cuda.py``) computes the same products as
implicit GEMMs.  ``read_geometry`` / ``read_groups`` read convolution_param
for Deconvolution and Im2col too (layers/vision_extra.py).
"""
import numpy as np

from dlcore.errors import ConfigError
from dlcore.layer import Layer
from dlcore.registry import register_layer

from . import kernels as K

# Largest column buffer (elements) before the batch is processed in chunks.  (2^25 floats:
# 128 MiB; GoogLeNet's conv1 at batch 10 needs 18.6 M and, held whole, backward reuses
# forward's columns instead of a second im2col.)
COL_BUFFER_LIMIT = 1 << 25
# Output planes of at least this many pixels use the per-image column layout.
IMAGE_LAYOUT_MIN_PIXELS = 256


def _spatial_values(layer, param, name, repeated, h_name, w_name, default, num_spatial):
    """Read one per-axis setting the Caffe way: repeated field, or its _h/_w pair."""
    has_hw = param.HasField(h_name) or param.HasField(w_name)
    if has_hw:
        if num_spatial != 2:
            raise ConfigError(f"layer '{layer.name}': {h_name} & {w_name} can only be used for 2-D convolution")
        if len(repeated):
            raise ConfigError(f"layer '{layer.name}': either {name} or {h_name}/{w_name} should be specified; "
                              "not both")
        if name == "kernel_size" and not (param.HasField(h_name) and param.HasField(w_name)):
            raise ConfigError(f"layer '{layer.name}': for non-square filters both kernel_h and kernel_w "
                              "are required")
        return [int(getattr(param, h_name)), int(getattr(param, w_name))]
    n = len(repeated)
    if default is None and n == 0:
        raise ConfigError(f"layer '{layer.name}': convolution_param needs kernel_size (or kernel_h and kernel_w)")
    if n not in (0, 1, num_spatial):
        raise ConfigError(f"layer '{layer.name}': {name} must be specified once, or once per spatial "
                          f"dimension ({name} specified {n} times; {num_spatial} spatial dims)")
    if n == 0:
        return [default] * num_spatial
    return [int(repeated[0 if n == 1 else i]) for i in range(num_spatial)]


def read_geometry(layer, bottom):
    """convolution_param's channel axis and (h, w) kernel, stride, pad and dilation, with Caffe's checks
    (Convolution, Deconvolution and Im2col read them alike)."""
    cp = layer.layer_param.convolution_param
    name = f"layer '{layer.name}' ({layer.type})"
    channel_axis = bottom[0].canonical_axis(cp.axis)
    num_spatial = bottom[0].num_axes - channel_axis - 1
    if num_spatial != 2:
        raise ConfigError(f"{name}: only 2-D convolution geometry is supported (bottom "
                          f"{bottom[0].shape_string()} has {num_spatial} spatial axes after channel axis "
                          f"{channel_axis})")
    kernel = _spatial_values(layer, cp, "kernel_size", cp.kernel_size, "kernel_h", "kernel_w", None, num_spatial)
    stride = _spatial_values(layer, cp, "stride", cp.stride, "stride_h", "stride_w", 1, num_spatial)
    pad = _spatial_values(layer, cp, "pad", cp.pad, "pad_h", "pad_w", 0, num_spatial)
    nd = len(cp.dilation)
    if nd not in (0, 1, num_spatial):
        raise ConfigError(f"{name}: dilation must be specified once, or once per spatial dimension "
                          f"(dilation specified {nd} times; {num_spatial} spatial dims)")
    dilation = [1] * num_spatial if nd == 0 else [int(cp.dilation[0 if nd == 1 else i]) for i in range(num_spatial)]
    if min(kernel) <= 0:
        raise ConfigError(f"{name}: filter dimensions must be nonzero (kernel {kernel})")
    if min(stride) <= 0:
        raise ConfigError(f"{name}: stride dimensions must be nonzero (stride {stride})")
    if min(dilation) <= 0:
        raise ConfigError(f"{name}: dilation must be nonzero (dilation {dilation})")
    return channel_axis, kernel, stride, pad, dilation


def read_groups(layer, channels):
    """convolution_param's num_output and group, with Caffe's checks against the ``channels`` in."""
    cp = layer.layer_param.convolution_param
    name = f"layer '{layer.name}' ({layer.type})"
    num_output, group = int(cp.num_output), int(cp.group)
    if num_output <= 0:
        raise ConfigError(f"{name}: convolution_param.num_output must be > 0 (got {num_output})")
    if group <= 0:
        raise ConfigError(f"{name}: convolution_param.group must be > 0 (got {group})")
    if channels % group:
        raise ConfigError(f"{name}: the input channels ({channels}) must be a multiple of group ({group})")
    if num_output % group:
        raise ConfigError(f"{name}: num_output ({num_output}) must be a multiple of group ({group})")
    return num_output, group


def set_output_geometry(layer):
    """``layer.geometry`` (a kernels.ConvGeometry) of the layer's channels x height x width images
    and convolution_param settings, and its output size ``out_h``, ``out_w`` (Caffe's check: the
    kernel fits)."""
    g = K.conv_geometry(layer.channels, layer.height, layer.width, layer.kernel, layer.pad, layer.stride,
                        layer.dilation)
    if g.OH <= 0 or g.OW <= 0:
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): the (dilated) kernel {g.kh}x{g.kw} does not fit "
                          f"the padded input {g.H}x{g.W} (pad {layer.pad}, dilation {layer.dilation})")
    layer.geometry = g
    layer.out_h, layer.out_w = g.OH, g.OW


class WeightedConvolution(Layer):
    """What Convolution and Deconvolution share: convolution_param, the weights and bias, Caffe's
    checks of the bottoms; one top per bottom, shared weights.  The weights are (num_output,
    channels / group, kh, kw), or, ``transposed``, (channels, num_output / group, kh, kw)."""

    min_bottom_blobs = 1
    min_top_blobs = 1
    equal_num_bottom_top_blobs = True
    transposed = False

    allows_in_place = False    # im2col reads the input while the top is written

    def setup(self, bottom, top):
        cp = self.layer_param.convolution_param
        self.channel_axis, self.kernel, self.stride, self.pad, self.dilation = read_geometry(self, bottom)
        self.channels = bottom[0].shape[self.channel_axis]
        self.num_output, self.group = read_groups(self, self.channels)
        self.bias_term = bool(cp.bias_term)
        rows, cols = (self.channels, self.num_output) if self.transposed else (self.num_output, self.channels)
        K.learnable_blobs(self, cp, (rows, cols // self.group) + tuple(self.kernel),
                          (self.num_output,) if self.bias_term else None)
        self.work = K.Workspace()

    def matrix_work(self):
        """Every weight meets every kernel position of every image of every bottom: the output pixels,
        or, transposed, the input pixels."""
        positions = self.in_h * self.in_w if self.transposed else self.out_h * self.out_w
        return self.blobs[0].count * self.num * positions * self._bottom_count

    def check_bottoms(self, bottom):
        """The bottoms' batch size and spatial size (h, w), after Caffe's checks; notes how many there are."""
        self._bottom_count = len(bottom)
        name = f"layer '{self.name}' ({self.type})"
        ax = self.channel_axis
        shape0 = bottom[0].shape
        if len(shape0) != ax + 3:
            raise ConfigError(f"{name}: bottom num_axes may not change (now {bottom[0].shape_string()})")
        if shape0[ax] != self.channels:
            raise ConfigError(f"{name}: input size incompatible with the weights: bottom has {shape0[ax]} "
                              f"channels, the weights expect {self.channels}")
        for b in bottom[1:]:
            if b.shape != shape0:
                raise ConfigError(f"{name}: all inputs must have the same shape ({bottom[0].shape_string()} vs "
                                  f"{b.shape_string()})")
        return int(np.prod(shape0[:ax], dtype=np.int64)), shape0[ax + 1], shape0[ax + 2]


@register_layer("Convolution")
class ConvolutionLayer(WeightedConvolution):
    """Caffe's convolution (see the module docstring)."""

    cuda_module = ".convolution_cuda"

    def setup(self, bottom, top):
        super().setup(bottom, top)
        self._zeros = np.zeros(self.num_output, self.dtype)   # the bias when bias_term is false
        self._col_cache = {}     # bottom index -> bottom data array whose columns are in "col<i>"

    def reshape(self, bottom, top):
        self.num, self.height, self.width = self.check_bottoms(bottom)
        set_output_geometry(self)
        ax = self.channel_axis
        kh, kw = self.kernel
        for t in top:
            t.reshape(bottom[0].shape[:ax] + (self.num_output, self.out_h, self.out_w))
        self.kernel_dim = (self.channels // self.group) * kh * kw
        P = self.out_h * self.out_w
        per_image = self.kernel_dim * self.group * P
        most = max(1, min(self.num, COL_BUFFER_LIMIT // max(per_image, 1)))
        self.chunk = -(-self.num // -(-self.num // most))     # chunks of equal size (10 -> 5+5, not 9+1)
        # Large output planes: per-image GEMMs write the top directly (no layout
        # move); small planes: one GEMM over the whole batch is much faster.
        self.image_layout = P >= IMAGE_LAYOUT_MIN_PIXELS
        # A 1x1 kernel with stride 1 and no pad: each image already IS its column
        # matrix (C, P), so the image layout multiplies the bottom in place and
        # writes the bottom gradient directly (no im2col, no col2im).  (Small
        # planes keep the batch layout: measured on GoogLeNet's 7x7 and 14x14
        # 1x1 convolutions, its single weight-gradient GEMM wins there.)
        self.pointwise = (self.image_layout and (kh, kw) == (1, 1) and tuple(self.stride) == (1, 1)
                          and tuple(self.pad) == (0, 0))
        # Image layout, one group: the bias rides in the GEMM as an extra column
        # row of ones (Caffe's bias_multiplier), saving a pass over the top in
        # forward and one over its gradient in backward.
        self.fold_bias = self.image_layout and self.group == 1 and self.bias_term and not self.pointwise
        self._col_cache.clear()

    # --- helpers -------------------------------------------------------------
    def _images(self, array):
        return array.reshape(self.num, self.channels, self.height, self.width)

    def _outputs(self, array):
        return array.reshape(self.num, self.num_output, self.out_h * self.out_w)

    def _chunks(self):
        for n0 in range(0, self.num, self.chunk):
            yield n0, min(self.num, n0 + self.chunk)

    def _columns(self, i, cnt):
        """The column buffer for bottom i (one per bottom when the batch is one chunk), and its strides.

        Image layout: (cnt, rows [+1 row of ones when folding the bias], P);
        batch layout: (rows, cnt*P).
        """
        P, rows = self.out_h * self.out_w, self.kernel_dim * self.group
        name = f"col{i}" if self.chunk >= self.num else "col"
        if self.image_layout:
            rows += self.fold_bias
            col = self.work.get(name, (cnt, rows, P), self.dtype)
            return col, (P, rows * P)
        col = self.work.get(name, (rows, cnt * P), self.dtype)
        return col, (cnt * P, P)

    def _im2col(self, x, cnt, col, strides):
        K.im2col(x.reshape(-1), cnt, self.geometry, col.reshape(-1), *strides)
        if self.fold_bias:
            col[:, -1, :] = 1

    # --- forward / backward ----------------------------------------------------
    def forward_cpu(self, bottom, top):
        P = self.out_h * self.out_w
        M, G = self.num_output, self.group
        Mg, Kg = M // G, self.kernel_dim
        weight = self.blobs[0].data.reshape(M, Kg)
        single = self.chunk >= self.num
        for i, (b, t) in enumerate(zip(bottom, top)):
            x = self._images(b.data)
            y = self._outputs(t.data)
            for n0, n1 in self._chunks():
                cnt = n1 - n0
                if self.pointwise:
                    col = x[n0:n1].reshape(cnt, self.channels, P)
                else:
                    col, strides = self._columns(i, cnt)
                    self._im2col(x[n0:n1], cnt, col, strides)
                if self.fold_bias:
                    # [W | b] @ [col; 1] per image, straight into the top.
                    wb = self.work.get("wb", (M, Kg + 1), self.dtype)
                    wb[:, :Kg] = weight
                    wb[:, Kg] = self.blobs[1].data
                    np.matmul(wb, col, out=y[n0:n1])
                elif self.image_layout:
                    # One GEMM per image (NumPy's stacked matmul), straight into the top.
                    for g in range(G):
                        np.matmul(weight[g * Mg:(g + 1) * Mg], col[:, g * Kg:(g + 1) * Kg],
                                  out=y[n0:n1, g * Mg:(g + 1) * Mg])
                    if self.bias_term:
                        K.add_channel_bias(y[n0:n1].reshape(-1), self.blobs[1].data, cnt, M, P)
                else:
                    # One GEMM per group for the whole chunk, then into (N, M, P) with the bias.
                    out = self.work.get("out", (M, cnt * P), self.dtype)
                    for g in range(G):
                        K.matmul(weight[g * Mg:(g + 1) * Mg], col[g * Kg:(g + 1) * Kg], out[g * Mg:(g + 1) * Mg])
                    bias = self.blobs[1].data if self.bias_term else self._zeros
                    K.cnp_to_ncp(out.reshape(-1), bias, cnt, M, P, y[n0:n1].reshape(-1))
            if single:
                self._col_cache[i] = b.data

    def backward_cpu(self, top, propagate_down, bottom):
        P = self.out_h * self.out_w
        M, G = self.num_output, self.group
        Mg, Kg = M // G, self.kernel_dim
        weight = self.blobs[0].data.reshape(M, Kg)
        do_weight = K.param_down(self, 0)
        do_bias = self.bias_term and K.param_down(self, 1)
        bias_diff = self.blobs[1].diff if self.bias_term else self._zeros
        weight_diff = self.blobs[0].diff.reshape(M, Kg)
        single = self.chunk >= self.num
        for i, (t, b) in enumerate(zip(top, bottom)):
            down = i < len(propagate_down) and propagate_down[i]
            if not (do_weight or do_bias or down):
                continue
            dy = self._outputs(t.diff)
            x = self._images(b.data)
            for n0, n1 in self._chunks():
                cnt = n1 - n0
                if self.image_layout:
                    dyc = dy[n0:n1]                          # (cnt, M, P): already GEMM-ready
                    if do_bias and not (self.fold_bias and do_weight):
                        K.channel_sum(dyc.reshape(-1), cnt, M, P, bias_diff)
                else:
                    dyc = self.work.get("dout", (M, cnt * P), self.dtype)
                    K.ncp_to_cnp(dy[n0:n1].reshape(-1), cnt, M, P, dyc.reshape(-1), bias_diff, do_bias)
                if not (do_weight or down):
                    continue
                if self.pointwise:      # the columns are the bottom itself, their gradient the bottom's
                    col = x[n0:n1].reshape(cnt, self.channels, P)
                    dcol = self._images(b.diff)[n0:n1].reshape(cnt, self.channels, P)
                else:
                    col, strides = self._columns(i, cnt)
                    dcol = col              # reused for the column gradient once the weights have theirs
                if do_weight:
                    if not (self.pointwise or (single and self._col_cache.get(i) is b.data)):
                        self._im2col(x[n0:n1], cnt, col, strides)
                    self._weight_gradient(dyc, col, weight_diff, bias_diff if do_bias else None)
                if down:
                    self._col_cache.pop(i, None)
                    for g in range(G):
                        if self.image_layout:
                            # (the ones row of a folded bias stays: rows Kg*G.. are not written)
                            np.matmul(weight[g * Mg:(g + 1) * Mg].T, dyc[:, g * Mg:(g + 1) * Mg],
                                      out=dcol[:, g * Kg:(g + 1) * Kg])
                        else:
                            K.matmul(weight[g * Mg:(g + 1) * Mg].T, dyc[g * Mg:(g + 1) * Mg],
                                     dcol[g * Kg:(g + 1) * Kg])
                    if not self.pointwise:
                        K.col2im(col.reshape(-1), cnt, self.geometry, self._images(b.diff)[n0:n1].reshape(-1),
                                 *strides)

    def _weight_gradient(self, dyc, col, weight_diff, bias_diff):
        M, G = self.num_output, self.group
        Mg, Kg = M // G, self.kernel_dim
        if self.fold_bias:
            # dy @ [col; 1]^T per image: the last column is the bias gradient.
            cnt = col.shape[0]
            per_image = self.work.get("wstack", (cnt, M, Kg + 1), self.dtype)
            np.matmul(dyc, col.transpose(0, 2, 1), out=per_image)
            total = per_image.sum(axis=0)
            np.add(weight_diff, total[:, :Kg], out=weight_diff)
            if bias_diff is not None:
                np.add(bias_diff, total[:, Kg], out=bias_diff)
        elif self.image_layout:
            # Caffe's order: dW += dy[n] @ col[n]^T image by image, each product added by BLAS (beta = 1).
            for g in range(G):
                wd = weight_diff[g * Mg:(g + 1) * Mg]
                for n in range(col.shape[0]):
                    K.matmul(dyc[n, g * Mg:(g + 1) * Mg], col[n, g * Kg:(g + 1) * Kg].T, wd, accumulate=True,
                             work=self.work)
        else:
            for g in range(G):
                K.matmul(dyc[g * Mg:(g + 1) * Mg], col[g * Kg:(g + 1) * Kg].T, weight_diff[g * Mg:(g + 1) * Mg],
                         accumulate=True, work=self.work)
