"""CUDA kernels that many layers share: the matrix product, im2col/col2im, transposes, channel sums.

The GPU counterpart of :mod:`dltrain.layers.kernels`: where both sides have
a function of one name (``im2col``, ``col2im``, ``channel_sum``,
``add_channel_bias``) it takes the same arguments in the same order, the
convolution's geometry as the same record (``kernels.ConvGeometry``); the
GPU ones may add trailing element offsets (device arrays are flat and not
sliced).  ``gemm`` is the GPU's alone (BLAS-style, on flat device arrays;
the CPU's NumPy product is ``kernels.matmul``).  The device plumbing the
solvers share too (launch shapes, fills, copies, axpby, sums) is
:mod:`dlcore.device`.  Imported only by GPU code, so a CPU run never
imports ``numba.cuda``.

The matrix product
------------------
:func:`gemm` computes, for each batch index z,
``C[z] = alpha * op(A[z]) op(B[z]) (+ beta * C[z]) (+ bias)``, or adds the
product atomically into C (``atomic=True``: a split reduction, or many
products summed into one).  It is a tiled shared-memory product written
for dltrain: each block computes a BM x BN tile of C, staging BK-deep
slices of A and B in shared memory; each thread keeps a TM x TN
sub-tile in registers (interleaved across the block so that shared-memory
reads are conflict-free and global stores coalesce).  Besides dense
operands (with transposes, leading dimensions, offsets and batch strides)
it reads the convolution's operands in place ("implicit GEMM"):

* ``bmode=IM2COL``: B[k, n] is the im2col matrix of a batch of images, read
  straight from the images (k = channel, kernel row, kernel column; n =
  image, output pixel), so the forward convolution needs no column buffer;
* ``bmode=IM2COL_T``: B[k, n] = im2col[n, k] (the weight gradient);
* ``amode=NCP`` / ``bmode=NCP``: an operand stored as (image, channel,
  pixel) read as the matrix (channel, image*pixel) (the top gradient);
* ``cmode=NCHW``: C[m, n = (image, pixel)] is written to (image, m, pixel),
  plus a per-channel bias (the forward convolution's output).

The convolution modes read the convolution's shape from an
:class:`ImplicitConv` record and a table of the column rows' offsets
(:func:`implicit_conv` makes both).
"""
import math
from collections import namedtuple

import numba
import numpy as np
from numba import cuda

from dlcore.device import MAX_BLOCKS, RED_TPB, SIM, block_sum, grid, jit, scalar
from dlcore.formula import formula

_jit = jit(cache=not SIM)


# ---------------------------------------------------------------------------
# transposes
# ---------------------------------------------------------------------------

