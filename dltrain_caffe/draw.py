"""`caffe.draw`: a picture of a net, as Caffe 1.0's python/caffe/draw.py draws it.

Each layer is a box (a Graphviz ``record``) labelled with its name and type,
plus kernel size, stride and pad for Convolution, Deconvolution and Pooling
(and, with ``display_lrm``, the learning-rate multipliers of the layers that
learn).  Boxes are coloured by kind: convolutions red, pooling orange, inner
products purple, others blue; an in-place layer (one bottom that is also its
one top, as ReLU and Dropout usually are) is green and drawn with an edge
to and from its blob.  Blobs are grey octagons; a blob that no later layer
reads (a net output: the loss, the accuracy, ``prob``) stays a plain
ellipse, as in Caffe's pictures.  An edge out of a layer is labelled with
its output count (``Batch N`` for Data layers).  ``phase`` keeps only the
layers of that phase (an include/exclude rule without a phase applies to
both phases).

The graph is built with pydot (``pip install 'dltrain[plot]'``).  PNG, SVG
and every other image format are rendered by Graphviz's ``dot`` program;
``.dot`` (also ``.gv`` and Caffe's ``.raw``) is the graph's own text and
needs no Graphviz.  Old (V0/V1) nets are upgraded first, as dltrain loads
them.  ``dltrain draw`` is a thin command around :func:`draw_net_to_file`.
"""
import os
import shutil
import subprocess

from dlcore.errors import DLTrainError, require_module
from dltrain.proto import caffe_pb2

__all__ = ["LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "BLOB_STYLE", "DrawError", "GraphvizError",
           "get_pooling_types_dict", "get_edge_label", "get_layer_lr_mult", "get_layer_label",
           "choose_color_by_layertype", "get_pydot_graph", "draw_net", "draw_net_to_file"]

# Caffe's styles: every layer is a filled record; its colour comes from choose_color_by_layertype.
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

# The formats written as the graph's text, without running Graphviz.
TEXT_FORMATS = ("dot", "gv", "raw")

LEARNING_TYPES = ("Convolution", "Deconvolution", "InnerProduct")

INSTALL_GRAPHVIZ = ("install Graphviz (apt-get install graphviz, brew install graphviz, or conda install graphviz), "
                    "or write a .dot file, which needs no Graphviz")


class DrawError(DLTrainError, ValueError):
    """The net cannot be drawn as asked (Caffe raises a ValueError for these)."""


class GraphvizError(DLTrainError):
    """pydot or Graphviz's `dot` program is missing, or dot failed."""


def get_pooling_types_dict():
    """{number: name} of PoolingParameter's pooling methods (0: 'MAX', ...)."""
    return {value.number: name
            for name, value in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """The label of the edges out of ``layer``: its batch size or output count, else an empty label."""
    if layer.type == "Data":
        return "Batch " + str(layer.data_param.batch_size)
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer):
    """(weights, bias) learning-rate multipliers of a Convolution, Deconvolution or InnerProduct layer."""
    if layer.type not in LEARNING_TYPES:
        raise DrawError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = layer.param
    if len(specs) > 2:
        raise DrawError(f"layer '{layer.name}': could not parse the learning rate multiplier "
                        f"({len(specs)} param specs, expected at most 2)")
    multipliers = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return tuple(multipliers)


