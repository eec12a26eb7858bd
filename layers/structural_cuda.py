"""CUDA kernels of the structural layers (the GPU side of layers/structural.py).

Flatten, Reshape and Split share memory (a Blob's SyncedMemory, host and
device sides together), so their GPU passes move nothing; Split's backward
sums the tops' diffs (kernels_cuda.add_into), Concat copies blocks.
"""
from numba import cuda

from .kernels_cuda import grid, jit


@jit
def _copy_block(src, dst, outer, src_axis, dst_axis, offset, inner, forward):
    """forward: dst[o, offset:offset+src_axis, :] = src[o]; else src[o] = dst[o, offset:offset+src_axis, :]."""
    block = src_axis * inner
    total = outer * block
    for t in range(cuda.grid(1), total, cuda.gridsize(1)):
        o = t // block
        k = t - o * block
        d = (o * dst_axis + offset) * inner + k
        if forward:
            dst[d] = src[t]
        else:
            src[t] = dst[d]


def concat_forward(src, dst, outer, src_axis, dst_axis, offset, inner):
    """dst (outer, dst_axis, inner) gets src (outer, src_axis, inner) at ``offset`` along the axis."""
    n = outer * src_axis * inner
    if n:
        _copy_block[grid(n)](src, dst, outer, src_axis, dst_axis, offset, inner, True)


def concat_backward(top_diff, bottom_diff, outer, top_axis, bottom_axis, offset, inner):
    """bottom_diff (outer, bottom_axis, inner) = the slice of top_diff at ``offset``."""
    n = outer * bottom_axis * inner
    if n:
        _copy_block[grid(n)](bottom_diff, top_diff, outer, bottom_axis, top_axis, offset, inner, False)
