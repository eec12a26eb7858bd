"""`caffe.coord_map`: how the coordinates of one NetSpec top map onto another's.

A layer's map is ``(axis, a, b)``: input coordinate ``x`` appears at output coordinate
``a * x + b`` in the spatial axes after ``axis`` (``a`` and ``b`` are per spatial axis when
the layer's kernel, stride or pad are lists).  Pointwise layers have the identity map
``(None, 1, 0)``, which fits any axis.  Maps compose along the net, so two tops with a
common ancestor can be related, and ``crop(top_from, top_to)`` writes the Crop layer that
aligns the first with the second (the FCN skip pattern), as pycaffe computes it.
"""
import numpy as np

from .net_spec import layers as L

__all__ = ["PASS_THROUGH_LAYERS", "UndefinedMapException", "AxisMismatchException", "conv_params", "crop_params",
           "coord_map", "compose", "inverse", "coord_map_from_to", "crop"]

# Layers that keep every coordinate where it is.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]

_LEGACY_2D_FIELDS = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(Exception):
    """The layer has no coordinate map (an InnerProduct, a global pooling...)."""


class AxisMismatchException(Exception):
    """Two maps on different axes cannot be composed."""


def conv_params(fn):
    """(axis, stride, effective kernel extent, pad) of a Convolution, Deconvolution, Im2col or Pooling.

    The fields are read from ``convolution_param=dict(...)`` when given, else from the keywords.
    """
    params = fn.params.get("convolution_param", fn.params)
    if _LEGACY_2D_FIELDS & (set(fn.params) | set(params)):
        raise AssertionError(f"{fn.type_name}: cropping does not support the legacy _h/_w fields "
                             "(give kernel_size, stride and pad, as lists for unequal axes)")
    if "kernel_size" not in params:
        raise UndefinedMapException(f"{fn.type_name} without kernel_size has no coordinate map")
    axis = params.get("axis", 1)
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    stride = np.array(params.get("stride", 1), ndmin=1)
    pad = np.array(params.get("pad", 0), ndmin=1)
    return axis, stride, (kernel - 1) * dilation + 1, pad


def crop_params(fn):
    """(axis, offset) of a Crop, with Crop's defaults (axis 2, offset 0)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map (axis, scale a, shift b) of one layer: input coordinate x is output coordinate a * x + b."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        # Crop's axis is the first cropped axis; the maps name the axis before the spatial ones
        return axis - 1, 1, -offset
    raise UndefinedMapException(f"layer type {fn.type_name} has no coordinate map")


def compose(base_map, next_map):
    """``next_map`` then ``base_map`` (x -> a1 * (a2 * x + b2) + b1): scales multiply, shifts add rescaled."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps on axis {ax1} and axis {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: y = a * x + b gives x = y / a - b / a."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    # A Crop's second bottom only gives the output's size: its coordinates do not map.
    bottoms = top.fn.inputs
    if top.fn.type_name == "Crop":
        bottoms = bottoms[:1]
    return bottoms


def _walk_back(start, visit=None):
    """Maps from ``start`` to each of its ancestors reached through mappable layers.

    ``visit(top)`` is asked of each top as it is reached (breadth first); the walk stops at the
    first top it accepts, returning (maps, that top).
    """
    maps = {start: (None, 1, 0)}
    frontier = [start]
    while frontier:
        top = frontier.pop(0)
        if visit is not None and visit(top):
            return maps, top
        try:
            layer_map = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mappable_bottoms(top):
            if bottom in maps:      # reached by another path: in a consistent net, the same map
                continue
            maps[bottom] = compose(maps[top], layer_map)
            frontier.append(bottom)
    return maps, None


def coord_map_from_to(top_from, top_to):
    """The map (axis, a, b) from coordinates of ``top_from`` to those of ``top_to``: to = a * from + b.

    Both are walked back to a common ancestor; a RuntimeError when there is none reachable
    through layers with a coordinate map.
    """
    from_maps, _ = _walk_back(top_from)
    to_maps, common = _walk_back(top_to, visit=lambda top: top in from_maps)
    if common is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    return compose(to_maps[common], inverse(from_maps[common]))


def crop(top_from, top_to):
    """A Crop layer (a NetSpec top) that crops ``top_from`` to the size and place of ``top_to``.

    AssertionError, as in pycaffe, when the two differ in scale, when ``top_from`` would need
    padding rather than cropping, or when the offset is not a whole number.
    """
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    if ax is None:      # only pointwise layers between them: nothing to crop, on the spatial axes
        ax = 1
    offsets = [int(v) for v in -np.round(np.array(b, ndmin=1))]
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=offsets))
