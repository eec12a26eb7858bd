"""`dltrain`: Caffe's `caffe` tool, in Python.

Thin by design: parse arguments, call dlcore/solvers, print.  Each
subcommand lives in its own module with a ``register(subparsers)``.
Caffe's single-dash long flags (``-model``) are accepted as well as
``--model``, and ``dltrain solver.prototxt`` means ``dltrain train --solver
solver.prototxt``.
"""
import argparse
import importlib
import os
import sys

from dlcore import DLTrainError

# Modules that add subcommands; a missing one (not yet written) is skipped.
COMMAND_MODULES = ["cli.train", "cli.time_cmd", "cli.convert"]


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dltrain",
        description="Train and run Caffe nets (prototxt/YAML/caffemodel) with Numba kernels.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.register(sub)
    for choice in sub.choices.values():
        choice.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show full tracebacks on errors")
    return parser


def _normalize_argv(argv):
    """Caffe's single-dash long flags (-model X -> --model X), and the bare
    `dltrain solver.prototxt` form."""
    out = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2 and arg[1].isalpha():
            arg = "-" + arg
        out.append(arg)
    first = next((a for a in out if not a.startswith("-")), None)
    if first is not None and first not in _command_names() and (
            os.path.exists(first) or first.endswith((".prototxt", ".yaml", ".yml"))):
        i = out.index(first)
        out[i:i + 1] = ["train", "--solver", first]
    return out


def _command_names():
    names = set()
    for action in build_parser()._subparsers._group_actions:
        names.update(action.choices)
    return names


def main(argv=None):
    argv = _normalize_argv(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except DLTrainError as err:
        if args.debug:
            raise
        print(f"dltrain: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dltrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
