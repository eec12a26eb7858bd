"""Im2col, SPP and Deconvolution on the GPU: the GPU side of layers/vision_extra.py.

* Im2col: a gather kernel writes the columns (one thread per column
  entry); backward is the shared col2im (layers/kernels_cuda.py), per image.
* SPP: each level runs the pooling kernels of layers/pooling_cuda.py into
  a level buffer, then Concat's block copy (layers/structural_cuda.py)
  places it in the top; backward takes the blocks back, un-pools each
  level and sums the levels.
* Deconvolution: the convolution's GPU passes (layers/convolution_cuda.py)
  with the roles swapped, on the shared implicit GEMM of kernels_cuda.
  The convolution being transposed maps the top (num_output channels,
  out_h x out_w) to the bottom (channels, in_h x in_w), with the layer's
  weights (channels, num_output / group, kh, kw) as its (M, Kg) matrix:
  forward = its data gradient (W^T x into columns, then col2im, then the
  bias); backward = its forward (bottom gradient, an implicit-im2col GEMM
  of the top gradient) and its weight gradient.
"""
from numba import cuda

from dlcore.blob import Blob

from . import kernels_cuda as K
from .kernels_cuda import grid, jit

# Largest column buffer (elements) of the Deconvolution forward before the batch is cut into chunks.
COL_BUFFER_LIMIT = 1 << 26


# --- Im2col -------------------------------------------------------------------

