"""Caffe's data tools: `dltrain compute_image_mean` and `dltrain extract_features`.

``compute_image_mean`` (Caffe's tools/compute_image_mean.cpp)::

    dltrain compute_image_mean [--backend lmdb|leveldb] DB [MEAN.binaryproto]

The mean of every record of an LMDB or a LevelDB of Datums (raw ``data`` bytes, or
``float_data``, or encoded images decoded with their own channels), element
by element, accumulated in float32 as Caffe accumulates it, written as a
BlobProto of shape 1 x C x H x W (Caffe's legacy num/channels/height/width
fields) -- what a data layer's ``transform_param { mean_file }`` reads.
Every record must have the first one's size.  The per-channel means are
logged, as Caffe logs them (handy for ``mean_value``).  DB is read as what it
holds; when that is not ``--backend`` (default ``lmdb``, as in Caffe), one
line says so.

``extract_features`` (Caffe's tools/extract_features.cpp)::

    dltrain extract_features WEIGHTS NET BLOB[,BLOB...] OUT[,OUT...] N [lmdb|leveldb|npy] [CPU|GPU]
                             [DEVICE_ID] [--format lmdb|leveldb|npy] [--backend lmdb|leveldb]

builds NET in the TEST phase with WEIGHTS, runs N forward passes (N
mini-batches of NET's data layer) and stores, for each BLOB, each item's
features (blob.count / blob.num values):

* ``lmdb`` or ``leveldb`` (Caffe's): a database at OUT of Datums with
  ``float_data`` and channels/height/width of the blob (Caffe's legacy
  accessors: a 2-axis blob N x D is D x 1 x 1), keys ``%010d`` (the item's
  index);
* ``npy``: one float32 array at OUT of shape ``(N * batch,) + blob.shape[1:]``.

The format is ``--format`` (or ``--backend``), else the positional db type
(Caffe's ``db_type``), else ``npy`` for an OUT ending in .npy and ``lmdb``
otherwise.  To keep labels beside the features, extract the label blob too
(``ip1,label feats,labels``).  Features are gathered in memory, then written
(each database or array atomically).
"""
import os

import numpy as np

from dlcore import log
from dlcore.errors import ConfigError, DLTrainError

__all__ = ["compute_image_mean", "extract_features", "register"]


# ---------------------------------------------------------------------------
# compute_image_mean
# ---------------------------------------------------------------------------

def compute_image_mean(db, output=None, backend="lmdb"):
    """The mean image of an LMDB or a LevelDB of Datums, as a BlobProto (also
    written to ``output`` when given).  Returns ``(blob_proto, mean array C x H x W)``."""
    from dltrain.layers.db_data import backend_name, datum_to_array, open_db
    from dltrain.proto import caffe_pb2
    backend = backend_name(backend)
    database = open_db(db)
    note = database.not_as_declared(backend, "--backend")
    if note:
        log.info(f"{db} {note}")
    total, count, shape = None, 0, None
    for key, value in database.records():
        try:
            datum = caffe_pb2.Datum.FromString(value)
            pixels = datum_to_array(datum)
        except Exception as err:   # a corrupt record: name it
            message = getattr(err, "message", None) or str(err)
            raise DLTrainError(f"{db}: record '{key.decode(errors='replace')}': {message}") from None
        if total is None:
            shape = pixels.shape
            total = np.zeros(pixels.size, np.float32)
            log.info("Starting Iteration")
        if pixels.size != total.size:
            raise DLTrainError(f"{db}: record '{key.decode(errors='replace')}': incorrect data field size "
                               f"{pixels.size} (the first record has {total.size} values, "
                               f"{shape[0]}x{shape[1]}x{shape[2]})")
        # float32 accumulation, element by element, as Caffe sums into its BlobProto.
        total += pixels.reshape(-1).astype(np.float32)
        count += 1
        if count % 10000 == 0:
            log.info(f"Processed {count} files.")
    if count == 0:
        raise DLTrainError(f"{db}: the database has no records")
    if count % 10000 != 0:
        log.info(f"Processed {count} files.")
    mean = (total / np.float32(count)).astype(np.float32)
    blob = caffe_pb2.BlobProto(num=1, channels=shape[0], height=shape[1], width=shape[2])
    blob.data.extend(mean.tolist())
    if output:
        from dlcore.config import write_binary
        log.info(f"Write to {output}")
        write_binary(output, blob)
    mean = mean.reshape(shape)
    for c in range(shape[0]):
        log.info(f"mean_value channel [{c}]: {float(mean[c].sum(dtype=np.float64)) / (shape[1] * shape[2]):g}")
    return blob, mean


