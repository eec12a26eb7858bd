"""`dltrain predict`: print a trained net's outputs for text inputs.

    dltrain predict --model DEPLOY.prototxt --weights W.caffemodel [--codec C.json]
                    [NAME ...] [--file names.txt]

Each name is encoded into the deploy net's input blobs by a *codec*, a
small JSON file that describes the encoding the net was trained with (by
default ``charcodec.json`` in the model's folder); the net runs forward in
the TEST phase and one line per name is printed: the name, then the output
blob's values for it, separated by tabs (``name<TAB>lat<TAB>lon`` for the
geolocation example).  Names come from the command line, or from a file
(one per line; ``-`` reads standard input).

The codec (``CharCodec``)
-------------------------
A character codec, the one the geolocation example uses (its data are
prepared with the same class, so training and prediction cannot drift)::

    {
      "alphabet": " !\\"#$%...~",     # index 2 + position; 0 = padding, 1 = unknown
      "max_length": 24,              # T: names are cut to their first T characters
      "padding": "left",             # pad on the left (the name ends at step T-1) or "right"
      "layout": "time_major",        # chars and cont are T x N ("batch_major": N x T)
      "inputs": {"chars": "chars", "cont": "cont"},   # the deploy net's input blob names
      "output": "pred",              # the blob to print, N x K
      "output_kind": "latlon_degrees"  # optional: print (lat, lon) normalized to
    }                                  # [-90, 90] x [-180, 180)

Text is normalized before encoding: Unicode NFKD, combining marks dropped
(``"Zürich"`` becomes ``"Zurich"``), then each character is looked up in
the alphabet, characters outside it become the unknown index 1.  ``cont``
(the sequence-continuation flags of Caffe's recurrent layers) is 0 at the
first time step and 1 after, per name; it is filled only when the codec
names a ``cont`` input.
"""
import argparse
import json
import os
import sys
import unicodedata

import numpy as np

from dlcore import TEST, DLTrainError

PAD, UNKNOWN = 0, 1


class CharCodec:
    """Names <-> index sequences, as described by a codec JSON (see the module doc)."""

    def __init__(self, spec, source="codec"):
        self.source = source
        try:
            self.alphabet = str(spec["alphabet"])
            self.max_length = int(spec["max_length"])
            self.padding = spec.get("padding", "left")
            self.layout = spec.get("layout", "time_major")
            self.inputs = dict(spec.get("inputs", {"chars": "chars"}))
            self.output = spec.get("output")
            self.output_kind = spec.get("output_kind")
        except (KeyError, TypeError, ValueError) as err:
            raise DLTrainError(f"{source}: bad codec: {err}") from None
        if self.max_length <= 0:
            raise DLTrainError(f"{source}: max_length must be positive")
        if self.padding not in ("left", "right"):
            raise DLTrainError(f"{source}: padding must be 'left' or 'right', got {self.padding!r}")
        if self.layout not in ("time_major", "batch_major"):
            raise DLTrainError(f"{source}: layout must be 'time_major' or 'batch_major', got {self.layout!r}")
        if "chars" not in self.inputs:
            raise DLTrainError(f"{source}: inputs must name the 'chars' blob")
        if len(set(self.alphabet)) != len(self.alphabet):
            raise DLTrainError(f"{source}: the alphabet repeats a character")
        self._index = {ch: i + 2 for i, ch in enumerate(self.alphabet)}
        self.vocabulary_size = len(self.alphabet) + 2

    @classmethod
    def load(cls, path):
        from dlcore.config import read_text_file
        try:
            spec = json.loads(read_text_file(path, "the codec"))
        except json.JSONDecodeError as err:
            raise DLTrainError(f"{path}:{err.lineno}:{err.colno}: codec is not valid JSON: {err.msg}") from None
        return cls(spec, source=str(path))

    @staticmethod
    def normalize(text):
        """NFKD with the combining marks dropped (accents stripped)."""
        return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))

    def indices(self, text):
        """The index sequence of one name (at most max_length long, unpadded)."""
        return [self._index.get(ch, UNKNOWN) for ch in self.normalize(text)[:self.max_length]]

    def encode(self, names):
        """(chars, cont) as float32 arrays in the codec's layout (T x N or N x T)."""
        T = self.max_length
        chars = np.full((len(names), T), PAD, np.float32)
        for n, name in enumerate(names):
            seq = self.indices(name)
            if seq:
                if self.padding == "left":
                    chars[n, T - len(seq):] = seq
                else:
                    chars[n, :len(seq)] = seq
        cont = np.ones((len(names), T), np.float32)
        cont[:, 0] = 0
        if self.layout == "time_major":
            return np.ascontiguousarray(chars.T), np.ascontiguousarray(cont.T)
        return chars, cont

    def decode(self, row):
        """The (normalized, truncated) text of one encoded row (N x T layout)."""
        return "".join(self.alphabet[int(i) - 2] if i >= 2 else ("?" if i == UNKNOWN else "")
                       for i in row)


