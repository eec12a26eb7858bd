"""The layer registry: built-in layers and plugins register through one call."""
import importlib

from .errors import ConfigError

_LAYERS = {}
_builtins_loaded = False


def register_layer(type_name):
    """Class decorator: make ``type_name`` (as written in ``type:``) build this class."""
    def decorate(cls):
        owner = _LAYERS.get(type_name)
        if owner is not None and owner is not cls:
            raise ConfigError(
                f"layer type '{type_name}' is registered twice: by {owner.__module__}.{owner.__qualname__} "
                f"and by {cls.__module__}.{cls.__qualname__}")
        _LAYERS[type_name] = cls
        cls.type = type_name
        return cls
    return decorate


def _load_builtins():
    # The catalog lives in the top-level `layers` package; importing it runs
    # every family's register_layer calls.
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        importlib.import_module("layers")


def layer_types():
    _load_builtins()
    return sorted(_LAYERS)


def get_layer_class(type_name):
    _load_builtins()
    try:
        return _LAYERS[type_name]
    except KeyError:
        raise ConfigError(f"unknown layer type '{type_name}' (known types: {', '.join(sorted(_LAYERS))})") from None


def create_layer(layer_param, phase=None, dtype=None):
    """Build a layer from a LayerParameter (or its prototxt text), as the Net does.

    ``phase`` (TRAIN=0 / TEST=1) overrides the parameter's own; ``dtype``
    defaults to float32.
    """
    import numpy as np
    from proto import caffe_pb2
    if isinstance(layer_param, str):
        from google.protobuf import text_format
        text, layer_param = layer_param, caffe_pb2.LayerParameter()
        try:
            text_format.Parse(text, layer_param)
        except text_format.ParseError as err:
            raise ConfigError(f"bad layer definition: {err}") from None
    else:
        copy = caffe_pb2.LayerParameter()
        copy.CopyFrom(layer_param)
        layer_param = copy
    if phase is not None:
        layer_param.phase = phase
    cls = get_layer_class(layer_param.type)
    return cls(layer_param, dtype=np.float32 if dtype is None else dtype)
