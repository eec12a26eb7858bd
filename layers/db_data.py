"""The Data layer: batches from an LMDB or a LevelDB of Caffe ``Datum``
records, and the DataTransformer (scale, mean, crop, mirror) that every data
layer shares.

Caffe compatibility
-------------------
* Records are read in key order; after the last one the reader restarts at
  the first (Caffe's DataLayer::Next).  ``rand_skip`` skips a random number
  of records in ``[0, rand_skip)`` once, at setup.
* A record is a serialized ``caffe_pb2.Datum``: raw ``data`` bytes (uint8,
  C x H x W), or ``float_data`` when ``data`` is empty, or an encoded image
  (``encoded: true``, PNG/JPEG/... decoded with Pillow).  Decoded colour
  images are in BGR channel order, as OpenCV gives them to Caffe (so
  Caffe's per-channel ``mean_value``s keep their meaning); ``force_color``
  and ``force_gray`` select 3 or 1 channels for encoded records.
* The transform per pixel is Caffe's DataTransformer::Transform exactly:
  ``top = (pixel - mean) * scale``, where ``mean`` is the ``mean_file``
  value at the pixel's position in the *uncropped* image, or the channel's
  ``mean_value``.  ``crop_size`` takes a random crop in TRAIN and the
  center crop (offsets ``(H - crop) // 2``) in TEST; ``mirror`` flips a
  random half of the items horizontally (as in Caffe, in whichever phase
  sets ``mirror: true``; nets normally set it in the TRAIN layer only).
* Labels go to the second top, as floats, shape ``(batch_size,)``.
* The random crops and flips come from a generator of the layer's own,
  seeded at setup from dltrain's one RNG (as Caffe's DataTransformer seeds
  its own from caffe_rng_rand()), so a run with ``random_seed`` set
  repeats exactly, whatever the reader thread's timing.

Reading ahead
-------------
A daemon thread reads and transforms up to ``data_param.prefetch`` batches
(default 4) ahead of the net; ``forward`` only copies a finished batch into
the tops.  The thread stops when the layer is garbage collected (the net
deleted) or the process exits.  An error in the thread (a corrupt record, a
record whose size does not match its shape, an image Pillow cannot decode)
is raised by the next ``forward`` as a DLTrainError naming the layer, the
source and the record's key.

Databases
---------
LMDB (the ``lmdb`` package) and LevelDB (``plyvel``, the ``[leveldb]``
extra) are read through one cursor (:class:`Cursor`), records in key order
for both (bytewise, as Caffe's).  The source's files decide which: LMDB's
``data.mdb``, LevelDB's ``CURRENT``/``MANIFEST-*``.  When
``data_param.backend`` -- or Caffe's default, LEVELDB, when it is not set --
names the other one, the layer reads what is there and logs one line.

Each process opens a database once, and its readers (a train and a test net
on the same source) share the handle, each with a cursor of its own.  A
LevelDB takes a lock that admits one process: a process that finds it held
(another rank of a data-parallel run) reads it through a private view of
hard links to its immutable files (see :func:`open_leveldb`).
"""
import copy
import io
import os
import queue
import shutil
import tempfile
import threading
import time
import weakref

import numpy as np
from google.protobuf.message import DecodeError
from numba import njit

from dlcore import log, parallel
from dlcore.errors import ConfigError, DLTrainError, require_module
from dlcore.layer import TRAIN, Layer
from dlcore.registry import register_layer
from dlcore.resume import generator_state, new_generator
from dlcore.rng import get_rng
from dltrain.proto import caffe_pb2

__all__ = ["DataLayer", "DataTransformer", "transform_batch", "array_to_datum", "datum_to_array",
           "decode_image", "image_to_chw", "BACKENDS", "backend_name", "detect_backend", "open_db", "Database",
           "Cursor", "open_lmdb", "write_lmdb", "count_lmdb", "open_leveldb", "write_leveldb", "write_db"]


# ---------------------------------------------------------------------------
# The per-batch pixel kernel
# ---------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def transform_batch(src, mean, scale, h_off, w_off, mirror, out):
    """Caffe's DataTransformer::Transform for a whole batch.

    ``src (N, C, H, W)`` uint8 or float pixels; ``mean (C, H, W)`` in the
    output's dtype (zeros when there is no mean; indexed at the source
    pixel, i.e. before cropping); ``scale`` a scalar of the output's
    dtype; ``h_off``, ``w_off``, ``mirror`` per item; ``out (N, C, h, w)``
    with ``h``, ``w`` the crop size (or H, W).  ``out[n, c, y, x']`` with
    ``x' = w-1-x`` when mirrored, else ``x``, gets
    ``(src[n, c, ho+y, wo+x] - mean[c, ho+y, wo+x]) * scale``.
    """
    N, C, oh, ow = out.shape
    for n in range(N):
        ho = h_off[n]
        wo = w_off[n]
        flip = mirror[n] != 0
        for c in range(C):
            for y in range(oh):
                for x in range(ow):
                    value = (src[n, c, ho + y, wo + x] - mean[c, ho + y, wo + x]) * scale
                    if flip:
                        out[n, c, y, ow - 1 - x] = value
                    else:
                        out[n, c, y, x] = value


