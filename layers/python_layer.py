"""Caffe's Python layer: ``type: "Python"``, a layer written in Python by the user.

    layer { name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
            python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." }
            loss_weight: 1 }

The user's class sees exactly pycaffe's interface (Caffe's python_layer.hpp):

- the module is imported from ``sys.path``, then from the folder of the net
  file (``Layer.net_source``), then from the working directory; the folder
  it is found in is appended to ``sys.path``, so its own sibling imports work;
- the class is called with the LayerParameter; before ``setup`` the object
  gets ``param_str`` (also as the old ``param_str_``) and ``phase``
  (0 = TRAIN, 1 = TEST);
- ``setup(bottom, top)`` once, ``reshape(bottom, top)`` before every
  forward, ``forward(bottom, top)``, ``backward(top, propagate_down,
  bottom)`` with ``propagate_down`` a list of bools, one per bottom;
- ``self.blobs`` holds its learnable parameters: ``self.blobs.add_blob(*shape)``
  adds one, which the solver updates and snapshots save and load;
- bottoms and tops are dltrain Blobs: ``.data``/``.diff`` writable arrays,
  ``.reshape(*shape)``, ``.count``, ``.shape``, ``.num``, ``.channels``,
  ``.height``, ``.width``.

As in Caffe, a Python loss layer needs an explicit ``loss_weight: 1`` (it
is not a LossLayer).  The class may subclass dltrain's ``caffe.Layer`` (what
``import caffe`` gives where no real Caffe is installed), a real Caffe's
``caffe.Layer``, or nothing: dltrain calls the methods and supplies
``blobs``, ``phase`` and ``param_str`` itself.  For a class whose base is
not dltrain's, its ``__init__`` is not called (a real Caffe's base
constructor needs Caffe's C++ objects): do set-up work in ``setup``.

An exception from the user's code becomes a PluginError naming the layer,
its type, the module and the class (the user's own traceback is its
cause, shown by ``dltrain --debug``); it is also an instance of the
original exception's class, so ``except RuntimeError`` still works.
``sys.exit()`` or a KeyboardInterrupt raised by the user's code is a
failure too (a plain PluginError, exit code 1 from the CLI); the user's
own Ctrl-C (dlcore.errors.Interrupted) passes through.

A Python layer is code by definition: loading a net that names one runs
that module, as in Caffe.
"""
import os

import numpy as np

from dlcore.blob import Blob
from dlcore.errors import ConfigError
from dlcore.layer import LAYER_CODE_ERRORS, Layer, layer_code_failure
from dlcore.plugins import import_module_from
from dlcore.registry import register_layer

__all__ = ["BlobVec", "CaffeLayer", "PythonLayer"]


class BlobVec(list):
    """A layer's parameter blobs (pycaffe's BlobVec): a list with ``add_blob``."""

    def __init__(self, blobs=(), dtype=np.float32):
        super().__init__(blobs)
        self.dtype = np.dtype(dtype)

    def add_blob(self, *shape):
        """Append a zero-filled parameter blob of ``shape`` (``add_blob(10, 5)``)."""
        self.append(Blob(*shape, dtype=self.dtype))


class CaffeLayer:
    """The base class of Python layers: ``caffe.Layer`` in dltrain's pycaffe face.

    Subclasses implement ``setup``, ``reshape``, ``forward`` and
    ``backward``; ``self.blobs``, ``self.phase`` and ``self.param_str`` are
    supplied by the net.
    """

    def __init__(self, layer_param=None):
        self.layer_param = layer_param
        self.blobs = BlobVec()
        self.param_str = layer_param.python_param.param_str if layer_param is not None else ""
        self.phase = layer_param.phase if layer_param is not None else 0

    @property
    def type(self):
        return "Python"

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} does not implement forward(bottom, top)")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} does not implement backward(top, propagate_down, bottom)")


# --- classes whose base is not dltrain's caffe.Layer ---------------------------------------------
class _Supplied:
    """An attribute kept in the instance's own dict, placed ahead of the user's
    bases so that a real Caffe's read-only ``blobs``/``phase`` properties
    (which need its C++ layer) are never reached."""

    def __init__(self, name):
        self.key = "_dltrain_" + name

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        try:
            return obj.__dict__[self.key]
        except KeyError:
            raise AttributeError(self.key[len("_dltrain_"):]) from None

    def __set__(self, obj, value):
        obj.__dict__[self.key] = value


def _no_init(self, *args, **kwargs):
    pass


_adapted = {}


