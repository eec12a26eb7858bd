"""Build the digits example's LMDBs (run once; needs scikit-learn, which dltrain does not).

    python configs/digits/prepare.py          # from the repository root

The data are the UCI optical-recognition handwritten digits as scikit-learn
ships them (``sklearn.datasets.load_digits``): 1,797 grayscale 8x8 images
of the digits 0-9 whose pixels count ink in 0..16.

* Split: stratified by label with ``train_test_split(test_size=360,
  random_state=0)``: 1,437 training and 360 test images, fixed once (the
  databases are committed; rerunning this script reproduces them).  Both
  sets are in the split's shuffled order, so training batches mix digits
  (the Data layer reads records in order, as Caffe's does).
* Pixels: ``min(16 * v, 255)`` as uint8, i.e. 0..16 stretched to 0..255
  (the value 16 would be 256 and is clipped to 255); the net's
  ``transform_param { scale: 0.00390625 }`` brings them to [0, 1).
* Written by the project's own converter (``dltrain convert_arrays``'s
  function) as 1x8x8 raw Datums, keys ``%08d``, to
  ``configs/digits/digits_train_lmdb`` and ``digits_test_lmdb``.
"""
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # the repository root

TEST_SIZE = 360
SEED = 0


def load_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    images = np.minimum(digits.images * 16, 255).astype(np.uint8)      # (1797, 8, 8), 0..16 -> 0..255
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_SIZE, random_state=SEED, stratify=labels)
    return (x_train[:, None], y_train), (x_test[:, None], y_test)    # N x 1 x 8 x 8


def main():
    from dltrain.cli.convert import convert_arrays
    train, test = load_split()
    for name, (x, y) in (("digits_train_lmdb", train), ("digits_test_lmdb", test)):
        db = os.path.join(HERE, name)
        shutil.rmtree(db, ignore_errors=True)
        count = convert_arrays(x, y, db)
        size = os.path.getsize(os.path.join(db, "data.mdb"))
        print(f"{db}: {count} records, labels {np.bincount(y, minlength=10).tolist()}, data.mdb {size} bytes")


if __name__ == "__main__":
    main()