@_jit
def _transpose_batched(src, s_off, dst, d_off, B, R, Cc):
    """dst[b, c, r] = src[b, r, c] for B matrices of R x Cc."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    total = B * R * Cc
    for i in range(start, total, stride):
        b = i // (R * Cc)
        rem = i - b * R * Cc
        c = rem // R
        r = rem - c * R
        dst[d_off + i] = src[s_off + (b * R + r) * Cc + c]


def transpose(src, dst, batch, rows, cols, s_off=0, d_off=0):
    """dst[b] = src[b].T for ``batch`` matrices of rows x cols (flat, C order)."""
    n = batch * rows * cols
    if n > 0:
        _transpose_batched[grid(n)](src, s_off, dst, d_off, batch, rows, cols)


@_jit
def _channel_sum(data, off, N, M, P, out, out_off, accumulate):
    """out[m] (+)= sum over n, p of data[off + (n*M + m)*P + p]; one block per channel (grid-stride)."""
    part = cuda.shared.array(RED_TPB, numba.float64)
    tid = cuda.threadIdx.x
    for m in range(cuda.blockIdx.x, M, cuda.gridDim.x):
        acc = 0.0
        for i in range(tid, N * P, RED_TPB):
            n = i // P
            p = i - n * P
            acc += numba.float64(data[off + (n * M + m) * P + p])
        part[tid] = acc
        block_sum(part, tid)
        if tid == 0:
            if accumulate:
                out[out_off + m] += part[0]
            else:
                out[out_off + m] = part[0]
        cuda.syncthreads()


def channel_sum(data, N, M, P, out, accumulate=True, off=0, out_off=0):
    """out[m] (+)= sum over n, p of data viewed as (N, M, P) (bias gradients)."""
    if M > 0:
        blocks = max(1, min(M, MAX_BLOCKS * 4))
        _channel_sum[blocks, RED_TPB](data, off, N, M, P, out, out_off, accumulate)


@_jit
def _add_channel_bias(data, bias, N, M, P):
    for t in range(cuda.grid(1), N * M * P, cuda.gridsize(1)):
        data[t] += bias[(t // P) % M]


def add_channel_bias(data, bias, N, M, P):
    """data[n, m, p] += bias[m] (flat (N, M, P))."""
    if N * M * P > 0:
        _add_channel_bias[grid(N * M * P)](data, bias, N, M, P)


# ---------------------------------------------------------------------------
# im2col / col2im (the CPU's layouts: element (row r, image n, pixel p) at
# col[r*row_stride + n*image_stride + p]; g is a kernels.ConvGeometry)
# ---------------------------------------------------------------------------

@_jit
def _im2col(data, N, g, col, row_stride, image_stride):
    P = g.OH * g.OW
    rows = g.C * g.kh * g.kw
    for t in range(cuda.grid(1), N * rows * P, cuda.gridsize(1)):
        p = t % P
        r = (t // P) % rows
        n = t // (P * rows)
        c = r // (g.kh * g.kw)
        ki = (r // g.kw) % g.kh
        kj = r % g.kw
        oy = p // g.OW
        iy = oy * g.sh - g.ph + ki * g.dh
        ix = (p - oy * g.OW) * g.sw - g.pw + kj * g.dw
        o = r * row_stride + n * image_stride + p
        if iy >= 0 and iy < g.H and ix >= 0 and ix < g.W:
            col[o] = data[((n * g.C + c) * g.H + iy) * g.W + ix]
        else:
            col[o] = 0


def im2col(data, N, g, col, row_stride, image_stride):
    """Images ``data`` (flat N*C*H*W) -> columns ``col`` (layouts as kernels.im2col), one thread per entry."""
    n = N * g.C * g.kh * g.kw * g.OH * g.OW
    if n > 0:
        _im2col[grid(n)](data, N, g, col, row_stride, image_stride)


@formula
def _tap_output(i, pad, k, dilation, stride, out):
    """Along one axis: the output position whose kernel tap k reads input i, or -1 if none does."""
    j = i + pad - k * dilation
    if j < 0 or j % stride != 0 or j // stride >= out:
        return -1
    return j // stride


@_jit
def _col2im(col, N, g, data, row_stride, image_stride, data_off):
    for i in range(cuda.grid(1), N * g.C * g.H * g.W, cuda.gridsize(1)):
        x = i % g.W
        t = i // g.W
        y = t % g.H
        t = t // g.H
        c = t % g.C
        n = t // g.C
        acc = col[0] * 0
        for ki in range(g.kh):
            oy = _tap_output(y, g.ph, ki, g.dh, g.sh, g.OH)
            if oy >= 0:
                for kj in range(g.kw):
                    ox = _tap_output(x, g.pw, kj, g.dw, g.sw, g.OW)
                    if ox >= 0:
                        acc += col[((c * g.kh + ki) * g.kw + kj) * row_stride + n * image_stride + oy * g.OW + ox]
        data[data_off + i] = acc


def col2im(col, N, g, data, row_stride, image_stride, data_off=0):
    """Columns -> images ``data[data_off:]`` (flat N*C*H*W), overwritten with the sums (as kernels.col2im).

    A gather (Caffe's col2im_gpu): each pixel sums the column entries im2col read from it, in the
    order the CPU's scatter adds them; no atomics.
    """
    n = N * g.C * g.H * g.W
    if n > 0:
        _col2im[grid(n)](col, N, g, data, row_stride, image_stride, data_off)


# ---------------------------------------------------------------------------
# the matrix product
# ---------------------------------------------------------------------------

DENSE, NCP, IM2COL, IM2COL_T = 0, 1, 2, 3          # operand modes
STORE, ATOMIC, NCHW = 0, 1, 2                      # output modes
BIAS_NONE, BIAS_ROW, BIAS_COL = 0, 1, 2


class ImplicitConv(namedtuple("ImplicitConv", "H W OW P sh sw ph pw in_image out_image")):
    """What the convolution modes read of a convolution (see :func:`implicit_conv`): its input
    images' H x W, the output's OW and P = OH*OW pixels, stride and pad, and the elements between
    images in the input (``in_image`` = C*H*W) and in an (image, channel, pixel) operand
    (``out_image`` = M*P)."""
    __slots__ = ()


NO_CONV = ImplicitConv(1, 1, 1, 1, 1, 1, 0, 0, 1, 1)   # what the dense modes get (never read)


@formula
def _window_origin(n, cv):
    """Column n = (image, output pixel) of an im2col matrix: the offset of its window's top-left
    input pixel from the images' start, and that pixel's row and column (negative in the padding)."""
    img = n // cv.P
    p = n - img * cv.P
    oy = p // cv.OW
    ox = p - oy * cv.OW
    iy = oy * cv.sh - cv.ph
    ix = ox * cv.sw - cv.pw
    return img * cv.in_image + iy * cv.W + ix, iy, ix


@formula
def _im2col_entry(B, origin, iy0, ix0, tab, rows, k, cv, zero):
    """Row k of the im2col column whose window starts at ``origin`` (row iy0, column ix0): the
    pixel (``tab``: the rows' offsets, then their row and column steps), or zero in the padding."""
    iy = iy0 + tab[rows + k]
    ix = ix0 + tab[2 * rows + k]
    if iy >= 0 and iy < cv.H and ix >= 0 and ix < cv.W:
        return B[origin + tab[k]]
    return zero


@formula
def _ncp_offset(n, cv):
    """Column n = (image, pixel) of an (image, channel, pixel) operand read as (channel, image*pixel):
    its offset at channel 0."""
    img = n // cv.P
    return img * cv.out_image + (n - img * cv.P)


# tile configurations: (BM, BN, BK, TM, TN); threads per block = (BM/TM) * (BN/TN)
CONFIG_LARGE = (128, 128, 8, 8, 8)
CONFIG_MEDIUM = (64, 64, 16, 4, 4)
CONFIG_WIDE = (32, 128, 8, 2, 8)      # few rows, many columns (a convolution with few output channels)
CONFIG_TALL = (128, 32, 8, 8, 2)      # many rows, few columns
CONFIG_SMALL = (32, 32, 16, 2, 2)     # small products: more, smaller blocks
CONFIG_SIM = (16, 16, 16, 4, 4)
_config_override = None


def set_gemm_config(config):
    """Force one tile configuration (tests); None restores the automatic choice."""
    global _config_override
    _config_override = None if config is None else tuple(config)


def _check_config(config):
    BM, BN, BK, TM, TN = config
    NT = (BM // TM) * (BN // TN)
    ok = (BM % TM == 0 and BN % TN == 0 and NT % BM == 0 and NT % BN == 0 and NT % BK == 0
          and (BK * BM) % NT == 0 and (BK * BN) % NT == 0)
    if not ok:
        raise ValueError(f"GEMM tile configuration {config} is not supported")
    return NT


_gemm_kernels = {}


def _make_gemm(nbt, TA, TB, AMODE, BMODE, CMODE, BIAS, BETA, config):
    """One compiled variant of the tiled product.

    The operand and output modes, the bias mode, whether beta is used, and
    the tile sizes are compile-time constants: a small epilogue lets the
    compiler unroll it fully and keep the accumulators in registers.
    """
    BM, BN, BK, TM, TN = config
    NT = _check_config(config)
    TXN = BN // TN           # threads along n
    TYM = BM // TM           # threads along m
    LA = BK * BM // NT       # A elements each thread stages per slice
    LB = BK * BN // NT
    SA = BM + 1              # padded shared rows: conflict-free staging stores
    SB = BN + 1
    A_KFAST = AMODE == NCP or (AMODE == DENSE and not TA)
    B_NFAST = BMODE == IM2COL or BMODE == NCP or (BMODE == DENSE and not TB)

    def kernel(M, N, K, alpha, beta, A, a_off, lda, a_bs, B, b_off, ldb, b_bs, C, c_off, ldc, c_bs,
               bias, conv, tab, ksplit):
        As = cuda.shared.array((BK, SA), nbt)
        Bs = cuda.shared.array((BK, SB), nbt)
        acc = cuda.local.array((TM, TN), nbt)
        ra = cuda.local.array(TM, nbt)
        rb = cuda.local.array(TN, nbt)
        coff = cuda.local.array(TN, numba.int64)
        tid = cuda.threadIdx.x
        m0 = cuda.blockIdx.y * BM        # this block's tile of C: rows m0.., columns n0..
        n0 = cuda.blockIdx.x * BN
        tx = tid % TXN                   # this thread's rows m0 + ty + i*TYM, columns n0 + tx + j*TXN
        ty = tid // TXN
        z = cuda.blockIdx.z
        bz = z // ksplit
        kz = z - bz * ksplit
        per = (K + ksplit - 1) // ksplit
        per = (per + BK - 1) // BK * BK
        kbeg = kz * per
        kend = min(K, kbeg + per)
        a_base = a_off + bz * a_bs
        b_base = b_off + bz * b_bs
        zero = nbt(0)

        # B staged with n fixed per thread: decompose that column once
        nn_fix = tid % BN
        gn_fix = n0 + nn_fix
        b_col = b_base
        iy0 = 0
        ix0 = 0
        if BMODE == IM2COL:
            origin, iy0, ix0 = _window_origin(gn_fix, conv)
            b_col = b_base + origin
        elif BMODE == NCP:
            b_col = b_base + _ncp_offset(gn_fix, conv)

        for i in range(TM):
            for j in range(TN):
                acc[i, j] = zero

        for k0 in range(kbeg, kend, BK):
            # --- stage A[m0:m0+BM, k0:k0+BK] as As[k, m]
            if A_KFAST:
                kk = tid % BK
                gk = k0 + kk
                a_row = a_base + gk
                if AMODE == NCP:
                    a_row = a_base + _ncp_offset(gk, conv)
                for it in range(LA):
                    mm = tid // BK + it * (NT // BK)
                    gm = m0 + mm
                    v = zero
                    if gk < kend and gm < M:
                        if AMODE == NCP:
                            v = A[a_row + gm * conv.P]
                        else:
                            v = A[a_row + gm * lda]
                    As[kk, mm] = v
            else:
                mm = tid % BM
                gm = m0 + mm
                for it in range(LA):
                    kk = tid // BM + it * (NT // BM)
                    gk = k0 + kk
                    v = zero
                    if gk < kend and gm < M:
                        v = A[a_base + gk * lda + gm]
                    As[kk, mm] = v
            # --- stage B[k0:k0+BK, n0:n0+BN] as Bs[k, n]
            if B_NFAST:
                for it in range(LB):
                    kk = tid // BN + it * (NT // BN)
                    gk = k0 + kk
                    v = zero
                    if gk < kend and gn_fix < N:
                        if BMODE == IM2COL:
                            v = _im2col_entry(B, b_col, iy0, ix0, tab, K, gk, conv, zero)
                        elif BMODE == NCP:
                            v = B[b_col + gk * conv.P]
                        else:
                            v = B[b_base + gk * ldb + gn_fix]
                    Bs[kk, nn_fix] = v
            else:
                kk = tid % BK
                gk = k0 + kk
                b_row = b_base + gk
                iy1 = 0
                ix1 = 0
                if BMODE == IM2COL_T:
                    origin, iy1, ix1 = _window_origin(gk, conv)
                    b_row = b_base + origin
                for it in range(LB):
                    nn = tid // BK + it * (NT // BK)
                    gn = n0 + nn
                    v = zero
                    if gk < kend and gn < N:
                        if BMODE == IM2COL_T:
                            v = _im2col_entry(B, b_row, iy1, ix1, tab, N, gn, conv, zero)
                        else:
                            v = B[b_row + gn * ldb]
                    Bs[kk, nn] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    ra[i] = As[kk, ty + i * TYM]
                for j in range(TN):
                    rb[j] = Bs[kk, tx + j * TXN]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()

        # output columns of this thread: their offsets (the division for NCHW done once per column)
        c_base = c_off + bz * c_bs
        for j in range(TN):
            gn = n0 + tx + j * TXN
            if CMODE == NCHW:
                coff[j] = _ncp_offset(gn, conv)
            else:
                coff[j] = gn
        row_step = conv.P if CMODE == NCHW else ldc
        for i in range(TM):
            gm = m0 + ty + i * TYM
            if gm < M:
                row = c_base + gm * row_step
                for j in range(TN):
                    if n0 + tx + j * TXN < N:
                        v = alpha * acc[i, j]
                        idx = row + coff[j]
                        if CMODE == ATOMIC:
                            cuda.atomic.add(C, idx, v)
                        else:
                            if BIAS == BIAS_ROW:
                                v += bias[bz * M + gm]
                            elif BIAS == BIAS_COL:
                                v += bias[bz * N + n0 + tx + j * TXN]
                            if BETA:
                                v += beta * C[idx]
                            C[idx] = v

    return jit(kernel), NT


def _kernel_for(dtype, ta, tb, amode, bmode, cmode, config, bias_mode=BIAS_NONE, use_beta=False):
    key = (np.dtype(dtype).str, bool(ta), bool(tb), amode, bmode, cmode, bias_mode, bool(use_beta), config)
    entry = _gemm_kernels.get(key)
    if entry is None:
        nbt = numba.from_dtype(np.dtype(dtype))
        entry = _make_gemm(nbt, bool(ta), bool(tb), amode, bmode, cmode, bias_mode, bool(use_beta), config)
        # how to make this variant again (bench/cuda_compile_check.py compiles every variant a run used)
        try:
            entry[0]._dltrain_key = (np.dtype(dtype).str, bool(ta), bool(tb), amode, bmode, cmode, config, bias_mode,
                                     bool(use_beta))
        except AttributeError:
            pass
        _gemm_kernels[key] = entry
    return entry


_dummy = {}


def _dummy_array(dtype):
    """A one-element device array for unused kernel arguments."""
    key = np.dtype(dtype).str
    if key not in _dummy:
        _dummy[key] = cuda.to_device(np.zeros(1, dtype))
    return _dummy[key]


def choose_config(M, N, batch, dtype=np.float32):
    if _config_override is not None:
        return _config_override
    if SIM:
        return CONFIG_SIM
    if np.dtype(dtype).itemsize > 4:
        return CONFIG_MEDIUM        # float64 (gradient checks): the large tile would spill registers
    large = CONFIG_LARGE
    if M >= 96 and N >= 96 and math.ceil(M / large[0]) * math.ceil(N / large[1]) * batch >= 120:
        return large
    if M <= 32 and N >= 512:
        return CONFIG_WIDE
    if N <= 32 and M >= 512:
        return CONFIG_TALL
    if math.ceil(M / 64) * math.ceil(N / 64) * batch < 66:
        return CONFIG_SMALL
    return CONFIG_MEDIUM


def gemm(M, N, K, A, B, C, *, ta=False, tb=False, alpha=1.0, beta=0.0, a_off=0, lda=None, b_off=0, ldb=None,
         c_off=0, ldc=None, batch=1, a_bs=0, b_bs=0, c_bs=0, bias=None, bias_mode=BIAS_NONE,
         amode=DENSE, bmode=DENSE, cmode=STORE, conv=NO_CONV, tab=None, ksplit=1, config=None):
    """C = alpha * op(A) op(B) + beta * C (+ bias), for ``batch`` operand sets (see the module docstring).

    Dense operands: A is M x K (``ta``: stored K x M), B is K x N (``tb``:
    stored N x K), C is M x N; ``lda``/``ldb``/``ldc`` their row lengths,
    ``*_off`` their first element, ``*_bs`` the step between batch items.
    ``cmode=ATOMIC`` adds alpha * op(A) op(B) into C with atomics (``beta``
    and ``bias`` unused); then ``ksplit`` > 1 splits the K loop over blocks.
    The convolution modes read ``conv`` and ``tab`` (from :func:`implicit_conv`).
    """
    if M <= 0 or N <= 0 or batch <= 0:
        return
    dtype = C.dtype
    if lda is None:
        lda = M if ta else K
    if ldb is None:
        ldb = K if tb else N
    if ldc is None:
        ldc = N
    if cmode == ATOMIC:
        bias, beta = None, 0.0
    else:
        ksplit = 1
    if bias is None:
        bias_mode = BIAS_NONE
    use_beta = cmode == STORE and beta != 0
    config = tuple(config) if config is not None else choose_config(M, N, batch * ksplit, dtype)
    kern, NT = _kernel_for(dtype, ta, tb, amode, bmode, cmode, config, bias_mode, use_beta)
    BM, BN = config[0], config[1]
    grid3 = ((N + BN - 1) // BN, (M + BM - 1) // BM, batch * ksplit)
    dummy = _dummy_array(dtype)
    if tab is None:
        tab = _dummy_array(np.int32)
    kern[grid3, NT](M, N, K, scalar(alpha, dtype), scalar(beta, dtype), A, a_off, lda, a_bs, B, b_off, ldb, b_bs,
                    C, c_off, ldc, c_bs, dummy if bias is None else bias, conv, tab, ksplit)


def split_for(M, N, K, batch, dtype=np.float32, config=None):
    """A K-split that gives an ATOMIC product enough blocks to fill the GPU."""
    if SIM:
        return 1 if K < 64 else 2
    config = config or choose_config(M, N, batch, dtype)
    blocks = math.ceil(M / config[0]) * math.ceil(N / config[1]) * batch
    target = 264
    if blocks >= target:
        return 1
    return max(1, min(math.ceil(target / blocks), K // (8 * config[2]) or 1, 64))


def implicit_conv(g, M, group=1):
    """What the convolution modes read, for images of geometry ``g`` (kernels.ConvGeometry, all
    g.C channels) convolved into ``M`` channels in ``group`` groups: the :class:`ImplicitConv`
    record, and the kernel table ``tab`` (an int32 device array, 3 rows of (g.C / group)*kh*kw:
    the offset in the image, the row step and the column step of each column-matrix row of one
    group)."""
    P = g.OH * g.OW
    conv = ImplicitConv(g.H, g.W, g.OW, P, g.sh, g.sw, g.ph, g.pw, g.C * g.H * g.W, M * P)
    rows = np.arange(g.C // group * g.kh * g.kw)
    c = rows // (g.kh * g.kw)
    ki = (rows // g.kw) % g.kh
    kj = rows % g.kw
    tab = np.concatenate([c * g.H * g.W + ki * g.dh * g.W + kj * g.dw, ki * g.dh, kj * g.dw]).astype(np.int32)
    return conv, cuda.to_device(tab)
