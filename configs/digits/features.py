"""A CNN as a generic feature extractor, on the digits example.

    python configs/digits/features.py            # from the repository root

1. The trained digits LeNet: ``configs/digits/snapshots/digits_iter_3000.caffemodel``,
   trained first with ``dltrain configs/digits/solver.prototxt`` when it is
   not there yet (about two minutes on one CPU core; ``--iterations N``
   trains a shorter run instead, ``--weights`` uses another model).
2. Feature-extraction nets: the train/test net with one data layer, in the
   TEST phase, reading the training set or the test set in batches that
   cover it exactly once.
3. ``dltrain extract_features WEIGHTS NET ip1,ip2,label OUTS N --format npy``
   for each set: the 500 ReLU outputs of ``ip1`` (the net's penultimate,
   "fc7-style" layer), the net's own scores ``ip2`` and the labels.
4. A linear classifier on the ip1 features, in a few lines of NumPy: ridge
   least squares on one-hot targets, and softmax regression (full-batch
   gradient descent).  Their test accuracy is printed next to the net's own.

``--out DIR`` keeps the nets and features (default: a temporary folder);
``--format lmdb`` writes the features as Caffe does (LMDBs of float Datums)
and reads them back.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

SOLVER = os.path.join("configs", "digits", "solver.prototxt")
NET = os.path.join("configs", "digits", "lenet_digits_train_test.prototxt")
SETS = {"train": os.path.join("configs", "digits", "digits_train_lmdb"),
        "test": os.path.join("configs", "digits", "digits_test_lmdb")}


def dltrain(*args):
    """Run a dltrain command (the installed CLI's module, with this Python) from the repository root."""
    command = [sys.executable, "-m", "dltrain.cli.main", *map(str, args)]
    print("$ dltrain " + " ".join(map(str, args)), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def trained_weights(iterations=None):
    """The digits LeNet's final snapshot, training it first if needed."""
    max_iter = iterations or 3000
    path = os.path.join(REPO, "configs", "digits", "snapshots", f"digits_iter_{max_iter}.caffemodel")
    if not os.path.exists(path):
        dltrain(SOLVER, *(["--iterations", iterations] if iterations else []))
    return path


def largest_divisor(n, limit=512):
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def extraction_net(source, count, path):
    """The train/test net reading ``source`` once in the TEST phase; returns the number of batches."""
    from dlcore.config import load_net, to_prototxt
    from dltrain.proto import caffe_pb2
    param = load_net(os.path.join(REPO, NET))
    batch = largest_divisor(count)
    kept = []
    for layer in param.layer:
        if layer.type == "Data":
            if any(rule.phase == caffe_pb2.TRAIN for rule in layer.include):
                continue
            del layer.include[:]
            layer.data_param.source = os.path.join(REPO, source)
            layer.data_param.batch_size = batch
        kept.append(layer)
    del param.layer[:]
    param.layer.extend(kept)
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_prototxt(param))
    return count // batch


def read_features(path, fmt):
    if fmt == "npy":
        return np.load(path)
    from dltrain.layers.db_data import datum_to_array, open_lmdb
    from dltrain.proto import caffe_pb2
    with open_lmdb(path).begin() as txn:
        return np.stack([datum_to_array(caffe_pb2.Datum.FromString(v)).reshape(-1) for _, v in txn.cursor()])


def least_squares(x, y, classes, ridge=1e-2):
    """Ridge regression onto one-hot targets; returns (W, b)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(classes)[y]
    w = np.linalg.solve(xb.T @ xb + ridge * np.eye(xb.shape[1]), xb.T @ targets)
    return w[:-1], w[-1]


def softmax_regression(x, y, classes, steps=2000, lr=0.5, decay=1e-4):
    """Multinomial logistic regression by full-batch gradient descent; returns (W, b)."""
    w, b = np.zeros((x.shape[1], classes)), np.zeros(classes)
    targets = np.eye(classes)[y]
    for _ in range(steps):
        scores = x @ w + b
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (p - targets) / len(x)
        w -= lr * (x.T @ grad + decay * w)
        b -= lr * grad.sum(axis=0)
    return w, b


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a trained digits LeNet (.caffemodel); default: the example's snapshot")
    parser.add_argument("--iterations", type=int, help="train this many iterations if no snapshot exists")
    parser.add_argument("--out", help="keep the extraction nets and features in this folder")
    parser.add_argument("--format", choices=("npy", "lmdb"), default="npy", help="feature file format")
    args = parser.parse_args(argv)
    from dltrain.layers.db_data import count_lmdb

    weights = os.path.abspath(args.weights) if args.weights else trained_weights(args.iterations)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.abspath(args.out) if args.out else tmp
        os.makedirs(out, exist_ok=True)
        ext = ".npy" if args.format == "npy" else "_lmdb"
        features = {}
        for name, source in SETS.items():
            net = os.path.join(out, f"extract_{name}.prototxt")
            batches = extraction_net(source, count_lmdb(os.path.join(REPO, source)), net)
            outs = [os.path.join(out, f"{name}_{blob}{ext}") for blob in ("ip1", "ip2", "label")]
            for path in outs:
                if os.path.exists(path):
                    raise SystemExit(f"{path} exists: remove it (or choose another --out)")
            dltrain("extract_features", weights, net, "ip1,ip2,label", ",".join(outs), batches,
                    "--format", args.format)
            features[name] = [read_features(path, args.format) for path in outs]

        (x_train, s_train, y_train), (x_test, s_test, y_test) = features["train"], features["test"]
        y_train, y_test = y_train.reshape(-1).astype(int), y_test.reshape(-1).astype(int)
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
        classes = int(max(y_train.max(), y_test.max())) + 1
        print(f"\nip1 features: train {x_train.shape}, test {x_test.shape}")
        net_accuracy = float(np.mean(s_test.reshape(len(s_test), -1).argmax(axis=1) == y_test))
        w, b = least_squares(x_train, y_train, classes)
        ls_accuracy = float(np.mean((x_test @ w + b).argmax(axis=1) == y_test))
        scale = x_train.std() or 1.0
        w, b = softmax_regression(x_train / scale, y_train, classes)
        sm_accuracy = float(np.mean((x_test / scale @ w + b).argmax(axis=1) == y_test))
        print(f"test accuracy, the LeNet itself (ip2):             {net_accuracy:.4f}")
        print(f"test accuracy, least squares on ip1 features:      {ls_accuracy:.4f}")
        print(f"test accuracy, softmax regression on ip1 features: {sm_accuracy:.4f}")
        return {"net": net_accuracy, "least_squares": ls_accuracy, "softmax": sm_accuracy}


if __name__ == "__main__":
    main()