# ---------------------------------------------------------------------------
# Images and Datums
# ---------------------------------------------------------------------------

def _pillow():
    return require_module("PIL.Image", "reading encoded images", "Pillow", "images")


def image_to_chw(image, color=None):
    """A Pillow image as a ``(C, H, W)`` uint8 array, colour in BGR order.

    ``color=None`` keeps the image's own kind (grayscale images give one
    channel, everything else three: OpenCV's IMREAD_ANYCOLOR); ``True``
    forces three channels, ``False`` one (OpenCV's IMREAD_COLOR /
    IMREAD_GRAYSCALE).  Alpha is dropped, as OpenCV drops it.
    """
    mode = image.mode
    if color is None:
        color = mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    if color:
        array = np.asarray(image.convert("RGB"))[:, :, ::-1]          # RGB -> BGR
        return np.ascontiguousarray(array.transpose(2, 0, 1))
    if mode.startswith("I;16"):
        array = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)   # 16 -> 8 bits, as OpenCV
    else:
        array = np.asarray(image.convert("L"))
    return np.ascontiguousarray(array[None, :, :])


def decode_image(data, color=None):
    """Decode encoded image bytes (PNG, JPEG, ...) to ``(C, H, W)`` uint8 (BGR)."""
    Image = _pillow()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image_to_chw(image, color)


