"""The proof of an export: the ONNX model run in ONNX Runtime beside dltrain's own forward pass.

Inputs are random and seeded, shaped to what each input feeds: indices in [0, input_dim) for an
Embed, sequence-continuation flags for a recurrent layer's ``cont`` (0 at the first step, 1 after;
with the exact recurrent export also some streams restarting in the middle), standard normal values
otherwise.  The difference reported per output is max |onnx - dltrain| / max |dltrain| (the
largest error relative to the output's own scale; absolute where the output is all zeros).

Every layer's tops are compared too (Split and Input layers aside), not only the net's outputs: a
saturated Softmax at the end turns large logits into the same one-hot output on both sides, so a
wrong layer before it would pass unseen.  A check-only copy of the model exposes the ONNX value of
each top as an extra graph output (the written model stays as it is), and dltrain's side is taken
right after each layer's forward (an in-place layer overwrites its bottom).  The check fails naming
the first top, in net order, past the tolerance: where the export goes wrong.
"""
import numpy as np

from .graph import ExportError, unique_name

DEFAULT_TOLERANCE = 1e-3


def readers(net):
    """blob name -> [(layer index, bottom index)] of the layers reading it (through Split layers:
    a Split's readers are its bottom's)."""
    out = {}
    aliases = {}
    for i, layer in enumerate(net.layers):
        bottoms = [aliases.get(b, b) for b in net._bottom_name_vecs[i]]
        if layer.type == "Split":
            for t in net._top_name_vecs[i]:
                aliases[t] = bottoms[0]
            continue
        for j, b in enumerate(bottoms):
            out.setdefault(b, []).append((i, j))
    return out


def input_kinds(net):
    """input name -> ("index", K) for an Embed's indices (K = input_dim), ("cont", None) for a
    recurrent layer's sequence-continuation flags, else ("values", None)."""
    read = readers(net)
    kinds = {}
    for name in net.inputs:
        kind = ("values", None)
        for i, j in read.get(name, []):
            layer = net.layers[i]
            if layer.type == "Embed":
                kind = ("index", int(layer.input_dim))
            elif layer.type in ("LSTM", "RNN") and j == 1:
                kind = ("cont", None)
        kinds[name] = kind
    return kinds


def batch_axis(net, name, read=None):
    """The axis of input ``name`` that is the batch: 1 for Caffe's T x N sequences (the input reaches a
    recurrent layer's x, cont or exposed state, directly or through Embed / one-in-one-out layers that
    keep the leading axes), else 0.  ``read``: ``readers(net)`` if at hand (asking for every input)."""
    read = readers(net) if read is None else read
    keep_axes = {"Embed", "ReLU", "Sigmoid", "TanH", "Dropout", "AbsVal", "Power", "Exp", "Log", "BNLL",
                 "ELU", "PReLU", "Threshold", "Clip", "Swish", "Scale", "Bias"}
    frontier, seen = [name], set()
    while frontier:
        blob = frontier.pop()
        if blob in seen:
            continue
        seen.add(blob)
        for i, j in read.get(blob, []):
            layer = net.layers[i]
            if layer.type in ("LSTM", "RNN"):
                if not (layer.static_input and j == 2):
                    return 1
            elif layer.type in keep_axes and j == 0:
                frontier.extend(net._top_name_vecs[i])
    return 0


