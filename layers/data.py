"""Data layers without a source: Input (blobs the user fills) and DummyData; and what the data
layers with a list file (ImageData, HDF5Data) share: reading it.

Input and DummyData shape their tops once, in setup; ``reshape`` leaves
them alone so a user can reshape an input blob
(``net.blobs['data'].reshape(...)``) and the net follows, as in Caffe.
"""
from dlcore.config import read_text_file
from dlcore.errors import ConfigError
from dlcore.filler import fill
from dlcore.layer import Layer
from dlcore.registry import register_layer
from dltrain.proto import caffe_pb2


def read_list_file(source, owner, field, what):
    """The lines of a data layer's list file ``source`` (named by the parameter ``field``), with a
    ConfigError if it cannot be read or has only blank lines (``what``: what it should list)."""
    try:
        lines = read_text_file(source, "the list file").splitlines()     # a regular file, of a sane size
    except ConfigError as err:
        raise ConfigError(f"{owner}: {field}: {err}", field=field) from None
    if not any(line.strip() for line in lines):
        raise ConfigError(f"{owner}: {field}: '{source}' lists no {what}", field=field)
    return lines


def _reshape_top(layer, blob, shape, index):
    try:
        blob.reshape(shape)
    except ValueError as err:
        raise ConfigError(f"layer '{layer.name}' ({layer.type}): top {index}: {err}") from None


@register_layer("Input")
class InputLayer(Layer):
    """input_param.shape: once for all tops, once per top, or not at all."""

    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def setup(self, bottom, top):
        shapes = self.layer_param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise ConfigError(f"layer '{self.name}' (Input): must specify 'shape' once, once per top blob "
                              f"({len(top)}), or not at all: {len(shapes)} given")
        for i, blob in enumerate(top):
            if shapes:
                _reshape_top(self, blob, shapes[0] if len(shapes) == 1 else shapes[i], i)

    def reshape(self, bottom, top):
        pass   # shaped in setup; the user may reshape the tops afterwards

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        pass


@register_layer("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by data_filler (default constant 0).

    Fillers: none, one for all tops, or one per top.  Shapes: ``shape``
    (once or once per top) or the legacy num/channels/height/width lists
    (each once or once per top).  As Caffe does, tops with a constant
    filler are filled once at setup; the others are refilled at every
    forward (and are left unfilled until the first one).
    """

    exact_num_bottom_blobs = 0
    min_top_blobs = 1

    def setup(self, bottom, top):
        param = self.layer_param.dummy_data_param
        num_top = len(top)
        num_fillers = len(param.data_filler)
        if num_fillers not in (0, 1, num_top):
            raise ConfigError(f"layer '{self.name}' (DummyData): number of data fillers must be 0, 1 or equal "
                              f"to the number of tops ({num_top}); got {num_fillers}")
        legacy = any(len(getattr(param, f)) for f in ("num", "channels", "height", "width"))
        if legacy:
            if len(param.shape):
                raise ConfigError(f"layer '{self.name}' (DummyData): both shape and legacy fields "
                                  "(num/channels/height/width) were specified")
            for field in ("num", "channels", "height", "width"):
                n = len(getattr(param, field))
                if n not in (1, num_top):
                    raise ConfigError(f"layer '{self.name}' (DummyData): must specify '{field}' once, or once "
                                      f"per top blob ({num_top}); specified {n}")
        elif len(param.shape) not in (1, num_top):
            raise ConfigError(f"layer '{self.name}' (DummyData): must specify 'shape' once, or once per top "
                              f"blob ({num_top}); specified {len(param.shape)}")

        if num_fillers == 0:
            default = caffe_pb2.FillerParameter()
            default.type = "constant"
            default.value = 0
            self.fillers = [default]
        else:
            self.fillers = list(param.data_filler)
        # Constant fillers fill once (now); the others at every forward.
        self.refill = [f.type != "constant" for f in self.fillers]

        for i, blob in enumerate(top):
            if legacy:
                dims = [getattr(param, f)[0 if len(getattr(param, f)) == 1 else i]
                        for f in ("num", "channels", "height", "width")]
                _reshape_top(self, blob, dims, i)
            else:
                _reshape_top(self, blob, param.shape[0 if len(param.shape) == 1 else i], i)
        self._fill(top, constant=True)

    def _fill(self, top, constant):
        for i, blob in enumerate(top):
            k = i if len(self.fillers) > 1 else 0
            if self.refill[k] != constant and blob.count:
                try:
                    fill(blob, self.fillers[k])
                except ConfigError as err:
                    raise ConfigError(f"layer '{self.name}' (DummyData): top {i}: {err.message}") from None

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        self._fill(top, constant=False)

    def backward_cpu(self, top, propagate_down, bottom):
        pass
