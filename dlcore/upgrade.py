"""Upgrading old Caffe files: Caffe's src/caffe/util/upgrade_proto.cpp.

Nets (``NetParameter``, text or binary) go through the same steps, in the
same order, as Caffe's ``UpgradeNetAsNeeded``:

1. **V0 -> V1**: ``layers { layer { type: "conv" kernelsize: 11 ... } }``
   (one flat V0LayerParameter per layer; ``padding`` layers folded into the
   convolution or pooling that reads them) becomes ``layers { type:
   CONVOLUTION convolution_param { ... } }``.
2. **Data transformation**: ``scale``, ``mean_file``, ``crop_size`` and
   ``mirror`` set inside the ``data_param``/``image_data_param``/
   ``window_data_param`` of V1 DATA/IMAGE_DATA/WINDOW_DATA layers move to
   ``transform_param``.
3. **V1 -> current**: ``layers { type: CONVOLUTION blobs_lr: 1 weight_decay:
   1 ... }`` becomes ``layer { type: "Convolution" param { lr_mult: 1
   decay_mult: 1 } ... }`` (``param`` names and ``blob_share_mode`` go to
   ``param { name share_mode }``; include/exclude, loss_weight, blobs and
   every per-type parameter message are carried over).
4. **Input fields**: the top-level ``input:`` with ``input_shape`` or
   ``input_dim`` becomes an ``Input`` layer named "input" placed first.
   ``input:`` without any shape (what old ``.caffemodel`` files hold) is
   simply dropped.  (dltrain also accepts one ``input_shape`` for several
   inputs, used for all of them.)
5. **BatchNorm**: a BatchNorm layer that declares three ``param`` specs (the
   old way to keep its statistics out of the solver) gets ``lr_mult: 0
   decay_mult: 0`` on all three, as BVLC master does.

Solvers: the deprecated ``solver_type`` enum becomes the ``type`` string
(``UpgradeSolverAsNeeded``); giving both is an error.

Loading through :class:`dlcore.Net` (and ``Net.copy_from`` for weights)
runs these steps and prints one notice line naming what was upgraded;
``dltrain upgrade IN OUT`` writes the upgraded file (Caffe's
upgrade_net_proto_text, upgrade_net_proto_binary and
upgrade_solver_proto_text in one command).
"""
from . import log
from .config import field_line
from .errors import ConfigError

__all__ = [
    "net_needs_upgrade", "upgrade_net_as_needed", "upgrade_net_report", "upgraded_net",
    "net_needs_v0_to_v1_upgrade", "upgrade_v0_padding_layers", "upgrade_v0_net", "upgrade_v0_layer_parameter",
    "upgrade_v0_layer_type",
    "net_needs_data_upgrade", "upgrade_net_data_transformation",
    "net_needs_v1_to_v2_upgrade", "upgrade_v1_net", "upgrade_v1_layer_parameter", "upgrade_v1_layer_type",
    "net_needs_input_upgrade", "upgrade_net_input", "upgrade_input_fields",
    "net_needs_batch_norm_upgrade", "upgrade_net_batch_norm",
    "solver_needs_type_upgrade", "upgrade_solver_param", "upgrade_solver_as_needed",
]


def _pb():
    from dltrain.proto import caffe_pb2
    return caffe_pb2


# ---------------------------------------------------------------------------
# V0 -> V1
# ---------------------------------------------------------------------------

def net_needs_v0_to_v1_upgrade(param):
    """Any ``layers`` entry wraps a V0 ``layer``."""
    return any(layer.HasField("layer") for layer in param.layers)


def upgrade_v0_padding_layers(param, path=None):
    """Caffe's UpgradeV0PaddingLayers: drop V0 ``padding`` layers, giving
    their ``pad`` to the conv/pool layer that reads them (which then reads
    the padding layer's input).  Returns a new NetParameter."""
    out = _pb().NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    last_top = {name: -1 for name in param.input}
    for i, connection in enumerate(param.layers):
        v0 = connection.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(connection)
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                raise ConfigError(f"V0 layer '{v0.name}': unknown bottom blob '{blob}' (bottom {j})", path=path)
            source_index = last_top[blob]
            if source_index == -1:
                continue
            source = param.layers[source_index]
            if source.layer.type == "padding":
                if v0.type not in ("conv", "pool"):
                    raise ConfigError(f"V0 layer '{v0.name}': a padding layer feeds a '{v0.type}' layer; only "
                                      "conv and pool layers can take padding", path=path)
                if len(connection.bottom) != 1:
                    raise ConfigError(f"V0 layer '{v0.name}': a padded conv/pool layer takes a single bottom",
                                      path=path)
                if len(source.bottom) != 1 or len(source.top) != 1:
                    raise ConfigError(f"V0 padding layer '{source.layer.name}' must have one bottom and one top",
                                      path=path)
                target = out.layers[len(out.layers) - 1]
                target.layer.pad = source.layer.pad
                target.bottom[j] = source.bottom[0]
        for blob in connection.top:
            last_top[blob] = i
    return out


