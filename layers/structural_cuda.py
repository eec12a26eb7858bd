"""GPU code of the structural layers (the CUDA side of layers/structural.py).

Flatten, Reshape and Split share memory (a Blob's SyncedMemory, host and
device sides together), so their GPU passes move nothing; Split's backward
sums the tops' diffs, Concat copies blocks (``copy_block`` and
``copy_block_back``, the twins of structural's: same arguments; Slice uses
them too), Silence zeroes its bottoms' diffs.
"""
from numba import cuda

from dlcore.device import add_into, copy, fill, grid, jit
from dlcore.layer import gpu_backward, gpu_forward

from .structural import ConcatLayer, SilenceLayer, SplitLayer, ViewLayer, join_parts, split_parts


@jit
def _copy_block(part, whole, outer, part_axis, whole_axis, offset, inner, to_whole):
    """Between part (outer, part_axis, inner) and whole[:, offset:offset+part_axis, :]."""
    block = part_axis * inner
    for t in range(cuda.grid(1), outer * block, cuda.gridsize(1)):
        o = t // block
        w = (o * whole_axis + offset) * inner + t - o * block
        if to_whole:
            whole[w] = part[t]
        else:
            part[t] = whole[w]


def copy_block(src, dst, outer, src_axis, dst_axis, offset, inner):
    """dst[o, offset:offset+src_axis, :] = src[o, :, :] on flat (outer, axis, inner) device arrays."""
    n = outer * src_axis * inner
    if n:
        _copy_block[grid(n)](src, dst, outer, src_axis, dst_axis, offset, inner, True)


def copy_block_back(src, dst, outer, src_axis, dst_axis, offset, inner):
    """The reverse of copy_block: dst[o, :, :] = src[o, offset:offset+dst_axis, :]."""
    n = outer * dst_axis * inner
    if n:
        _copy_block[grid(n)](dst, src, outer, dst_axis, src_axis, offset, inner, False)


def share_data(bottom, tops):
    """The tops view the bottom's data (again, if something replaced their memory)."""
    for blob in tops:
        if not blob.shares_data_with(bottom):
            blob.share_data(bottom)


@gpu_forward(ViewLayer)
def view_forward(layer, bottom, top):
    share_data(bottom[0], top)


@gpu_backward(ViewLayer)
def view_backward(layer, top, propagate_down, bottom):
    if propagate_down[0] and not top[0].shares_diff_with(bottom[0]):
        copy(top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), bottom[0].count)


@gpu_forward(SplitLayer)
def split_forward(layer, bottom, top):
    share_data(bottom[0], top)


@gpu_backward(SplitLayer)
def split_backward(layer, top, propagate_down, bottom):
    if not propagate_down[0]:
        return
    n = bottom[0].count
    dst = bottom[0].mutable_gpu_diff()
    copy(top[0].gpu_diff(), dst, n)
    for blob in top[1:]:
        add_into(dst, blob.gpu_diff(), n)


@gpu_forward(ConcatLayer)
def concat_forward(layer, bottom, top):
    if len(bottom) == 1:
        share_data(bottom[0], top)
        return
    join_parts(copy_block, [(b.gpu_data(), b.shape[layer.axis]) for b in bottom], top[0].mutable_gpu_data(),
               layer.outer, layer.inner)


@gpu_backward(ConcatLayer)
def concat_backward(layer, top, propagate_down, bottom):
    if len(bottom) == 1:
        view_backward(layer, top, propagate_down, bottom)
        return
    parts = [(b.mutable_gpu_diff() if down else None, b.shape[layer.axis]) for b, down in zip(bottom, propagate_down)]
    split_parts(copy_block_back, top[0].gpu_diff(), parts, layer.outer, layer.inner)


@gpu_forward(SilenceLayer)
def silence_forward(layer, bottom, top):
    """Nothing to do, as on the CPU."""


@gpu_backward(SilenceLayer)
def silence_backward(layer, top, propagate_down, bottom):
    for blob, down in zip(bottom, propagate_down):
        if down:
            fill(blob.mutable_gpu_diff(), 0, blob.count)
