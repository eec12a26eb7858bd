"""Looking inside a training step: Caffe's debug_info lines and the search
for the first non-finite value when the loss turns NaN or infinite.

Both run the net one layer at a time through the Net's public
``forward_from_to(i, i)`` / ``backward_from_to(i, i)``, so they compute
exactly what ``forward_backward`` computes.
"""
import numpy as np

from .training_log import fmt, info

__all__ = ["param_ids", "forward_debug", "backward_debug", "update_debug", "find_non_finite"]


def param_ids(net):
    """For each layer, the net-wide index of each of its parameter blobs
    (Caffe's param_id_vecs_), into ``net.param_display_names``."""
    ids, next_id = [], 0
    for layer in net.layers:
        ids.append(list(range(next_id, next_id + len(layer.blobs))))
        next_id += len(layer.blobs)
    return ids


def _asum_mean(array):
    return float(np.abs(array, dtype=np.float64).sum() / array.size) if array.size else 0.0


def _forward_layer_info(net, i, ids):
    name = net.layer_names[i]
    for blob, blob_name in zip(net._top_vecs[i], net._top_name_vecs[i]):
        info(f"    [Forward] Layer {name}, top blob {blob_name} data: {fmt(_asum_mean(blob.data))}")
    for p, blob in enumerate(net.layers[i].blobs):
        display = net.param_display_names[ids[i][p]]
        info(f"    [Forward] Layer {name}, param blob {display} data: {fmt(_asum_mean(blob.data))}")


def _backward_layer_info(net, i):
    name = net.layer_names[i]
    for j, (blob, blob_name) in enumerate(zip(net._bottom_vecs[i], net._bottom_name_vecs[i])):
        if net.bottom_need_backward[i][j]:
            info(f"    [Backward] Layer {name}, bottom blob {blob_name} diff: {fmt(_asum_mean(blob.diff))}")
    layer = net.layers[i]
    for p, blob in enumerate(layer.blobs):
        if p < len(layer.param_propagate_down) and layer.param_propagate_down[p]:
            info(f"    [Backward] Layer {name}, param blob {p} diff: {fmt(_asum_mean(blob.diff))}")


def forward_debug(net):
    """Forward with Caffe's ``[Forward]`` lines; returns the loss."""
    ids = param_ids(net)
    loss = 0.0
    for i in range(len(net.layers)):
        loss += net.forward_from_to(i, i)
        _forward_layer_info(net, i, ids)
    net.loss = loss
    return loss


def backward_debug(net):
    """Backward with Caffe's ``[Backward]`` lines and the all-params norm line."""
    for i in range(len(net.layers) - 1, -1, -1):
        if net.layer_need_backward[i]:
            net.backward_from_to(i, i)
            _backward_layer_info(net, i)
    asum_data = asum_diff = sumsq_data = sumsq_diff = 0.0
    for blob in net.learnable_params:
        data = blob.data.astype(np.float64, copy=False)
        diff = blob.diff.astype(np.float64, copy=False)
        asum_data += float(np.abs(data).sum())
        asum_diff += float(np.abs(diff).sum())
        sumsq_data += float((data * data).sum())
        sumsq_diff += float((diff * diff).sum())
    info(f"    [Backward] All net params (data, diff): L1 norm = ({fmt(asum_data)}, {fmt(asum_diff)}); "
         f"L2 norm = ({fmt(np.sqrt(sumsq_data))}, {fmt(np.sqrt(sumsq_diff))})")


def update_debug(net):
    """Caffe's ``[Update]`` lines: each parameter's data and the update about to be applied."""
    ids = param_ids(net)
    owners = net.param_owners
    names = net.param_display_names
    layer_of = {}
    for i, layer_ids in enumerate(ids):
        for pid in layer_ids:
            layer_of[pid] = i
    for i, layer in enumerate(net.layers):
        for p, blob in enumerate(layer.blobs):
            pid = ids[i][p]
            layer_name = net.layer_names[i]
            diff = fmt(_asum_mean(blob.diff))
            if owners[pid] < 0:
                info(f"    [Update] Layer {layer_name}, param {names[pid]} data: {fmt(_asum_mean(blob.data))}; "
                     f"diff: {diff}")
            else:
                owner = owners[pid]
                info(f"    [Update] Layer {layer_name}, param blob {names[pid]} (owned by layer "
                     f"{net.layer_names[layer_of[owner]]}, param {names[owner]}) diff: {diff}")


def _finite(array):
    return bool(np.isfinite(array).all())


def find_non_finite(net):
    """Re-run one forward and backward a layer at a time and say where a value
    first turns non-finite, e.g. ``output 'ip1' of layer 'ip1' (forward)``.

    Layers without bottoms (data sources) are not re-run: their current
    outputs are checked as they are, so a bad batch is found, not a fresh
    one.  Param diffs are cleared first.  Returns None when nothing
    non-finite shows up.
    """
    n = len(net.layers)
    names = net.layer_names
    for blob in net.learnable_params:
        blob.diff[...] = 0
    for i in range(n):
        name = names[i]
        layer = net.layers[i]
        for p, blob in enumerate(layer.blobs):
            if not _finite(blob.data):
                return f"parameter {p} of layer '{name}' (forward: the weights themselves)"
        if net._bottom_vecs[i]:
            net.forward_from_to(i, i)
        for blob, blob_name in zip(net._top_vecs[i], net._top_name_vecs[i]):
            if not _finite(blob.data):
                return f"output '{blob_name}' of layer '{name}' (forward)"
    for i in range(n - 1, -1, -1):
        if not net.layer_need_backward[i]:
            continue
        name = names[i]
        net.backward_from_to(i, i)
        for j, (blob, blob_name) in enumerate(zip(net._bottom_vecs[i], net._bottom_name_vecs[i])):
            if net.bottom_need_backward[i][j] and not _finite(blob.diff):
                return f"gradient of input '{blob_name}' of layer '{name}' (backward)"
        for p, blob in enumerate(net.layers[i].blobs):
            if not _finite(blob.diff):
                return f"gradient of parameter {p} of layer '{name}' (backward)"
    return None
