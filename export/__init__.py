"""`dltrain export`: a Caffe deploy net and its weights as an ONNX model, checked in ONNX Runtime.

    from dltrain.export import export_onnx
    result = export_onnx("deploy.prototxt", "model.onnx", weights="w.caffemodel")   # checks by default
    result.differences        # {output blob: max relative difference against dltrain}
    result.worst_top          # (layer, type, top, difference): the layer top that differs most

The net is built by dltrain in the TEST phase (so every layer's shapes and parameters are what
dltrain's forward pass uses), then each layer is written by the exporter registered for its type
(``register_exporter``; dltrain's own families are in this package's modules).  The graph's inputs
and outputs keep the net's blob names; the weights are embedded as initializers named
``<layer>/<what>``; every node carries its Caffe layer's name (node name and doc_string).

Plugins: ``register_exporter("MyType", fn)`` where ``fn(ctx)`` adds nodes with ``ctx.node(op,
inputs, **attrs)`` and constants with ``ctx.const(array, what)`` / ``ctx.weight(i, what)``, and
returns one ONNX value name per top (see :class:`dltrain.export.graph.LayerContext`).
"""
import time

import numpy as np

from dlcore.errors import DLTrainError, require_module

from .graph import ExportError, GraphBuilder, LayerContext
from .registry import exporter_types, get_exporter, register_exporter

# Opset 17: run by ONNX Runtime 1.13 and later (the [onnx] extra asks for 1.18), TensorRT 8.6+,
# OpenVINO 2023+, and onnxruntime-web; it has every operator the exporters use.
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 21
RECURRENT_MODES = ("exact", "onnx")

# Why a type is never exported (the one-line error says so)
_NOT_EXPORTED = {
    "Python": "Python layers run arbitrary Python code",
    **{kind: "only Input layers can feed an exported net (data layers feed training and testing)"
       for kind in ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData")},
    "HDF5Output": "it writes files",
    "Accuracy": "it needs labels (training/testing only); remove it from the deploy net",
    "Filter": "its output size depends on the data",
    "LSTMUnit": "a building block of Caffe's unrolled LSTM; export the LSTM layer instead",
    "Im2col": "not a deploy-net layer",
}


class ExportResult:
    """What an export made: ``model`` (onnx.ModelProto), ``path``, ``differences`` ({output: max
    relative difference} or None when not checked), ``top_differences`` ([(layer, type, top, max
    relative difference)] for every layer top in net order, or None), ``seconds`` (the export,
    without the check), ``check_seconds``."""

    def __init__(self, model, path, differences, seconds, check_seconds, top_differences=None):
        self.model, self.path, self.differences = model, path, differences
        self.seconds, self.check_seconds = seconds, check_seconds
        self.top_differences = top_differences

    @property
    def worst_top(self):
        """The (layer, type, top, difference) of the layer top that differs most, or None."""
        return max(self.top_differences, key=lambda t: t[3], default=None) if self.top_differences else None


def onnxruntime_available():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _require_onnx():
    require_module("onnx", "exporting to ONNX", "the onnx package", "onnx")


def load_net(model, weights=None, random_seed=None):
    """dltrain's TEST net of ``model`` with ``weights`` (a .caffemodel path or paths separated by
    commas); without weights, seeded random ones if ``random_seed`` is given, else the fillers'."""
    import dlcore
    from dlcore.net import weight_files
    from .check import random_weights
    dlcore.set_random_seed(0 if random_seed is None else random_seed)
    net = dlcore.Net(model, dlcore.TEST)
    if weights:
        for path in weight_files(weights):
            net.copy_from(path)
    elif random_seed is not None:
        random_weights(net, random_seed)
    return net


def export_onnx(model, out=None, weights=None, opset=DEFAULT_OPSET, batch=None, check=None,
                tolerance=None, seed=0, recurrent="exact", batch_axes=None, net=None):
    """Export ``model`` (a deploy .prototxt/.yaml path or NetParameter) with ``weights`` to ONNX.

    ``out``: the .onnx path to write (None: only return the model).  ``batch``: None (the net's own
    input shapes), an int (the batch size), or "dynamic" (a symbolic batch axis).  ``check``: run
    the model in ONNX Runtime against dltrain (None: when onnxruntime is installed); fails past
    ``tolerance`` (default 1e-3 relative).  ``recurrent``: "exact" or "onnx" (see
    dltrain.export.recurrent).  ``batch_axes``: {input: axis} where the batch is not the automatic
    choice (axis 0; axis 1 for Caffe's T x N sequence inputs).  ``net``: an already-built dltrain
    Net to export instead.  Returns an :class:`ExportResult`.
    """
    _require_onnx()
    from .check import DEFAULT_TOLERANCE, check_export, set_input_shapes
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: choose {MIN_OPSET} to {MAX_OPSET} "
                          f"(default {DEFAULT_OPSET})")
    if recurrent not in RECURRENT_MODES:
        raise ExportError(f"recurrent must be one of {', '.join(RECURRENT_MODES)}, got {recurrent!r}")
    dynamic = batch == "dynamic"
    if batch is not None and not dynamic and (not isinstance(batch, (int, np.integer)) or batch <= 0):
        raise ExportError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    started = time.perf_counter()
    if net is None:
        net = load_net(model, weights)
    base = {name: tuple(net.blobs[name].shape) for name in net.inputs}
    axes = _batch_axes(net, base, batch_axes) if batch is not None else {}
    if batch is not None and not dynamic:
        set_input_shapes(net, _batched(base, axes, int(batch)))
    shapes = {name: tuple(blob.shape) for name, blob in net.blobs.items()}
    varying = _varying_axes(net, base, axes, shapes) if dynamic else {}
    blob_values = []
    model_proto = build_model(net, shapes, varying, int(opset), {"recurrent": recurrent}, blob_values)
    seconds = time.perf_counter() - started
    data = model_proto.SerializeToString()
    differences, top_differences, check_seconds = None, None, 0.0
    have_onnxruntime = onnxruntime_available()
    if check is None:
        check = have_onnxruntime
    if check:
        if not have_onnxruntime:
            raise DLTrainError("--check needs onnxruntime: pip install 'dltrain[onnx]' (or export with --no-check)")
        t0 = time.perf_counter()
        batches = [base, _batched(base, axes)] if dynamic else None      # (the net is at base now)
        report = check_export(net, data, seed=seed, restarts=recurrent == "exact",
                              tolerance=DEFAULT_TOLERANCE if tolerance is None else float(tolerance),
                              batches=batches, blob_values=blob_values, model=model_proto)
        differences, top_differences = report.outputs, report.tops
        check_seconds = time.perf_counter() - t0
    if out is not None:
        _write(out, data)
    return ExportResult(model_proto, out, differences, seconds, check_seconds, top_differences)


