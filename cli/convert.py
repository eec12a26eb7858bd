"""`dltrain convert_imageset` and `dltrain convert_arrays`: write LMDBs or LevelDBs of Caffe Datums.

``convert_imageset`` is Caffe's tool of that name::

    dltrain convert_imageset [--gray] [--shuffle] [--resize_height H --resize_width W]
                             [--encoded] [--encode_type png|jpg] [--backend lmdb|leveldb]
                             [--check_size] ROOT/ LISTFILE DB

LISTFILE holds one ``relative/path label`` per line (the label after the
last space); each image is ROOT/relative/path.  Keys are Caffe's
``%08d_<relative/path>`` (line index after shuffling), so records sort in
list order.  Images are read with Pillow, in colour (3 channels, stored in
BGR order as OpenCV stores them for Caffe) or with ``--gray`` in grayscale;
both ``--resize_height`` and ``--resize_width`` must be positive to resize
(bilinear).  With ``--encoded`` (or ``--encode_type``) the image file itself
is stored when it needs no conversion, otherwise it is re-encoded.  An
image that cannot be read is skipped with a warning, as Caffe does.

``convert_arrays`` stores data that is already an array::

    dltrain convert_arrays --images X.npy --labels y.npy [--backend lmdb|leveldb] DB

with X uint8 ``N x C x H x W`` or ``N x H x W`` (one channel; float arrays
are stored as ``float_data``), y integer labels of length N, keys ``%08d``.

``--backend`` (Caffe's ``-backend`` too) picks the database: ``lmdb``, the
default as in Caffe's tools, or ``leveldb`` (needs the ``[leveldb]`` extra).
Both go through :func:`dltrain.layers.db_data.write_db`, which writes the
database into a temporary folder and renames it into place.
"""
import os

import numpy as np

from dlcore import log
from dlcore.errors import ConfigError, DLTrainError

__all__ = ["convert_imageset", "convert_arrays", "read_image_list", "image_file_to_datum"]


def read_image_list(listfile):
    """``[(relative path, label)]`` from a Caffe list file (label after the last space)."""
    from dlcore.config import read_text_file
    text = read_text_file(listfile, "the list file")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        pos = line.rfind(" ")
        if pos <= 0:
            raise ConfigError(f"expected 'relative/path label', got {line!r}", path=listfile, line=number)
        name, label = line[:pos], line[pos + 1:]
        try:
            label = int(label)
        except ValueError:
            raise ConfigError(f"label {label!r} is not an integer", path=listfile, line=number) from None
        lines.append((name, label))
    return lines


