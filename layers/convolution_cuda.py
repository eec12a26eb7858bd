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
"""
from . import kernels_cuda as K

# Largest column buffer (elements) of the data gradient before the batch is cut into chunks.
COL_BUFFER_LIMIT = 1 << 26


def _geometry(layer):
    """The device geometry of the current shapes (cached on the layer)."""
    key = (layer.num, layer.channels, layer.height, layer.width, layer.out_h, layer.out_w,
           tuple(layer.kernel), tuple(layer.pad), tuple(layer.stride), tuple(layer.dilation), layer.group)
    cached = getattr(layer, "_gpu_geometry", None)
    if cached is None or cached[0] != key:
        kh, kw = layer.kernel
        geo, tab = K.conv_geometry(layer.channels, layer.height, layer.width, layer.out_h, layer.out_w, kh, kw,
                                   layer.pad[0], layer.pad[1], layer.stride[0], layer.stride[1],
                                   layer.dilation[0], layer.dilation[1], layer.num_output,
                                   Cg=layer.channels // layer.group)
        cached = (key, geo, tab)
        layer._gpu_geometry = cached
    return cached[1], cached[2]


def forward(layer, bottom, top):
    geo, tab = _geometry(layer)
    G = layer.group
    Mg, Kg = layer.num_output // G, layer.kernel_dim
    P = layer.out_h * layer.out_w
    Cg = layer.channels // G
    HW = layer.height * layer.width
    w = layer.blobs[0].gpu_data()
    bias = layer.blobs[1].gpu_data() if layer.bias_term else None
    for b, t in zip(bottom, top):
        K.gemm(Mg, layer.num * P, Kg, w, b.gpu_data(), t.mutable_gpu_data(), batch=G,
               a_bs=Mg * Kg, b_bs=Cg * HW, c_bs=Mg * P, bias=bias, bias_mode=K.BIAS_ROW,
               bmode=K.IM2COL, cmode=K.NCHW, geo=geo, tab=tab)


def backward(layer, top, propagate_down, bottom):
    geo, tab = _geometry(layer)
    G = layer.group
    M = layer.num_output
    Mg, Kg = M // G, layer.kernel_dim
    P = layer.out_h * layer.out_w
    C, H, W = layer.channels, layer.height, layer.width
    Cg = C // G
    num = layer.num
    kh, kw = layer.kernel
    do_weight = layer.param_propagate_down[0]
    do_bias = layer.bias_term and layer.param_propagate_down[1]
    for i, (t, b) in enumerate(zip(top, bottom)):
        down = i < len(propagate_down) and propagate_down[i]
        if not (do_weight or do_bias or down):
            continue
        dy = t.gpu_diff()
        if do_bias:
            K.channel_sum(dy, num, M, P, layer.blobs[1].mutable_gpu_diff(), accumulate=True)
        if do_weight:
            dw = layer.blobs[0].mutable_gpu_diff()
            ksplit = K.split_for(Mg, Kg, num * P, G, layer.dtype)
            K.gemm(Mg, Kg, num * P, dy, b.gpu_data(), dw, batch=G, a_bs=Mg * P, b_bs=Cg * H * W, c_bs=Mg * Kg,
                   amode=K.NCP, bmode=K.IM2COL_T, cmode=K.ATOMIC, geo=geo, tab=tab, ksplit=ksplit)
        if down:
            w = layer.blobs[0].gpu_data()
            dx = b.mutable_gpu_diff()
            rows = Kg * G
            chunk = max(1, min(num, COL_BUFFER_LIMIT // max(rows * P, 1)))
            col = _workspace(layer).get("col", rows * chunk * P, layer.dtype)
            for n0 in range(0, num, chunk):
                cnt = min(chunk, num - n0)
                ld = cnt * P
                # col (Kg, cnt*P) per group = W_g^T (Kg, Mg) @ dy_g (Mg, cnt*P)
                K.gemm(Kg, ld, Mg, w, dy, col, ta=True, lda=Kg, b_off=n0 * M * P, ldc=ld, batch=G,
                       a_bs=Mg * Kg, b_bs=Mg * P, c_bs=Kg * ld, bmode=K.NCP, geo=geo, tab=tab)
                K.col2im(col, ld, cnt, C, H, W, kh, kw, layer.pad[0], layer.pad[1], layer.stride[0],
                         layer.stride[1], layer.dilation[0], layer.dilation[1], layer.out_h, layer.out_w,
                         dx, out_off=n0 * C * H * W)


def _workspace(layer):
    work = getattr(layer, "_gpu_work", None)
    if work is None:
        work = layer._gpu_work = K.DeviceWorkspace()
    return work


def flops_forward(layer):
    """Multiply-adds x 2 of one forward pass (for the benchmarks)."""
    P = layer.out_h * layer.out_w
    return 2.0 * layer.num * layer.num_output * P * layer.kernel_dim