def array_to_datum(array, label=0):
    """A ``(C, H, W)`` (or ``(H, W)``) array as a raw Datum: uint8 arrays go to
    ``data`` bytes, floating arrays to ``float_data``."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise DLTrainError(f"a Datum holds a C x H x W array, got shape {array.shape}")
    datum = caffe_pb2.Datum(channels=array.shape[0], height=array.shape[1], width=array.shape[2],
                            label=int(label))
    if array.dtype == np.uint8:
        datum.data = np.ascontiguousarray(array).tobytes()
    elif np.issubdtype(array.dtype, np.floating):
        datum.float_data.extend(np.asarray(array, np.float32).ravel().tolist())
    else:
        raise DLTrainError(f"a Datum holds uint8 or float pixels, got {array.dtype}")
    return datum


def datum_to_array(datum, color=None):
    """The pixels of a Datum as ``(C, H, W)``: uint8 for ``data`` and encoded
    images (decoded; ``color`` as in :func:`image_to_chw`), float32 for
    ``float_data``.  Raises DLTrainError when the size does not match."""
    if datum.encoded:
        return decode_image(datum.data, color)
    shape = (datum.channels, datum.height, datum.width)
    size = shape[0] * shape[1] * shape[2]
    if min(shape) <= 0:
        raise DLTrainError(f"the record's shape is {shape[0]}x{shape[1]}x{shape[2]}: channels, height and "
                           "width must be positive")
    if datum.data:
        if len(datum.data) != size:
            raise DLTrainError(f"the record has {len(datum.data)} bytes of pixels, but its shape "
                               f"{shape[0]}x{shape[1]}x{shape[2]} needs {size}")
        return np.frombuffer(datum.data, np.uint8).reshape(shape)
    if len(datum.float_data) != size:
        raise DLTrainError(f"the record has {len(datum.float_data)} float values, but its shape "
                           f"{shape[0]}x{shape[1]}x{shape[2]} needs {size}")
    return np.asarray(datum.float_data, np.float32).reshape(shape)


# ---------------------------------------------------------------------------
# The transformer
# ---------------------------------------------------------------------------

class DataTransformer:
    """Caffe's DataTransformer: ``transform_param`` applied to batches of pixels.

    ``transform(batch)`` takes ``(N, C, H, W)`` pixels (uint8 or float; all
    items of one size) and returns ``(N, C, h, w)`` in ``dtype``.  ``rng``
    (a NumPy Generator) draws the crops and flips; by default one is
    seeded from dltrain's RNG.  ``owner`` names the layer in errors.
    """

    def __init__(self, param, phase, dtype=np.float32, rng=None, owner="data layer"):
        self.param = param
        self.phase = phase
        self.dtype = np.dtype(dtype)
        self.owner = owner
        self.crop_size = int(param.crop_size)
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        if param.force_color and param.force_gray:
            raise ConfigError(f"{owner}: cannot set both force_color and force_gray")
        self.color = True if param.force_color else False if param.force_gray else None
        if param.HasField("mean_file") and len(param.mean_value):
            raise ConfigError(f"{owner}: cannot specify mean_file and mean_value at the same time")
        self.mean_values = [float(v) for v in param.mean_value]
        self.mean_file = None
        if param.HasField("mean_file"):
            self.mean_file = self._load_mean(param.mean_file)
        # As Caffe's InitRand: a generator of its own, seeded from the global
        # RNG only when the transform is random (so a net's other random
        # draws do not depend on whether its data is transformed).
        if rng is None and (self.mirror or (self.crop_size and phase == TRAIN)):
            rng = np.random.default_rng(int(get_rng().integers(0, 2 ** 63 - 1)))
        self.rng = rng
        self._mean_cache = {}

    def _load_mean(self, path):
        from dlcore.blob import proto_shape
        from dlcore.config import load_message
        try:
            proto = load_message(path, caffe_pb2.BlobProto)
        except ConfigError as err:
            raise ConfigError(f"{self.owner}: mean_file: {err}") from None
        shape = proto_shape(proto)
        values = np.asarray(proto.double_data or proto.data, np.float64)
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        if len(shape) != 3 or values.size != int(np.prod(shape)):
            raise ConfigError(f"{self.owner}: mean_file '{path}' must hold one C x H x W blob "
                              f"(shape {shape}, {values.size} values)")
        log.info(f"Loading mean file from: {path}")
        return values.reshape(shape)

    # --- shapes ------------------------------------------------------------
    def output_shape(self, shape):
        """(C, h, w) of the transformed image for an input of ``shape`` (C, H, W),
        after checking the input against crop_size and the mean."""
        c, h, w = (int(d) for d in shape)
        crop = self.crop_size
        if crop and (h < crop or w < crop):
            raise DLTrainError(f"{self.owner}: crop_size {crop} is larger than the image ({h}x{w})")
        if self.mean_file is not None and self.mean_file.shape != (c, h, w):
            m = self.mean_file.shape
            raise DLTrainError(f"{self.owner}: the mean_file blob is {m[0]}x{m[1]}x{m[2]} but the images are "
                               f"{c}x{h}x{w} (channels x height x width)")
        if self.mean_values and len(self.mean_values) not in (1, c):
            raise DLTrainError(f"{self.owner}: specify either 1 mean_value or as many as channels ({c}); "
                               f"{len(self.mean_values)} given")
        return (c, crop, crop) if crop else (c, h, w)

    def mean_array(self, shape):
        """The mean to subtract, as a (C, H, W) array of the output dtype."""
        key = tuple(shape)
        mean = self._mean_cache.get(key)
        if mean is None:
            if self.mean_file is not None:
                mean = self.mean_file.astype(self.dtype)
            elif self.mean_values:
                values = self.mean_values * (shape[0] if len(self.mean_values) == 1 else 1)
                mean = np.empty(key, self.dtype)
                mean[...] = np.asarray(values, np.float32).astype(self.dtype)[:, None, None]
            else:
                mean = np.zeros(key, self.dtype)
            self._mean_cache[key] = mean
        return mean

    # --- the work ------------------------------------------------------------
    def draw(self, n, height, width):
        """Per-item crop offsets and mirror flags, as Caffe draws them."""
        crop = self.crop_size
        mirror = (self.rng.integers(0, 2, n) if self.mirror else np.zeros(n)).astype(np.int32)
        if crop and self.phase == TRAIN:
            h_off = self.rng.integers(0, height - crop + 1, n).astype(np.int64)
            w_off = self.rng.integers(0, width - crop + 1, n).astype(np.int64)
        else:
            h_off = np.full(n, (height - crop) // 2 if crop else 0, np.int64)
            w_off = np.full(n, (width - crop) // 2 if crop else 0, np.int64)
        return h_off, w_off, mirror

    def transform(self, batch, out=None):
        batch = np.ascontiguousarray(batch)
        if batch.ndim != 4:
            raise DLTrainError(f"{self.owner}: the transformer takes N x C x H x W pixels, got {batch.shape}")
        n, c, h, w = batch.shape
        oc, oh, ow = self.output_shape((c, h, w))
        if out is None:
            out = np.empty((n, oc, oh, ow), self.dtype)
        h_off, w_off, mirror = self.draw(n, h, w)
        transform_batch(batch, self.mean_array((c, h, w)), self.dtype.type(self.scale), h_off, w_off, mirror, out)
        return out

    def decode(self, datum):
        """A Datum's pixels (C, H, W), encoded images decoded with force_color/force_gray."""
        return datum_to_array(datum, self.color)


# ---------------------------------------------------------------------------
# Databases: LMDB and LevelDB behind one cursor
# ---------------------------------------------------------------------------

BACKENDS = ("lmdb", "leveldb")
BACKEND_LABELS = {"lmdb": "LMDB", "leveldb": "LevelDB"}
LMDB_FILE = "data.mdb"
_ENVS = weakref.WeakValueDictionary()       # one open LMDB Environment per database in this process
_LEVELDBS = weakref.WeakValueDictionary()   # one open LevelDB per database in this process
_OPEN_LOCK = threading.Lock()
# Caffe's LevelDB options (util/db_leveldb.cpp); a large write buffer also lets a reader turn a database's
# log into one table when it opens it.
_LEVELDB_OPTIONS = {"max_open_files": 100, "write_buffer_size": 268435456, "block_size": 65536}


