"""Layer: the base class of every layer, built-in or plugin."""
import numpy as np

from . import backend as _backend
from .blob import Blob
from .errors import BlobError, ConfigError, DLTrainError, Interrupted

TRAIN, TEST = 0, 1

# What a layer's own code may raise that counts as that layer failing: any error, and also
# sys.exit() (SystemExit) or a KeyboardInterrupt it raises itself, which must not end a run
# silently (exit code 0) or pass for the user's Ctrl-C (that one is an Interrupted).
LAYER_CODE_ERRORS = (Exception, SystemExit, KeyboardInterrupt)


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
    raises in setup, reshape, forward or backward (``sys.exit()`` and a
    KeyboardInterrupt of its own included) becomes a
    :class:`dlcore.plugins.PluginError` naming the layer, its type and the
    plugin's module.

    GPU: a layer's GPU code lives in a CUDA module of its own, named by the
    class attribute ``cuda_module`` (``".neurons_cuda"``: the module beside
    the class's own; or an absolute name) and imported on first GPU use.  There,
    ``@gpu_forward(LayerClass)`` / ``@gpu_backward(LayerClass)`` register
    plain functions ``fn(layer, bottom, top)`` / ``fn(layer, top,
    propagate_down, bottom)`` that launch kernels on the blobs' device arrays
    (``blob.gpu_data()``, ``blob.mutable_gpu_diff()``...); subclasses inherit
    them.  A plugin may instead define ``forward_gpu``/``backward_gpu``
    methods on its class.  When the layer runs on the GPU (``self.gpu``, set
    by the Net from the backend's mode) and has GPU code, ``forward`` /
    ``backward`` run it; otherwise they run the CPU pair on host copies (the
    blobs copy between host and device as needed), so every layer runs in a
    GPU net.  Scratch device arrays and shape-derived tables go in
    ``self.workspace`` (one per layer, created on first use).
    """

    type = None                      # set by register_layer
    exact_num_bottom_blobs = None
    min_bottom_blobs = None
    max_bottom_blobs = None
    exact_num_top_blobs = None
    min_top_blobs = None
    max_top_blobs = None
    equal_num_bottom_top_blobs = False
    allows_in_place = True           # False: a top that is also a bottom is refused, naming the layer
    auto_top_blobs = False           # the net adds anonymous tops up to the minimum
    is_loss = False                  # the first top's loss_weight defaults to 1
    params = None                    # a plugin's parameter schema: {name: dlcore.Param}
    net_source = None                # the net file this layer was built from (set by Net), or None
    gpu_capable = True               # False: always the CPU pair, even in a GPU net (Python layers)
    cuda_module = None               # the module registering this class's GPU code (".x_cuda": beside the class's)
    runs_numba_threads = False       # True: the CPU passes run on Numba's threads (see Net.cpu_blas_context)

    def __init__(self, layer_param, dtype=np.float32):
        self.layer_param = layer_param
        self.dtype = np.dtype(dtype)
        self.phase = layer_param.phase if layer_param.HasField("phase") else TRAIN
        # Parameters stored in the definition itself (a Caffe-written model
        # carries them) are loaded as they are; setup then skips filling.
        self.blobs = []
        for index, stored in enumerate(layer_param.blobs):
            try:
                self.blobs.append(Blob(dtype=self.dtype).from_proto(stored))
            except BlobError as err:
                raise ConfigError(f"layer '{layer_param.name}' ({layer_param.type}) param {index}, stored in the "
                                  f"net definition: {err.message}") from None
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
        """The GPU forward: the code a CUDA module registered, or ``forward_cpu`` on host copies.

        (A plugin overriding this method may call it through ``super()``.)"""
        code = _lookup(type(self), "forward", methods=False)
        if code is None:
            self.forward_cpu(bottom, top)
        else:
            code(self, bottom, top)

    def backward_gpu(self, top, propagate_down, bottom):
        """The GPU backward: the code a CUDA module registered, or ``backward_cpu`` on host copies."""
        code = _lookup(type(self), "backward", methods=False)
        if code is None:
            self.backward_cpu(top, propagate_down, bottom)
        else:
            code(self, top, propagate_down, bottom)

    @classmethod
    def gpu_code(cls, stage):
        """This class's GPU ``stage`` ("forward" or "backward") as ``fn(layer, ...)``, or None.

        The one place GPU code is found: walking the class's bases, the
        first of a ``forward_gpu``-style method the class defines itself (a
        plugin's) or a function its ``cuda_module`` registered.
        """
        return _lookup(cls, stage, methods=True)

    @classmethod
    def has_gpu_forward(cls):
        return cls.gpu_code("forward") is not None

    @classmethod
    def has_gpu_backward(cls):
        return cls.gpu_code("backward") is not None

    @property
    def workspace(self):
        """This layer's :class:`dlcore.device.DeviceWorkspace` (scratch device arrays, cached tables)."""
        work = self.__dict__.get("_workspace")
        if work is None:
            from .device import DeviceWorkspace
            work = self._workspace = DeviceWorkspace()
        return work

    def allow_force_backward(self, bottom_index):
        return True

    # --- what the net calls -------------------------------------------------
    def code_failure(self, stage, err):
        """The PluginError to raise for ``err`` from this layer's code in ``stage``,
        or None to let ``err`` through: dltrain's own layers' errors, dltrain's
        own errors and the user's Ctrl-C are already what they say."""
        from .plugins import is_plugin_class
        return layer_code_failure(self, stage, err) if is_plugin_class(type(self)) else None

    def matrix_work(self):
        """Multiply-adds of one forward pass's matrix products at the current shapes (an estimate;
        0 for layers without): how a net weighs its BLAS work against its Numba-threaded work."""
        return 0

    def run_reshape(self, bottom, top):
        """``reshape``, as the net calls it before each forward (errors as ``forward``'s)."""
        try:
            self.reshape(bottom, top)
        except LAYER_CODE_ERRORS as err:
            failure = self.code_failure("reshape", err)
            if failure is None:
                raise
            raise failure from err

    def forward(self, bottom, top):
        try:
            code = self.gpu_code("forward") if self.gpu else None
            if code is not None:
                code(self, bottom, top)
            else:
                self.forward_cpu(bottom, top)
        except LAYER_CODE_ERRORS as err:
            failure = self.code_failure("forward", err)
            if failure is None:
                raise
            raise failure from err

    def backward(self, top, propagate_down, bottom):
        try:
            code = self.gpu_code("backward") if self.gpu else None
            if code is not None:
                code(self, top, propagate_down, bottom)
            else:
                self.backward_cpu(top, propagate_down, bottom)
        except LAYER_CODE_ERRORS as err:
            failure = self.code_failure("backward", err)
            if failure is None:
                raise
            raise failure from err

    def initialize(self, bottom, top):
        """Caffe's Layer::SetUp: check blob counts, setup, reshape, loss weights."""
        self.check_blob_counts(bottom, top)
        if self.params:
            self.read_params()
        try:
            self.setup(bottom, top)
            self.reshape(bottom, top)
        except ConfigError as err:
            if err.message.startswith("layer '"):
                raise
            # A shared helper's message (a filler, an axis) gets the layer it is about.
            raise ConfigError(f"layer '{self.name}' ({self.type}): {err.message}", path=err.path, line=err.line,
                              column=err.column, field=err.field) from None
        except LAYER_CODE_ERRORS as err:
            failure = self.code_failure("setup", err)
            if failure is None:
                raise
            raise failure from err
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
        if not self.allows_in_place and any(t is b for t in top for b in bottom):
            raise ConfigError(f"layer '{self.name}' ({self.type}) does not allow in-place computation")

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}'>"


_GPU_CODE = {}      # (layer class, "forward"/"backward") -> fn, registered by the CUDA modules
_GPU_FOUND = {}     # (layer class, stage, methods) -> what _lookup found (None: run the CPU pair)


def gpu_forward(layer_class):
    """Decorator, in a CUDA module: ``fn(layer, bottom, top)`` is ``layer_class``'s GPU forward."""
    return _register_gpu(layer_class, "forward")


def gpu_backward(layer_class):
    """Decorator, in a CUDA module: ``fn(layer, top, propagate_down, bottom)`` is ``layer_class``'s GPU backward."""
    return _register_gpu(layer_class, "backward")


def _register_gpu(layer_class, stage):
    def register(fn):
        _GPU_CODE[(layer_class, stage)] = fn
        _GPU_FOUND.clear()
        return fn
    return register


def _lookup(cls, stage, methods):
    """The GPU code of ``cls`` for ``stage``, found once; ``methods``: a plugin's own
    forward_gpu/backward_gpu counts (not when that very method asks, through super())."""
    key = (cls, stage, methods)
    if key not in _GPU_FOUND:
        _GPU_FOUND[key] = _find_gpu_code(cls, stage, methods) if cls.gpu_capable else None
    return _GPU_FOUND[key]


def _find_gpu_code(cls, stage, methods):
    import importlib
    bases = [klass for klass in cls.__mro__ if issubclass(klass, Layer) and klass is not Layer]
    for klass in bases:                  # first load every CUDA module the bases name: code a base's
        module = klass.__dict__.get("cuda_module")     # module registers may be for a subclass
        if module:
            importlib.import_module(_sibling(module, klass.__module__))
    for klass in bases:
        method = klass.__dict__.get(stage + "_gpu") if methods else None
        if method is not None:           # a plugin's own forward_gpu/backward_gpu
            return method
        code = _GPU_CODE.get((klass, stage))
        if code is not None:
            return code
    return None


def _sibling(module, owner):
    """``cuda_module`` as an absolute name: ".foo_cuda" is the module beside ``owner`` (in its package,
    or top-level for a top-level plugin module)."""
    if not module.startswith("."):
        return module
    package = owner.rpartition(".")[0]
    return f"{package}{module}" if package else module[1:]


def layer_code_failure(layer, stage, err, origin=None):
    """The PluginError for ``err``, raised by a plugin's or a Python layer's own
    code in ``stage``; None for dltrain's own errors (already clear) and for
    the user's Ctrl-C (an Interrupted), which pass through as they are.

    A SystemExit or KeyboardInterrupt becomes a plain PluginError (see
    dlcore.plugins._error_class); the original stays in ``.original``.
    """
    from .plugins import layer_failure
    if isinstance(err, (DLTrainError, Interrupted)):
        return None
    return layer_failure(layer, stage, err, origin)
