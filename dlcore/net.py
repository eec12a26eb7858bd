"""Net: the layer graph built from a NetParameter (Caffe's Net, pycaffe's face).

Building follows Caffe's Net::Init: filter layers by phase/level/stage,
turn legacy top-level inputs into an Input layer, insert Split layers where
one top feeds several bottoms (so their diffs are summed), wire in-place
layers, set every layer up, decide which layers need backward, and collect
learnable parameters (sharing those with the same ``param { name }``).
"""
import contextlib
import io
import itertools
import os
import stat
from collections import OrderedDict

import numpy as np

from . import backend as _backend
from . import blob as _blob
from . import log
from .blob import Blob, format_bytes, proto_shape, shape_string
from .errors import AllocationError, BlobError, ConfigError, DLTrainError, require_module
from .layer import TRAIN
from .registry import get_layer_class

# What an allocation error suggests: the usual cause of a net too large to hold.
SIZE_HINT = "is a num_output, an input or data shape, or a batch_size far too large?"


def weight_files(weights):
    """The paths of Caffe's comma-separated list of weight files (``--weights W1,W2``), blanks dropped."""
    return [path for path in (s.strip() for s in str(weights).split(",")) if path]


def is_hdf5_file(path):
    """Whether ``path`` starts with HDF5's signature (at byte 0 or after a user block of 512, 1024, ... bytes),
    as Caffe's H5Fis_hdf5 decides how CopyTrainedLayersFrom reads a weight file."""
    signature = b"\x89HDF\r\n\x1a\n"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False              # a FIFO or device is refused by the regular reader, never opened here
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offset = 0
            while offset + len(signature) <= size:
                f.seek(offset)
                if f.read(len(signature)) == signature:
                    return True
                offset = 512 if offset == 0 else offset * 2
    except OSError:
        return False
    return False


# --- phase / level / stage filtering -------------------------------------------
def state_meets_rule(state, rule):
    """Caffe's StateMeetsRule: does NetState ``state`` satisfy NetStateRule ``rule``?"""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(param, where=None):
    """The layers of ``param`` that its ``state`` includes (Caffe's FilterNet)."""
    from dltrain.proto import caffe_pb2
    filtered = caffe_pb2.NetParameter()
    filtered.CopyFrom(param)
    del filtered.layer[:]
    for layer in param.layer:
        if layer.include and layer.exclude:
            raise ConfigError(f"layer '{layer.name}': give include rules or exclude rules, not both",
                              **(where(layer.name) if where else {}))
        included = not layer.include
        if any(state_meets_rule(param.state, r) for r in layer.exclude):
            included = False
        if any(state_meets_rule(param.state, r) for r in layer.include):
            included = True
        if included:
            filtered.layer.add().CopyFrom(layer)
    return filtered


# Old formats (V0/V1 layers, input fields, ...): Caffe's upgrade_proto, in dlcore/upgrade.py.
from .upgrade import upgrade_input_fields, upgraded_net  # noqa: E402,F401


# --- split insertion --------------------------------------------------------------
def _split_layer_name(layer, blob, index):
    return f"{layer}_{blob}_{index}_split"


def _split_blob_name(layer, blob, index, k):
    return f"{layer}_{blob}_{index}_split_{k}"