def backend_name(backend):
    """'lmdb' or 'leveldb' for a tool's ``--backend`` or a DataParameter.DB name, in any case."""
    name = str(backend).lower()
    if name not in BACKENDS:
        raise DLTrainError(f"unknown database backend '{backend}' (use lmdb or leveldb)")
    return name


def detect_backend(path):
    """What ``path`` holds: 'lmdb' (a folder with data.mdb, or an LMDB data file itself), 'leveldb' (a folder
    with LevelDB's CURRENT or MANIFEST-* files), or None."""
    path = os.fspath(path)
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, LMDB_FILE)):
        return "lmdb"
    if os.path.isdir(path):
        names = os.listdir(path)
        if "CURRENT" in names or any(name.startswith("MANIFEST-") for name in names):
            return "leveldb"
    return None


def open_db(source):
    """The database of records at ``source`` (LMDB or LevelDB, whichever the folder holds), open for reading.
    Raises ConfigError when there is none."""
    path = os.fspath(source)
    backend = detect_backend(path)
    if backend is None:
        if not os.path.exists(path):
            raise ConfigError(f"cannot open database '{path}': no such file or directory")
        raise ConfigError(f"'{path}' is not an LMDB (no {LMDB_FILE} in it) nor a LevelDB (no CURRENT or "
                          "MANIFEST file in it)")
    return Database(backend, path)


class Database:
    """One database of records open for reading.  The open handle is shared by every reader of the database
    in this process (LMDB and LevelDB each allow one per process); each reader takes a :class:`Cursor` of
    its own, in the thread that uses it."""

    def __init__(self, backend, path):
        self.backend = backend
        self.path = path
        if backend == "lmdb":
            self.handle = open_lmdb(path)
            self.errors = (_lmdb().Error,)
        else:
            self.handle = open_leveldb(path)
            self.errors = (_plyvel().Error,)

    @property
    def label(self):
        """'LMDB' or 'LevelDB'."""
        return BACKEND_LABELS[self.backend]

    @property
    def kind(self):
        """'an LMDB' or 'a LevelDB'."""
        return ("an " if self.backend == "lmdb" else "a ") + self.label

    def not_as_declared(self, declared, where):
        """The note when this database is not the ``declared`` backend (as ``where`` says), else None."""
        if self.backend == declared.lower():
            return None
        return f"is {self.kind}, not {declared} as {where} says: reading it as {self.label}"

    def cursor(self):
        return _LmdbCursor(self.handle) if self.backend == "lmdb" else _LevelDBCursor(self.handle)

    def records(self):
        """Every ``(key, value)`` once, in key order."""
        with self.cursor() as cursor:
            if not cursor.first():
                return
            while True:
                yield cursor.key(), cursor.value()
                if cursor.next():
                    return


class Cursor:
    """Caffe's db::Cursor: the records in key order, going round to the first after the last.

    ``first()`` and ``seek(key)`` say whether they found a record; ``next()`` says whether it went round."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def skip(self, count):
        """Move ``count`` records on from the first record, going round as often as needed."""
        moved = 0
        while moved < count:
            moved += 1
            if self.next():     # back at the first record: the database holds `moved` records
                count = moved + (count - moved) % moved


class _LmdbCursor(Cursor):
    def __init__(self, env):
        self._txn = env.begin(buffers=False)
        self._cursor = self._txn.cursor()

    def first(self):
        return self._cursor.first()

    def seek(self, key):
        return self._cursor.set_key(key)

    def key(self):
        return self._cursor.key()

    def value(self):
        return self._cursor.value()

    def next(self):
        if self._cursor.next():
            return False
        self._cursor.first()
        return True

    def close(self):
        self._txn.abort()


class _LevelDBCursor(Cursor):
    def __init__(self, handle):
        self._handle = handle          # keeps the database open while the cursor lives
        self._it = handle.db.raw_iterator(fill_cache=False)   # reads a snapshot of the database

    def first(self):
        self._it.seek_to_first()
        return self._it.valid()

    def seek(self, key):
        self._it.seek(key)
        return self._it.valid() and self._it.key() == key

    def key(self):
        return self._it.key()

    def value(self):
        return self._it.value()

    def next(self):
        self._it.next()
        if self._it.valid():
            return False
        self._it.seek_to_first()
        return True

    def close(self):
        self._it.close()


# --- LMDB ------------------------------------------------------------------

def _lmdb():
    try:
        import lmdb
    except ImportError:                                   # pragma: no cover - depends on the install
        raise DLTrainError("reading and writing LMDB databases needs the lmdb package: pip install lmdb") from None
    return lmdb


def open_lmdb(source):
    """Open an LMDB read-only, without a lock file (never written while read).

    ``source`` is the database folder (Caffe's form) or its data file.  One
    Environment per database is shared in the process (LMDB allows only
    one); it closes when its last user drops it.  Raises ConfigError when
    the database cannot be opened.
    """
    lmdb = _lmdb()
    path = os.fspath(source)
    if os.path.isdir(path):
        subdir = True
        if not os.path.isfile(os.path.join(path, LMDB_FILE)):
            raise ConfigError(f"'{path}' is not an LMDB database (no {LMDB_FILE} in it)")
    elif os.path.isfile(path):
        subdir = False
    else:
        raise ConfigError(f"cannot open LMDB '{path}': no such file or directory")
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        env = _ENVS.get(key)
        if env is None:
            env = _open_env(lmdb, path, subdir)
            _ENVS[key] = env
    return env


def _open_env(lmdb, path, subdir, wait_s=5.0):
    """lmdb.open, waiting while a previous Environment of the same database is still being closed (a
    stopped reader thread dropping the last reference closes it in that thread, after the entry left _ENVS)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False, max_readers=126)
        except lmdb.Error as err:
            if "already open" not in str(err) or time.monotonic() > deadline:
                raise ConfigError(f"cannot open LMDB '{path}': {err}") from None
            time.sleep(0.01)