def _record_text(text):
    """``text`` safe inside a quoted Graphviz id whose record label it becomes."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    for special in "{}|<>":
        text = text.replace(special, "\\" + special)
    return text


def get_layer_label(layer, rankdir, display_lrm=False):
    """The layer's box text, quoted for Graphviz: name, (type), then the window and lr_mult lines.

    A vertical graph (TB, BT) has room across, so the parts are separated by
    spaces; a horizontal one by (Graphviz's) line breaks.
    """
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [_record_text(layer.name)]
    if layer.type == "Pooling":
        pool = get_pooling_types_dict()[layer.pooling_param.pool]
        parts.append(f"({_record_text(layer.type)} {pool})")
    else:
        parts.append(f"({_record_text(layer.type)})")
    if layer.type in ("Convolution", "Deconvolution", "Pooling"):
        if layer.type == "Pooling":
            window = layer.pooling_param
            kernel, stride, pad = window.kernel_size, window.stride, window.pad
        else:
            # Caffe shows the first value of each repeated field, or its default.
            window = layer.convolution_param
            kernel = window.kernel_size[0] if len(window.kernel_size) else 1
            stride = window.stride[0] if len(window.stride) else 1
            pad = window.pad[0] if len(window.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in LEARNING_TYPES:
        weights_mult, bias_mult = get_layer_lr_mult(layer)
        if weights_mult or bias_mult:
            parts.append(f"lr mult: {weights_mult:.1f}, {bias_mult:.1f}")
    return '"%s"' % separator.join(parts)


def choose_color_by_layertype(layertype):
    """The fill colour of a layer's box by its type."""
    if layertype in ("Convolution", "Deconvolution"):
        return "#FF5050"
    if layertype == "Pooling":
        return "#FF9900"
    if layertype == "InnerProduct":
        return "#CC33FF"
    return "#6495ED"


def _in_phase(layer, phase):
    """Does ``layer`` belong to ``phase``?  Caffe's draw rule: included if it has no include rule or an
    include rule names the phase, unless an exclude rule names it.  A rule that names no phase (only a
    stage or a level) holds in both phases; Caffe's draw.py took it for TRAIN."""
    if len(layer.include) and len(layer.exclude):
        raise DrawError(f"layer '{layer.name}' has both include and exclude specified")

    def names_phase(rule):
        return not rule.HasField("phase") or rule.phase == phase

    included = not len(layer.include) or any(names_phase(rule) for rule in layer.include)
    return included and not any(names_phase(rule) for rule in layer.exclude)


def _import_pydot():
    return require_module("pydot", "drawing a net", "pydot", "plot", error=GraphvizError)


def _quoted(name):
    return '"%s"' % name.replace("\\", "\\\\").replace('"', '\\"')


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """The net as a ``pydot.Dot`` graph (see the module doc for what is drawn).

    ``phase``: caffe_pb2.TRAIN or TEST to keep only that phase's layers; None keeps them all.
    """
    pydot = _import_pydot()
    from dlcore.upgrade import upgraded_net
    caffe_net = upgraded_net(caffe_net, notice=False)
    graph = pydot.Dot(_quoted(caffe_net.name or "Net"), graph_type="digraph", rankdir=rankdir)
    # Nodes by key, in the order first seen; a blob's node is replaced at each mention, so its style is
    # that of its last use (octagon when read, plain when only written), as in Caffe.
    nodes = {}
    edges = []
    for layer in caffe_net.layer:
        if phase is not None and not _in_phase(layer, phase):
            continue
        key = f"{layer.name}_{layer.type}"
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            style = NEURON_LAYER_STYLE
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
        # The label is the node's name: Graphviz shows a node's name when it has no label.
        nodes[key] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(_quoted(bottom), **BLOB_STYLE)
            edges.append((bottom + "_blob", key, '""'))
        top_label = get_edge_label(layer) if label_edges else '""'
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(_quoted(top))
            edges.append((key, top + "_blob", top_label))
    for node in nodes.values():
        graph.add_node(node)
    for source, target, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[target], label=label))
    return graph


def _render(graph, ext):
    """The graph in format ``ext``: its text for dot/gv/raw, else what Graphviz's dot makes of it."""
    text = graph.to_string().encode("utf-8")
    if ext in TEXT_FORMATS:
        return text
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizError(f"drawing a .{ext} file needs Graphviz's 'dot' program, which was not found on "
                            f"PATH: {INSTALL_GRAPHVIZ}")
    try:
        done = subprocess.run([dot, f"-T{ext}"], input=text, capture_output=True)
    except OSError as err:
        raise GraphvizError(f"cannot run Graphviz's dot ({dot}): {err.strerror or err}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphvizError(f"Graphviz's dot could not draw a .{ext} file: "
                            f"{message[0] if message else f'exit status {done.returncode}'}")
    return done.stdout


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The picture of ``caffe_net`` (a caffe_pb2.NetParameter) as bytes in format ``ext`` ('png', 'svg',
    'pdf', ... through Graphviz's dot; 'dot', 'gv' or 'raw' for the graph's text)."""
    graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
    return _render(graph, ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Draw ``caffe_net`` into ``filename``, in the format its extension names ('.dot' or '.raw': the
    graph's text, to feed to Graphviz yourself).  The file is written only once the picture is made."""
    from dlcore.config import write_atomic
    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:] if "." in os.path.basename(filename) else ""
    if not ext:
        raise DrawError(f"{filename}: the file name needs an extension naming the format (.png, .svg, .dot, ...)")
    picture = draw_net(caffe_net, rankdir, ext.lower(), phase, display_lrm)
    try:
        write_atomic(filename, picture)
    except OSError as err:
        raise DLTrainError(f"{filename}: cannot write the picture: {err.strerror or err}") from None