# V0 type strings -> V1 enum names (Caffe's UpgradeV0LayerType).
_V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}


def upgrade_v0_layer_type(type_name, layer_name="", path=None):
    """The V1 LayerType enum value of a V0 type string."""
    enum = _V0_TYPES.get(type_name)
    if enum is None:
        raise ConfigError(f"V0 layer '{layer_name}': unknown layer type '{type_name}' (known V0 types: "
                          f"{', '.join(sorted(_V0_TYPES))})", path=path)
    return _pb().V1LayerParameter.LayerType.Value(enum)


# V0 field -> {V0 type: (V1 parameter message, its field)}.  Fields whose value is
# a scalar copied as is; repeated targets are appended.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"), "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"), "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"), "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": None,        # -> transform_param whatever the type
    "meanfile": None,
    "batchsize": {"data": ("data_param", "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"), "window_data": ("window_data_param", "batch_size")},
    "cropsize": None,
    "mirror": None,
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}


def _assign(message, field, value):
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    if descriptor.is_repeated:
        getattr(message, field).append(value)
    elif descriptor.type == descriptor.TYPE_MESSAGE:
        getattr(message, field).CopyFrom(value)
    else:
        setattr(message, field, value)


def upgrade_v0_layer_parameter(connection, problems=None):
    """Caffe's UpgradeV0LayerParameter: a V1LayerParameter from a ``layers``
    entry that wraps a V0 layer.  Fields that do not fit the layer's type
    are reported in ``problems`` (a list) and skipped, as Caffe does."""
    pb = _pb()
    problems = [] if problems is None else problems
    out = pb.V1LayerParameter()
    out.bottom.extend(connection.bottom)
    out.top.extend(connection.top)
    if not connection.HasField("layer"):
        return out
    v0 = connection.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        out.type = upgrade_v0_layer_type(kind, v0.name)
    for blob in v0.blobs:
        out.blobs.add().CopyFrom(blob)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        value = getattr(v0, field)
        if targets is None:
            setattr(out.transform_param, _V0_TRANSFORM[field], value)
            continue
        target = targets.get(kind)
        if target is None:
            problems.append(f"V0 layer '{v0.name}': unknown parameter {field} for layer type {kind}")
            continue
        message_name, target_field = target
        message = getattr(out, message_name)
        if target_field is None:
            message.CopyFrom(value)
        elif field == "pool":
            message.pool = pb.PoolingParameter.PoolMethod.Value(pb.V0LayerParameter.PoolMethod.Name(value))
        else:
            _assign(message, target_field, value)
    return out


def upgrade_v0_net(param, path=None, problems=None):
    """Caffe's UpgradeV0Net: a V1 NetParameter (padding layers folded in)."""
    problems = [] if problems is None else problems
    padded = upgrade_v0_padding_layers(param, path)
    out = _pb().NetParameter()
    if padded.HasField("name"):
        out.name = padded.name
    for connection in padded.layers:
        try:
            out.layers.add().CopyFrom(upgrade_v0_layer_parameter(connection, problems))
        except ConfigError as err:
            raise ConfigError(err.message, path=path) from None
    out.input.extend(padded.input)
    out.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        out.force_backward = padded.force_backward
    # Not in Caffe's list (V0 files never have them), but a net's phase is set
    # in its state before it is upgraded here, so keep what later formats added.
    if padded.HasField("state"):
        out.state.CopyFrom(padded.state)
    if padded.HasField("debug_info"):
        out.debug_info = padded.debug_info
    return out


# ---------------------------------------------------------------------------
# Data transformation fields
# ---------------------------------------------------------------------------

_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _data_params(layer):
    """The (parameter message) of a V1 data layer that holds old transform fields, or None."""
    V1 = _pb().V1LayerParameter
    return {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
            V1.WINDOW_DATA: "window_data_param"}.get(layer.type)