def count_lmdb(source):
    """The number of records in an LMDB."""
    return open_lmdb(source).stat()["entries"]


def _new_database_folder(path):
    """(path, a temporary folder beside it to write into) for a new database; ``path`` must not exist yet (as
    Caffe's converters insist)."""
    path = os.path.normpath(os.fspath(path))
    if os.path.exists(path):
        raise DLTrainError(f"'{path}' already exists: remove it or choose another database name")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DLTrainError(f"cannot create '{path}': folder '{parent}' does not exist")
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    return path, tmp


def _write_in_batches(records, commit_every, commit):
    """Hand ``(key, Datum)`` records to ``commit([(key bytes, value bytes), ...])`` ``commit_every`` at a
    time (a key repeated within a batch is a duplicate too), logging Caffe's "Processed N files." lines;
    returns the number of records."""
    pending, keys, count = [], set(), 0
    for key, datum in records:
        key = key.encode() if isinstance(key, str) else bytes(key)
        if key in keys:
            raise DLTrainError(f"duplicate key '{key.decode(errors='replace')}'")
        keys.add(key)
        pending.append((key, datum.SerializeToString()))
        count += 1
        if len(pending) >= commit_every:
            commit(pending)
            pending.clear()
            keys.clear()
            log.info(f"Processed {count} files.")
    if pending:
        commit(pending)
    if count % commit_every:
        log.info(f"Processed {count} files.")
    return count


def write_lmdb(path, records, map_size=1 << 20, commit_every=1000):
    """Write ``(key, Datum)`` records (keys str or bytes) to a new LMDB at ``path``.

    The database is written into a temporary folder beside ``path`` and
    renamed into place at the end, so a failed conversion leaves nothing
    behind; no lock file is left in it.  ``path`` must not exist yet (as
    Caffe's converters insist).  The map starts at ``map_size`` bytes and
    doubles whenever it fills, so the data file stays as small as the data.
    Returns the number of records written.
    """
    lmdb = _lmdb()
    path, tmp = _new_database_folder(path)
    env = lmdb.open(tmp, map_size=map_size, lock=False, subdir=True, meminit=True, sync=True)
    try:
        def commit(pending):
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for key, value in pending:
                            if not txn.put(key, value, overwrite=False):
                                raise DLTrainError(f"duplicate key '{key.decode(errors='replace')}'")
                    break
                except lmdb.MapFullError:
                    env.set_mapsize(env.info()["map_size"] * 2)

        count = _write_in_batches(records, commit_every, commit)
        env.sync(True)
        env.close()
        os.rename(tmp, path)
    except BaseException:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


# --- LevelDB ---------------------------------------------------------------

def _plyvel():
    return require_module("plyvel", "reading and writing LevelDB databases", "the plyvel package", "leveldb")


class _LevelDB:
    """An open plyvel DB, and the private view folder it was opened from (if any); closed when dropped."""

    def __init__(self, db, view=None):
        self.db = db
        # Not at exit, where a reader thread may still be inside the database (the OS releases it then).
        weakref.finalize(self, db.close).atexit = False
        if view:               # removed when dropped, or at exit (finalize's default)
            weakref.finalize(self, _remove_view, view)


def _remove_view(view, attempts=20):
    """Remove a private view folder.  LevelDB's background compaction may still be writing a file into
    it (at exit the database is not closed first), which makes one rmtree leave the folder: try again."""
    for _ in range(attempts):
        shutil.rmtree(view, ignore_errors=True)
        if not os.path.exists(view):
            break
        time.sleep(0.05)


def _leveldb_message(err):
    message = err.args[0] if err.args else str(err)
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)


def open_leveldb(source, wait_s=5.0):
    """Open a LevelDB for reading, once per process (the handle is shared; it closes when its last user drops
    it).  LevelDB lets one process open a database: one that another process holds (the other rank of a
    data-parallel run, say), or that this user cannot write to, is read through a private view (see
    :func:`_open_leveldb_view`).  Raises ConfigError when it cannot be opened."""
    plyvel = _plyvel()
    path = os.fspath(source)
    key = os.path.realpath(path)
    with _OPEN_LOCK:
        handle = _LEVELDBS.get(key)
        if handle is None:
            handle = _LEVELDBS[key] = _open_leveldb_handle(plyvel, path, wait_s)
    return handle


