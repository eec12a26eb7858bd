"""The ONNX graph builder: value names, initializers, nodes, and the per-layer context exporters get.

An exporter is a plain function ``fn(ctx) -> [onnx value name per top]`` (see ``LayerContext``).
It reads the dltrain layer (``ctx.layer``: its parameters and everything its ``setup``/``reshape``
computed), adds nodes with ``ctx.node`` and constants with ``ctx.const``/``ctx.weight``, and
returns the names of the values that hold its tops.
"""
import numpy as np

from dlcore.errors import DLTrainError


class ExportError(DLTrainError):
    """A net (or one of its layers) that cannot be written as ONNX."""


def unique_name(base, taken):
    """``base``, else ``base_1``, ``base_2``... : the first not in the set ``taken`` (added to it)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


class GraphBuilder:
    """Nodes and initializers of one ONNX graph, with unique value names."""

    def __init__(self, opset):
        self.opset = opset
        self.nodes = []
        self.initializers = []
        self.used = set()           # value names
        self.node_names = set()

    def fresh(self, base, taken=None):
        """A value name (or, with ``taken``, a name from that set) not used yet: ``base``, else
        ``base_1``, ``base_2``..."""
        return unique_name(base, self.used if taken is None else taken)

    def const(self, array, name, dtype=np.float32):
        """An initializer holding ``array``; returns its (unique) name."""
        from onnx import numpy_helper
        value = np.array(array, dtype=dtype, order="C")      # (ascontiguousarray would make a 0-D array 1-D)
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def ints(self, values, name):
        return self.const(np.asarray(values, np.int64).reshape(-1), name, np.int64)

    def node(self, op, inputs, outputs, name, doc, **attrs):
        from onnx import helper
        node = helper.make_node(op, list(inputs), list(outputs), name=self.fresh(name, self.node_names), doc_string=doc,
                                **{k: v for k, v in attrs.items() if v is not None})
        self.nodes.append(node)
        return node


class LayerContext:
    """What an exporter sees of one layer.

    ``layer``: the dltrain layer, set up and reshaped for the export's input shapes;
    ``param``: its LayerParameter; ``name``/``type``; ``bottoms``: the ONNX value names of its
    bottoms; ``bottom_shapes``/``top_shapes``: static shapes (tuples); ``bottom_varying``/
    ``top_varying``: per axis, whether that size follows the batch (``--batch dynamic``; all False
    otherwise); ``opset``; ``options``: the export's options (e.g. ``recurrent``).
    """

    def __init__(self, builder, layer, bottoms, bottom_shapes, top_shapes, bottom_varying, top_varying,
                 top_names, options):
        self.builder = builder
        self.layer = layer
        self.param = layer.layer_param
        self.name = layer.layer_param.name
        self.type = layer.layer_param.type
        self.bottoms = list(bottoms)
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.top_shapes = [tuple(s) for s in top_shapes]
        self.bottom_varying = [tuple(v) for v in bottom_varying]
        self.top_varying = [tuple(v) for v in top_varying]
        self.top_names = list(top_names)
        self.opset = builder.opset
        self.options = options
        self._count = 0

    @property
    def doc(self):
        return f"Caffe layer '{self.name}' ({self.type})"

    def fail(self, reason):
        """An ExportError naming this layer and its type."""
        return ExportError(f"layer '{self.name}' ({self.type}) cannot be exported to ONNX: {reason}")

    def temp(self, what):
        """A fresh value name for an intermediate result of this layer."""
        return self.builder.fresh(f"{self.name}/{what}")

    def node(self, op, inputs, outputs=1, **attrs):
        """Add one node; ``outputs``: a count (fresh names) or a list of names.  Returns the output
        name (one output) or the list of names.  The first node of a layer is named like the layer."""
        if isinstance(outputs, int):
            outputs = [self.temp(op.lower()) for _ in range(outputs)]
        name = self.name if self._count == 0 else f"{self.name}/{op}"
        self._count += 1
        self.builder.node(op, inputs, outputs, name, self.doc, **attrs)
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def const(self, array, what, dtype=np.float32):
        return self.builder.const(array, f"{self.name}/{what}", dtype)

    def ints(self, values, what):
        return self.builder.ints(values, f"{self.name}/{what}")

    def scalar(self, value, what="const"):
        return self.const(np.asarray(value, np.float32).reshape(()), what)

    def weight(self, index, what, shape=None):
        """The layer's parameter blob ``index`` as an initializer (reshaped to ``shape`` if given)."""
        data = np.asarray(self.layer.blobs[index].data, np.float32)
        return self.const(data if shape is None else data.reshape(shape), what)

    def shape_const(self, shape, varying, what="shape"):
        """A Reshape target: ``shape`` with -1 at the one axis that follows the batch (if any)."""
        dims = [int(d) for d in shape]
        moving = [i for i, v in enumerate(varying) if v]
        if len(moving) > 1:
            raise self.fail(f"with --batch dynamic, shape {tuple(dims)} has {len(moving)} axes that follow "
                            "the batch; export with a fixed --batch instead")
        for i in moving:
            dims[i] = -1
        return self.ints(dims, what)

    def reshape(self, value, shape, varying, what="reshape"):
        """``value`` reshaped to ``shape`` (static, or -1 where it follows the batch)."""
        return self.node("Reshape", [value, self.shape_const(shape, varying, what + "_shape")])

    # --- ops whose signature changed between opsets --------------------------------------------
    def reduce(self, op, value, axes, keepdims=1):
        """ReduceSum/ReduceMean/ReduceMax/ReduceSumSquare/ReduceL1 over ``axes`` (axes: an input from
        opset 13 for ReduceSum, from 18 for the others)."""
        axes = [int(a) for a in axes]
        if self.opset >= (13 if op == "ReduceSum" else 18):
            return self.node(op, [value, self.ints(axes, "axes")], keepdims=keepdims)
        return self.node(op, [value], axes=axes, keepdims=keepdims)

    def slice(self, value, axis, start, end, step=1):
        return self.node("Slice", [value, self.ints([start], "starts"), self.ints([end], "ends"),
                                   self.ints([axis], "axes"), self.ints([step], "steps")])

    def unsqueeze(self, value, axes):
        return self.node("Unsqueeze", [value, self.ints(axes, "axes")])

    def squeeze(self, value, axes):
        return self.node("Squeeze", [value, self.ints(axes, "axes")])