def _batched(base, axes, size=None):
    """The input shapes ``base`` with batch ``size`` on each input's batch axis (None: one more)."""
    out = {}
    for name, shape in base.items():
        shape = list(shape)
        shape[axes[name]] = shape[axes[name]] + 1 if size is None else size
        out[name] = tuple(shape)
    return out


def _batch_axes(net, base, explicit):
    """input -> its batch axis: ``explicit``'s, else axis 0, or 1 for an input that reaches a recurrent
    layer; where that choice makes the net's shapes invalid (a T x N input that reaches no recurrent
    layer, e.g. a bag of characters), axis 1 for every input of two or more axes."""
    from dlcore.errors import ConfigError
    from .check import batch_axis, readers, set_input_shapes
    explicit = dict(explicit or {})
    for name in explicit:
        if name not in base:
            raise ExportError(f"batch_axes names '{name}', which is not an input of the net "
                              f"(inputs: {', '.join(base)})")
    read = readers(net)
    first = {n: explicit.get(n, batch_axis(net, n, read)) for n in base}
    second = {n: explicit.get(n, 1 if len(base[n]) >= 2 else 0) for n in base}
    error = None
    for axes in (first, second):
        for name, shape in base.items():
            if len(shape) <= axes[name]:
                raise ExportError(f"input '{name}' (shape {shape}) has no batch axis {axes[name]}")
        try:
            set_input_shapes(net, _batched(base, axes))
            return axes
        except ConfigError as err:
            error = error or err
        finally:
            set_input_shapes(net, base)
    raise ExportError(f"cannot change the batch size of the net's inputs: {error}; give the batch axis of each "
                      "input (batch_axes, --batch-axis NAME=AXIS) or export without --batch")


def _varying_axes(net, base, axes, shapes):
    """blob name -> per axis, whether its size follows the batch (found by reshaping the net to one
    more and comparing every blob's shape)."""
    from .check import set_input_shapes
    set_input_shapes(net, _batched(base, axes))
    out = {}
    for name, blob in net.blobs.items():
        other = tuple(blob.shape)
        mine = shapes[name]
        out[name] = tuple(a != b for a, b in zip(mine, other)) if len(other) == len(mine) else (True,) * len(mine)
    set_input_shapes(net, base)
    return out