def _open_leveldb_handle(plyvel, path, wait_s):
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _LevelDB(plyvel.DB(path, **_LEVELDB_OPTIONS))
        except plyvel.Error as err:
            message = _leveldb_message(err)
            if "already held by process" in message and time.monotonic() < deadline:
                time.sleep(0.01)      # this process's previous handle is still closing, in its reader thread
                continue
            if isinstance(err, plyvel.IOError):      # locked by another process (or handle), or read-only here
                return _open_leveldb_view(plyvel, path, message)
            raise ConfigError(f"cannot open LevelDB '{path}': {message}") from None


def _open_leveldb_view(plyvel, path, reason, attempts=5):
    """Open the LevelDB at ``path`` through a private folder that holds hard links to (or, where linking
    fails, copies of) its table and log files and a copy of its current MANIFEST, removed when closed.
    LevelDB never changes a table or log file once written, so the view reads the very records of the
    database, while the database's own LOCK and files stay untouched.  A process that opened the database
    itself may be rewriting its folder as the view is made (turning the log into tables): then the view is
    made again."""
    last = reason
    for attempt in range(attempts):
        view = None
        try:
            view = _make_leveldb_view(path)
            db = plyvel.DB(view, **_LEVELDB_OPTIONS)
        except (plyvel.Error, OSError) as err:
            if view:
                shutil.rmtree(view, ignore_errors=True)
            last = _leveldb_message(err) if isinstance(err, plyvel.Error) else str(err)
            time.sleep(0.1 * (attempt + 1))
            continue
        log.info(f"LevelDB {path} is open elsewhere or cannot be written here ({reason}): reading it through "
                 "a private view")
        return _LevelDB(db, view)
    raise ConfigError(f"cannot open LevelDB '{path}': {reason}; reading it through a private view failed "
                      f"too: {last}")


def _make_leveldb_view(path):
    name = os.path.basename(os.path.normpath(os.path.abspath(path)))
    try:                      # beside the database, where hard links work
        view = tempfile.mkdtemp(prefix=f".{name}.view-", dir=os.path.dirname(os.path.abspath(path)))
    except OSError:           # a read-only folder: the system's temporary folder
        view = tempfile.mkdtemp(prefix=f"dltrain-{name}.view-")
    with open(os.path.join(path, "CURRENT")) as f:
        manifest = f.read().strip()
    # The MANIFEST is copied: its owner appends to it.  Everything else is listed after it was read.
    shutil.copyfile(os.path.join(path, manifest), os.path.join(view, manifest))
    for entry in os.listdir(path):
        if entry.endswith((".ldb", ".sst", ".log")):
            try:
                os.link(os.path.join(path, entry), os.path.join(view, entry))
            except OSError:
                shutil.copyfile(os.path.join(path, entry), os.path.join(view, entry))
    with open(os.path.join(view, "CURRENT"), "w") as f:
        f.write(manifest + "\n")
    return view


def write_leveldb(path, records, commit_every=1000):
    """Write ``(key, Datum)`` records (keys str or bytes) to a new LevelDB at ``path``, as
    :func:`write_lmdb` does (a temporary folder renamed into place; ``path`` must not exist yet), with
    Caffe's LevelDB options.  The records end up in sorted tables, none in the log.  Returns the number of
    records written."""
    plyvel = _plyvel()
    path, tmp = _new_database_folder(path)
    db = plyvel.DB(tmp, create_if_missing=True, error_if_exists=True, **_LEVELDB_OPTIONS)
    try:
        def commit(pending):
            with db.write_batch() as batch:
                for key, value in pending:
                    if db.get(key) is not None:
                        raise DLTrainError(f"duplicate key '{key.decode(errors='replace')}'")
                    batch.put(key, value)

        count = _write_in_batches(records, commit_every, commit)
        db.compact_range()        # so a reader opens it without rewriting it
        db.close()
        os.rename(tmp, path)
    except BaseException:
        db.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count


def write_db(path, records, backend="lmdb"):
    """Write ``(key, Datum)`` records to a new database of ``backend`` ('lmdb' or 'leveldb') at ``path``."""
    write = write_lmdb if backend_name(backend) == "lmdb" else write_leveldb
    return write(path, records)


# ---------------------------------------------------------------------------
# The reader thread
# ---------------------------------------------------------------------------

class _Failure:
    def __init__(self, message, about_data=True):
        self.message = message
        self.about_data = about_data