def cmd_compute_image_mean(args):
    compute_image_mean(args.db, args.output, backend=args.backend)
    return 0


# ---------------------------------------------------------------------------
# extract_features
# ---------------------------------------------------------------------------

FORMATS = ("lmdb", "leveldb", "npy")


def _feature_datum(item):
    """A Datum of one item's features, as Caffe's extract_features builds it."""
    from dltrain.proto import caffe_pb2
    legacy = (tuple(item.shape) + (1, 1, 1))[:3] if item.ndim <= 3 else None
    if legacy is None:     # more than 4 axes: Caffe's legacy accessors refuse; keep the count
        legacy = (item.size, 1, 1)
    datum = caffe_pb2.Datum(channels=legacy[0], height=legacy[1], width=legacy[2])
    datum.float_data.extend(item.reshape(-1).tolist())
    return datum


def _write_npy(path, array):
    from dlcore.config import write_atomic
    import io
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue())


def extract_features(weights, net, blobs, outputs, num_batches, fmt=None, gpu=None):
    """Run ``num_batches`` forward passes of ``net`` (a path or NetParameter,
    built in the TEST phase with ``weights``) and write each of ``blobs``'
    per-item features to the matching path of ``outputs`` (LMDB, LevelDB or
    .npy, see the module docstring).  Returns ``{blob: features array}``."""
    from dlcore import TEST, Net, backend
    from dltrain.layers.db_data import write_db
    blobs = [blobs] if isinstance(blobs, str) else list(blobs)
    outputs = [outputs] if isinstance(outputs, (str, os.PathLike)) else list(outputs)
    outputs = [os.fspath(o) for o in outputs]
    if len(blobs) != len(outputs):
        raise DLTrainError(f"the number of blob names ({len(blobs)}: {','.join(blobs)}) and of output datasets "
                           f"({len(outputs)}: {','.join(outputs)}) must be the same")
    num_batches = int(num_batches)
    if num_batches <= 0:
        raise DLTrainError(f"the number of mini-batches must be positive (got {num_batches})")
    formats = []
    for out in outputs:
        f = (fmt or ("npy" if out.lower().endswith(".npy") else "lmdb")).lower()
        if f not in FORMATS:
            raise DLTrainError(f"unknown feature format '{f}' (use lmdb, leveldb or npy)")
        if os.path.exists(out):
            raise DLTrainError(f"'{out}' already exists: remove it or choose another name")
        formats.append(f)
    if gpu is not None:
        backend.set_mode_gpu(gpu)
        log.info(f"Using GPU {gpu}")
    else:
        log.info("Using CPU")
    feature_net = Net(net, TEST, weights=os.fspath(weights) if weights else None)
    for name in blobs:
        if not feature_net.has_blob(name):
            raise ConfigError(f"unknown feature blob name '{name}' in the network "
                              f"(blobs: {', '.join(feature_net.blobs)})",
                              path=net if isinstance(net, (str, os.PathLike)) else None)
    log.info("Extracting Features")
    gathered = {name: [] for name in blobs}
    counts = [0] * len(blobs)
    for _ in range(num_batches):
        feature_net.forward()
        for i, name in enumerate(blobs):
            data = feature_net.blobs[name].data
            if data.ndim == 0:
                data = data.reshape(1)
            gathered[name].append(np.array(data, dtype=np.float32, copy=True))
            before = counts[i]
            counts[i] += data.shape[0]
            if counts[i] // 1000 > before // 1000:
                log.info(f"Extracted features of {counts[i] // 1000 * 1000} query images for feature blob {name}")
    result = {}
    for name, out, f in zip(blobs, outputs, formats):
        features = np.concatenate(gathered[name], axis=0)
        result[name] = features
        if f == "npy":
            _write_npy(out, features)
        else:
            write_db(out, ((f"{n:010d}", _feature_datum(item)) for n, item in enumerate(features)), f)
        log.info(f"Extracted features of {len(features)} query images for feature blob {name} -> {out}")
    log.info("Successfully extracted the features!")
    return result


