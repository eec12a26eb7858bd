"""dltrain's engine: blobs, layers, the layer registry, nets, fillers, config loading.

The names mirror pycaffe's where pycaffe has one (``Net``, ``TRAIN``,
``TEST``, ``set_mode_cpu``, ``set_mode_gpu``, ``set_device``), so Caffe users'
scripts port with few edits.  The GPU backend is :mod:`dlcore.backend`.
"""
from . import backend
from .backend import get_device, get_mode, gpu_available, set_device, set_mode_cpu, set_mode_gpu
from .blob import Blob
from . import log
from .errors import ConfigError, DLTrainError
from .layer import TEST, TRAIN, Layer
from .net import Net
from .params import Param
from .plugins import PluginError, load_plugins
from .registry import create_layer, get_layer_class, layer_types, register_layer
from .rng import set_random_seed

__all__ = ["Blob", "ConfigError", "DLTrainError", "Layer", "Net", "Param", "PluginError", "TEST", "TRAIN",
           "create_layer", "get_device", "get_layer_class", "get_mode", "gpu_available", "layer_types",
           "load_plugins", "register_layer", "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed"]
