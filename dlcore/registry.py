"""The layer registry: built-in layers and plugins register through one call."""
import importlib

from .errors import ConfigError

_LAYERS = {}
_builtins_loaded = False


def _describe(cls):
    from .plugins import is_plugin_class
    where = "plugin" if is_plugin_class(cls) else "built-in layer"
    return f"{where} {cls.__module__}.{cls.__qualname__}"


def register_layer(type_name):
    """Class decorator: make ``type_name`` (as written in ``type:``) build this class.

    Built-in layers and plugins register through this one call.  A type
    that is already registered to another class (a built-in, or another
    plugin) is a ConfigError naming both.
    """
    def decorate(cls):
        from .plugins import is_plugin_class
        if not _builtins_loaded and is_plugin_class(cls):
            _load_builtins()     # so that a plugin's clash with a built-in is seen here
        owner = _LAYERS.get(type_name)
        if owner is not None and owner is not cls:
            raise ConfigError(
                f"layer type '{type_name}' is registered twice: by {_describe(owner)} "
                f"and by {_describe(cls)}")
        _LAYERS[type_name] = cls
        cls.type = type_name
        return cls
    return decorate


def _load_builtins():
    # The catalog is the `dltrain.layers` package; importing it runs every
    # family's register_layer calls.  This is the one place dlcore names it.
    # Marked loaded only once the import succeeded: a failed import raises
    # its own error again at the next lookup instead of "unknown layer type".
    global _builtins_loaded
    if not _builtins_loaded:
        importlib.import_module("dltrain.layers")
        _builtins_loaded = True


def _load_installed_plugins():
    # Plugins of installed packages (the dltrain.layers entry points), loaded
    # once; a broken one is noted, not raised, here (the CLI loads them strictly).
    from .plugins import load_entry_point_plugins
    load_entry_point_plugins(strict=False)


def layer_types():
    _load_builtins()
    _load_installed_plugins()
    return sorted(_LAYERS)


def get_layer_class(type_name):
    _load_builtins()
    if type_name not in _LAYERS:
        _load_installed_plugins()
    try:
        return _LAYERS[type_name]
    except KeyError:
        from .plugins import entry_point_failures
        failed = entry_point_failures()
        note = f"; plugins that failed to load: {'; '.join(failed)}" if failed else ""
        raise ConfigError(f"unknown layer type '{type_name}' (known types: {', '.join(sorted(_LAYERS))}){note}") \
            from None


def create_layer(layer_param, phase=None, dtype=None):
    """Build a layer from a LayerParameter (or its prototxt text), as the Net does.

    ``phase`` (TRAIN=0 / TEST=1) overrides the parameter's own; ``dtype``
    defaults to float32.
    """
    import numpy as np
    from dltrain.proto import caffe_pb2
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