class _Prefetcher:
    """Reads and transforms batches in a daemon thread into a bounded queue.

    Each batch comes with its *position*: the key of the next record and the transformer's generator state
    after the batch, which is where a resumed run continues (the thread reads ahead of the net).  Holds no
    reference to the layer, so the layer can be collected; the layer's finalizer calls ``stop``.
    """

    def __init__(self, name, db, start_key, batch_size, transformer, prefetch, stride=1):
        self.name = name
        self.queue = queue.Queue(maxsize=max(1, prefetch))
        self.stop_event = threading.Event()
        self.thread = threading.Thread(
            target=_read_loop, name=f"dltrain-data-{name}", daemon=True,
            args=(self.queue, self.stop_event, db, start_key, batch_size, transformer, stride))
        self.thread.start()

    def get(self):
        while True:
            try:
                item = self.queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    try:
                        item = self.queue.get_nowait()
                        break
                    except queue.Empty:
                        raise DLTrainError(f"{self.name}: the reader thread has stopped") from None
        if isinstance(item, _Failure):
            self.stop_event.set()
            raise _ReaderError(item.message, item.about_data)
        return item

    def stop(self):
        """Ask the thread to end; it does within its queue's 0.1 s wait, holding its own references (the
        database stays open until then).  Never waits: this runs from a finalizer, where a Ctrl-C landing
        in a wait would be lost in a traceback."""
        self.stop_event.set()


class _ReaderError(DLTrainError):
    def __init__(self, message, about_data):
        super().__init__(message)
        self.about_data = about_data


def _put(q, stop, item):
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


# What goes wrong because of the records themselves; anything else (a Numba cache that cannot be loaded, memory,
# a bug) is reported as what it is, not blamed on the data source.
# (Pillow raises OSError and SyntaxError for images it cannot decode; OSError also covers reading the source.)
_DATA_ERRORS = (DLTrainError, DecodeError, UnicodeDecodeError, OSError, SyntaxError)


def _read_loop(q, stop, db, start_key, batch_size, transformer, stride=1):
    """Read batches of ``db`` (a :class:`Database`) from ``start_key`` on, taking every ``stride``-th record
    (each rank of a data-parallel run takes its share: the records r, r+N, r+2N, ...)."""
    owner = transformer.owner
    key = b""
    try:
        with db.cursor() as cursor:
            if not cursor.seek(start_key):
                cursor.first()
            while not stop.is_set():
                pixels, labels = [], np.empty(batch_size, transformer.dtype)
                shape = None
                for i in range(batch_size):
                    key, value = cursor.key(), cursor.value()
                    try:
                        datum = caffe_pb2.Datum.FromString(value)
                    except DecodeError as err:
                        raise DLTrainError(f"record is not a Datum ({err})") from None
                    array = transformer.decode(datum)
                    if shape is None:
                        shape = array.shape       # the batch's shape comes from its first record
                    elif array.shape != shape:
                        raise DLTrainError(f"record is {'x'.join(map(str, array.shape))} but this batch's "
                                           f"first record is {'x'.join(map(str, shape))}")
                    pixels.append(array)
                    labels[i] = datum.label
                    for _ in range(stride):
                        cursor.next()             # after the last record, the first (Caffe's DataLayer::Next)
                key = b""
                if all(p.dtype == np.uint8 for p in pixels):
                    batch = np.stack(pixels)
                else:
                    batch = np.stack([p.astype(np.float32) for p in pixels])
                data = transformer.transform(batch)
                position = {"key": cursor.key(), "transform_rng": generator_state(transformer.rng)}
                if not _put(q, stop, (data, labels, position)):
                    break
    except Exception as err:   # surfaced by the next forward in the main thread
        if isinstance(err, _DATA_ERRORS + db.errors):
            where = f" (record '{key.decode(errors='replace')}')" if key else ""
            message = str(err.message if isinstance(err, ConfigError) else err)
            if not message.startswith(owner):
                message = f"{owner}: {message}"
            _put(q, stop, _Failure(f"{message}{where}"))
        else:
            _put(q, stop, _Failure(f"{owner}: the reader thread failed, not because of the data: "
                                   f"{type(err).__name__}: {err}{_numba_cache_hint(err)}", about_data=False))


def _numba_cache_hint(err):
    """A hint when ``err`` was raised while Numba loaded a compiled kernel from its cache."""
    tb = err.__traceback__
    while tb is not None:
        if "numba" in tb.tb_frame.f_code.co_filename and "caching" in tb.tb_frame.f_code.co_filename:
            return ("; it was raised loading a kernel from Numba's cache: delete the cache files (*.nbi, *.nbc in "
                    "the __pycache__ folders, or NUMBA_CACHE_DIR) and run again")
        tb = tb.tb_next
    return ""


# ---------------------------------------------------------------------------
# The layer
# ---------------------------------------------------------------------------

