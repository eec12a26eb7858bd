"""Layer: the base class of every layer, built-in or plugin."""
import numpy as np

from .blob import Blob
from .errors import ConfigError

TRAIN, TEST = 0, 1


class Layer:
    """One node of the net: ``setup``, ``reshape``, ``forward``, ``backward``.

    A subclass implements ``setup(bottom, top)`` (once), ``reshape(bottom,
    top)`` (before every forward: set each top's shape), ``forward_cpu`` and
    ``backward_cpu``.  Learnable parameters are Blobs in ``self.blobs``;
    backward *adds* into their diffs (the solver clears them) and *writes*
    the bottom diffs where ``propagate_down[i]`` is true.

    Class attributes state how many bottoms/tops the layer takes (None: any).
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

    def __init__(self, layer_param, dtype=np.float32):
        self.layer_param = layer_param
        self.dtype = np.dtype(dtype)
        self.phase = layer_param.phase if layer_param.HasField("phase") else TRAIN
        # Parameters stored in the definition itself (a Caffe-written model
        # carries them) are loaded as they are; setup then skips filling.
        self.blobs = [Blob(dtype=self.dtype).from_proto(b) for b in layer_param.blobs]
        self.param_propagate_down = []
        self.loss_weights = []

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

    def allow_force_backward(self, bottom_index):
        return True

    # --- what the net calls -------------------------------------------------
    def forward(self, bottom, top):
        self.forward_cpu(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.backward_cpu(top, propagate_down, bottom)

    def set_up(self, bottom, top):
        """Caffe's Layer::SetUp: check blob counts, setup, reshape, loss weights."""
        self.check_blob_counts(bottom, top)
        self.setup(bottom, top)
        self.reshape(bottom, top)
        self.set_loss_weights(top)
        if len(self.param_propagate_down) < len(self.blobs):
            self.param_propagate_down += [True] * (len(self.blobs) - len(self.param_propagate_down))

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