def net_needs_data_upgrade(param):
    """A V1 DATA/IMAGE_DATA/WINDOW_DATA layer sets scale/mean_file/crop_size/mirror in its data params."""
    for layer in param.layers:
        name = _data_params(layer)
        if name and any(getattr(layer, name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def upgrade_net_data_transformation(param):
    """Caffe's UpgradeNetDataTransformation (in place)."""
    for layer in param.layers:
        name = _data_params(layer)
        if not name:
            continue
        data = getattr(layer, name)
        for field in _TRANSFORM_FIELDS:
            if data.HasField(field):
                setattr(layer.transform_param, field, getattr(data, field))
                data.ClearField(field)
    return param


# ---------------------------------------------------------------------------
# V1 -> current
# ---------------------------------------------------------------------------

# V1 LayerType names -> type strings (Caffe's UpgradeV1LayerType).
_V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# The per-type parameter messages a V1 layer carries over (same names in LayerParameter).
_V1_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param", "convolution_param",
    "data_param", "dropout_param", "dummy_data_param", "eltwise_param", "exp_param", "hdf5_data_param",
    "hdf5_output_param", "hinge_loss_param", "image_data_param", "infogain_loss_param", "inner_product_param",
    "lrn_param", "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param", "window_data_param",
    "transform_param", "loss_param",
)


def net_needs_v1_to_v2_upgrade(param):
    return len(param.layers) > 0


def upgrade_v1_layer_type(value):
    """The type string of a V1 LayerType enum value ("" for NONE)."""
    V1 = _pb().V1LayerParameter
    try:
        return _V1_TYPES[V1.LayerType.Name(value)]
    except (KeyError, ValueError):
        raise ConfigError(f"unknown V1 layer type {value}") from None


def upgrade_v1_layer_parameter(v1, problems=None):
    """Caffe's UpgradeV1LayerParameter: a LayerParameter from a V1LayerParameter."""
    pb = _pb()
    problems = [] if problems is None else problems
    out = pb.LayerParameter()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    for rule in v1.include:
        out.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        out.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        out.type = upgrade_v1_layer_type(v1.type)
    for blob in v1.blobs:
        out.blobs.add().CopyFrom(blob)

    def spec(i):
        while len(out.param) <= i:
            out.param.add()
        return out.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = pb.ParamSpec.DimCheckMode.Value(pb.V1LayerParameter.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    out.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAMS:
        if v1.HasField(name):
            getattr(out, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        problems.append(f"layer '{v1.name}': a V0 layer inside a V1 layer is ignored")
    return out


def upgrade_v1_net(param, problems=None):
    """Caffe's UpgradeV1Net: a NetParameter whose V1 ``layers`` became ``layer``s.
    (As in Caffe, ``layer`` entries already present are dropped, with a problem noted.)"""
    problems = [] if problems is None else problems
    if len(param.layer):
        problems.append("the net has both 'layer' and deprecated 'layers' entries; the 'layer' entries are "
                        "ignored (as Caffe ignores them)")
    out = _pb().NetParameter()
    out.CopyFrom(param)
    del out.layers[:]
    del out.layer[:]
    for v1 in param.layers:
        out.layer.add().CopyFrom(upgrade_v1_layer_parameter(v1, problems))
    return out


# ---------------------------------------------------------------------------
# Input fields
# ---------------------------------------------------------------------------

def net_needs_input_upgrade(param):
    return len(param.input) > 0


def upgrade_net_input(param, path=None):
    """Caffe's UpgradeNetInput (in place): ``input`` + ``input_shape``/``input_dim``
    -> an Input layer named "input", first in the net; ``input`` alone is dropped."""
    inputs = list(param.input)
    has_shape, has_dim = len(param.input_shape) > 0, len(param.input_dim) > 0
    if has_shape and has_dim:
        raise ConfigError("give input_shape or input_dim, not both", path=path, field="input_shape")
    if has_dim and len(param.input_dim) != 4 * len(inputs):
        raise ConfigError(f"input_dim needs 4 values per input ({len(inputs)} inputs, "
                          f"{len(param.input_dim)} values)", path=path, field="input_dim")
    if has_shape and len(param.input_shape) not in (1, len(inputs)):
        raise ConfigError(f"input_shape must be given once per input ({len(inputs)} inputs, "
                          f"{len(param.input_shape)} shapes), or once for all", path=path, field="input_shape")
    if has_shape or has_dim:
        layer = _pb().LayerParameter(name="input", type="Input")
        for i, name in enumerate(inputs):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(param.input_shape[i if len(param.input_shape) > 1 else 0])
            else:
                shape.dim.extend(param.input_dim[4 * i:4 * i + 4])
        rest = list(param.layer)
        del param.layer[:]
        param.layer.add().CopyFrom(layer)
        param.layer.extend(rest)
    del param.input[:]
    del param.input_shape[:]
    del param.input_dim[:]
    return param


def upgrade_input_fields(param):
    """The legacy top-level inputs as an Input layer, in a copy of ``param``
    (``param`` itself when it has none)."""
    if not net_needs_input_upgrade(param):
        return param
    out = _pb().NetParameter()
    out.CopyFrom(param)
    return upgrade_net_input(out)


# ---------------------------------------------------------------------------
# BatchNorm
# ---------------------------------------------------------------------------

def net_needs_batch_norm_upgrade(param):
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in param.layer)


def upgrade_net_batch_norm(param):
    """Caffe's UpgradeNetBatchNorm (in place): the three param specs of an old
    BatchNorm get lr_mult 0 and decay_mult 0 (names and share modes kept)."""
    for layer in param.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return param


# ---------------------------------------------------------------------------
# The whole net
# ---------------------------------------------------------------------------

def net_needs_upgrade(param):
    """Caffe's NetNeedsUpgrade: does any step apply to ``param``?"""
    return (net_needs_v0_to_v1_upgrade(param) or net_needs_v1_to_v2_upgrade(param)
            or net_needs_data_upgrade(param) or net_needs_input_upgrade(param)
            or net_needs_batch_norm_upgrade(param))


def upgrade_net_as_needed(param, path=None, notice=True):
    """Caffe's UpgradeNetAsNeeded, in place.

    Returns the list of steps applied (empty when the net was current).
    Fields that could not be carried over are logged as errors, one line
    each, as Caffe logs them; with ``notice`` one line says what was upgraded.
    """
    return upgrade_net_report(param, path, notice)[0]


def upgrade_net_report(param, path=None, notice=True):
    """:func:`upgrade_net_as_needed`, returning ``(steps applied, problems)``;
    a problem is a field Caffe's upgrade could not carry over (its
    "not fully compatible")."""
    done, problems = [], []
    if net_needs_v0_to_v1_upgrade(param):
        upgraded = upgrade_v0_net(param, path, problems)
        param.Clear()
        param.CopyFrom(upgraded)
        done.append("V0LayerParameter layers")
    if net_needs_data_upgrade(param):
        upgrade_net_data_transformation(param)
        done.append("data transformation fields")
    if net_needs_v1_to_v2_upgrade(param):
        upgraded = upgrade_v1_net(param, problems)
        param.Clear()
        param.CopyFrom(upgraded)
        done.append("V1LayerParameter layers")
    if net_needs_input_upgrade(param):
        shaped = len(param.input_shape) > 0 or len(param.input_dim) > 0
        upgrade_net_input(param, path)
        if shaped:
            done.append("input fields")
    if net_needs_batch_norm_upgrade(param):
        upgrade_net_batch_norm(param)
        done.append("BatchNorm param specs")
    for problem in problems:
        log.error(f"{path or 'net'}: upgrade: {problem}")
    if notice and done:
        where = path or (f"net '{param.name}'" if param.name else "net")
        log.warning(f"{where}: upgraded deprecated {', '.join(done)} to the current format"
                    + (f" (write the upgraded file with: dltrain upgrade {path} NEW_FILE)" if path else ""))
    return done, problems


def upgraded_net(param, path=None, notice=True):
    """``param`` upgraded as needed: a copy when something changed, else ``param`` itself."""
    if not net_needs_upgrade(param):
        return param
    out = _pb().NetParameter()
    out.CopyFrom(param)
    upgrade_net_as_needed(out, path, notice)
    return out


# ---------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------

# Caffe's legacy solver_type enum -> the type string (UpgradeSolverType).
_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                 "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def solver_needs_type_upgrade(param):
    return param.HasField("solver_type")


def upgrade_solver_param(param, path=None, notice=True):
    """Caffe's UpgradeSolverAsNeeded (in place): the legacy ``solver_type``
    enum becomes ``type``; returns ``param``."""
    if param.HasField("solver_type"):
        if param.HasField("type"):
            raise ConfigError("give the solver type as 'type' (a string) or the deprecated 'solver_type' (an "
                              "enum), not both", path=path, line=field_line(path, "solver_type"),
                              field="solver_type")
        name = _pb().SolverParameter.SolverType.Name(param.solver_type)
        param.type = _SOLVER_TYPES[name]
        param.ClearField("solver_type")
        if notice:
            log.warning(f"{path or 'solver'}: upgraded the deprecated 'solver_type: {name}' (enum) to "
                        f"'type: \"{param.type}\"'")
    return param


def upgrade_solver_as_needed(param, path=None, notice=True):
    """Upgrade ``param`` in place; returns the list of steps applied."""
    if not solver_needs_type_upgrade(param):
        return []
    upgrade_solver_param(param, path, notice)
    return ["solver_type"]