def _match_ext(filename, encoding):
    ext = os.path.splitext(filename)[1][1:].lower()
    encoding = encoding.lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def _pil_format(encoding):
    from PIL import Image
    Image.init()
    fmt = Image.registered_extensions().get("." + encoding.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise DLTrainError(f"encode_type '{encoding}': Pillow cannot write this format")
    return fmt


def image_file_to_datum(path, label, gray=False, resize_height=0, resize_width=0, encoding=""):
    """Caffe's ReadImageToDatum: a Datum of one image file (raw, or encoded
    when ``encoding`` is given, e.g. "png").  Raises OSError when the file
    cannot be read as an image."""
    import io

    from PIL import Image

    from dltrain.layers.db_data import array_to_datum, image_to_chw
    from dltrain.proto import caffe_pb2
    resize = resize_height > 0 and resize_width > 0
    with Image.open(path) as image:
        image.load()
        image = image.convert("L" if gray else "RGB")
        if resize:
            image = image.resize((resize_width, resize_height), Image.BILINEAR)
        if encoding:
            if not resize and _match_ext(path, encoding):
                with open(path, "rb") as f:        # the file itself, as Caffe's ReadFileToDatum
                    return caffe_pb2.Datum(data=f.read(), label=int(label), encoded=True)
            buffer = io.BytesIO()
            image.save(buffer, format=_pil_format(encoding))
            return caffe_pb2.Datum(data=buffer.getvalue(), label=int(label), encoded=True)
        return array_to_datum(image_to_chw(image, color=not gray), label)


def convert_imageset(root, listfile, db, gray=False, shuffle=False, resize_height=0, resize_width=0,
                     encoded=False, encode_type="", backend="lmdb", check_size=False, seed=None):
    """Convert the images of ``listfile`` (under ``root``) to a database at ``db``
    (``backend`` 'lmdb' or 'leveldb').  Returns the number of records written."""
    from dlcore.rng import get_rng
    from dltrain.layers.db_data import _pillow, backend_name, write_db
    backend = backend_name(backend)
    if seed is not None and seed < 0:
        raise DLTrainError(f"the shuffle seed must be >= 0 (got {seed})")
    _pillow()
    lines = read_image_list(listfile)
    if shuffle:
        log.info("Shuffling data")
        rng = np.random.default_rng(seed) if seed is not None else get_rng()
        lines = [lines[i] for i in rng.permutation(len(lines))]
    log.info(f"A total of {len(lines)} images.")
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
        encoded = True
    if resize_height < 0 or resize_width < 0:
        raise DLTrainError("resize_height and resize_width must be >= 0")
    if encoded and encode_type:
        _pil_format(encode_type)

    def records():
        data_size = None
        for index, (name, label) in enumerate(lines):
            encoding = ""
            if encoded:
                encoding = encode_type or os.path.splitext(name)[1][1:].lower()
                if not encoding:
                    log.warning(f"Failed to guess the encoding of '{name}'")
            path = os.path.join(root, name)
            try:
                datum = image_file_to_datum(path, label, gray, resize_height, resize_width, encoding)
            except (OSError, ValueError) as err:
                log.warning(f"Could not open or find file {path} ({err}): skipped")
                continue
            if check_size and not datum.encoded:
                if data_size is None:
                    data_size = len(datum.data)
                elif len(datum.data) != data_size:
                    raise DLTrainError(f"{path}: incorrect data field size {len(datum.data)} "
                                       f"(the first image has {data_size}); check --check_size")
            yield f"{index:08d}_{name}", datum

    count = write_db(db, records(), backend)
    if count == 0:
        raise DLTrainError(f"no image of '{listfile}' could be read (root folder '{root}')")
    return count


def _load_array(value, what):
    if isinstance(value, (str, os.PathLike)):
        try:
            return np.load(value, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {what}: {err}", path=os.fspath(value)) from None
    return np.asarray(value)


def convert_arrays(images, labels, db, backend="lmdb"):
    """Write ``images`` (uint8 N x C x H x W or N x H x W; floats go to
    float_data) and integer ``labels`` (N) to a database at ``db`` (``backend``
    'lmdb' or 'leveldb').  Arrays or .npy paths.  Returns the number of records
    written."""
    from dltrain.layers.db_data import array_to_datum, backend_name, write_db
    backend = backend_name(backend)
    images = _load_array(images, "the images")
    labels = _load_array(labels, "the labels")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4:
        raise DLTrainError(f"images must be N x C x H x W or N x H x W, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DLTrainError(f"labels must be a vector of {len(images)} values (one per image), "
                           f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))):
            raise DLTrainError(f"labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
    if np.issubdtype(images.dtype, np.integer) and images.dtype != np.uint8:
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DLTrainError(f"{images.dtype} images must lie in 0..255 to be stored as uint8 pixels")
        images = images.astype(np.uint8)
    elif images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DLTrainError(f"images must be uint8 (or float, stored as float_data), got {images.dtype}")
    log.info(f"A total of {len(images)} items of {images.shape[1]}x{images.shape[2]}x{images.shape[3]}.")
    return write_db(db, ((f"{i:08d}", array_to_datum(images[i], labels[i])) for i in range(len(images))), backend)


# --- the commands ---------------------------------------------------------------

def cmd_convert_imageset(args):
    count = convert_imageset(args.root, args.listfile, args.db, gray=args.gray, shuffle=args.shuffle,
                             resize_height=args.resize_height, resize_width=args.resize_width,
                             encoded=args.encoded, encode_type=args.encode_type, backend=args.backend,
                             check_size=args.check_size, seed=args.seed)
    log.info(f"Wrote {count} records to {args.db}")
    return 0


def cmd_convert_arrays(args):
    count = convert_arrays(args.images, args.labels, args.db, backend=args.backend)
    log.info(f"Wrote {count} records to {args.db}")
    return 0


def register(sub):
    p = sub.add_parser("convert_imageset",
                       help="convert a list of images to an LMDB or LevelDB of Datums (as Caffe's "
                            "convert_imageset)",
                       description="Convert ROOT/path images listed in LISTFILE ('path label' per line) "
                                   "to an LMDB or a LevelDB of Caffe Datums.")
    p.add_argument("root", metavar="ROOT/", help="folder the list's paths are relative to")
    p.add_argument("listfile", metavar="LISTFILE", help="one 'relative/path label' per line")
    p.add_argument("db", metavar="DB", help="the database folder to create (must not exist)")
    p.add_argument("--gray", action="store_true", help="read images in grayscale (1 channel)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the list before converting")
    p.add_argument("--seed", type=int, default=None, help="seed for --shuffle (default: random)")
    p.add_argument("--resize_height", type=int, default=0, help="resize to this height (with --resize_width)")
    p.add_argument("--resize_width", type=int, default=0, help="resize to this width (with --resize_height)")
    p.add_argument("--encoded", action="store_true", help="store encoded images (the image file) in the Datum")
    p.add_argument("--encode_type", default="", help="encoding of stored images (png, jpg, ...); implies "
                                                     "--encoded")
    p.add_argument("--check_size", action="store_true", help="check that all raw images have the same size")
    p.add_argument("--backend", default="lmdb", metavar="lmdb|leveldb",
                   help="the database to write: lmdb (the default) or leveldb")
    p.set_defaults(func=cmd_convert_imageset)

    p = sub.add_parser("convert_arrays", help="convert .npy arrays of images and labels to an LMDB or LevelDB "
                                              "of Datums",
                       description="Write uint8 images (N x C x H x W or N x H x W) and their labels to an "
                                   "LMDB or a LevelDB of Caffe Datums (keys %%08d).")
    p.add_argument("--images", required=True, metavar="X.npy", help="the images (.npy)")
    p.add_argument("--labels", required=True, metavar="y.npy", help="the integer labels (.npy)")
    p.add_argument("db", metavar="DB", help="the database folder to create (must not exist)")
    p.add_argument("--backend", default="lmdb", metavar="lmdb|leveldb",
                   help="the database to write: lmdb (the default) or leveldb")
    p.set_defaults(func=cmd_convert_arrays)
