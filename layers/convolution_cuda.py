"""Convolution on the GPU (the GPU side of layers/convolution.py), as implicit GEMMs.

With Mg = num_output / group output channels and Kg = (channels / group)
* kh * kw rows of the column matrix per group, and N images of P output
pixels:

* forward: per group, ``y (Mg, N*P) = W (Mg, Kg) @ im2col(x) (Kg, N*P)``,
  ONE product for the batch (the groups are its batch index), reading the
  columns straight from the images (kernels_cuda ``bmode=IM2COL``) and
  writing the top in its (N, M, P) layout with the bias added
  (``cmode=NCHW``): no column buffer, no layout move;
* weight gradient: ``dW (Mg, Kg) += dy (Mg, N*P) @ im2col(x)^T``, read in
  place on both sides (``amode=NCP``, ``bmode=IM2COL_T``) and summed with
  atomics over a split of the N*P reduction so that enough blocks run;
* bias gradient: per-channel sums of dy (kernels_cuda.channel_sum);
* data gradient: ``col (Kg, N*P) = W^T @ dy`` into a column buffer (cut into
  chunks of images when it would be large), then col2im (a gather: each
  input pixel sums its column entries, Caffe's col2im_gpu; no atomics).

:class:`DeviceConvolution` holds these three products for one geometry;
Deconvolution (layers/vision_extra_cuda.py) runs them for the convolution
it transposes.
"""
from dlcore.layer import gpu_backward, gpu_forward

from .convolution import ConvolutionLayer
from .kernels import param_down
from .kernels_cuda import (ATOMIC, BIAS_ROW, IM2COL, IM2COL_T, NCHW, NCP, channel_sum, col2im, gemm, implicit_conv,
                           split_for)

# Largest column buffer (elements) of the data gradient before the batch is cut into chunks.
COL_BUFFER_LIMIT = 1 << 26


class DeviceConvolution:
    """The convolution of ``num`` images of geometry ``g`` (kernels.ConvGeometry) into ``M`` output
    channels in ``group`` groups, as the GPU computes it (flat device arrays throughout)."""

    def __init__(self, num, g, M, group):
        self.num, self.g, self.M, self.G = num, g, M, group
        self.Mg = M // group
        self.Cg = g.C // group
        self.Kg = self.Cg * g.kh * g.kw
        self.P = g.OH * g.OW
        self.conv, self.tab = implicit_conv(g, M, group)

    def forward(self, w, x, y, bias=None):
        """``y (num, M, OH, OW) = W @ im2col(x)`` (+ ``bias`` per channel)."""
        Mg, Kg, P = self.Mg, self.Kg, self.P
        gemm(Mg, self.num * P, Kg, w, x, y, batch=self.G, a_bs=Mg * Kg, b_bs=self.Cg * self.g.H * self.g.W,
             c_bs=Mg * P, bias=bias, bias_mode=BIAS_ROW, bmode=IM2COL, cmode=NCHW, conv=self.conv, tab=self.tab)

    def weight_gradient(self, dy, x, dw):
        """``dW += dy @ im2col(x)^T`` (atomics over a split of the num*P reduction)."""
        Mg, Kg, P = self.Mg, self.Kg, self.P
        ksplit = split_for(Mg, Kg, self.num * P, self.G, dw.dtype)
        gemm(Mg, Kg, self.num * P, dy, x, dw, batch=self.G, a_bs=Mg * P, b_bs=self.Cg * self.g.H * self.g.W,
             c_bs=Mg * Kg, amode=NCP, bmode=IM2COL_T, cmode=ATOMIC, conv=self.conv, tab=self.tab, ksplit=ksplit)

    def data_gradient(self, w, dy, dx, workspace):
        """``dx (num, C, H, W) = col2im(W^T @ dy)``, through a column buffer of ``workspace``."""
        Mg, Kg, P, g = self.Mg, self.Kg, self.P, self.g
        chunk = max(1, min(self.num, COL_BUFFER_LIMIT // max(Kg * self.G * P, 1)))
        col = workspace.get("col", Kg * self.G * chunk * P, dx.dtype)
        for n0 in range(0, self.num, chunk):
            cnt = min(chunk, self.num - n0)
            ld = cnt * P
            # col (Kg, cnt*P) per group = W_g^T (Kg, Mg) @ dy_g (Mg, cnt*P)
            gemm(Kg, ld, Mg, w, dy, col, ta=True, lda=Kg, b_off=n0 * self.M * P, ldc=ld, batch=self.G,
                 a_bs=Mg * Kg, b_bs=Mg * P, c_bs=Kg * ld, bmode=NCP, conv=self.conv, tab=self.tab)
            col2im(col, cnt, g, dx, ld, P, n0 * g.C * g.H * g.W)


def device_convolution(layer, num, g, M):
    """The layer's :class:`DeviceConvolution` for these shapes (kept in its workspace)."""
    return layer.workspace.cached("convolution", (num, g, M, layer.group),
                                  lambda: DeviceConvolution(num, g, M, layer.group))


@gpu_forward(ConvolutionLayer)
def forward(layer, bottom, top):
    conv = device_convolution(layer, layer.num, layer.geometry, layer.num_output)
    w = layer.blobs[0].gpu_data()
    bias = layer.blobs[1].gpu_data() if layer.bias_term else None
    for b, t in zip(bottom, top):
        conv.forward(w, b.gpu_data(), t.mutable_gpu_data(), bias)


def gradients(layer, top, propagate_down, bottom):
    """The backward passes of a Convolution or Deconvolution: per (top, bottom) pair that needs
    any gradient, (the top's gradient, the bottom, whether to add the weight gradient, whether to
    compute the bottom's); the bias gradient (per-channel sums of the top's, num_output channels
    of out_h x out_w in both layers) is added on the way."""
    do_weight = param_down(layer, 0)
    do_bias = layer.bias_term and param_down(layer, 1)
    for i, (t, b) in enumerate(zip(top, bottom)):
        down = i < len(propagate_down) and propagate_down[i]
        if not (do_weight or do_bias or down):
            continue
        dy = t.gpu_diff()
        if do_bias:
            channel_sum(dy, layer.num, layer.num_output, layer.out_h * layer.out_w, layer.blobs[1].mutable_gpu_diff())
        yield dy, b, do_weight, down


@gpu_backward(ConvolutionLayer)
def backward(layer, top, propagate_down, bottom):
    conv = device_convolution(layer, layer.num, layer.geometry, layer.num_output)
    for dy, b, do_weight, down in gradients(layer, top, propagate_down, bottom):
        if do_weight:
            conv.weight_gradient(dy, b.gpu_data(), layer.blobs[0].mutable_gpu_diff())
        if down:
            conv.data_gradient(layer.blobs[0].gpu_data(), dy, b.mutable_gpu_diff(), layer.workspace)


def flops_forward(layer):
    """Multiply-adds x 2 of one forward pass (for the benchmarks)."""
    P = layer.out_h * layer.out_w
    return 2.0 * layer.num * layer.num_output * P * layer.kernel_dim