def random_inputs(net, seed=0, restarts=False):
    """{input name: array} for the net's current input shapes (see the module doc)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (kind, k) in input_kinds(net).items():
        shape = net.blobs[name].shape
        if kind == "index":
            out[name] = rng.integers(0, k, size=shape).astype(np.float32)
        elif kind == "cont":
            cont = np.ones(shape, np.float32)
            cont[0] = 0
            if restarts and shape[0] > 2:
                # some streams start a new sequence in the middle
                for n in range(0, int(np.prod(shape[1:])), 2):
                    cont.reshape(shape[0], -1)[rng.integers(1, shape[0]), n] = 0
            out[name] = cont
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def set_input_shapes(net, shapes):
    """Reshape the inputs to ``shapes`` ({input: shape}) and the net after them."""
    for name, shape in shapes.items():
        net.blobs[name].reshape(shape)
    net.reshape()


def _set_inputs(net, inputs):
    for name, value in inputs.items():
        blob = net.blobs[name]
        if blob.shape != value.shape:
            blob.reshape(value.shape)
    net.reshape()
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    for layer in net.layers:
        if layer.type in ("LSTM", "RNN"):
            layer.reset()


def dltrain_forward(net, inputs):
    """{output name: array} of dltrain's forward pass from a fresh recurrent state."""
    _set_inputs(net, inputs)
    net.forward()
    return {name: np.array(net.blobs[name].data, copy=True) for name in net.outputs}


def dltrain_forward_tops(net, inputs, tops):
    """Like dltrain_forward, and also {(layer index, top): array} of ``tops`` ([(layer index, top)])
    as each was right after its layer's forward."""
    _set_inputs(net, inputs)
    wanted = {}
    for i, top in tops:
        wanted.setdefault(i, []).append(top)
    taken = {}
    for i in range(len(net.layers)):
        net.forward_from_to(i, i)
        for top in wanted.get(i, ()):
            taken[i, top] = np.array(net.blobs[top].data, copy=True)
    return {name: np.array(net.blobs[name].data, copy=True) for name in net.outputs}, taken


def onnx_session(model_bytes):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def relative_difference(got, want):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    scale = float(np.max(np.abs(want)))
    diff = float(np.max(np.abs(got - want)))
    if not np.isfinite(diff):
        return float("inf")
    return diff / scale if scale > 0 else diff


def compared_tops(net, blob_values):
    """[(layer index, top, onnx value)] of ``blob_values`` (the exporter's (layer index, top, value) per
    layer top), less Input and Split layers (inputs are fed as they are; a Split only copies)."""
    return [(i, top, value) for i, top, value in blob_values
            if net.layers[i].type not in ("Input", "Split")]


def with_extra_outputs(model_bytes, values, model=None):
    """A check-only copy of the model with every value in ``values`` also a graph output; returns
    (model bytes, {value: output name}).  ``model``: the onnx.ModelProto of ``model_bytes`` if at hand.

    The copy is ``model_bytes`` followed by a message that holds only the new outputs (and Identity
    nodes): protobuf merges concatenated messages, appending to repeated fields, so the weights are
    neither parsed nor written again."""
    import onnx
    from onnx import helper
    if model is None:
        model = onnx.ModelProto()
        model.ParseFromString(model_bytes)
    graph = model.graph
    produced = {name for node in graph.node for name in node.output}
    outputs = {o.name for o in graph.output}
    taken = produced | outputs | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    extra = onnx.ModelProto()
    names = {}
    for value in dict.fromkeys(values):
        if value in outputs:
            names[value] = value
            continue
        if value in produced:
            name = value
        else:       # an input or a weight passed through: a graph output must come from a node
            name = unique_name(f"check/{value}", taken)
            extra.graph.node.append(helper.make_node("Identity", [value], [name], name=name))
        extra.graph.output.append(helper.make_empty_tensor_value_info(name))
        outputs.add(name)
        names[value] = name
    return model_bytes + extra.SerializeToString(), names


class CheckReport:
    """What the check found: ``outputs`` ({net output: worst relative difference}) and ``tops``
    ([(layer name, layer type, top, worst relative difference)] in net order, one per layer top)."""

    def __init__(self, outputs, tops):
        self.outputs, self.tops = outputs, tops