def _adapt(cls):
    """A subclass of ``cls`` whose ``blobs``/``phase``/``param_str`` are plain
    attributes and whose construction skips the foreign base's __init__."""
    if cls not in _adapted:
        namespace = {name: _Supplied(name) for name in ("blobs", "phase", "param_str", "param_str_")}
        namespace.update(__init__=_no_init, __module__=cls.__module__, __qualname__=cls.__qualname__,
                         __doc__=cls.__doc__)
        _adapted[cls] = type(cls.__name__, (cls,), namespace)
    return _adapted[cls]


def _instantiate(cls, layer_param):
    if isinstance(cls, type) and issubclass(cls, CaffeLayer):
        return cls(layer_param)
    return _adapt(cls)(layer_param)


@register_layer("Python")
class PythonLayer(Layer):
    """Runs a user's pycaffe-style layer object (see the module docstring)."""

    gpu_capable = False     # pycaffe's interface is host arrays: always the CPU path (as in Caffe)

    def __init__(self, layer_param, dtype=np.float32):
        super().__init__(layer_param, dtype=dtype)
        param = layer_param.python_param
        self.module_name = param.module
        self.class_name = param.layer
        self.param_str = param.param_str
        self.blobs = BlobVec(self.blobs, dtype=self.dtype)
        self.impl = None          # the user's layer object, made in setup

    @property
    def origin(self):
        return f"module '{self.module_name}', class '{self.class_name}'"

    # --- making the user's object ----------------------------------------------------------
    def _search_dirs(self):
        dirs = []
        if self.net_source:
            dirs.append(os.path.dirname(os.path.abspath(self.net_source)))
        dirs.append(os.getcwd())
        return dirs

    def _user_class(self):
        where = f"layer '{self.name}' (type 'Python')"
        if not self.module_name:
            raise ConfigError(f"{where}: python_param.module is not set", field="module")
        if not self.class_name:
            raise ConfigError(f"{where}: python_param.layer (the class name) is not set", field="layer")
        dirs = self._search_dirs()
        try:
            module = import_module_from(self.module_name, dirs)
        except ModuleNotFoundError as err:
            missing = getattr(err, "name", None)
            if missing and (self.module_name == missing or self.module_name.startswith(missing + ".")):
                raise ConfigError(f"{where}: cannot import module '{self.module_name}': no such module on "
                                  f"sys.path or in {', '.join(dict.fromkeys(dirs))} (class "
                                  f"'{self.class_name}')", field="module") from None
            self._reraise("import", err)
        except LAYER_CODE_ERRORS as err:
            self._reraise("import", err)
        cls = getattr(module, self.class_name, None)
        if cls is None or not callable(cls):
            names = sorted(n for n, v in vars(module).items() if isinstance(v, type) and not n.startswith("_")
                           and v.__module__ == module.__name__)
            defined = f" (it defines: {', '.join(names)})" if names else ""
            raise ConfigError(f"{where}: module '{self.module_name}' ({getattr(module, '__file__', '?')}) has no "
                              f"class '{self.class_name}'{defined}", field="layer")
        return cls

    def _make(self):
        cls = self._user_class()
        try:
            impl = _instantiate(cls, self.layer_param)
        except LAYER_CODE_ERRORS as err:
            self._reraise("construction", err)
        existing = getattr(impl, "blobs", None)
        if existing is not None and existing is not self.blobs:
            self.blobs.extend(b for b in existing if b not in self.blobs)
        impl.blobs = self.blobs
        impl.param_str = self.param_str
        try:
            impl.param_str_ = self.param_str      # the name in early pycaffe (2015)
        except AttributeError:
            pass
        impl.phase = self.phase
        return impl

    def _reraise(self, stage, err):
        """The user's code raised ``err`` in ``stage``: raise a PluginError naming
        this layer, or ``err`` itself (dltrain's own errors, the user's Ctrl-C)."""
        failure = layer_code_failure(self, stage, err, self.origin)
        if failure is None:
            raise err
        raise failure from err

    def _call(self, stage, method, *args):
        try:
            return getattr(self.impl, method)(*args)
        except LAYER_CODE_ERRORS as err:
            self._reraise(stage, err)

    # --- the Layer interface ----------------------------------------------------------------
    def setup(self, bottom, top):
        if self.impl is None:
            self.impl = self._make()
        self.impl.phase = self.phase
        self._call("setup", "setup", bottom, top)

    def reshape(self, bottom, top):
        self._call("reshape", "reshape", bottom, top)

    def forward_cpu(self, bottom, top):
        self._call("forward", "forward", bottom, top)

    def backward_cpu(self, top, propagate_down, bottom):
        self._call("backward", "backward", top, [bool(p) for p in propagate_down], bottom)

    def __repr__(self):
        return f"<PythonLayer '{self.name}' {self.module_name}.{self.class_name}>"
