"""dltrain's engine: blobs, layers, the layer registry, nets, fillers, config loading.

The names mirror pycaffe's where pycaffe has one (``Net``, ``TRAIN``,
``TEST``, ``set_mode_cpu``), so Caffe users' scripts port with few edits.
"""
from .blob import Blob
from . import log
from .errors import ConfigError, DLTrainError
from .layer import TEST, TRAIN, Layer
from .net import Net
from .params import Param
from .plugins import PluginError, load_plugins
from .registry import create_layer, get_layer_class, layer_types, register_layer
from .rng import set_random_seed

_mode = "cpu"


def set_mode_cpu():
    """Run nets on the CPU (the only backend until the GPU backend lands)."""
    global _mode
    _mode = "cpu"


def get_mode():
    return _mode


__all__ = ["Blob", "ConfigError", "DLTrainError", "Layer", "Net", "Param", "PluginError", "TEST", "TRAIN",
           "create_layer", "get_layer_class", "get_mode", "layer_types", "load_plugins", "register_layer",
           "set_mode_cpu", "set_random_seed"]