def check_export(net, model_bytes, seed=0, tolerance=DEFAULT_TOLERANCE, restarts=False, batches=None,
                 blob_values=(), model=None):
    """Run the model in ONNX Runtime and dltrain on random inputs and compare the net's outputs and,
    with ``blob_values`` ([(layer index, top, onnx value)] from the export), every layer's tops;
    returns a :class:`CheckReport`; raises ExportError past ``tolerance`` naming the first top that
    differs.  ``batches``: [(input shapes dict)] to try (default: the net's current shapes).
    ``model``: the onnx.ModelProto of ``model_bytes`` if at hand (saves parsing it)."""
    session = onnx_session(model_bytes)
    graph_inputs = {i.name for i in session.get_inputs()}
    tops = compared_tops(net, blob_values)
    probe = names = asked = None
    if tops:
        probe_bytes, names = with_extra_outputs(model_bytes, [value for _, _, value in tops], model)
        probe = onnx_session(probe_bytes)
        asked = list(dict.fromkeys(names.values()))
    worst, worst_top = {}, {}
    for k, shapes in enumerate(batches or [None]):
        if shapes:
            set_input_shapes(net, shapes)
        inputs = random_inputs(net, seed + k, restarts)
        want, want_tops = dltrain_forward_tops(net, inputs, [(i, top) for i, top, _ in tops])
        feed = {name: value for name, value in inputs.items() if name in graph_inputs}
        got = dict(zip(want, session.run(list(want), feed)))
        for name in want:
            worst[name] = max(worst.get(name, 0.0), relative_difference(got[name], want[name]))
        if probe is not None:
            got_values = dict(zip(asked, probe.run(asked, feed)))
            for i, top, value in tops:
                d = relative_difference(got_values[names[value]], want_tops[i, top])
                worst_top[i, top] = max(worst_top.get((i, top), 0.0), d)
    report = CheckReport(worst, [(net.layers[i].layer_param.name, net.layers[i].type, top, worst_top[i, top])
                                 for i, top, _ in tops])
    for layer, kind, top, d in report.tops:
        if not d <= tolerance:
            raise ExportError(f"the ONNX model differs from dltrain's forward pass: layer '{layer}' ({kind}): "
                              f"top '{top}' differs by {d:.1e} relative (tolerance {tolerance:.1e})")
    bad = {name: d for name, d in worst.items() if not d <= tolerance}
    if bad:
        listed = ", ".join(f"'{n}' {d:.3g}" for n, d in bad.items())
        raise ExportError(f"the ONNX model differs from dltrain's forward pass by more than the tolerance "
                          f"{tolerance:g} (max relative difference: {listed})")
    return report


def random_weights(net, seed=0):
    """Fill every parameter blob with seeded random values that keep activations in range (weights
    ~ N(0, 1/fan_in), biases ~ N(0, 0.1)); BatchNorm's statistics get a positive variance and scale
    factor.  For exporting nets that come without trained weights (tests, checks)."""
    from dlcore.filler import _fans
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if layer.type == "BatchNorm":
            c = layer.blobs[0].count
            layer.blobs[0].data[...] = rng.standard_normal(c).astype(np.float32)
            layer.blobs[1].data[...] = rng.uniform(0.5, 2.0, c).astype(np.float32)
            layer.blobs[2].data[...] = np.float32(rng.uniform(0.5, 2.0))
            continue
        for blob in layer.blobs:
            shape = blob.shape
            if len(shape) >= 2 and blob.count:      # (an empty blob: nothing to fill, no fans)
                fan_in, fan_out = _fans(blob)          # Caffe's: count / shape[0], count / shape[1]
                if layer.type == "Deconvolution":      # its weights are (C_in, C_out / group, ...)
                    fan_in = fan_out
                if layer.type == "Embed":
                    fan_in = 1
                std = 1.0 / np.sqrt(max(fan_in, 1))
            else:
                std = 0.1
            blob.data[...] = (rng.standard_normal(shape) * std).astype(np.float32)
        if layer.type == "PReLU":
            layer.blobs[0].data[...] = rng.uniform(0.05, 0.5, layer.blobs[0].shape).astype(np.float32)
        if layer.type == "Scale" and layer.blobs and len(layer.layer_param.bottom) == 1:   # scales near 1
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape).astype(np.float32)