@jit
def _im2col(x, N, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, OH, OW, col, zero):
    """col (N, C*kh*kw, OH*OW) from images x (N, C, H, W); zero outside the image."""
    P = OH * OW
    rows = C * kh * kw
    total = N * rows * P
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        p = t % P
        r = (t // P) % rows
        n = t // (P * rows)
        kj = r % kw
        ki = (r // kw) % kh
        c = r // (kw * kh)
        oy = p // OW
        ox = p - oy * OW
        iy = oy * sh - ph + ki * dh
        ix = ox * sw - pw + kj * dw
        if iy >= 0 and iy < H and ix >= 0 and ix < W:
            col[t] = x[((n * C + c) * H + iy) * W + ix]
        else:
            col[t] = zero


def _geo(layer):
    return (layer.kernel[0], layer.kernel[1], layer.pad[0], layer.pad[1], layer.stride[0], layer.stride[1],
            layer.dilation[0], layer.dilation[1])


def im2col_forward(layer, bottom, top):
    n = top[0].count
    if n:
        y = top[0].mutable_gpu_data()
        _im2col[grid(n)](bottom[0].gpu_data(), layer.num, layer.channels, layer.height, layer.width, *_geo(layer),
                         layer.out_h, layer.out_w, y, K.scalar(0, y.dtype))


def im2col_backward(layer, top, bottom):
    if not bottom[0].count:
        return
    P = layer.out_h * layer.out_w
    per_col = layer.rows * P
    per_img = layer.channels * layer.height * layer.width
    dy = top[0].gpu_diff()
    dx = bottom[0].mutable_gpu_diff()
    for n in range(layer.num):
        K.col2im(dy[n * per_col:(n + 1) * per_col], P, 1, layer.channels, layer.height, layer.width, *_geo(layer),
                 layer.out_h, layer.out_w, dx, out_off=n * per_img)


# --- SPP ----------------------------------------------------------------------

def _level_blobs(layer):
    """Per level: a Blob for the pooled output (N, C, PH, PW), and one bottom-sized scratch Blob."""
    key = (layer._key, layer.dtype.str)
    cached = getattr(layer, "_gpu_levels", None)
    if cached is None or cached[0] != key:
        blobs = [Blob(lv.num, lv.channels, lv.pooled_h, lv.pooled_w, dtype=layer.dtype) for lv in layer.levels]
        scratch = Blob(*layer._key, dtype=layer.dtype)
        cached = layer._gpu_levels = (key, blobs, scratch)
    return cached[1], cached[2]


def spp_forward(layer, bottom, top):
    from . import pooling_cuda
    from . import structural_cuda as S
    if layer.pyramid_height == 1:
        pooling_cuda.forward(layer.levels[0], bottom, top)
        return
    blobs, _ = _level_blobs(layer)
    num, total, offset = bottom[0].shape[0], top[0].shape[1], 0
    y = top[0].mutable_gpu_data()
    for lv, out in zip(layer.levels, blobs):
        pooling_cuda.forward(lv, bottom, [out])
        S.concat_forward(out.gpu_data(), y, num, lv.size, total, offset, 1)
        offset += lv.size


def spp_backward(layer, top, bottom):
    from . import pooling_cuda
    from . import structural_cuda as S
    if layer.pyramid_height == 1:
        pooling_cuda.backward(layer.levels[0], top, [True], bottom)
        return
    blobs, scratch = _level_blobs(layer)
    num, total, offset = bottom[0].shape[0], top[0].shape[1], 0
    dy = top[0].gpu_diff()
    for i, (lv, part) in enumerate(zip(layer.levels, blobs)):
        S.concat_backward(dy, part.mutable_gpu_diff(), num, total, lv.size, offset, 1)
        offset += lv.size
        if i == 0:
            pooling_cuda.backward(lv, [part], [True], bottom)
        else:
            pooling_cuda.backward(lv, [part], [True], [scratch])
            K.add_into(bottom[0].mutable_gpu_diff(), scratch.gpu_diff(), bottom[0].count)


# --- Deconvolution ------------------------------------------------------------

@jit
def _add_channel_bias(y, off, bias, N, M, P):
    """y[off + (n, m, p)] += bias[m]."""
    total = N * M * P
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        m = (t // P) % M
        y[off + t] += bias[m]


def _conv_view(layer):
    """The transposed convolution's geometry (device arrays, cached on the layer)."""
    kh, kw = layer.kernel
    key = (layer.num, layer.channels, layer.num_output, layer.in_h, layer.in_w, layer.out_h, layer.out_w,
           tuple(layer.kernel), tuple(layer.pad), tuple(layer.stride), tuple(layer.dilation), layer.group)
    cached = getattr(layer, "_gpu_geometry", None)
    if cached is None or cached[0] != key:
        # conv input: the top (num_output channels, out_h x out_w); conv output: the bottom
        geo, tab = K.conv_geometry(layer.num_output, layer.out_h, layer.out_w, layer.in_h, layer.in_w, kh, kw,
                                   layer.pad[0], layer.pad[1], layer.stride[0], layer.stride[1],
                                   layer.dilation[0], layer.dilation[1], layer.channels,
                                   Cg=layer.num_output // layer.group)
        cached = layer._gpu_geometry = (key, geo, tab)
    return cached[1], cached[2]


def _workspace(layer):
    work = getattr(layer, "_gpu_work", None)
    if work is None:
        work = layer._gpu_work = K.DeviceWorkspace()
    return work


def deconv_forward(layer, bottom, top):
    geo, tab = _conv_view(layer)
    G = layer.group
    Mc, Kg = layer.channels, layer.kernel_dim          # the convolution's output channels, column rows / group
    Mg = Mc // G
    P = layer.in_h * layer.in_w                          # the convolution's output pixels
    Mo = layer.num_output
    Po = layer.out_h * layer.out_w
    kh, kw = layer.kernel
    num = layer.num
    w = layer.blobs[0].gpu_data()
    rows = Kg * G
    chunk = max(1, min(num, COL_BUFFER_LIMIT // max(rows * P, 1)))
    col = _workspace(layer).get("col", rows * chunk * P, layer.dtype)
    for b, t in zip(bottom, top):
        x = b.gpu_data()
        y = t.mutable_gpu_data()
        for n0 in range(0, num, chunk):
            cnt = min(chunk, num - n0)
            ld = cnt * P
            # col (Kg, cnt*P) per group = W_g^T (Kg, Mg) @ x_g (Mg, cnt*P)
            K.gemm(Kg, ld, Mg, w, x, col, ta=True, lda=Kg, b_off=n0 * Mc * P, ldc=ld, batch=G,
                   a_bs=Mg * Kg, b_bs=Mg * P, c_bs=Kg * ld, bmode=K.NCP, geo=geo, tab=tab)
            K.col2im(col, ld, cnt, Mo, layer.out_h, layer.out_w, kh, kw, layer.pad[0], layer.pad[1],
                     layer.stride[0], layer.stride[1], layer.dilation[0], layer.dilation[1], layer.in_h, layer.in_w,
                     y, out_off=n0 * Mo * Po)
        if layer.bias_term and t.count:
            n = num * Mo * Po
            _add_channel_bias[grid(n)](y, 0, layer.blobs[1].gpu_data(), num, Mo, Po)


def deconv_backward(layer, top, propagate_down, bottom):
    geo, tab = _conv_view(layer)
    G = layer.group
    Mc, Kg = layer.channels, layer.kernel_dim
    Mg = Mc // G
    P = layer.in_h * layer.in_w
    Mo = layer.num_output
    Cg = Mo // G                                          # the convolution's input channels per group
    HWo = layer.out_h * layer.out_w
    num = layer.num
    do_weight = layer._param_down(0)
    do_bias = layer.bias_term and layer._param_down(1)
    for i, (t, b) in enumerate(zip(top, bottom)):
        down = i < len(propagate_down) and propagate_down[i]
        if not (do_weight or do_bias or down):
            continue
        dy = t.gpu_diff()
        if do_bias:
            K.channel_sum(dy, num, Mo, HWo, layer.blobs[1].mutable_gpu_diff(), accumulate=True)
        if do_weight:
            # the convolution's weight gradient: dW (Mg, Kg) += x_g (Mg, num*P) @ im2col(dy)^T
            dw = layer.blobs[0].mutable_gpu_diff()
            ksplit = K.split_for(Mg, Kg, num * P, G, layer.dtype)
            K.gemm(Mg, Kg, num * P, b.gpu_data(), dy, dw, batch=G, a_bs=Mg * P, b_bs=Cg * HWo, c_bs=Mg * Kg,
                   amode=K.NCP, bmode=K.IM2COL_T, cmode=K.ATOMIC, geo=geo, tab=tab, ksplit=ksplit)
        if down:
            # the convolution's forward: dx (Mg, num*P) per group = W_g (Mg, Kg) @ im2col(dy)
            K.gemm(Mg, num * P, Kg, layer.blobs[0].gpu_data(), dy, b.mutable_gpu_diff(), batch=G,
                   a_bs=Mg * Kg, b_bs=Cg * HWo, c_bs=Mg * P, bmode=K.IM2COL, cmode=K.NCHW, geo=geo, tab=tab)

