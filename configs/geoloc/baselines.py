"""The geoloc example's baselines and results table.

    python configs/geoloc/baselines.py                    # (a) only
    python configs/geoloc/baselines.py --train-bag        # (a) and (b), training (b) first (~1 minute)
    python configs/geoloc/baselines.py --bag-weights B.caffemodel --lstm-weights L.caffemodel

(a) **Spherical median**: always predict the training set's geometric median
    on the sphere (the point that minimizes the sum of great-circle
    distances to the training places, found by Weiszfeld's iteration in the
    tangent plane), scored on the test set.
(b) **Bag of characters**: the same net without the LSTM: the character
    embeddings averaged over the 20 time steps (a bag of characters, padding
    included) -> InnerProduct(256) + ReLU -> InnerProduct(2) -> GeolocLoss,
    trained with dltrain (``dltrain configs/geoloc/bag_solver.prototxt``).

With ``--lstm-weights`` the LSTM net (configs/geoloc/deploy.prototxt) is
scored as well, and the script prints the whole Markdown table of the
README.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from evaluate import HEADER, errors_km, load_split, metrics, predict_split, table_row  # noqa: E402

BAG_SOLVER = os.path.join(HERE, "bag_solver.prototxt")
BAG_DEPLOY = os.path.join(HERE, "bag_deploy.prototxt")
LSTM_DEPLOY = os.path.join(HERE, "deploy.prototxt")


def unit_vectors(latlon):
    lat, lon = np.radians(latlon[:, 0]), np.radians(latlon[:, 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def to_latlon(v):
    return np.array([np.degrees(np.arctan2(v[2], np.hypot(v[0], v[1]))), np.degrees(np.arctan2(v[1], v[0]))])


def spherical_median(latlon, iterations=500, tol=1e-12):
    """The geometric median on the unit sphere of (lat, lon) degrees (Weiszfeld in the tangent plane)."""
    v = unit_vectors(np.asarray(latlon, np.float64))
    m = v.mean(axis=0)
    m /= np.linalg.norm(m)
    for _ in range(iterations):
        c = np.clip(v @ m, -1.0, 1.0)
        tangent = v - c[:, None] * m                       # log map directions, length sin(d)
        s = np.linalg.norm(tangent, axis=1)
        d = np.arctan2(s, c)
        keep = s > 1e-12                                   # a training point exactly at m: skip it
        w = 1.0 / d[keep]
        step = (tangent[keep] / s[keep, None]).sum(axis=0) / w.sum()   # sum(w_i * log_i) / sum(w_i)
        norm = np.linalg.norm(step)
        m = np.cos(norm) * m + np.sin(norm) * step / max(norm, 1e-300)
        m /= np.linalg.norm(m)
        if norm < tol:
            break
    return to_latlon(m)


def train_bag():
    from dltrain.cli.main import main as dltrain
    start = time.time()
    rc = dltrain(["train", "--solver", BAG_SOLVER])
    if rc:
        sys.exit(f"baselines.py: training the bag-of-characters net failed (exit {rc})")
    print(f"# trained {BAG_SOLVER} in {time.time() - start:.0f} s", file=sys.stderr)


def last_snapshot(prefix):
    import glob
    import re
    found = [(int(re.search(r"_iter_(\d+)\.caffemodel$", p).group(1)), p)
             for p in glob.glob(prefix + "_iter_*.caffemodel")]
    return max(found)[1] if found else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-bag", action="store_true", help="train the bag-of-characters net first")
    parser.add_argument("--bag-weights", help="the bag-of-characters net's .caffemodel (default: its last "
                                              "snapshot in configs/geoloc/snapshots, if any)")
    parser.add_argument("--lstm-weights", help="also score the LSTM net with these weights")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)                                      # the nets' paths are relative to the repository root

    _, _, train_label, _ = load_split("train")
    median = spherical_median(train_label.reshape(-1, 2))
    _, _, label, _ = load_split(args.split)
    label = label.reshape(-1, 2).astype(np.float64)
    rows = [table_row(f"(a) spherical median ({median[0]:.2f}, {median[1]:.2f})",
                      metrics(errors_km(np.tile(median, (len(label), 1)), label)))]

    if args.train_bag:
        train_bag()
    bag = args.bag_weights or last_snapshot(os.path.join(HERE, "snapshots", "bag"))
    if bag:
        pred, label_b, _ = predict_split(BAG_DEPLOY, bag, args.split)
        rows.append(table_row("(b) bag of characters -> InnerProduct", metrics(errors_km(pred, label_b))))
    if args.lstm_weights:
        pred, label_l, _ = predict_split(LSTM_DEPLOY, args.lstm_weights, args.split)
        rows.append(table_row("character LSTM (this example)", metrics(errors_km(pred, label_l))))
    print(f"{args.split} set: {len(label)} places")
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
