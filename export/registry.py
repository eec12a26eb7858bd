"""The exporter registry: one function per Caffe layer type (built-in families and plugins alike)."""

_EXPORTERS = {}
_builtins_loaded = False


def register_exporter(layer_type, fn=None):
    """Register ``fn(ctx) -> [value name per top]`` as the ONNX exporter of ``layer_type``.

    Use it as ``register_exporter("Gram", fn)`` or as a decorator ``@register_exporter("Gram")``.
    A later registration of the same type replaces the earlier one (a plugin may override a
    built-in exporter).  ``ctx`` is an :class:`dltrain.export.graph.LayerContext`.
    """
    if fn is None:
        def decorate(f):
            _EXPORTERS[layer_type] = f
            return f
        return decorate
    _EXPORTERS[layer_type] = fn
    return fn


def builtin_exporter(layer_type):
    """Decorator for dltrain's own exporters: a plugin's registration of the same type wins, even one
    made before the built-in families were imported."""
    def decorate(f):
        _EXPORTERS.setdefault(layer_type, f)
        return f
    return decorate


def _load_builtins():
    global _builtins_loaded
    if not _builtins_loaded:
        from . import dense, neurons, normalization, recurrent, structural, vision  # noqa: F401
        _builtins_loaded = True


def get_exporter(layer_type):
    _load_builtins()
    return _EXPORTERS.get(layer_type)


def exporter_types():
    _load_builtins()
    return sorted(_EXPORTERS)
