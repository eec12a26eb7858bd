"""`dltrain export`: a deploy net and its weights as an ONNX model, checked in ONNX Runtime.

    dltrain export --model DEPLOY.prototxt --weights W.caffemodel OUT.onnx
                   [--opset N] [--batch N|dynamic] [--check | --no-check] [--tolerance T]
                   [--recurrent exact|onnx] [--batch-axis INPUT=AXIS ...] [--seed S]
"""
import sys

from dlcore import DLTrainError


def _batch(text):
    if text == "dynamic":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        import argparse
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'dynamic', got '{text}'")
    return value


def _batch_axes(items):
    axes = {}
    for item in items or []:
        name, sep, axis = item.rpartition("=")
        if not sep or not name or not axis.isdigit():
            raise DLTrainError(f"--batch-axis takes INPUT=AXIS (e.g. chars=1), got '{item}'")
        axes[name] = int(axis)
    return axes


def cmd_export(args):
    from dltrain.export import export_onnx, load_net
    weights = args.weights
    if not weights:
        print(f"dltrain export: no --weights: exporting random weights (seed {args.seed}), for testing only",
              file=sys.stderr)
    net = load_net(args.model, weights, random_seed=None if weights else args.seed)
    result = export_onnx(args.model, args.output, opset=args.opset, batch=args.batch, check=args.check,
                         tolerance=args.tolerance, seed=args.seed, recurrent=args.recurrent,
                         batch_axes=_batch_axes(args.batch_axis), net=net)
    out = sys.stdout
    out.write(f"wrote {args.output} (opset {args.opset}, {len(result.model.graph.node)} nodes) in "
              f"{result.seconds:.2f} s\n")
    if result.differences is None:
        out.write("not checked (onnxruntime is not installed, or --no-check)\n")
    else:
        for name, diff in result.differences.items():
            out.write(f"check: output '{name}': max relative difference {diff:.3g} (tolerance "
                      f"{args.tolerance:g})\n")
        if result.worst_top:
            layer, kind, top, diff = result.worst_top
            out.write(f"check: {len(result.top_differences)} layer tops compared, worst: '{top}' of layer "
                      f"'{layer}' ({kind}) {diff:.3g}\n")
    return 0


def register(sub):
    from dltrain.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, RECURRENT_MODES
    from dltrain.export.check import DEFAULT_TOLERANCE
    p = sub.add_parser("export", help="write a deploy net and its weights as an ONNX model (checked in ONNX Runtime)",
                       description="Export a Caffe deploy net with its weights to ONNX. By default (when "
                                   "onnxruntime is installed) the model is run in ONNX Runtime on seeded random "
                                   "inputs and compared with dltrain's own forward pass; the export fails past "
                                   "the tolerance.")
    p.add_argument("output", metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--model", required=True, help="the deploy net (.prototxt or .yaml)")
    p.add_argument("--weights", help="the trained .caffemodel (without: seeded random weights, for testing)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"the ONNX opset ({MIN_OPSET} to {MAX_OPSET}; default {DEFAULT_OPSET})")
    p.add_argument("--batch", type=_batch, help="the batch size of the inputs, or 'dynamic' (default: the "
                                                "net's input shapes)")
    p.add_argument("--batch-axis", action="append", metavar="INPUT=AXIS",
                   help="the batch axis of an input where the automatic choice (0; 1 for T x N sequences) "
                        "is wrong; repeatable")
    p.add_argument("--check", dest="check", action="store_true", default=None,
                   help="compare with dltrain in ONNX Runtime (default: when onnxruntime is installed)")
    p.add_argument("--no-check", dest="check", action="store_false", help="do not compare")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"the largest max relative difference allowed (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--recurrent", choices=RECURRENT_MODES, default="exact",
                   help="LSTM/RNN as a Scan over Caffe's cell, exact for any cont (default), or ONNX's "
                        "LSTM/RNN operators, exact when cont is 1 after the first step")
    p.add_argument("--seed", type=int, default=0, help="the seed of the check's random inputs (default 0)")
    p.set_defaults(func=cmd_export)
