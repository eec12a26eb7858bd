"""The proof of an export: the ONNX model run in ONNX Runtime beside dltrain's own forward pass.

Inputs are random and seeded, shaped to what each input feeds: indices in [0, input_dim) for an
Embed, sequence-continuation flags for a recurrent layer's ``cont`` (0 at the first step, 1 after;
with the exact recurrent export also some streams restarting in the middle), standard normal values
otherwise.  The difference reported per output is max |onnx - dltrain| / max |dltrain| (the
largest error relative to the output's own scale; absolute where the output is all zeros).
"""
import numpy as np

from .graph import ExportError

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


def batch_axis(net, name):
    """The axis of input ``name`` that is the batch: 1 for Caffe's T x N sequences (the input reaches a
    recurrent layer's x, cont or exposed state, directly or through Embed / one-in-one-out layers that
    keep the leading axes), else 0."""
    read = readers(net)
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


def dltrain_forward(net, inputs):
    """{output name: array} of dltrain's forward pass from a fresh recurrent state."""
    for name, value in inputs.items():
        blob = net.blobs[name]
        if blob.shape != value.shape:
            blob.reshape(value.shape)
    net.reshape()
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    for layer in net.layers:
        if hasattr(layer, "reset") and layer.type in ("LSTM", "RNN"):
            layer.reset()
    net.forward()
    return {name: np.array(net.blobs[name].data, copy=True) for name in net.outputs}


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


def compare(net, session, inputs):
    """{output: relative difference} of ONNX Runtime against dltrain on ``inputs``."""
    want = dltrain_forward(net, inputs)
    got = session.run(list(want), {name: value for name, value in inputs.items()
                                   if name in {i.name for i in session.get_inputs()}})
    return {name: relative_difference(g, want[name]) for name, g in zip(want, got)}


def check_export(net, model_bytes, seed=0, tolerance=DEFAULT_TOLERANCE, restarts=False, batches=None):
    """Run the model in ONNX Runtime and dltrain on random inputs; returns {output: worst relative
    difference}; raises ExportError past ``tolerance``.  ``batches``: [(input shapes dict)] to try
    (default: the net's current shapes)."""
    session = onnx_session(model_bytes)
    worst = {}
    for k, shapes in enumerate(batches or [None]):
        if shapes:
            for name, shape in shapes.items():
                net.blobs[name].reshape(shape)
            net.reshape()
        diffs = compare(net, session, random_inputs(net, seed + k, restarts))
        for name, d in diffs.items():
            worst[name] = max(worst.get(name, 0.0), d)
    bad = {name: d for name, d in worst.items() if not d <= tolerance}
    if bad:
        listed = ", ".join(f"'{n}' {d:.3g}" for n, d in bad.items())
        raise ExportError(f"the ONNX model differs from dltrain's forward pass by more than the tolerance "
                          f"{tolerance:g} (max relative difference: {listed})")
    return worst


def random_weights(net, seed=0):
    """Fill every parameter blob with seeded random values that keep activations in range (weights
    ~ N(0, 1/fan_in), biases ~ N(0, 0.1)); BatchNorm's statistics get a positive variance and scale
    factor.  For exporting nets that come without trained weights (tests, checks)."""
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
            if len(shape) >= 2:
                fan_in = int(np.prod(shape[1:]))
                if layer.type in ("Deconvolution",):
                    fan_in = int(shape[0] * np.prod(shape[2:]))
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
