"""InnerProduct on the GPU (the GPU side of layers/inner_product.py): three products of kernels_cuda.gemm.

forward:  y (M, N) = x (M, K) W^T (+ bias per column)     [W (N, K); with ``transpose`` W is (K, N)]
backward: dW += dy^T x   (or x^T dy),   db += column sums of dy,   dx = dy W  (or dy W^T)
"""
from dlcore.layer import gpu_backward, gpu_forward

from .inner_product import InnerProductLayer
from .kernels import param_down
from .kernels_cuda import BIAS_COL, channel_sum, gemm


@gpu_forward(InnerProductLayer)
def forward(layer, bottom, top):
    bias = layer.blobs[1].gpu_data() if layer.bias_term else None
    # y = x @ op(W): W stored (N, K) -> op = transpose; (K, N) with ``transpose`` -> as is
    gemm(layer.M, layer.num_output, layer.K, bottom[0].gpu_data(), layer.blobs[0].gpu_data(),
         top[0].mutable_gpu_data(), tb=not layer.transpose, bias=bias, bias_mode=BIAS_COL)


@gpu_backward(InnerProductLayer)
def backward(layer, top, propagate_down, bottom):
    M, Kd, N = layer.M, layer.K, layer.num_output
    dy = top[0].gpu_diff()
    if param_down(layer, 0):
        x = bottom[0].gpu_data()
        dw = layer.blobs[0].mutable_gpu_diff()
        if layer.transpose:
            gemm(Kd, N, M, x, dy, dw, ta=True, beta=1.0)          # (K, N) += x^T dy
        else:
            gemm(N, Kd, M, dy, x, dw, ta=True, beta=1.0)          # (N, K) += dy^T x
    if layer.bias_term and param_down(layer, 1):
        channel_sum(dy, M, N, 1, layer.blobs[1].mutable_gpu_diff())
    if propagate_down[0]:
        # dx (M, K) = dy (M, N) op(W): W (N, K) as is; (K, N) transposed
        gemm(M, Kd, N, dy, layer.blobs[0].gpu_data(), bottom[0].mutable_gpu_diff(), tb=layer.transpose)