def insert_splits(param, where=None):
    """Caffe's InsertSplits: a top read by several bottoms (or read and used as a
    loss) gets a Split layer whose tops feed each reader, so diffs are summed."""
    from dltrain.proto import caffe_pb2
    last_top = {}            # blob name -> (layer index, top index) of its latest producer
    source = {}              # (layer, bottom index) -> producing (layer, top index)
    uses = {}                # (layer, top index) -> number of readers (+1 for a loss)
    loss_weight = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                raise ConfigError(f"layer '{layer.name}' ({layer.type}): unknown bottom blob '{name}' "
                                  f"(bottom {j}); no earlier layer produces it",
                                  **(where(layer.name) if where else {}))
            source[(i, j)] = last_top[name]
            uses[last_top[name]] = uses.get(last_top[name], 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            key = last_top[layer.top[j]]
            loss_weight[key] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                uses[key] = uses.get(key, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split = {}
    for i, original in enumerate(param.layer):
        layer = out.layer.add()
        layer.CopyFrom(original)
        for j in range(len(layer.bottom)):
            top_key = source[(i, j)]
            if uses.get(top_key, 0) > 1:
                producer = param.layer[top_key[0]].name
                k = next_split.get(top_key, 0)
                next_split[top_key] = k + 1
                layer.bottom[j] = _split_blob_name(producer, layer.bottom[j], top_key[1], k)
        for j, name in enumerate(layer.top):
            count = uses.get((i, j), 0)
            if count > 1:
                weight = loss_weight.get((i, j), 0.0)
                split = out.layer.add(name=_split_layer_name(original.name, name, j), type="Split")
                split.bottom.append(name)
                for k in range(count):
                    split.top.append(_split_blob_name(original.name, name, j, k))
                    if weight:
                        split.loss_weight.append(weight if k == 0 else 0.0)
                if weight:
                    del layer.loss_weight[:]
                    next_split[(i, j)] = next_split.get((i, j), 0) + 1
    return out


class Net:
    """A net built for one phase.

    ``Net(model, phase)``, ``Net(model, phase, level=0, stages=None,
    weights=path)`` or pycaffe's older ``Net(model, weights, phase)``
    (``network_file=`` is pycaffe's keyword for ``model``).
    ``model`` is a path (.prototxt, .yaml, binary) or a NetParameter.

    pycaffe's surface: ``blobs``, ``params``, ``layers``, ``layer_dict``,
    ``inputs``, ``outputs``, ``top_names``, ``bottom_names``,
    ``blob_loss_weights``, ``forward``/``backward`` (with ``start``/``end``),
    ``forward_all``/``forward_backward_all``, ``reshape``,
    ``clear_param_diffs``, ``copy_from``, ``share_with``, ``save``,
    ``save_hdf5``/``load_hdf5``, ``set_input_arrays``, the hooks
    ``before_forward``/``after_forward``/``before_backward``/``after_backward``,
    and the low-level ``_blob_names``, ``_layer_names``, ``_blobs``,
    ``_inputs``, ``_outputs``, ``_bottom_ids``, ``_top_ids``,
    ``_blob_loss_weights``, ``_batch``.
    """

    def __init__(self, model=None, *args, network_file=None, phase=None, weights=None, level=0, stages=(),
                 dtype=np.float32, gpu=None):
        if model is None:                 # pycaffe's keyword: Net(network_file=..., phase=...)
            model = network_file
        if model is None:
            raise TypeError("Net(model, phase): the net (a file or a NetParameter) is missing")
        for arg in args:  # pycaffe's positional forms
            if isinstance(arg, (int, np.integer)):
                phase = int(arg)
            elif isinstance(arg, str):
                weights = arg
            else:
                raise TypeError(f"Net(model, phase) or Net(model, weights, phase): unexpected {arg!r}")
        from dltrain.proto import caffe_pb2
        self.source = None
        if isinstance(model, caffe_pb2.NetParameter):
            param = caffe_pb2.NetParameter()
            param.CopyFrom(model)
        else:
            from .config import load_net
            self.source = str(model)
            param = load_net(self.source)
        if phase is not None:
            param.state.phase = phase
            param.state.level = level
            del param.state.stage[:]
            param.state.stage.extend(stages or ())
        self.dtype = np.dtype(dtype)
        # The device: the backend's mode when the net is built (dlcore.set_mode_gpu), unless given.
        if gpu is None:
            gpu = _backend.is_gpu()
        elif gpu:
            _backend.require_gpu(what="a GPU net")
            _backend.select_device()
        self.gpu = bool(gpu)
        self._init(param)
        if weights:
            self.copy_from(weights)

    # --- building ---------------------------------------------------------------------
    def _where(self, layer_name):
        """Location keywords for a ConfigError about ``layer_name``."""
        if not self.source:
            return {}
        from .config import find_layer_line
        try:
            line = find_layer_line(self.source, layer_name)
        except OSError:
            line = None
        return {"path": self.source, "line": line}

    def _init(self, param):
        self.name = param.name
        self.phase = param.state.phase
        self.force_backward = param.force_backward
        upgraded = upgraded_net(param, self.source)
        param = filter_net(upgraded, self._where)
        if not param.layer:
            raise self._no_layers_error(upgraded)
        self.param = param
        param = insert_splits(param, self._where)

        self.layers, self._layer_names = [], []
        self.blobs = OrderedDict()
        self._bottom_vecs, self._top_vecs = [], []
        # Blob names per layer index (the dicts below, pycaffe's, are by layer name: with two
        # parameterless layers of one name, they hold the last one's).
        self._bottom_name_vecs, self._top_name_vecs = [], []
        self.bottom_names, self.top_names = OrderedDict(), OrderedDict()
        self.bottom_need_backward, self.layer_need_backward = [], []
        blob_need_backward = {}
        available = {}      # blob name -> Blob, produced and not yet consumed
        self._input_names = []
        named = {}          # layer name -> the first layer of that name
        data_bytes = 0      # the data of every blob so far: what forward will write
        counted = set()     # ids of the data memories in data_bytes (shared memory counts once)
        shared_params = set()   # the param { name } seen so far

        for layer_id, layer_param in enumerate(param.layer):
            if not layer_param.HasField("phase"):
                layer_param.phase = self.phase
            if layer_param.propagate_down and len(layer_param.propagate_down) != len(layer_param.bottom):
                raise ConfigError(f"layer '{layer_param.name}': propagate_down must be given once per bottom "
                                  f"({len(layer_param.bottom)} bottoms, {len(layer_param.propagate_down)} values)",
                                  **self._where(layer_param.name))
            try:
                cls = get_layer_class(layer_param.type)
            except ConfigError as err:
                raise ConfigError(f"layer '{layer_param.name}': {err.message}", **self._where(layer_param.name)) from None
            try:
                layer = cls(layer_param, dtype=self.dtype)
            except ConfigError as err:     # a parameter blob stored in the definition
                if err.path is None and self.source:
                    where = self._where(layer_param.name)
                    err.path, err.line = where["path"], where["line"]
                raise
            layer.gpu = self.gpu
            layer.net_source = self.source     # a Python layer's module may sit beside the net file

            bottom, bottom_need = [], []
            need_backward = False
            for j, name in enumerate(layer_param.bottom):
                if name not in available:
                    raise ConfigError(f"layer '{layer_param.name}' ({layer_param.type}): bottom blob '{name}' "
                                      "is not produced by an earlier layer (or was already consumed)",
                                      **self._where(layer_param.name))
                bottom.append(available.pop(name))
                need = blob_need_backward[name]
                if layer_param.propagate_down:
                    need = layer_param.propagate_down[j]
                bottom_need.append(need)
                need_backward |= blob_need_backward[name]

            top, top_names = [], list(layer_param.top)
            for j, name in enumerate(top_names):
                if j < len(layer_param.bottom) and name == layer_param.bottom[j]:
                    blob = bottom[j]          # in place
                elif name in self.blobs:
                    raise ConfigError(f"layer '{layer_param.name}': top blob '{name}' is produced by more than one "
                                      "layer", **self._where(layer_param.name))
                else:
                    blob = Blob(dtype=self.dtype)
                    self.blobs[name] = blob
                    blob_need_backward[name] = False
                top.append(blob)
                available[name] = blob
                if layer_param.type == "Input":
                    self._input_names.append(name)
            if cls.auto_top_blobs:
                wanted = max(cls.exact_num_top_blobs or 0, cls.min_top_blobs or 0)
                while len(top) < wanted:
                    top.append(Blob(dtype=self.dtype))   # anonymous, kept off self.blobs

            try:
                layer.initialize(bottom, top)
            except BlobError as err:            # a shape no blob can take, from the layer's reshape
                raise ConfigError(f"layer '{layer_param.name}' ({layer_param.type}): {err.message}",
                                  **self._where(layer_param.name)) from None
            except ConfigError as err:
                if err.path is None and self.source:
                    where = self._where(layer_param.name)
                    err.path, err.line = where["path"], where["line"]
                raise
            except MemoryError as err:          # an AllocationError, or NumPy's own
                if isinstance(err, DLTrainError) and not isinstance(err, AllocationError):
                    raise                           # a plugin's own: its PluginError names the layer
                raise self._memory_error(layer_param, err) from None

            data_bytes += self._new_data_bytes(layer, top, counted, shared_params)
            memory = _blob.PHYSICAL_MEMORY
            if memory is not None and data_bytes > memory:
                raise ConfigError(f"layer '{layer_param.name}' ({layer_param.type}): the net's blobs need "
                                  f"{format_bytes(data_bytes)} up to this layer, more than this machine's memory "
                                  f"({format_bytes(memory)}); {SIZE_HINT}",
                                  **self._where(layer_param.name))

            specs = layer_param.param
            if len(specs) > len(layer.blobs):
                raise ConfigError(f"layer '{layer_param.name}': {len(specs)} param specs for "
                                  f"{len(layer.blobs)} parameter blobs", **self._where(layer_param.name))
            layer.param_propagate_down = []
            for p in range(len(layer.blobs)):
                lr_mult = specs[p].lr_mult if p < len(specs) else 1.0
                layer.param_propagate_down.append(lr_mult != 0)
                need_backward |= lr_mult != 0

            first = named.setdefault(layer_param.name, layer)
            if first is not layer:
                self._duplicate_name(first, layer)

            self.layers.append(layer)
            self._layer_names.append(layer_param.name)
            self._bottom_vecs.append(bottom)
            self._top_vecs.append(top)
            self._bottom_name_vecs.append(list(layer_param.bottom))
            self._top_name_vecs.append(top_names)
            self.bottom_names[layer_param.name] = list(layer_param.bottom)
            self.top_names[layer_param.name] = top_names
            self.bottom_need_backward.append(bottom_need)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for name in top_names:
                    blob_need_backward[name] = True

        self._prune_backward()
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                for j in range(len(self._bottom_name_vecs[i])):
                    self.bottom_need_backward[i][j] |= layer.allow_force_backward(j)
                layer.param_propagate_down = [True] * len(layer.blobs)
        self._output_names = sorted(available)   # Caffe keeps them in a std::set
        self._collect_params()
        self.layer_dict = OrderedDict(zip(self._layer_names, self.layers))
        # Called with a layer's index after its backward (the data-parallel solver starts all-reducing the
        # gradients that are final then, while backward goes on).
        self.after_layer_backward = None
        # pycaffe's hooks (net.before_forward(callable) etc.): each is called with the layer's index.
        self._before_forward, self._after_forward = [], []
        self._before_backward, self._after_backward = [], []
        threaded = sum(layer.matrix_work() for layer in self.layers if layer.runs_numba_threads)
        others = sum(layer.matrix_work() for layer in self.layers if not layer.runs_numba_threads)
        self._blas_single = threaded > 0 and threaded >= others

    def cpu_blas_context(self):
        """The context the passes run in: NumPy's BLAS on one thread where layers on Numba's threads
        (the LSTM's parts) do most of the net's matrix work.

        OpenBLAS's idle pool threads spin for about a quarter second after each call; a layer whose
        own threads start meanwhile shares the cores with them and waits at every step (the
        geolocation net's LSTM: 32 ms a pass, 18 ms with NumPy's BLAS on one thread).  Where the
        other layers' products outweigh them (a CNN feeding an LSTM), the cores stay with BLAS."""
        if self._blas_single and not self.gpu:
            from dltrain.layers import blas_threads
            return blas_threads.single_threaded()
        return contextlib.nullcontext()

    def _no_layers_error(self, unfiltered):
        """The error for a net whose phase/level/stage rules leave no layer (or that has none)."""
        where = {"path": self.source} if self.source else {}
        net = "the net" if self.source or not self.name else f"net '{self.name}'"
        if not unfiltered.layer:
            return ConfigError(f"{net} has no layers", **where)
        state = unfiltered.state
        described = "TRAIN" if state.phase == TRAIN else "TEST"
        if state.level:
            described += f", level {state.level}"
        if state.stage:
            described += f", stages {', '.join(state.stage)}"
        count = len(unfiltered.layer)
        left_out = f"all {count} of its layers" if count > 1 else "its one layer"
        return ConfigError(f"{net} has no layers for phase {described}: the include/exclude rules leave out "
                           f"{left_out}", **where)

    def _duplicate_name(self, first, second):
        """Two layers of one name: an error where either has parameters (weights are
        saved and loaded by layer name, so one layer's would load into the other), else a
        warning (Caffe allows it; only one of them is reachable by name)."""
        name = second.name
        what = (f"two layers of the net are named '{name}' ({first.layer_param.type} and "
                f"{second.layer_param.type})")
        if first.blobs or second.blobs:
            raise ConfigError(f"{what}: weights are saved and loaded by layer name, so give each layer with "
                              "parameters a name of its own", **self._where(name))
        where = ":".join(str(part) for part in self._where(name).values() if part is not None)
        log.warning(f"{where + ': ' if where else ''}{what}; net.layer_dict, top_names and bottom_names "
                    "hold only the last")

    @staticmethod
    def _new_data_bytes(layer, top, counted, shared_params):
        """Bytes of data memory that ``layer`` added (its tops and parameters),
        counting each memory once: in-place tops and Split's shared tops are
        counted with their owner, a shared parameter (``param { name }``) with
        its first layer."""
        specs = [spec.name for spec in layer.layer_param.param]
        param_names = specs + [""] * (len(layer.blobs) - len(specs))
        added = 0
        for blob, param_name in zip(list(top) + list(layer.blobs), [""] * len(top) + param_names):
            if param_name in shared_params:
                continue
            if param_name:
                shared_params.add(param_name)
            memory = blob._data_mem
            if id(memory) not in counted:
                counted.add(id(memory))
                added += memory.host.nbytes
        return added

    def _memory_error(self, layer_param, err):
        """A ConfigError for a MemoryError (an AllocationError, or NumPy's own) in a layer."""
        return ConfigError(f"layer '{layer_param.name}' ({layer_param.type}): {err}; {SIZE_HINT}",
                           **self._where(layer_param.name))

    def _prune_backward(self):
        """Caffe's second pass: skip backward where nothing reaches a loss, or
        where every reader of a layer's tops declines the gradient."""
        under_loss, skip = set(), set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer, tops = self.layers[i], self._top_name_vecs[i]
            contributes = any(layer.loss(j) or top in under_loss for j, top in enumerate(tops))
            skip_down = all(top in skip for top in tops)
            if self.layer_need_backward[i] and skip_down:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_need_backward[i])
            if not contributes:
                self.layer_need_backward[i] = False
            for j, bottom in enumerate(self._bottom_name_vecs[i]):
                if contributes:
                    under_loss.add(bottom)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip.add(bottom)

    def _collect_params(self):
        """Learnable parameters, their lr/decay multipliers, and sharing by name."""
        from dltrain.proto import caffe_pb2
        default = caffe_pb2.ParamSpec()
        self._params = []                 # every (layer's) param blob, shared ones included
        self.param_owners = []            # -1, or the index in _params of the owner
        self.param_display_names = []
        self.learnable_params = []        # unique blobs the solver updates
        self.learnable_param_ids = []     # for each _params entry, its learnable index
        self.params_lr, self.params_weight_decay = [], []
        self.has_params_lr, self.has_params_decay = [], []
        names_index = {}
        param_layer = []
        for layer_id, layer in enumerate(self.layers):
            lp = layer.layer_param
            for p, blob in enumerate(layer.blobs):
                spec = lp.param[p] if p < len(lp.param) else default
                name = spec.name
                net_id = len(self._params)
                self._params.append(blob)
                param_layer.append((layer_id, p))
                self.param_display_names.append(name or str(p))
                if not name or name not in names_index:
                    if name:
                        names_index[name] = net_id
                    self.param_owners.append(-1)
                    self.learnable_param_ids.append(len(self.learnable_params))
                    self.learnable_params.append(blob)
                    self.has_params_lr.append(spec.HasField("lr_mult"))
                    self.has_params_decay.append(spec.HasField("decay_mult"))
                    self.params_lr.append(spec.lr_mult)
                    self.params_weight_decay.append(spec.decay_mult)
                    continue
                owner_id = names_index[name]
                owner = self._params[owner_id]
                owner_layer = self._layer_names[param_layer[owner_id][0]]
                permissive = spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE
                if (blob.count != owner.count) if permissive else (blob.shape != owner.shape):
                    raise ConfigError(
                        f"cannot share param '{name}' owned by layer '{owner_layer}' with layer '{lp.name}': "
                        f"{'count' if permissive else 'shape'} mismatch (owner {owner.shape_string()}, "
                        f"sharer {blob.shape_string()})", **self._where(lp.name))
                self.param_owners.append(owner_id)
                learnable = self.learnable_param_ids[owner_id]
                self.learnable_param_ids.append(learnable)
                for has, values, field in ((self.has_params_lr, self.params_lr, "lr_mult"),
                                           (self.has_params_decay, self.params_weight_decay, "decay_mult")):
                    if spec.HasField(field):
                        if has[learnable] and values[learnable] != getattr(spec, field):
                            raise ConfigError(f"shared param '{name}' has mismatched {field}",
                                              **self._where(lp.name))
                        has[learnable] = True
                        values[learnable] = getattr(spec, field)
        for net_id, owner_id in enumerate(self.param_owners):
            if owner_id >= 0:
                self._params[net_id].share_data(self._params[owner_id])
                self._params[net_id].share_diff(self._params[owner_id])

    # --- pycaffe-style views ---------------------------------------------------------------
    @property
    def params(self):
        """Layer name -> its parameter blobs, for layers that have any."""
        return OrderedDict((name, layer.blobs) for name, layer in zip(self._layer_names, self.layers)
                           if layer.blobs)

    @property
    def inputs(self):
        return list(self._input_names)

    @property
    def outputs(self):
        return list(self._output_names)

    @property
    def layer_names(self):
        return list(self._layer_names)

    # pycaffe's lower-level views (_caffe.cpp's names): blob and layer names, blob indices, loss weights.
    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    def _blob_ids(self, names):
        """The indices in ``_blobs`` of the named blobs."""
        index = {name: i for i, name in enumerate(self.blobs)}
        return [index[name] for name in names]

    @property
    def _inputs(self):
        """The indices in ``_blobs`` of the input blobs."""
        return self._blob_ids(self._input_names)

    @property
    def _outputs(self):
        """The indices in ``_blobs`` of the output blobs."""
        return self._blob_ids(self._output_names)

    def _bottom_ids(self, layer_index):
        return self._blob_ids(self._bottom_name_vecs[layer_index])

    def _top_ids(self, layer_index):
        return self._blob_ids(self._top_name_vecs[layer_index])

    @property
    def _blob_loss_weights(self):
        """The loss weight of each blob, in ``_blob_names`` order (0 for blobs no loss weights; an
        in-place top takes the weight of its last producer, as in Caffe)."""
        weights = dict.fromkeys(self.blobs, 0.0)
        for layer, tops in zip(self.layers, self._top_name_vecs):
            for j, name in enumerate(tops):
                weights[name] = float(layer.loss(j))
        return list(weights.values())

    @property
    def blob_loss_weights(self):
        """Blob name -> its loss weight (pycaffe's OrderedDict)."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    def has_blob(self, name):
        return name in self.blobs

    def has_layer(self, name):
        return name in self.layer_dict

    # --- running -----------------------------------------------------------------------
    def _layer_index(self, name, default):
        if name is None:
            return default
        try:
            return self._layer_names.index(name)
        except ValueError:
            raise DLTrainError(f"net '{self.name}' has no layer named '{name}'") from None

    # pycaffe's hooks, fired as Caffe's ForwardFromTo / BackwardFromTo fire them: each callback gets the
    # layer's index; the backward ones fire for every layer in the range, whether it computes gradients or not.
    def before_forward(self, callback):
        """Call ``callback(layer_index)`` before each layer's forward."""
        self._before_forward.append(callback)

    def after_forward(self, callback):
        """Call ``callback(layer_index)`` after each layer's forward."""
        self._after_forward.append(callback)

    def before_backward(self, callback):
        """Call ``callback(layer_index)`` before each layer's backward."""
        self._before_backward.append(callback)

    def after_backward(self, callback):
        """Call ``callback(layer_index)`` after each layer's backward."""
        self._after_backward.append(callback)

    def forward_from_to(self, start, end):
        """Run layers start..end (indices, inclusive); return the weighted loss."""
        loss = 0.0
        i = start
        try:
            with self.cpu_blas_context():
                for i in range(start, end + 1):
                    for callback in self._before_forward:
                        callback(i)
                    layer, bottom, top = self.layers[i], self._bottom_vecs[i], self._top_vecs[i]
                    layer.run_reshape(bottom, top)
                    layer.forward(bottom, top)
                    for blob, weight in zip(top, layer.loss_weights):
                        if weight:
                            # The gradient seed for backward (written only when it changed: on
                            # the GPU the seed then stays on the device).
                            seed = blob.cpu_diff()
                            if seed.size and not (seed == weight).all():
                                blob.diff[...] = weight
                            loss += weight * float(blob.cpu_data().sum())
                    for callback in self._after_forward:
                        callback(i)
        except MemoryError as err:      # a top that grew past what the machine holds
            if isinstance(err, DLTrainError) and not isinstance(err, AllocationError):
                raise                   # a plugin's own MemoryError: its PluginError names the layer
            raise self._memory_error(self.layers[i].layer_param, err) from None
        return loss

    def backward_from_to(self, start, end):
        hook = self.after_layer_backward
        with self.cpu_blas_context():
            for i in range(start, end - 1, -1):
                for callback in self._before_backward:
                    callback(i)
                if self.layer_need_backward[i]:
                    self.layers[i].backward(self._top_vecs[i], self.bottom_need_backward[i], self._bottom_vecs[i])
                    if hook is not None:
                        hook(i)
                for callback in self._after_backward:
                    callback(i)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """Set input blobs from ``kwargs``, run forward, return {output: data}."""
        for name, value in kwargs.items():
            if name not in self._input_names:
                raise DLTrainError(f"'{name}' is not an input of net '{self.name}' (inputs: {self._input_names})")
            blob = self.blobs[name]
            value = np.asarray(value)
            if value.shape != blob.shape:
                if value.ndim != blob.num_axes or value.shape[0] != blob.shape[0]:
                    raise DLTrainError(f"input '{name}' has shape {value.shape}, the blob has {blob.shape}")
            blob.data[...] = value
        start_ind = self._layer_index(start, 0)
        end_ind = self._layer_index(end, len(self.layers) - 1)
        self.loss = self.forward_from_to(start_ind, end_ind)
        # pycaffe returns the blob named like the end layer; its tops are what that means.
        names = (self._top_name_vecs[end_ind] if end is not None else self._output_names) + list(blobs or [])
        return {name: self.blobs[name].data for name in dict.fromkeys(names)}

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """Set output diffs from ``kwargs``, run backward, return {input: diff}."""
        for name, value in kwargs.items():
            if name not in self._output_names:
                raise DLTrainError(f"'{name}' is not an output of net '{self.name}' (outputs: {self._output_names})")
            self.blobs[name].diff[...] = value
        start_ind = self._layer_index(start, len(self.layers) - 1)
        end_ind = self._layer_index(end, 0)
        self.backward_from_to(start_ind, end_ind)
        names = (self._bottom_name_vecs[end_ind] if end is not None else self._input_names) + list(diffs or [])
        return {name: self.blobs[name].diff for name in dict.fromkeys(names) if name in self.blobs}

    # --- pycaffe's batched passes ----------------------------------------------------------------
    def _batch(self, blobs):
        """Yield {name: rows} batches of the arrays in ``blobs`` (all of one length), as many rows as the
        batch size (the first dimension of the net's first blob, pycaffe's rule); the last batch is padded
        with zeros."""
        blobs = {name: np.asarray(value) for name, value in blobs.items()}
        if not blobs:
            return
        lengths = {name: len(value) for name, value in blobs.items()}
        num = next(iter(lengths.values()))
        if any(n != num for n in lengths.values()):
            raise DLTrainError(f"net '{self.name}': the arrays to batch differ in length ({lengths})")
        batch_size = self._batch_size()
        pad = self._padding(blobs)
        for i in range(0, num, batch_size):
            batch = {name: value[i:i + batch_size] for name, value in blobs.items()}
            if i + batch_size > num:  # the last, short batch
                batch = {name: np.concatenate([rows, np.zeros((pad,) + rows.shape[1:], rows.dtype)])
                         for name, rows in batch.items()}
            yield batch

    def _batch_size(self):
        """pycaffe's batch size: the first dimension of the net's first blob."""
        return next(iter(self.blobs.values())).shape[0]

    def _padding(self, blobs):
        """How many zero rows _batch adds to ``blobs``."""
        if not blobs:
            return 0
        return -len(next(iter(blobs.values()))) % self._batch_size()

    @staticmethod
    def _join(parts, pad):
        """Per-batch copies of one blob joined along the batch axis, padding rows dropped; a blob
        without a batch axis (a loss) gives one value per batch."""
        if parts[0].ndim == 0:
            return np.array(parts)
        joined = np.concatenate(parts)
        return joined[:len(joined) - pad]

    def forward_all(self, blobs=None, **kwargs):
        """pycaffe's forward_all: forward over input arrays of any length (keyword per input), in batches
        of the net's batch size; returns {blob: array}: the outputs and ``blobs``, one row per input row."""
        parts = {name: [] for name in dict.fromkeys(self._output_names + list(blobs or []))}
        for batch in (self._batch(kwargs) if kwargs else [{}]):
            for name, data in self.forward(blobs=blobs, **batch).items():
                parts[name].append(np.array(data, copy=True))
        pad = self._padding(kwargs)
        return {name: self._join(p, pad) for name, p in parts.items()}

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """pycaffe's forward_backward_all: forward and backward in batches; keywords name inputs (for
        forward) and outputs (their diffs, for backward).  Returns ({blob: data}, {blob: diff}) for the
        outputs and ``blobs``, and the inputs and ``diffs``."""
        inputs = {name: kwargs[name] for name in self._input_names if name in kwargs}
        top_diffs = {name: kwargs[name] for name in self._output_names if name in kwargs}
        outs = {name: [] for name in dict.fromkeys(self._output_names + list(blobs or []))}
        grads = {name: [] for name in dict.fromkeys(self._input_names + list(diffs or []))}
        forward_batches = list(self._batch(inputs)) or [{}]
        backward_batches = list(self._batch(top_diffs)) or [{}]
        for fb, bb in itertools.zip_longest(forward_batches, backward_batches, fillvalue={}):
            for name, data in self.forward(blobs=blobs, **fb).items():
                outs[name].append(np.array(data, copy=True))
            for name, diff in self.backward(diffs=diffs, **bb).items():
                grads[name].append(np.array(diff, copy=True))
        pad = self._padding(inputs or top_diffs)
        return ({name: self._join(p, pad) for name, p in outs.items()},
                {name: self._join(p, pad) for name, p in grads.items() if p})

    def set_input_arrays(self, data, labels):
        """pycaffe's Net.set_input_arrays: feed ``data`` (n x C x H x W) and ``labels`` (n, or n x 1 x 1 x 1)
        to the net's first MemoryData layer (its ``reset``); n must be a multiple of its batch_size."""
        for layer in self.layers:
            if layer.type == "MemoryData":
                return layer.reset(data, labels)
        raise DLTrainError(f"set_input_arrays may only be called if the net has a MemoryData layer "
                           f"(net '{self.name}' has none)")

    def forward_backward(self):
        """One forward and backward pass; returns the loss (what the solver calls)."""
        loss = self.forward_from_to(0, len(self.layers) - 1)
        self.backward_from_to(len(self.layers) - 1, 0)
        self.loss = loss
        return loss

    def reshape(self):
        for layer, bottom, top in zip(self.layers, self._bottom_vecs, self._top_vecs):
            layer.run_reshape(bottom, top)

    def clear_param_diffs(self):
        if self.gpu:
            from .device import fill
            for blob in self.learnable_params:
                fill(blob.mutable_gpu_diff(), 0)
            return
        for blob in self.learnable_params:
            blob.diff[...] = 0

    # --- the device ----------------------------------------------------------------------
    def to_gpu(self):
        """Run this net's layers on the GPU from now on (blobs copy over as they are used)."""
        _backend.require_gpu(what="Net.to_gpu()")
        _backend.select_device()
        self._set_gpu(True)
        return self

    def to_cpu(self):
        """Run this net's layers on the CPU from now on."""
        self._set_gpu(False)
        return self

    def _set_gpu(self, gpu):
        self.gpu = bool(gpu)
        for layer in self.layers:
            layer.gpu = self.gpu

    # --- weights -----------------------------------------------------------------------
    def copy_from(self, source):
        """Copy parameters by layer name from a .caffemodel path (or HDF5 weights, see load_hdf5) or a
        NetParameter; returns the number of layers whose parameters were copied.

        Layers absent from the source keep their values; a shape mismatch is
        an error naming the layer and both shapes.  As Caffe, each source
        layer that matches no layer of the net is logged ("Ignoring source
        layer NAME"); a source that copies nothing at all is a warning.
        """
        from dltrain.proto import caffe_pb2
        path = None
        if not isinstance(source, caffe_pb2.NetParameter):
            from .config import load_message
            path = str(source)
            if is_hdf5_file(path):            # Caffe's CopyTrainedLayersFrom: HDF5 weights too
                return self.load_hdf5(path)
            source = load_message(path, caffe_pb2.NetParameter)
        source_layers = list(upgraded_net(source, path).layer)     # V0/V1 weight files too
        copied = 0
        for src in source_layers:
            layer = self.layer_dict.get(src.name)
            if layer is None:
                log.info(f"Ignoring source layer {src.name}")
                continue
            if len(src.blobs) != len(layer.blobs):
                raise ConfigError(f"cannot copy weights into layer '{src.name}': the file has {len(src.blobs)} "
                                  f"parameter blobs, the net {len(layer.blobs)}", path=path)
            for j, (blob, stored) in enumerate(zip(layer.blobs, src.blobs)):
                if not blob.shape_equals(stored):
                    raise ConfigError(
                        f"cannot copy param {j} weights from layer '{src.name}': shape mismatch; source "
                        f"{shape_string(proto_shape(stored))}, target {blob.shape_string()}. To learn this layer's "
                        "parameters from scratch rather than copying them, rename the layer", path=path)
                try:
                    blob.from_proto(stored, reshape=False)
                except BlobError as err:
                    raise ConfigError(f"layer '{src.name}' param {j}: {err.message}", path=path) from None
            copied += bool(layer.blobs)
        if not copied:
            what = f"'{path}'" if path else "the given NetParameter"
            held = (f"none of its {len(source_layers)} layers matches a layer of net '{self.name}' with parameters"
                    if source_layers else "it holds no layers")
            log.warning(f"no weights were copied from {what}: {held}")
        return copied

    def share_trained_layers_with(self, other):
        """Use ``other``'s parameter arrays in the same-named layers (a TEST net
        sharing the TRAIN net's weights)."""
        for name, layer in zip(other._layer_names, other.layers):
            mine = self.layer_dict.get(name)
            if mine is None or not layer.blobs:
                continue
            if len(mine.blobs) != len(layer.blobs):
                raise ConfigError(f"layer '{name}': {len(mine.blobs)} vs {len(layer.blobs)} parameter blobs")
            for a, b in zip(mine.blobs, layer.blobs):
                if a.shape != b.shape:
                    raise ConfigError(f"layer '{name}': cannot share parameters of shape "
                                      f"{b.shape_string()} with {a.shape_string()}")
                a.share_data(b)

    share_with = share_trained_layers_with      # pycaffe's name

    def to_proto(self, write_diff=False):
        from dltrain.proto import caffe_pb2
        out = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.layer_param)
            del lp.blobs[:]
            for blob in layer.blobs:
                blob.to_proto(lp.blobs.add(), write_diff=write_diff)
        return out

    def save(self, path, write_diff=False):
        """Write the weights as a binary NetParameter (.caffemodel), atomically."""
        from .config import write_binary
        write_binary(path, self.to_proto(write_diff))

    # --- weights in HDF5 (Caffe's Net::ToHDF5 / CopyTrainedLayersFromHDF5) ------------------------------
    def save_hdf5(self, filename, write_diff=False):
        """Write the weights in Caffe's HDF5 layout, atomically: group ``data`` holds a group per layer
        (every layer, in order) with its parameters as datasets ``0``, ``1``, ... (a shared parameter only
        under the layer that owns it); with ``write_diff`` group ``diff`` holds every parameter's diff."""
        h5py = require_module("h5py", "Net.save_hdf5", "h5py", "hdf5")
        from .config import write_atomic
        memory = io.BytesIO()
        with h5py.File(memory, "w") as f:
            data = f.create_group("data")
            diff = f.create_group("diff") if write_diff else None
            net_id = 0
            for name, layer in zip(self._layer_names, self.layers):
                layer_data = data.require_group(name)
                layer_diff = diff.require_group(name) if write_diff else None
                for j, blob in enumerate(layer.blobs):
                    if self.param_owners[net_id] == -1:
                        layer_data.create_dataset(str(j), data=blob.cpu_data())
                    if write_diff:
                        layer_diff.create_dataset(str(j), data=blob.cpu_diff())
                    net_id += 1
        try:
            write_atomic(filename, memory.getvalue())
        except OSError as err:
            raise DLTrainError(f"cannot write HDF5 weights '{filename}': {err.strerror or err}") from None

    def load_hdf5(self, filename):
        """Copy weights by layer name from a file save_hdf5 (or Caffe) wrote; layers the file lacks keep
        theirs, and layers the net lacks are logged and skipped, as in Caffe.  Returns the number of
        layers whose parameters were copied."""
        h5py = require_module("h5py", "Net.load_hdf5", "h5py", "hdf5")
        path = os.fspath(filename)
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ConfigError(f"cannot read HDF5 weights: {err}", path=path) from None
        copied = 0
        # layer name -> the index in the net's parameter list of its first parameter (keyed like layer_dict)
        first_param = dict(zip(self._layer_names,
                               itertools.accumulate((len(layer.blobs) for layer in self.layers), initial=0)))
        with f:
            data = f.get("data")
            if not isinstance(data, h5py.Group):
                raise ConfigError("not a Caffe HDF5 weight file: it has no group 'data'", path=path)
            for name in data:
                layer = self.layer_dict.get(name)
                if layer is None:
                    log.info(f"Ignoring source layer {name}")
                    continue
                stored = data[name]
                if len(stored) > len(layer.blobs):
                    raise ConfigError(f"layer '{name}': the file has {len(stored)} parameter blobs, the net "
                                      f"{len(layer.blobs)}", path=path)
                first = first_param[name]
                for j, blob in enumerate(layer.blobs):
                    if str(j) not in stored:
                        if self.param_owners[first + j] != -1:
                            continue            # shared: its owner's layer holds it
                        raise ConfigError(f"layer '{name}': the file lacks parameter blob {j}", path=path)
                    values = stored[str(j)][()]
                    if tuple(values.shape) != tuple(blob.shape):
                        raise ConfigError(f"cannot copy param {j} weights from layer '{name}': shape mismatch; "
                                          f"source {shape_string(values.shape)}, target {blob.shape_string()}",
                                          path=path)
                    blob.data[...] = values
                copied += bool(layer.blobs)
        return copied

    def __repr__(self):
        return f"<Net '{self.name}' {'TRAIN' if self.phase == TRAIN else 'TEST'}: {len(self.layers)} layers>"
