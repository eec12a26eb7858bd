"""`caffe.net_spec`: nets written as Python calls, as pycaffe's NetSpec writes them.

    from caffe import layers as L, params as P
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source=..., batch_size=64, backend=P.Data.LMDB, ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20)
    print(n.to_proto())          # a caffe_pb2.NetParameter; str() is prototxt

``L.<Type>(*bottoms, **fields)`` describes one layer.  A keyword ending in
``param`` (``transform_param``, ``param``, ``python_param``) is a
LayerParameter field; any other keyword goes to the layer type's own
parameter message (``kernel_size`` of a Convolution goes to
``convolution_param``) when that message has the field, and to
LayerParameter otherwise (``loss_weight``, ``include``).  Lists fill
repeated fields, dicts fill messages.  ``ntop=k`` gives k tops (0: the
layer itself is returned), ``in_place=True`` writes the tops over the
bottoms.  ``P.<Type>.<NAME>`` is the enum value of ``<Type>Parameter``
(``P.Pooling.MAX``).

Names follow pycaffe: a top assigned to the NetSpec takes the attribute's
name and a layer takes its first top's name; any other top or layer gets
``<Type><k>``, counting per type in the order the net is written out.
"""
from collections import Counter, OrderedDict

from google.protobuf.message import Message

from dltrain.proto import caffe_pb2

__all__ = ["NetSpec", "Top", "Function", "Layers", "Parameters", "layers", "params", "to_proto", "assign_proto",
           "param_name_dict"]


def param_name_dict():
    """Layer type -> the prefix of its LayerParameter field: {'Convolution': 'convolution', ...}.

    Found from the schema: a field ``foo_param`` of message type ``FooParameter`` serves type ``Foo``.
    """
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                names[type_name[:-len("Parameter")]] = field.name[:-len("_param")]
    return names


# Types whose parameters sit in a message named after another type.  Caffe's own NetSpec has
# no such table (there, Deconvolution's kernel_size must be given inside convolution_param=dict(...));
# both spellings give the same prototxt here.
_SHARED_PARAM_NAMES = {"Deconvolution": "convolution", "Im2col": "convolution"}


def to_proto(*tops):
    """A NetParameter with every layer needed to compute ``tops``, with generated names."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def _has_field(message, name):
    return name in message.DESCRIPTOR.fields_by_name


def _message_name(message):
    return message.DESCRIPTOR.name


def assign_proto(proto, name, val):
    """Set field ``name`` of message ``proto`` from a Python value.

    A list fills a repeated field (a list of dicts adds one message per dict), a dict fills a
    message field, anything else is set as is; a single value given to a repeated field is
    taken as a one-item list (``kernel_size=3`` means ``kernel_size: 3``).  Beyond pycaffe,
    tuples and NumPy arrays count as lists and a message is copied into a message field.
    """
    if not _has_field(proto, name):
        raise AttributeError(f"{_message_name(proto)} has no field '{name}'")
    field = getattr(proto, name)
    is_repeated = hasattr(field, "extend")
    if isinstance(val, tuple) or hasattr(val, "tolist"):    # tuples and NumPy values as plain Python
        val = list(val) if isinstance(val, tuple) else val.tolist()
    if is_repeated and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        if not is_repeated:
            raise TypeError(f"{_message_name(proto)}.{name} is not a repeated field: it takes one value, "
                            f"not the list {val!r}")
        if any(isinstance(item, dict) for item in val):
            for item in val:
                message = field.add()
                if isinstance(item, dict):
                    for key, value in item.items():
                        assign_proto(message, key, value)
                else:
                    message.CopyFrom(item)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for key, value in val.items():
            assign_proto(field, key, value)
    elif isinstance(val, Message):
        field.CopyFrom(val)
    else:
        setattr(proto, name, val)


class Top:
    """One output blob of a layer: output ``n`` of Function ``fn``."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its bottoms (Tops of earlier layers) and its fields."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(value)})")
        self.inputs = inputs
        self.params = params
        # ntop and in_place describe the call, not the layer: take them out of the fields
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _param_message_name(self):
        """The LayerParameter field that holds this type's own fields, or None."""
        prefix = _SHARED_PARAM_NAMES.get(self.type_name, _param_names.get(self.type_name))
        return None if prefix is None else prefix + "_param"

    def _assign(self, layer, key, value):
        if key.endswith("param"):
            assign_proto(layer, key, value)
            return
        own = self._param_message_name()
        if own is not None and _has_field(getattr(layer, own), key):
            assign_proto(getattr(layer, own), key, value)
        elif _has_field(layer, key):
            assign_proto(layer, key, value)
        elif own is not None:
            raise AttributeError(f"unknown field '{key}' (neither {own} nor LayerParameter has it)")
        else:
            raise AttributeError(f"unknown field '{key}' (LayerParameter has no such field)")

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottom_names = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottom_names.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottom_names)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            for top in self.tops:
                layer.top.append(self._get_top_name(top, names, autonames))
        layer.name = self._get_name(names, autonames)
        for key, value in self.params.items():
            try:
                self._assign(layer, key, value)
            except (AttributeError, TypeError, ValueError) as err:
                # the same kind of error as pycaffe's, saying which layer and keyword
                kind = next(k for k in (AttributeError, TypeError, ValueError) if isinstance(err, k))
                raise kind(f"layer '{layer.name}' ({self.type_name}), {key}={value!r}: {err}") from None
        layers[self] = layer


