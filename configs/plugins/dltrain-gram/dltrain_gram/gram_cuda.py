"""The Gram layer's GPU code: batched products of dltrain's shared CUDA matrix product.

Imported only when a Gram layer runs on the GPU (``GramLayer.cuda_module``),
so a CPU run never loads ``numba.cuda``.  The functions are registered for
the layer class, as dltrain's own layers register theirs.
"""
from dlcore.layer import gpu_backward, gpu_forward
from dltrain.layers.kernels_cuda import gemm

from .gram import GramLayer


@gpu_forward(GramLayer)
def gram_forward(layer, bottom, top):
    C, M = layer.channels, layer.size
    # G[n] = factor * F[n] F[n]^T, for every sample n at once
    gemm(C, C, M, bottom[0].gpu_data(), bottom[0].gpu_data(), top[0].mutable_gpu_data(), tb=True,
         alpha=layer.factor, batch=layer.batch, a_bs=C * M, b_bs=C * M, c_bs=C * C)


@gpu_backward(GramLayer)
def gram_backward(layer, top, propagate_down, bottom):
    if not propagate_down[0]:
        return
    C, M = layer.channels, layer.size
    x, dy, dx = bottom[0].gpu_data(), top[0].gpu_diff(), bottom[0].mutable_gpu_diff()
    # dF[n] = factor * dG[n] F[n] + factor * dG[n]^T F[n]
    gemm(C, M, C, dy, x, dx, alpha=layer.factor, batch=layer.batch, a_bs=C * C, b_bs=C * M, c_bs=C * M)
    gemm(C, M, C, dy, x, dx, ta=True, alpha=layer.factor, beta=1.0, batch=layer.batch, a_bs=C * C,
         b_bs=C * M, c_bs=C * M)
