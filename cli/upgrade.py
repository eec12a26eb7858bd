"""`dltrain upgrade IN OUT`: write an old Caffe file in the current format.

One command for Caffe's three upgrade tools (which are also accepted by
their own names, for scripts written for Caffe)::

    dltrain upgrade old.prototxt new.prototxt            # upgrade_net_proto_text
    dltrain upgrade old.caffemodel new.caffemodel        # upgrade_net_proto_binary
    dltrain upgrade old_solver.prototxt new_solver.prototxt   # upgrade_solver_proto_text

What IN holds is told from its content: binary (``.caffemodel``,
``.binaryproto``, or bytes that are not text) is a net; text (or YAML, for
``.yaml``/``.yml``) is a net or a solver, whichever it parses as
(``--kind net|solver`` decides where it could be both).  OUT is written in
the format its extension names (prototxt, YAML or binary), or else in IN's
format.  A file already in the current format is written unchanged, with a
note.  The steps are those of :mod:`dlcore.upgrade` (Caffe's
upgrade_proto.cpp); inline nets inside a solver (``net_param``,
``train_net_param``, ``test_net_param``) are upgraded too.  The exit status
is 1 when a field could not be carried over (Caffe's "not fully
compatible"; each one is logged), else 0.
"""
import os

from dlcore import log
from dlcore.errors import ConfigError, DLTrainError

__all__ = ["upgrade_file", "register"]


def _read(path):
    from dlcore.config import MAX_BINARY_BYTES, read_regular_file
    return read_regular_file(path, MAX_BINARY_BYTES, "the file to upgrade")


def _format_of(path, data=None):
    """'prototxt', 'yaml' or 'binary' by extension; by content when unknown (or None)."""
    from dlcore.config import BINARY_EXTENSIONS, TEXT_EXTENSIONS, YAML_EXTENSIONS
    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_EXTENSIONS:
        return "prototxt"
    if ext in YAML_EXTENSIONS:
        return "yaml"
    if ext in BINARY_EXTENSIONS:
        return "binary"
    if data is None:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "binary"
    return "binary" if "\x00" in text else "prototxt"


def _parse(data, fmt, kind, path):
    """(kind, message) of the file's bytes."""
    from dlcore.config import parse_binary, parse_text, parse_yaml
    from dltrain.proto import caffe_pb2
    classes = {"net": caffe_pb2.NetParameter, "solver": caffe_pb2.SolverParameter}
    if fmt == "binary":
        if kind == "solver":
            raise DLTrainError(f"{path}: a binary file is read as a net (Caffe upgrades solvers in text only)")
        return "net", parse_binary(data, caffe_pb2.NetParameter, path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8 text", path=path) from None
    parse = parse_yaml if fmt == "yaml" else parse_text
    kinds = [kind] if kind else ["net", "solver"]
    parsed, errors = {}, {}
    for k in kinds:
        try:
            parsed[k] = parse(text, classes[k], path)
        except ConfigError as err:
            errors[k] = err
    if not parsed:
        if kind or fmt == "binary":
            raise errors[kinds[0]]
        raise ConfigError(f"neither a net nor a solver: as a net: {errors['net'].message}; as a solver: "
                          f"{errors['solver'].message}", path=path)
    if len(parsed) == 2:
        net, solver = parsed["net"], parsed["solver"]
        # Both parse only when every field set is one the two share (e.g. an empty file).
        if solver.ListFields() and not (net.layer or net.layers or net.input):
            return "solver", solver
        return "net", net
    return next(iter(parsed.items()))


def _write(message, path, fmt):
    from dlcore.config import to_prototxt, to_yaml, write_atomic
    if fmt == "binary":
        data = message.SerializeToString()
    elif fmt == "yaml":
        data = to_yaml(message).encode("utf-8")
    else:
        data = to_prototxt(message).encode("utf-8")
    write_atomic(path, data)


def upgrade_file(src, dst, kind=None):
    """Upgrade the net or solver file ``src`` into ``dst``.

    Returns ``(kind, steps, problems)``: "net" or "solver", the upgrade
    steps applied (empty: already current), and the fields that could not
    be carried over.
    """
    from dlcore import upgrade
    src, dst = os.fspath(src), os.fspath(dst)
    data = _read(src)
    in_fmt = _format_of(src, data)
    kind, message = _parse(data, in_fmt, kind, src)
    out_fmt = _format_of(dst) or in_fmt
    if kind == "net":
        steps, problems = upgrade.upgrade_net_report(message, src, notice=False)
    else:
        steps, problems = upgrade.upgrade_solver_as_needed(message, src, notice=False), []
        inline = ([("net_param", message.net_param)] if message.HasField("net_param") else []) + \
                 ([("train_net_param", message.train_net_param)] if message.HasField("train_net_param") else []) + \
                 [(f"test_net_param[{i}]", net) for i, net in enumerate(message.test_net_param)]
        for field, net in inline:
            done, issues = upgrade.upgrade_net_report(net, f"{src} ({field})", notice=False)
            steps += [f"{step} in {field}" for step in done]
            problems += issues
    if out_fmt == "binary" and kind == "solver":
        raise DLTrainError(f"{dst}: a solver is written as text (.prototxt or .yaml)")
    _write(message, dst, out_fmt)
    what = "NetParameter" if kind == "net" else "SolverParameter"
    if steps:
        log.info(f"Upgraded {src}: {', '.join(steps)}")
    else:
        log.info(f"File already in latest proto format: {src}")
    if problems:
        log.error(f"Encountered error(s) while upgrading {src}; see details above.")
    form = {"binary": "binary proto", "yaml": "YAML", "prototxt": "text proto"}[out_fmt]
    log.info(f"Wrote upgraded {what} {form} to {dst}")
    return kind, steps, problems


def cmd_upgrade(args):
    kind = getattr(args, "kind", None)
    _, _, problems = upgrade_file(args.input, args.output, kind)
    return 1 if problems else 0


def register(sub):
    p = sub.add_parser("upgrade", help="write an old Caffe net (V0/V1 layers, input fields, ...) or solver "
                                       "(solver_type) file in the current format",
                       description="Upgrade a Caffe net (prototxt, YAML or binary .caffemodel) or solver "
                                   "file to the current format, as Caffe's upgrade_net_proto_text, "
                                   "upgrade_net_proto_binary and upgrade_solver_proto_text do.")
    p.add_argument("input", metavar="IN", help="the old file")
    p.add_argument("output", metavar="OUT", help="where to write the upgraded file (format by its extension, "
                                                 "else IN's format)")
    p.add_argument("--kind", choices=("net", "solver"), default=None,
                   help="what IN holds (default: told from its content)")
    p.set_defaults(func=cmd_upgrade)
    for name, kind, what in (("upgrade_net_proto_text", "net", "a net prototxt"),
                             ("upgrade_net_proto_binary", "net", "a binary net (.caffemodel)"),
                             ("upgrade_solver_proto_text", "solver", "a solver prototxt")):
        q = sub.add_parser(name, help=f"Caffe's {name}: upgrade {what} (same as 'dltrain upgrade')",
                           description=f"Upgrade {what} to the current format (Caffe's tool of this name).")
        q.add_argument("input", metavar="IN")
        q.add_argument("output", metavar="OUT")
        q.set_defaults(func=cmd_upgrade, kind=kind)