def _type_of(value):
    """The layer type behind a tuple of tops, for error messages."""
    if isinstance(value, tuple) and value and isinstance(value[0], Top):
        return value[0].fn.type_name
    return "Type"


class _NoSuchTop(KeyError, AttributeError):
    """A name never assigned to a NetSpec: a KeyError as in pycaffe, and an AttributeError so that
    hasattr() and getattr(n, name, default) work."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class NetSpec:
    """Tops assigned as attributes (or items) under the names they take in the net.

    ``to_proto()`` writes every layer needed for the assigned tops, in the order they were
    assigned (each layer after the layers it reads).
    """

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise _NoSuchTop(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key, value):
        self.__setattr__(key, value)

    def __getitem__(self, item):
        return self.__getattr__(item)

    def __delitem__(self, name):
        del self.tops[name]

    def keys(self):
        return list(self.tops.keys())

    def vals(self):
        return list(self.tops.values())

    def to_proto(self):
        names = {value: key for key, value in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for name, top in self.tops.items():
            if not isinstance(top, (Top, Function)):
                raise TypeError(f"NetSpec '{name}' holds a {type(top).__name__}, not a top: give each top its "
                                f"own name (n.a, n.b = L.{_type_of(top)}(..., ntop=2))")
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """``L.<Type>(*bottoms, **fields)``: the top (ntop=1), the tuple of tops (ntop>1) or the layer (ntop=0)."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)

        def layer_fn(*args, **kwargs):
            fn = Function(name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        layer_fn.__name__ = name
        return layer_fn


class _ParameterConstants:
    """The constants of ``<Type>Parameter`` (enum values, nested enums): ``P.Pooling.MAX``."""

    def __init__(self, type_name):
        self._type_name = type_name

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        message = getattr(caffe_pb2, self._type_name + "Parameter", None)
        if message is None:
            raise AttributeError(f"caffe_pb2 has no message {self._type_name}Parameter")
        try:
            return getattr(message, name)
        except AttributeError:
            raise AttributeError(f"{self._type_name}Parameter has no constant '{name}'") from None


class Parameters:
    """``P.<Type>.<NAME>``: the value of constant NAME of caffe_pb2's ``<Type>Parameter``."""

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _ParameterConstants(name)


_param_names = param_name_dict()
layers = Layers()
params = Parameters()
