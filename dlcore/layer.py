"""Layer: the base class of every layer, built-in or plugin."""
import numpy as np

from . import backend as _backend
from .blob import Blob
from .errors import ConfigError, DLTrainError

TRAIN, TEST = 0, 1


class Layer:
    """One node of the net: ``setup``, ``reshape``, ``forward``, ``backward``.

    A subclass implements ``setup(bottom, top)`` (once), ``reshape(bottom,
    top)`` (before every forward: set each top's shape), ``forward_cpu`` and
    ``backward_cpu``.  Learnable parameters are Blobs in ``self.blobs``;
    backward *adds* into their diffs (the solver clears them) and *writes*
    the bottom diffs where ``propagate_down[i]`` is true.

    Class attributes state how many bottoms/tops the layer takes (None: any).

    Plugins: a layer outside dltrain's catalog (see :mod:`dlcore.plugins`)
    may declare ``params = {"name": Param(type, default, ...)}``; the values
    come from ``python_param { param_str: "<YAML mapping>" }`` and are set
    as attributes (``self.name``) before ``setup``.  An exception a plugin
    raises in setup, forward or backward becomes a
    :class:`dlcore.plugins.PluginError` naming the layer, its type and the
    plugin's module.

    GPU: ``forward_gpu``/``backward_gpu`` (same signature as the CPU pair)
    launch CUDA kernels on the blobs' device arrays (``blob.gpu_data()``,
    ``blob.mutable_gpu_diff()``...).  When the layer runs on the GPU
    (``self.gpu``, set by the Net from the backend's mode) and its class
    defines them, ``forward``/``backward`` call them; otherwise they call
    the CPU pair, which works on host copies (the blobs copy between host
    and device as needed), so every layer runs in a GPU net.
    """

    type = None                      # set by register_layer
    exact_num_bottom_blobs = None
    min_bottom_blobs = None
    max_bottom_blobs = None
    exact_num_top_blobs = None
    min_top_blobs = None
    max_top_blobs = None
    equal_num_bottom_top_blobs = False
    auto_top_blobs = False           # the net adds anonymous tops up to the minimum
    is_loss = False                  # the first top's loss_weight defaults to 1
    params = None                    # a plugin's parameter schema: {name: dlcore.Param}
    net_source = None                # the net file this layer was built from (set by Net), or None
    gpu_capable = True               # False: always the CPU pair, even in a GPU net (Python layers)

    def __init__(self, layer_param, dtype=np.float32):
        self.layer_param = layer_param
        self.dtype = np.dtype(dtype)
        self.phase = layer_param.phase if layer_param.HasField("phase") else TRAIN
        # Parameters stored in the definition itself (a Caffe-written model
        # carries them) are loaded as they are; setup then skips filling.
        self.blobs = [Blob(dtype=self.dtype).from_proto(b) for b in layer_param.blobs]
        self.param_propagate_down = []
        self.loss_weights = []
        # Run forward_gpu/backward_gpu?  The backend's mode at construction; a Net sets its own.
        self.gpu = _backend.is_gpu()

    @property
    def name(self):
        return self.layer_param.name

    # --- what a layer implements ------------------------------------------
    def setup(self, bottom, top):
        """One-time setup: read parameters, create and fill ``self.blobs``."""

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} must implement reshape")

    def forward_cpu(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__} has no CPU forward")

    def backward_cpu(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__} has no CPU backward")

    def forward_gpu(self, bottom, top):
        """The GPU forward (CUDA kernel launches on the blobs' device arrays).

        A subclass that does not override it runs ``forward_cpu`` on host copies.
        """
        self.forward_cpu(bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        """The GPU backward; a subclass that does not override it runs ``backward_cpu``."""
        self.backward_cpu(top, propagate_down, bottom)

    @classmethod
    def has_gpu_forward(cls):
        return cls.gpu_capable and cls.forward_gpu is not Layer.forward_gpu

    @classmethod
    def has_gpu_backward(cls):
        return cls.gpu_capable and cls.backward_gpu is not Layer.backward_gpu

    def allow_force_backward(self, bottom_index):
        return True

    # --- what the net calls -------------------------------------------------
    def forward(self, bottom, top):
        try:
            if self.gpu and self.has_gpu_forward():
                self.forward_gpu(bottom, top)
            else:
                self.forward_cpu(bottom, top)
        except Exception as err:
            if not _plugin_failure(self, err):
                raise
            raise _failure(self, "forward", err) from err

    def backward(self, top, propagate_down, bottom):
        try:
            if self.gpu and self.has_gpu_backward():
                self.backward_gpu(top, propagate_down, bottom)
            else:
                self.backward_cpu(top, propagate_down, bottom)
        except Exception as err:
            if not _plugin_failure(self, err):
                raise
            raise _failure(self, "backward", err) from err

    def set_up(self, bottom, top):
        """Caffe's Layer::SetUp: check blob counts, setup, reshape, loss weights."""
        self.check_blob_counts(bottom, top)
        if self.params:
            self.read_params()
        try:
            self.setup(bottom, top)
            self.reshape(bottom, top)
        except Exception as err:
            if not _plugin_failure(self, err):
                raise
            raise _failure(self, "setup", err) from err
        self.set_loss_weights(top)
        if len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down += [True] * (len(self.blobs) - len(self.param_propagate_down))

    def read_params(self):
        """Check ``python_param.param_str`` (YAML) against ``self.params`` and
        set each value as an attribute; returns {name: value}."""
        from .params import parse_params
        values = parse_params(self.params, self.layer_param.python_param.param_str, self.name,
                              self.type or type(self).__name__)
        mine = self.__dict__.get("param_values") or {}
        for key, value in values.items():
            taken = hasattr(type(self), key) or (key in self.__dict__ and key not in mine)
            if not key.isidentifier() or taken:
                raise ConfigError(f"layer type '{self.type}': parameter name '{key}' clashes with a Layer "
                                  "attribute or is not a Python name; rename it in the layer's params")
            setattr(self, key, value)
        self.param_values = values
        return values

    def set_loss_weights(self, top):
        weights = list(self.layer_param.loss_weight)
        if weights and len(weights) != len(top):
            raise ConfigError(f"layer '{self.name}': loss_weight must be unspecified or given once per top "
                              f"({len(top)} tops, {len(weights)} loss_weight values)")
        if not weights and self.is_loss:
            weights = [1.0]
        self.loss_weights = (weights + [0.0] * len(top))[:len(top)]
        for blob, weight in zip(top, self.loss_weights):
            if weight:
                blob.diff[...] = weight

    def loss(self, top_index):
        return self.loss_weights[top_index] if top_index < len(self.loss_weights) else 0.0

    def check_blob_counts(self, bottom, top):
        def check(what, n, exact, lo, hi):
            if exact is not None and n != exact:
                raise ConfigError(f"layer '{self.name}' ({self.type}) takes {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise ConfigError(f"layer '{self.name}' ({self.type}) takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise ConfigError(f"layer '{self.name}' ({self.type}) takes at most {hi} {what} blob(s), got {n}")
        check("bottom", len(bottom), self.exact_num_bottom_blobs, self.min_bottom_blobs, self.max_bottom_blobs)
        check("top", len(top), self.exact_num_top_blobs, self.min_top_blobs, self.max_top_blobs)
        if self.equal_num_bottom_top_blobs and len(bottom) != len(top):
            raise ConfigError(f"layer '{self.name}' ({self.type}) needs as many tops as bottoms, "
                              f"got {len(bottom)} bottoms and {len(top)} tops")

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"


def _plugin_failure(layer, err):
    """Should ``err`` from ``layer`` become a PluginError?  Only for plugin
    layers, and never for dltrain's own errors (already clear)."""
    from .plugins import is_plugin_class
    return not isinstance(err, DLTrainError) and is_plugin_class(type(layer))


def _failure(layer, stage, err):
    from .plugins import layer_failure
    return layer_failure(layer, stage, err)
