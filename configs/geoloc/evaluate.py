"""Score a trained geoloc net on the test (or validation) set.

    python configs/geoloc/evaluate.py --weights configs/geoloc/snapshots/geoloc_iter_24000.caffemodel
    python configs/geoloc/evaluate.py --model configs/geoloc/bag_deploy.prototxt --weights ...bag...caffemodel

Runs the deploy net (TEST phase) over every block of ``data/<split>.h5``
(the names there are already encoded with charcodec.json), and prints the
great-circle error of the predictions in kilometres (Earth radius 6371 km):
the median, the mean, and the share of places within 100, 750 and 2,500 km,
as a Markdown table row.  ``--examples K`` also prints K places with their
predictions.
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

EARTH_RADIUS_KM = 6371.0
THRESHOLDS_KM = (100, 750, 2500)
HEADER = ("| model | median error (km) | mean error (km) | within 100 km | within 750 km | within 2,500 km |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: |")


def load_split(split, data_dir=os.path.join(HERE, "data")):
    """(chars B x T x N, cont B x T x N, label B x N x 2, names B x N or None) of one split."""
    import h5py
    with h5py.File(os.path.join(data_dir, f"{split}.h5"), "r") as f:
        names = f["name"][()].astype(str) if "name" in f else None
        return f["chars"][()], f["cont"][()], f["label"][()], names


def errors_km(pred, label):
    """Great-circle distances (km) between rows of (lat, lon) degrees."""
    from dltrain.layers.geoloc_loss import great_circle
    return great_circle(pred, label, "degrees", EARTH_RADIUS_KM)


def metrics(errors):
    errors = np.asarray(errors, np.float64)
    out = {"n": len(errors), "median_km": float(np.median(errors)), "mean_km": float(errors.mean())}
    for t in THRESHOLDS_KM:
        out[f"within_{t}"] = float((errors <= t).mean())
    return out


def table_row(label, m):
    shares = " | ".join(f"{100 * m[f'within_{t}']:.1f} %" for t in THRESHOLDS_KM)
    return f"| {label} | {m['median_km']:,.0f} | {m['mean_km']:,.0f} | {shares} |"


def predict_split(model, weights, split="test", codec_path=None):
    """(predictions N x 2 degrees, labels N x 2, names) of a trained deploy net on a split."""
    from dltrain.cli.predict import CharCodec, normalize_latlon
    from dlcore import TEST, Net
    codec = CharCodec.load(codec_path or os.path.join(HERE, "charcodec.json"))
    net = Net(model, TEST)
    for path in weights.split(","):
        net.copy_from(path)
    chars, cont, label, names = load_split(split)
    preds = []
    for b in range(chars.shape[0]):
        for blob, values in ((codec.inputs["chars"], chars[b]), (codec.inputs["cont"], cont[b])):
            net.blobs[blob].reshape(values.shape)
            net.blobs[blob].data[...] = values
        net.forward()
        preds.append(np.array(net.blobs[codec.output].data, np.float64).reshape(-1, 2))
    pred = normalize_latlon(np.concatenate(preds))
    names = names.reshape(-1) if names is not None else None
    return pred, label.reshape(-1, 2).astype(np.float64), names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.path.join(HERE, "deploy.prototxt"), help="the deploy net")
    parser.add_argument("--weights", required=True, help="the trained .caffemodel")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    parser.add_argument("--label", default=None, help="the row's label in the table")
    parser.add_argument("--examples", type=int, default=0, help="print this many places with predictions")
    args = parser.parse_args(argv)
    pred, label, names = predict_split(args.model, args.weights, args.split)
    err = errors_km(pred, label)
    print(HEADER)
    print(table_row(args.label or os.path.basename(args.weights), metrics(err)))
    for i in range(min(args.examples, len(err))):
        print(f"{names[i] if names is not None else i}\ttrue {label[i, 0]:.2f} {label[i, 1]:.2f}\t"
              f"predicted {pred[i, 0]:.2f} {pred[i, 1]:.2f}\terror {err[i]:,.0f} km")
    return 0


if __name__ == "__main__":
    sys.exit(main())