def cmd_extract_features(args):
    fmt, gpu = args.format, None
    if args.backend:
        from dltrain.layers.db_data import backend_name
        backend = backend_name(args.backend)
        if fmt and fmt != backend:
            raise DLTrainError(f"--format {fmt} and --backend {backend} disagree")
        fmt = backend
    extra = list(args.extra)
    if extra and extra[0].lower() in FORMATS:
        positional = extra.pop(0).lower()
        fmt = fmt or positional
    if extra and extra[0].upper() in ("CPU", "GPU"):
        mode = extra.pop(0).upper()
        device = 0
        if extra:
            try:
                device = int(extra.pop(0))
            except ValueError:
                raise DLTrainError(f"DEVICE_ID must be an integer, got '{args.extra[-1]}'") from None
        gpu = device if mode == "GPU" else None
    if extra:
        raise DLTrainError(f"unexpected arguments: {' '.join(extra)} (after N: [lmdb|leveldb|npy] [CPU|GPU] "
                           "[DEVICE_ID])")
    extract_features(args.weights, args.net, args.blobs.split(","), args.outputs.split(","), args.num_batches,
                     fmt=fmt, gpu=gpu)
    return 0


def register(sub):
    p = sub.add_parser("compute_image_mean", help="the mean image of an LMDB or LevelDB of Datums, as a "
                                                  ".binaryproto (as Caffe's compute_image_mean)",
                       description="Compute the mean of all Datums in an LMDB or a LevelDB and write it as a "
                                   "BlobProto (1 x C x H x W), what transform_param's mean_file reads.")
    p.add_argument("db", metavar="DB", help="the LMDB or LevelDB of Datums")
    p.add_argument("output", metavar="MEAN.binaryproto", nargs="?", default=None,
                   help="where to write the mean (if omitted, only the per-channel means are logged)")
    p.add_argument("--backend", default="lmdb", metavar="lmdb|leveldb",
                   help="the database's kind: lmdb (the default) or leveldb; DB is read as what it holds")
    p.set_defaults(func=cmd_compute_image_mean)

    p = sub.add_parser("extract_features", help="write a trained net's blob values per item (LMDB or LevelDB of "
                                                "Datums, or .npy), as Caffe's extract_features",
                       description="Run N forward passes of NET (TEST phase, with WEIGHTS) and store each "
                                   "item's values of each BLOB in the matching OUT (LMDB or LevelDB of float "
                                   "Datums with keys %%010d, as Caffe's extract_features, or a .npy array).")
    p.add_argument("weights", metavar="WEIGHTS", help="the trained weights (.caffemodel)")
    p.add_argument("net", metavar="NET", help="the feature extraction net (its TEST phase feeds the data)")
    p.add_argument("blobs", metavar="BLOB[,BLOB...]", help="blob names, comma separated")
    p.add_argument("outputs", metavar="OUT[,OUT...]", help="one output per blob, comma separated")
    p.add_argument("num_batches", metavar="N", type=int, help="number of mini-batches (forward passes)")
    p.add_argument("extra", nargs="*", metavar="[lmdb|leveldb|npy] [CPU|GPU] [DEVICE_ID]",
                   help="Caffe's trailing arguments: db type, device, device id")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: the db type argument, else npy for .npy names, else lmdb)")
    p.add_argument("--backend", default=None, metavar="lmdb|leveldb",
                   help="the database to write, as --format lmdb|leveldb")
    p.set_defaults(func=cmd_extract_features)