def _write(path, data):
    from dlcore.config import write_atomic
    try:
        write_atomic(path, data)
    except OSError as err:
        raise DLTrainError(f"cannot write '{path}': {err.strerror or err}") from None


def build_model(net, shapes, varying, opset, options, blob_values=None):
    """The onnx.ModelProto of dltrain ``net`` with its blobs' ``shapes`` (and the axes ``varying``
    with the batch).  ``blob_values``: a list to append (layer index, top, ONNX value name) to for
    every top of every exported layer (what the check compares)."""
    from onnx import TensorProto, checker, helper

    builder = GraphBuilder(opset)
    layers = net.layers
    bottoms_of, tops_of = net._bottom_name_vecs, net._top_name_vecs
    outputs = list(net.outputs)
    last_writer = {}
    for i in range(len(layers)):
        for top in tops_of[i]:
            last_writer[top] = i
    no_varying = lambda name: varying.get(name, (False,) * len(shapes[name]))      # noqa: E731
    # blob names are kept for the inputs and for the last value of each blob; earlier writes of an
    # in-place blob get names of their own
    builder.used.update(net.inputs)
    builder.used.update(last_writer)
    value_of = {}
    for name in net.inputs:
        value_of[name] = name
    for i, layer in enumerate(layers):
        kind = layer.layer_param.type
        if kind == "Input":
            continue
        exporter = get_exporter(kind)
        if exporter is None:
            reason = _NOT_EXPORTED.get(kind)
            if reason is None and getattr(layer, "is_loss", False):
                reason = "loss layers are for training; remove it from the deploy net"
            if reason is None:
                reason = "no ONNX exporter is registered for this type (a plugin may add one with " \
                         "dltrain.export.register_exporter)"
            raise ExportError(f"layer '{layer.name}' ({kind}) cannot be exported to ONNX: {reason}")
        bottoms = bottoms_of[i]
        ctx = LayerContext(builder, layer, [value_of[b] for b in bottoms], [shapes[b] for b in bottoms],
                           [shapes.get(t, ()) for t in tops_of[i]],
                           [no_varying(b) for b in bottoms],
                           [no_varying(t) for t in tops_of[i]], tops_of[i], options)
        produced = list(exporter(ctx))
        if len(produced) != len(tops_of[i]):
            raise ExportError(f"layer '{layer.name}' ({kind}): its ONNX exporter gave {len(produced)} values for "
                              f"{len(tops_of[i])} tops")
        for j, (top, value) in enumerate(zip(tops_of[i], produced)):
            value_of[top] = _name_value(builder, top, value, last_writer[top] == i and top in outputs, ctx,
                                        produced)
            if blob_values is not None:
                blob_values.append((i, top, value_of[top]))
    graph_outputs = []
    for name in outputs:
        if value_of.get(name) != name:
            builder.node("Identity", [value_of[name]], [name], f"{name}/output", f"net output '{name}'")
        graph_outputs.append(_value_info(name, shapes[name], no_varying(name), TensorProto, helper))
    graph_inputs = [_value_info(n, shapes[n], no_varying(n), TensorProto, helper) for n in net.inputs]
    graph = helper.make_graph(builder.nodes, net.name or "net", graph_inputs, graph_outputs,
                              initializer=builder.initializers)
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="dltrain",
                              ir_version=helper.find_min_ir_version_for(opsets))
    model.doc_string = f"Caffe net '{net.name}' exported by dltrain" if net.name else "exported by dltrain"
    checker.check_model(model)
    return model


def _name_value(builder, top, value, is_final_output, ctx, produced):
    """The value name that holds ``top`` after this layer: a net output's last write is renamed to the
    blob's name when one node of this layer made it, nothing reads it and it is not also another of the
    layer's tops (``produced``: its values, one per top); else an Identity is added at the end."""
    if not is_final_output or value in ctx.bottoms:
        return value
    producer = [node for node in builder.nodes if value in node.output]
    readers = [node for node in builder.nodes if value in node.input]
    if len(producer) == 1 and not readers and produced.count(value) == 1:
        outputs = producer[0].output
        outputs[list(outputs).index(value)] = top
        return top
    return value


def _value_info(name, shape, varying, TensorProto, helper):
    dims = ["batch" if v else int(d) for d, v in zip(shape, varying)]
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


__all__ = ["DEFAULT_OPSET", "ExportError", "ExportResult", "LayerContext", "export_onnx", "exporter_types",
           "load_net", "register_exporter"]