@register_layer("Data")
class DataLayer(Layer):
    """Caffe's Data layer: tops ``data`` (N x C x H x W) and optionally ``label`` (N)."""

    exact_num_bottom_blobs = 0
    min_top_blobs = 1
    max_top_blobs = 2

    def setup(self, bottom, top):
        dp = self.layer_param.data_param
        self.owner = owner = f"layer '{self.name}' (Data)"
        self.source = dp.source
        if not dp.source:
            raise ConfigError(f"{owner}: data_param.source is not set", field="data_param.source")
        if dp.batch_size <= 0:
            raise ConfigError(f"{owner}: data_param.batch_size must be positive", field="data_param.batch_size")
        self.batch_size = int(dp.batch_size)
        old_fields = [f for f in ("scale", "mean_file", "crop_size", "mirror") if dp.HasField(f)]
        if old_fields:
            log.warning(f"{owner}: data_param.{', data_param.'.join(old_fields)} are deprecated and ignored "
                        "(as in Caffe's Data layer): set them in transform_param")
        try:
            db = open_db(dp.source)
        except DLTrainError as err:
            message = err.message if isinstance(err, ConfigError) else str(err)
            raise ConfigError(f"{owner}: data_param.source: {message}", field="data_param.source") from None
        self._note_backend(db)
        self.transformer = DataTransformer(self.layer_param.transform_param, self.phase, self.dtype,
                                           owner=owner)

        with db.cursor() as cursor:
            if not cursor.first():
                raise ConfigError(f"{owner}: data_param.source: {db.label} '{dp.source}' has no records",
                                  field="data_param.source")
            if dp.rand_skip:
                skip = int(get_rng().integers(0, dp.rand_skip))
                log.info(f"Skipping first {skip} data points.")
                cursor.skip(skip)
            offset, self.stride = parallel.data_share(self.phase == TRAIN)     # a data-parallel run's share
            for _ in range(offset):
                cursor.next()
            start_key, value = cursor.key(), cursor.value()
        try:
            datum = caffe_pb2.Datum.FromString(value)
            shape = self.transformer.output_shape(self.transformer.decode(datum).shape)
        except Exception as err:
            message = err.message if isinstance(err, ConfigError) else str(err)
            if not message.startswith(owner):
                message = f"{owner}: {message}"
            raise ConfigError(f"{message} (source '{dp.source}', record "
                              f"'{start_key.decode(errors='replace')}')") from None
        log.info(f"Opened {db.backend} {dp.source}")
        top[0].reshape((self.batch_size,) + shape)
        log.info(f"output data size: {self.batch_size},{shape[0]},{shape[1]},{shape[2]}")
        if len(top) > 1:
            top[1].reshape(self.batch_size)
        self._db = db
        self._prefetch = dp.prefetch
        self._prefetcher = self._finalizer = None
        self._start(start_key, self.transformer)

    def _note_backend(self, db):
        """One line when the source is not what data_param.backend (or Caffe's default, LEVELDB) says."""
        dp = self.layer_param.data_param
        declared = caffe_pb2.DataParameter.DB.Name(dp.backend)
        note = db.not_as_declared(declared, "data_param.backend")
        if note is None:
            return
        if dp.HasField("backend"):
            log.warning(f"{self.owner}: data_param.source '{dp.source}' {note}")
        else:
            log.info(f"{self.owner}: data_param.source '{dp.source}' is {db.kind}; data_param.backend is not "
                     f"set, which is {declared} in Caffe: reading it as {db.label}")

    def _start(self, key, transformer):
        """(Re)start the reader thread at record ``key`` with ``transformer`` (its generator as it stands)."""
        self.close()
        self._position = {"key": key, "transform_rng": generator_state(transformer.rng)}
        self._prefetcher = _Prefetcher(f"{self.owner} reading '{self.source}'", self._db, key, self.batch_size,
                                       transformer, self._prefetch, self.stride)
        self._finalizer = weakref.finalize(self, self._prefetcher.stop)

    def reshape(self, bottom, top):
        pass   # the tops take each batch's shape in forward

    def forward_cpu(self, bottom, top):
        try:
            data, labels, self._position = self._prefetcher.get()
        except _ReaderError as err:
            message = str(err)
            if err.about_data and self.source not in message:
                message = f"{message} (source '{self.source}')"
            raise DLTrainError(message) from None
        top[0].reshape(data.shape)
        top[0].data[...] = data
        if len(top) > 1:
            top[1].reshape(labels.shape)
            top[1].data[...] = labels

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    # --- exact resume (dlcore.resume) -------------------------------------------------------------
    def resume_state(self):
        """The next record's key and the transformer's generator, after the batches the net has taken (the
        reader thread's read-ahead does not count)."""
        return self._position

    def restore_resume_state(self, state):
        key = bytes(state["key"])
        with self._db.cursor() as cursor:
            if not cursor.seek(key):
                log.warning(f"{self.owner}: record '{key.decode(errors='replace')}' of the solver state is not in "
                            f"'{self.source}'; reading from the first record")
                cursor.first()
                key = cursor.key()
        stored_rng = state.get("transform_rng")
        if (stored_rng is None) != (self.transformer.rng is None):
            raise ValueError("its random crop/mirror setting differs from the net's")
        # A copy for the new thread: the old one may still be finishing a batch with the old generator.
        transformer = copy.copy(self.transformer)
        transformer.rng = new_generator(stored_rng)
        self.transformer = transformer
        self._start(key, transformer)

    def close(self):
        """Stop the reader thread now (it also stops when the layer is collected)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
