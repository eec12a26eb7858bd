"""GPU code of the activations in layers/activations.py (PReLU, ELU, AbsVal, Power, Exp, Log, BNLL,
Threshold, Swish, Clip).

Element-wise, grid-stride, on the blobs' flat device arrays, with the very
formulas the CPU loops use (``@formula`` in activations.py) and the scalars
the layer gives both (``forward_params``/``backward_params``, in the data's
dtype).  One kernel per formula and operand count, made on first use by
:func:`map_formula` (also the launcher of layers/elementwise_cuda.py); a
layer names its formulas and their operands (``ActivationLayer.forward_map``
and ``backward_map``), which its CPU loops use too.  PReLU's slope gradient is
the per-element term written to a scratch array and summed per channel by
``kernels_cuda.channel_sum`` (float64 accumulation).
"""
import importlib

from numba import cuda

from dlcore.device import copy, grid, jit, scalar
from dlcore.layer import gpu_backward, gpu_forward

from .activations import ActivationLayer, PReLULayer, prelu_slope_term, shifted_power, shifted_power_grad
from .kernels_cuda import channel_sum
from .neurons import relu, relu_grad


# --- the element-wise map ------------------------------------------------------

def _map_body(f, inputs, outputs):
    """A grid-stride kernel (n, params, *outputs, *inputs): outputs[..][i] = f(inputs[0][i], ..., *params)."""
    if outputs == 2:
        if inputs == 1:
            def kernel(n, p, u, v, a):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], *p)
        elif inputs == 2:
            def kernel(n, p, u, v, a, b):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], b[i], *p)
        else:
            def kernel(n, p, u, v, a, b, c):
                for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                    u[i], v[i] = f(a[i], b[i], c[i], *p)
    elif inputs == 1:
        def kernel(n, p, u, a):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], *p)
    elif inputs == 2:
        def kernel(n, p, u, a, b):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], b[i], *p)
    else:
        def kernel(n, p, u, a, b, c):
            for i in range(cuda.grid(1), n, cuda.gridsize(1)):
                u[i] = f(a[i], b[i], c[i], *p)
    return kernel


_MAPS = {}


def map_kernel(module, name, inputs, outputs):
    """The map kernel of the formula ``module.name`` with 1-3 input and 1-2 output arrays (made once)."""
    key = (module, name, inputs, outputs)
    kernel = _MAPS.get(key)
    if kernel is None:
        if not (1 <= inputs <= 3 and 1 <= outputs <= 2):
            raise ValueError(f"map_kernel: {inputs} inputs, {outputs} outputs (1-3 and 1-2 supported)")
        kernel = jit(_map_body(getattr(importlib.import_module(module), name), inputs, outputs))
        # how to make it again (bench/cuda_compile_check.py compiles every kernel a run used)
        kernel._dltrain_key = (__name__, "map_kernel", key)
        _MAPS[key] = kernel
    return kernel


def map_formula(f, n, inputs, outputs, params=()):
    """``outputs[0][i] = f(inputs[0][i], ..., *params)`` for i < n on the device (a formula returning a
    pair fills two outputs): the GPU's ``cpu_map`` (activations.py).  ``params``: scalars, passed as
    given (in the data's dtype, as a rule)."""
    if n:
        kernel = map_kernel(f.__module__, f.__name__, len(inputs), len(outputs))
        kernel[grid(n)](n, tuple(params), *outputs, *inputs)


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
