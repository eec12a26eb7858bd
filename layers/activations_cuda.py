"""GPU code of the activations in layers/activations.py (PReLU, ELU, AbsVal, Power, Exp, Log, BNLL,
Threshold, Swish, Clip).

Element-wise, grid-stride, on the blobs' flat device arrays, with the very
formulas the CPU loops use (``@formula`` in activations.py) and the scalars
the layer gives both (``forward_params``/``backward_params``, in the data's
dtype).  One kernel per formula and operand count, made on first use by
:func:`dlcore.device.map_formula`; a
layer names its formulas and their operands (``ActivationLayer.forward_map``
and ``backward_map``), which its CPU loops use too.  PReLU's slope gradient is
the per-element term written to a scratch array and summed per channel by
``kernels_cuda.channel_sum`` (float64 accumulation).
"""
from numba import cuda

from dlcore.device import copy, grid, jit, map_formula, scalar
from dlcore.layer import gpu_backward, gpu_forward

from .activations import ActivationLayer, PReLULayer, prelu_slope_term, shifted_power, shifted_power_grad
from .kernels_cuda import channel_sum
from .neurons import relu, relu_grad


# --- the activations: a formula each way (``ActivationLayer.forward_map``/``backward_map``) --------

def keep_input(layer, bottom, top):
    """Copy the input aside when the layer keeps it (in place, for backward)."""
    if layer.keeps_bottom(bottom, top):
        copy(bottom[0].gpu_data(), layer.bottom_memory.mutable_gpu_data(), bottom[0].count)


def run_map(layer, m, bottom, top, params):
    """The layer's ``Map`` ``m`` over the device arrays of its operands."""
    writes = []
    for name in m.writes:
        blob, diff = layer.operand(name, bottom, top)
        writes.append(blob.mutable_gpu_diff() if diff else blob.mutable_gpu_data())
    reads = []
    for name in m.reads:
        blob, diff = layer.operand(name, bottom, top)
        reads.append(blob.gpu_diff() if diff else blob.gpu_data())
    map_formula(m.formula, bottom[0].count, reads, writes, params)


@gpu_forward(ActivationLayer)
def activation_forward(layer, bottom, top):
    keep_input(layer, bottom, top)
    run_map(layer, layer.forward_map, bottom, top, layer.forward_params())


@gpu_backward(ActivationLayer)
def activation_backward(layer, top, propagate_down, bottom):
    if layer.backward_map is None:          # no gradient (Threshold): the CPU code says so
        layer.backward_cpu(top, propagate_down, bottom)
    elif propagate_down[0]:
        run_map(layer, layer.backward_map, bottom, top, layer.backward_params())


def power_forward(x, y, n, power, scale, shift):
    """y = (shift + scale x)^power on device arrays (LRN's WITHIN_CHANNEL mode, layers/normalization_cuda.py)."""
    dt = y.dtype
    map_formula(shifted_power, n, [x], [y], (scalar(power, dt), scalar(scale, dt), scalar(shift, dt)))


def power_backward(x, y, dy, dx, n, power, scale, shift):
    """dx = dy * d(shift + scale x)^power / dx on device arrays (LRN's WITHIN_CHANNEL mode)."""
    dt = dx.dtype
    map_formula(shifted_power_grad, n, [x, y, dy], [dx], (scalar(power, dt), scalar(scale, dt), scalar(shift, dt)))


# --- PReLU ---------------------------------------------------------------------

@jit
def _prelu_map(x, dy, out, slope, n, g, backward):
    """prelu_map's elements (activations.py): the channel of element i is (i // dim) % channels."""
    for i in range(cuda.grid(1), n, cuda.gridsize(1)):
        a = slope[(i // g.dim) % g.channels // g.div_factor]
        if backward:
            out[i] = relu_grad(x[i], dy[i], a)
        else:
            out[i] = relu(x[i], a)


@gpu_forward(PReLULayer)
def prelu_forward_gpu(layer, bottom, top):
    keep_input(layer, bottom, top)
    n = top[0].count
    if n:
        x = layer.input_blob(bottom, top).gpu_data()
        _prelu_map[grid(n)](x, x, top[0].mutable_gpu_data(), layer.blobs[0].gpu_data(), n, layer.geometry(bottom),
                            False)


@gpu_backward(PReLULayer)
def prelu_backward_gpu(layer, top, propagate_down, bottom):
    n = bottom[0].count
    if not n:
        return
    x = layer.input_blob(bottom, top).gpu_data()
    g = layer.geometry(bottom)
    # the slope gradient first: in place, writing the bottom diff overwrites the top diff
    if layer.slope_propagates():
        # slope_diff += the per-channel (or, shared, total) sum of the elements' terms
        terms = layer.workspace.get("prelu_terms", n, x.dtype)
        map_formula(prelu_slope_term, n, [x, top[0].gpu_diff()], [terms])
        if layer.channel_shared:
            channel_sum(terms, 1, 1, n, layer.blobs[0].mutable_gpu_diff(), accumulate=True)
        else:
            channel_sum(terms, n // (g.channels * g.dim), g.channels, g.dim, layer.blobs[0].mutable_gpu_diff(),
                        accumulate=True)
    if propagate_down[0]:
        _prelu_map[grid(n)](x, top[0].gpu_diff(), bottom[0].mutable_gpu_diff(), layer.blobs[0].gpu_data(), n, g,
                            True)
