"""`dltrain gradcheck`: check a layer's gradients by finite differences.

    dltrain gradcheck LAYER_FILE --bottom 2,3,4,4 [--bottom 2 ...]
                     [--stepsize 1e-2] [--threshold 1e-3] [--kink 0] [--kink-range -1]
                     [--seed 1701] [--exhaustive] [--check-bottom I ...] [--labels I:N ...]
                     [--fill LOW,HIGH] [--phase TRAIN|TEST] [--layer NAME] [--plugin MODULE]

LAYER_FILE holds one layer, in prototxt (``type: "Gram" python_param {
param_str: "scale: 2" }``, bare or inside ``layer { }``) or YAML; a file
with several layers needs ``--layer NAME``.  The check runs in float64 with
Caffe's GradientChecker semantics (dlcore.gradcheck): central differences,
pass when ``|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1)``,
inputs inside ``kink +- kink_range`` skipped.  Exit status 0 when every
element passes, 1 otherwise (the worst elements are printed).
"""
import argparse
import math

from dlcore import TEST, TRAIN


def _shape(text):
    parts = text.replace("x", ",").replace(" ", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is comma-separated integers (2,3,4,4), got '{text}'") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"a shape needs positive dimensions, got '{text}'")
    return shape


def _label(text):
    try:
        index, classes = text.split(":")
        index, classes = int(index), int(classes)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--labels takes INDEX:CLASSES (1:10), got '{text}'") from None
    if classes < 1 or index < 0:
        raise argparse.ArgumentTypeError(f"--labels {text}: need INDEX >= 0 and CLASSES >= 1")
    return index, classes


def _range(text):
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fill takes LOW,HIGH (-1,1), got '{text}'") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise argparse.ArgumentTypeError(f"--fill {text}: LOW must be below HIGH, both finite")
    return low, high


def _number(text):
    try:
        return float(text)
    except ValueError:
        return math.nan       # refused below, with the flag's own message


def _positive(text):
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got '{text}'")
    return value


def _non_negative(text):
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got '{text}'")
    return value


def _index(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got '{text}'")
    return value


def _phase(text):
    if text.upper() not in ("TRAIN", "TEST"):
        raise argparse.ArgumentTypeError("phase must be TRAIN or TEST")
    return TRAIN if text.upper() == "TRAIN" else TEST


def cmd_gradcheck(args):
    from dlcore import backend
    from dlcore.gradcheck import GradientCheckError, check_layer
    if args.gpu is not None:
        from dltrain.cli.train import _gpu_id
        backend.set_mode_gpu(_gpu_id(args.gpu))     # the layer's forward_gpu/backward_gpu are checked
    else:
        backend.set_mode_cpu()
    labels = dict(args.labels)
    for index in args.check_bottom:
        if index >= len(args.bottom):
            from dlcore import DLTrainError
            raise DLTrainError(f"--check-bottom {index}: out of range ({len(args.bottom)} bottoms given by --bottom)")
    try:
        report = check_layer(args.layer_file, args.bottom, stepsize=args.stepsize, threshold=args.threshold,
                             seed=args.seed, kink=args.kink, kink_range=args.kink_range,
                             exhaustive=args.exhaustive, check_bottom=args.check_bottom or None,
                             integer_bottoms=labels, fill=args.fill, phase=args.phase, layer_name=args.layer)
    except GradientCheckError as err:
        print(f"gradcheck FAILED: {err}")
        return 1
    layer = report.layer
    blobs = ", ".join(f"{name}: {n}" for name, n in report.per_blob.items())
    mode = "exhaustive, " if args.exhaustive else ""
    where = " on the GPU" if layer.gpu and layer.has_gpu_backward() else ""
    print(f"gradcheck passed: layer '{layer.name}' ({layer.type}), {report.checked} gradient elements checked "
          f"in float64{where} ({mode}{blobs})")
    if report.worst is not None:
        err, name, index, analytic, numeric = report.worst
        print(f"  worst: {name} at {index}: analytic {analytic:.6g}, numeric {numeric:.6g}, relative error "
              f"{err:.3g} (threshold {args.threshold:g}, stepsize {args.stepsize:g})")
    return 0


def register(sub):
    p = sub.add_parser("gradcheck", help="check a layer's gradients by finite differences (float64)",
                       description=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("layer_file", help="a .prototxt or .yaml file holding the layer definition")
    p.add_argument("--bottom", type=_shape, action="append", default=[], required=True, metavar="SHAPE",
                   help="the shape of the next bottom blob, e.g. 2,3,4,4 (repeat once per bottom)")
    p.add_argument("--stepsize", type=_positive, default=1e-2, help="finite-difference step (default 1e-2)")
    p.add_argument("--threshold", type=_non_negative, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--kink", type=float, default=0.0, help="centre of the non-smooth band to skip (default 0)")
    p.add_argument("--kink-range", "--kink_range", dest="kink_range", type=float, default=-1.0,
                   help="half-width of the skipped band; -1 (default) skips nothing")
    p.add_argument("--seed", type=_index, default=1701, help="random seed for the bottoms and the layer (default 1701)")
    p.add_argument("--exhaustive", action="store_true",
                   help="check the gradient of each output element in turn (Caffe's CheckGradientExhaustive)")
    p.add_argument("--check-bottom", "--check_bottom", dest="check_bottom", type=_index, action="append", default=[],
                   metavar="INDEX", help="check only these bottoms (repeatable; default: all but --labels)")
    p.add_argument("--labels", type=_label, action="append", default=[], metavar="INDEX:CLASSES",
                   help="fill bottom INDEX with integer labels 0..CLASSES-1 and do not check it")
    p.add_argument("--fill", type=_range, default=(-1.0, 1.0), metavar="LOW,HIGH",
                   help="range of the uniform random bottom values (default -1,1)")
    p.add_argument("--phase", type=_phase, default=TRAIN, help="TRAIN (default) or TEST")
    p.add_argument("--layer", help="the layer to check, when the file holds several")
    p.add_argument("--gpu", help="check the layer's GPU code (forward_gpu/backward_gpu) on this GPU (a device id)")
    p.set_defaults(func=cmd_gradcheck)
