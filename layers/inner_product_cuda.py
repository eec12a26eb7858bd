"""InnerProduct on the GPU (the GPU side of layers/inner_product.py): three products of kernels_cuda.gemm.

forward:  y (M, N) = x (M, K) W^T (+ bias per column)     [W (N, K); with ``transpose`` W is (K, N)]
backward: dW += dy^T x   (or x^T dy),   db += column sums of dy,   dx = dy W  (or dy W^T)
"""
from . import kernels_cuda as K


def forward(layer, bottom, top):
    M, Kd, N = layer.M, layer.K, layer.num_output
    x = bottom[0].gpu_data()
    w = layer.blobs[0].gpu_data()
    y = top[0].mutable_gpu_data()
    bias = layer.blobs[1].gpu_data() if layer.bias_term else None
    # y = x @ op(W): W stored (N, K) -> op = transpose; (K, N) with ``transpose`` -> as is
    K.gemm(M, N, Kd, x, w, y, tb=not layer.transpose, bias=bias, bias_mode=K.BIAS_COL)


def backward(layer, top, propagate_down, bottom):
    M, Kd, N = layer.M, layer.K, layer.num_output
    dy = top[0].gpu_diff()
    if layer.param_propagate_down[0]:
        x = bottom[0].gpu_data()
        dw = layer.blobs[0].mutable_gpu_diff()
        if layer.transpose:
            K.gemm(Kd, N, M, x, dy, dw, ta=True, beta=1.0)          # (K, N) += x^T dy
        else:
            K.gemm(N, Kd, M, dy, x, dw, ta=True, beta=1.0)          # (N, K) += dy^T x
    if layer.bias_term and layer.param_propagate_down[1]:
        K.channel_sum(dy, M, N, 1, layer.blobs[1].mutable_gpu_diff(), accumulate=True)
    if propagate_down[0]:
        w = layer.blobs[0].gpu_data()
        dx = bottom[0].mutable_gpu_diff()
        # dx (M, K) = dy (M, N) op(W): W (N, K) as is; (K, N) transposed
        K.gemm(M, Kd, N, dy, w, dx, tb=layer.transpose)
