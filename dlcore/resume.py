"""Where a run stands beyond its weights, so that a resumed run continues bit for bit.

Caffe's SolverState keeps the iteration, the schedule position and the update history; on resume its data
layers start again from their first record and its random streams are reseeded.  dltrain also stores
(``SolverState.resume``, a field of its own range that Caffe's tools skip):

- dltrain's one global generator (:mod:`dlcore.rng`: Dropout's masks, DummyData's fillers, HDF5Data's
  shuffles, ``rand_skip``);
- each layer's own state, for the layers that keep one: a data layer's position in its source, its shuffled
  order and its private generators (the transformer's crops and flips, ImageData's shuffles, WindowData's
  sampler).

A layer takes part by defining two methods (built-in data layers do; a Python layer may too)::

    def resume_state(self):            # a dict of JSON values and NumPy arrays, or None
    def restore_resume_state(self, state):

``resume_state`` is called at iteration boundaries and must be cheap: return references to values the layer
never mutates in place afterwards.  ``restore_resume_state`` must not draw from the global generator (it is
restored last).  States are JSON, never pickles: loading one runs no code.
"""
import base64
import json

import numpy as np

from .errors import ConfigError
from .log import info
from .rng import get_rng

__all__ = ["ResumePoint", "capture", "restore", "generator_state", "new_generator", "set_generator_state"]


def generator_state(rng):
    """A NumPy Generator's state (a fresh dict), or None for no generator."""
    return None if rng is None else rng.bit_generator.state


def set_generator_state(rng, state):
    """Put ``state`` (from :func:`generator_state`) into ``rng``; a wrong kind is a ValueError."""
    if state is None or rng is None:
        return
    if state.get("bit_generator") != type(rng.bit_generator).__name__:
        raise ValueError(f"a {state.get('bit_generator')} state cannot go into a "
                         f"{type(rng.bit_generator).__name__} generator")
    rng.bit_generator.state = state


def new_generator(state):
    """A new Generator continuing from ``state`` (None -> None)."""
    if state is None:
        return None
    rng = np.random.default_rng(0)
    set_generator_state(rng, state)
    return rng


# --- JSON with arrays ------------------------------------------------------------------------------
_ARRAY = "__ndarray__"
_ALLOWED_DTYPES = frozenset("bool int8 int16 int32 int64 uint8 uint16 uint32 uint64 float32 float64".split())


def _to_json(value):
    if isinstance(value, np.ndarray):
        if value.dtype.name not in _ALLOWED_DTYPES:
            raise TypeError(f"cannot store a {value.dtype} array in a resume state")
        return {_ARRAY: base64.b64encode(np.ascontiguousarray(value).tobytes()).decode("ascii"),
                "dtype": value.dtype.name, "shape": list(value.shape)}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store a {type(value).__name__} in a resume state")


def _from_json(obj):
    if _ARRAY in obj:
        dtype = obj.get("dtype")
        if dtype not in _ALLOWED_DTYPES:
            raise ValueError(f"unknown array type {dtype!r}")
        array = np.frombuffer(base64.b64decode(obj[_ARRAY]), dtype=dtype)
        return array.reshape([int(d) for d in obj.get("shape", [array.size])]).copy()
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    return obj


def encode(state):
    return json.dumps(state, default=_to_json, separators=(",", ":")).encode("utf-8")


def decode(data):
    return json.loads(data.decode("utf-8"), object_hook=_from_json)


# --- capture and restore ------------------------------------------------------------------------------
class ResumePoint:
    """The states of a set of nets (train net first, then the test nets) and of the global generator at one
    moment: taken at each iteration boundary, written into a SolverState by :meth:`to_proto`."""

    def __init__(self, random_state, layers):
        self.random_state = random_state
        self.layers = layers        # [(net index, layer name, layer type, state dict)]

    def to_proto(self, message):
        """Fill a ``caffe_pb2.ResumeState``."""
        message.random_state = encode(self.random_state)
        for net_index, name, layer_type, state in self.layers:
            message.layer.add(net=net_index, name=name, type=layer_type, state=encode(state))
        return message


def capture(nets):
    """The :class:`ResumePoint` of ``nets`` now."""
    layers = []
    for net_index, net in enumerate(nets):
        for name, layer in zip(net.layer_names, net.layers):
            method = getattr(layer, "resume_state", None)
            if method is None:
                continue
            state = method()
            if state is not None:
                layers.append((net_index, name, layer.type, state))
    return ResumePoint(generator_state(get_rng()), layers)


def restore(message, nets, path):
    """Put a ``caffe_pb2.ResumeState`` read from ``path`` back into ``nets`` and the global generator.

    A layer of the state that the nets lack, or a layer of the nets that keeps a state the file lacks, is a
    ConfigError: the resumed run could not continue the stored one exactly.
    """
    stored = {}
    for entry in message.layer:
        stored[(entry.net, entry.name)] = entry
    expected = {}
    for net_index, net in enumerate(nets):
        for name, layer in zip(net.layer_names, net.layers):
            if getattr(layer, "restore_resume_state", None) is not None and \
                    getattr(layer, "resume_state", None) is not None and layer.resume_state() is not None:
                expected[(net_index, name)] = layer
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    for what, keys in (("has no state for", missing), ("has a state for", extra)):
        if keys:
            net_index, name = keys[0]
            net_label = "the train net" if net_index == 0 else f"test net #{net_index - 1}"
            tail = "" if what == "has no state for" else ", which this net does not have (or keeps no state)"
            raise ConfigError(f"the solver state {what} layer '{name}' of {net_label}{tail}: it was written for "
                              "another net", path=path)
    for key, layer in expected.items():
        entry = stored[key]
        if entry.type != layer.type:
            raise ConfigError(f"the solver state's layer '{entry.name}' is a {entry.type}, the net's is a "
                              f"{layer.type}: it was written for another net", path=path)
        try:
            layer.restore_resume_state(decode(entry.state))
        except (ValueError, KeyError, TypeError, IndexError) as err:
            raise ConfigError(f"the solver state of layer '{entry.name}' ({entry.type}) cannot be restored: {err}",
                              path=path) from None
    try:
        set_generator_state(get_rng(), decode(message.random_state))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"the solver state's random generator cannot be restored: {err}", path=path) from None
    if expected:
        info(f"Restored the position of {len(expected)} data layer(s) and the random streams")
