"""Im2col, SPP and Deconvolution on the GPU: the GPU side of layers/vision_extra.py.

* Im2col: kernels_cuda's im2col (one thread per column entry) and col2im,
  in the CPU layer's image layout.
* SPP: vision_extra's pyramid passes with the GPU's pooling
  (layers/pooling_cuda.py) and Concat's block copies
  (layers/structural_cuda.py): each level is pooled into a buffer of the
  layer's workspace, then placed in the top; backward takes the blocks
  back, un-pools each level and sums the levels.
* Deconvolution: the convolution's GPU passes (``DeviceConvolution`` of
  layers/convolution_cuda.py) with the roles swapped.  The convolution
  being transposed maps the top (num_output channels, out_h x out_w) to the
  bottom (channels, in_h x in_w), with the layer's weights (channels,
  num_output / group, kh, kw) as its (M, Kg) matrix: forward = its data
  gradient (W^T x into columns, then col2im, then the bias); backward = its
  forward (the bottom gradient, an implicit-im2col GEMM of the top
  gradient) and its weight gradient.
"""
import numpy as np

from dlcore.device import add_into
from dlcore.layer import gpu_backward, gpu_forward

from .convolution_cuda import device_convolution, gradients
from .kernels_cuda import add_channel_bias, col2im, im2col
from .pooling_cuda import pool_backward, pool_forward
from .structural_cuda import copy_block, copy_block_back
from .vision_extra import DeconvolutionLayer, Im2colLayer, SPPLayer, pyramid_backward, pyramid_forward


# --- Im2col -------------------------------------------------------------------

@gpu_forward(Im2colLayer)
def im2col_forward(layer, bottom, top):
    im2col(bottom[0].gpu_data(), layer.num, layer.geometry, top[0].mutable_gpu_data(), *layer.strides())


@gpu_backward(Im2colLayer)
def im2col_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        col2im(top[0].gpu_diff(), layer.num, layer.geometry, bottom[0].mutable_gpu_diff(), *layer.strides())


# --- SPP ----------------------------------------------------------------------

def _levels(layer, stem, dtype):
    """A flat device array per level of the layer's workspace (``stem``0, ``stem``1...)."""
    return [layer.workspace.get(f"{stem}{i}", layer.num * size, dtype) for i, size in enumerate(layer.sizes)]


@gpu_forward(SPPLayer)
def spp_forward(layer, bottom, top):
    pyramid_forward(layer, bottom[0].gpu_data(), top[0].mutable_gpu_data(), _levels(layer, "level", layer.dtype),
                    _levels(layer, "mask", np.int32), pool_forward, copy_block)


@gpu_backward(SPPLayer)
def spp_backward(layer, top, propagate_down, bottom):
    if propagate_down[0]:
        pyramid_backward(layer, top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), _levels(layer, "level", layer.dtype),
                         _levels(layer, "mask", np.int32), layer.workspace.get("dx", bottom[0].count, layer.dtype),
                         pool_backward, copy_block_back, add_into)


# --- Deconvolution ------------------------------------------------------------

def _transposed(layer):
    """The convolution the layer transposes: from the top's space (layer.geometry) to the bottom's."""
    return device_convolution(layer, layer.num, layer.geometry, layer.channels)


@gpu_forward(DeconvolutionLayer)
def deconv_forward(layer, bottom, top):
    conv = _transposed(layer)
    w = layer.blobs[0].gpu_data()
    for b, t in zip(bottom, top):
        y = t.mutable_gpu_data()
        conv.data_gradient(w, b.gpu_data(), y, layer.workspace)
        if layer.bias_term:
            add_channel_bias(y, layer.blobs[1].gpu_data(), layer.num, layer.num_output, layer.out_h * layer.out_w)


@gpu_backward(DeconvolutionLayer)
def deconv_backward(layer, top, propagate_down, bottom):
    conv = _transposed(layer)
    for dy, b, do_weight, down in gradients(layer, top, propagate_down, bottom):
        if do_weight:
            # the convolution's weight gradient: dW += x (its output gradient) @ im2col(dy)^T
            conv.weight_gradient(b.gpu_data(), dy, layer.blobs[0].mutable_gpu_diff())
        if down:
            # the convolution's forward: dx = W @ im2col(dy)
            conv.forward(layer.blobs[0].gpu_data(), dy, b.mutable_gpu_diff())