def normalize_latlon(values):
    """(lat, lon) degrees of any size -> the same point as lat in [-90, 90], lon in [-180, 180)."""
    lat = np.radians(np.asarray(values[:, 0], np.float64))
    lon = np.radians(np.asarray(values[:, 1], np.float64))
    x, y, z = np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)
    out = np.empty((len(values), 2))
    out[:, 0] = np.degrees(np.arctan2(z, np.hypot(x, y)))
    out[:, 1] = np.degrees(np.arctan2(y, x))
    out[:, 1] = (out[:, 1] + 180.0) % 360.0 - 180.0
    return out


def predict(net, codec, names, batch=1024):
    """The output rows (N x K float64) of ``net`` for ``names``."""
    chars_blob = codec.inputs["chars"]
    cont_blob = codec.inputs.get("cont")
    output = codec.output or (net.outputs[0] if net.outputs else None)
    for name in [chars_blob, cont_blob, output]:
        if name is not None and name not in net.blobs:
            raise DLTrainError(f"{codec.source}: the net has no blob '{name}' (blobs: {', '.join(net.blobs)})")
    rows = []
    for start in range(0, len(names), batch):
        chunk = names[start:start + batch]
        chars, cont = codec.encode(chunk)
        net.blobs[chars_blob].reshape(chars.shape)
        net.blobs[chars_blob].data[...] = chars
        if cont_blob is not None:
            net.blobs[cont_blob].reshape(cont.shape)
            net.blobs[cont_blob].data[...] = cont
        net.forward()
        out = np.asarray(net.blobs[output].data, np.float64).reshape(len(chunk), -1)
        rows.append(out.copy())
    result = np.concatenate(rows) if rows else np.zeros((0, 2))
    if codec.output_kind == "latlon_degrees" and len(result):
        result = normalize_latlon(result)
    return result


def _digits(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 30:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 30, got '{text}'")
    return value


def _read_names(path):
    try:
        if path == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
    except OSError as err:
        raise DLTrainError(f"cannot read names from '{path}': {err.strerror}") from None
    return [line.strip() for line in lines if line.strip()]


def cmd_predict(args):
    from dlcore import Net
    from dlcore.net import weight_files

    names = list(args.names)
    if args.file:
        names += _read_names(args.file)
    if not names:
        raise DLTrainError("no names given: pass them as arguments or with --file")
    codec_path = args.codec or os.path.join(os.path.dirname(os.path.abspath(args.model)), "charcodec.json")
    if not os.path.exists(codec_path):
        raise DLTrainError(f"no codec: '{codec_path}' does not exist (give one with --codec)")
    codec = CharCodec.load(codec_path)
    net = Net(args.model, TEST)
    for path in weight_files(args.weights):
        net.copy_from(path)
    values = predict(net, codec, names)
    out = sys.stdout
    for name, row in zip(names, values):
        out.write(name + "\t" + "\t".join(f"{v:.{args.digits}f}" for v in row) + "\n")
    return 0


def register(sub):
    p = sub.add_parser("predict", help="print a trained net's outputs for names (text inputs)",
                       description="Encode each name with a codec, run the deploy net forward, and print "
                                   "name<TAB>output values (e.g. latitude and longitude).")
    p.add_argument("names", nargs="*", help="names to predict for")
    p.add_argument("--model", required=True, help="the deploy net (.prototxt or .yaml)")
    p.add_argument("--weights", required=True, help="the trained .caffemodel")
    p.add_argument("--file", help="a file of names, one per line ('-': standard input)")
    p.add_argument("--codec", help="the codec JSON (default: charcodec.json beside the model)")
    p.add_argument("--digits", type=_digits, default=4, help="decimals printed (default 4)")
    p.set_defaults(func=cmd_predict)
