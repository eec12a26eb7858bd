"""Loading and writing configs: nets, solvers and other caffe.proto messages.

A config is always a protobuf message in memory (``caffe_pb2.NetParameter``,
``caffe_pb2.SolverParameter``, ...). On disk it is one of three formats,
chosen by the file's extension:

========================================  =====================================
extension                                 format
========================================  =====================================
``.prototxt`` ``.pt`` ``.txt`` ``.pbtxt``  protobuf text format (Caffe's own)
``.yaml`` ``.yml``                         YAML with the text format's field names
``.caffemodel`` ``.binaryproto``           protobuf binary
``.solverstate`` ``.pb``
anything else                             text format if the bytes are UTF-8
                                          text that parses; otherwise binary;
                                          if neither works, the text format's
                                          error is reported (YAML is only
                                          used for ``.yaml``/``.yml``)
========================================  =====================================

YAML mapping rules (see :func:`to_yaml` for the reverse):

* keys are exactly the text format's field names; nested messages are
  mappings (``{}`` or an empty value sets an empty sub-message);
* a repeated field is a list; a single scalar or mapping is accepted as a
  one-element list;
* enums by name (``pool: MAX``) or by number;
* bytes as strings (UTF-8), or ``!!binary`` base64 for arbitrary bytes;
* numbers and booleans must be unquoted; strings may be quoted or not
  (``name: 1`` is the string ``"1"``);
* YAML anchors, aliases and ``<<`` merge keys work. Only the YAML node tree
  is read (``yaml.compose``, the same safe machinery as ``yaml.safe_load``):
  no Python objects are ever constructed.

Limits (docs/SECURITY.md): a text file of at most MAX_TEXT_BYTES, a binary
one of at most MAX_BINARY_BYTES, and only regular files (never a FIFO or a
device); YAML whose expansion (aliases and merge keys included) stays within
MAX_YAML_NODES nodes and MAX_YAML_DEPTH levels. Past them, a ConfigError.

Every failure raises :class:`dlcore.errors.ConfigError` whose ``str()`` is
``path:line:column: message`` naming the offending field where it is known,
e.g. ``net.prototxt:12:5: unknown field 'kernal_size' in
ConvolutionParameter``. Nothing is returned half-loaded.
"""

import base64
import math
import os
import re
import socket
import stat
import struct
import tempfile

import yaml
from google.protobuf import text_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, EncodeError

from dlcore import log
from dlcore.errors import ConfigError
from dltrain.proto import caffe_pb2

__all__ = [
    "TEXT_EXTENSIONS", "YAML_EXTENSIONS", "BINARY_EXTENSIONS",
    "load_message", "load_net", "load_solver",
    "parse_text", "parse_yaml", "parse_binary",
    "parse_net_text", "parse_solver_text",
    "message_from_string", "net_from_string", "solver_from_string",
    "to_yaml", "to_prototxt",
    "resolve_solver_net_paths", "find_layer_line", "field_line",
    "MAX_TEXT_BYTES", "MAX_BINARY_BYTES", "MAX_YAML_NODES", "MAX_YAML_DEPTH",
    "read_regular_file", "read_text_file", "compose_yaml", "load_yaml_data",
    "write_atomic", "write_binary", "remove_stale_temporaries",
]

TEXT_EXTENSIONS = frozenset({".prototxt", ".pt", ".txt", ".pbtxt"})
YAML_EXTENSIONS = frozenset({".yaml", ".yml"})
BINARY_EXTENSIONS = frozenset({".caffemodel", ".binaryproto", ".solverstate", ".pb"})

# Limits on what a file may make dltrain read and build (docs/SECURITY.md).
# A text config (prototxt or YAML): the biggest real net definitions are a few
# hundred KB (ResNet-152's train_val.prototxt: about 230 KB), so 64 MiB leaves
# room for text files that embed data while parsing in well under a minute.
MAX_TEXT_BYTES = 64 * 2**20
# A binary message (.caffemodel, .solverstate, .binaryproto): protobuf's own
# limit, and Caffe's (kProtoReadBytesLimit = INT_MAX).
MAX_BINARY_BYTES = 2**31 - 1
# YAML with its aliases and merge keys expanded: about 2x the node count of a
# 10 MB net file (which already takes some 15 s to load), and 100 levels (a
# real net nests about 15).  The expanded scalars may not exceed MAX_TEXT_BYTES,
# what a file without aliases could hold.
MAX_YAML_NODES = 2_000_000
MAX_YAML_DEPTH = 100

# libyaml's loader when PyYAML was built with it (same node tree, faster).
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_FORMAT_ALIASES = {
    "prototxt": "prototxt", "text": "prototxt", "txt": "prototxt", "pt": "prototxt",
    "pbtxt": "prototxt",
    "yaml": "yaml", "yml": "yaml",
    "binary": "binary", "bin": "binary", "pb": "binary",
}


# ---------------------------------------------------------------------------
# Loading files
# ---------------------------------------------------------------------------

def load_message(path, message_class):
    """Load a ``message_class`` instance from ``path`` (format by extension).

    See the module docstring for the extension table. Raises ConfigError
    (never returns a partly filled message), also for a path that is not a
    regular file or is larger than MAX_TEXT_BYTES (text) / MAX_BINARY_BYTES.
    """
    path = os.fspath(path)
    what = f"{message_class.DESCRIPTOR.name} file"
    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_EXTENSIONS or ext in YAML_EXTENSIONS:
        parse = parse_text if ext in TEXT_EXTENSIONS else parse_yaml
        return parse(read_text_file(path, what), message_class, path)
    data = read_regular_file(path, MAX_BINARY_BYTES, what)
    if ext in BINARY_EXTENSIONS:
        return parse_binary(data, message_class, path)
    # Unknown extension: text if it is UTF-8 text that parses, else binary.
    try:
        text = data.decode("utf-8") if len(data) <= MAX_TEXT_BYTES else None
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return parse_binary(data, message_class, path)
    try:
        return parse_text(text, message_class, path)
    except ConfigError as text_error:
        try:
            return parse_binary(data, message_class, path)
        except ConfigError:
            raise text_error from None


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def _check_regular_file(st, path, max_bytes, what):
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a plain file")
        raise ConfigError(f"cannot read {what}: it is {kind}, not a regular file", path=path)
    if st.st_size > max_bytes:
        raise ConfigError(f"cannot read {what}: it is {st.st_size:,} bytes, more than the limit of "
                          f"{max_bytes:,}", path=path)


def read_regular_file(path, max_bytes, what):
    """The bytes of ``path``, which must be a regular file of at most
    ``max_bytes`` bytes; anything else (a directory, a FIFO, ``/dev/zero``, a
    socket, a file too large, a read error) is a one-line ConfigError naming
    the path: ``cannot read {what}: <reason>``.

    Never blocks: the type is checked with ``os.stat`` before opening, and
    again on the open file (opened non-blocking, so a FIFO swapped in
    meanwhile does not wait for a writer) to close the race.
    """
    path = os.fspath(path)
    try:
        _check_regular_file(os.stat(path), path, max_bytes, what)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as f:
            _check_regular_file(os.fstat(fd), path, max_bytes, what)
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror or e}", path=path) from None
    if len(data) > max_bytes:   # it grew after the check
        raise ConfigError(f"cannot read {what}: it is more than the limit of {max_bytes:,} bytes",
                          path=path)
    return data


def read_text_file(path, what, max_bytes=MAX_TEXT_BYTES):
    """read_regular_file, decoded as UTF-8 (else a ConfigError naming the
    line and column of the first byte that is not)."""
    return _decode(read_regular_file(path, max_bytes, what), path)


def load_net(path):
    """Load a ``caffe_pb2.NetParameter`` (prototxt, YAML or .caffemodel)."""
    return load_message(path, caffe_pb2.NetParameter)


def load_solver(path, resolve_paths=False):
    """Load a ``caffe_pb2.SolverParameter``.

    With ``resolve_paths=True`` the net file fields are made absolute with
    :func:`resolve_solver_net_paths`.
    """
    solver = load_message(path, caffe_pb2.SolverParameter)
    if resolve_paths:
        resolve_solver_net_paths(solver, path)
    return solver


def _decode(data, path):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError("file is not UTF-8 text", path=path, line=line,
                          column=col) from None


# ---------------------------------------------------------------------------
# Parsing strings
# ---------------------------------------------------------------------------

def _check_length(data, limit, filename, what):
    if len(data) > limit:
        unit = "characters" if isinstance(data, str) else "bytes"
        raise ConfigError(f"{what} is {len(data):,} {unit} long, more than the limit of {limit:,}",
                          path=filename)


def parse_text(text, message_class, filename="<string>"):
    """Parse protobuf text format into a new ``message_class`` instance.

    No depth guard is needed: caffe.proto has no recursive message (at most
    6 levels deep), and an unknown field is an error, so nesting ends there.
    """
    _check_length(text, MAX_TEXT_BYTES, filename, "the text")
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise _text_parse_error(e, text, message_class, filename) from None
    _check_required_text(message, text, filename)
    return message


def parse_binary(data, message_class, filename="<bytes>"):
    """Decode protobuf binary data into a new ``message_class`` instance.

    Nesting is bounded by protobuf itself (100 levels, also for unknown
    groups): deeper data fails to decode, as corrupt data does.
    """
    _check_length(data, MAX_BINARY_BYTES, filename, "the binary message")
    message = message_class()
    try:
        message.ParseFromString(bytes(data))
    except (DecodeError, EncodeError, RuntimeError, ValueError) as e:
        raise ConfigError(
            f"cannot decode binary {message_class.DESCRIPTOR.name}: {e}",
            path=filename) from None
    if not message.IsInitialized():
        missing = message.FindInitializationErrors()
        raise ConfigError(
            f"binary {message_class.DESCRIPTOR.name} lacks required field "
            f"'{missing[0]}'", path=filename, field=missing[0])
    return message


def parse_yaml(text, message_class, filename="<string>"):
    """Parse YAML (text format field names) into a new ``message_class``."""
    node = compose_yaml(text, filename)
    message = message_class()
    if node is None:  # empty document
        return message
    _YamlReader(filename).fill(message, node)
    return message


def _yaml_syntax_error(e, filename):
    mark = e.problem_mark or e.context_mark
    problem = e.problem or e.context or "syntax error"
    if e.context and e.problem:
        problem = f"{problem} ({e.context})"
    return ConfigError(f"YAML syntax error: {problem}", path=filename,
                       line=mark.line + 1 if mark else None,
                       column=mark.column + 1 if mark else None)


def compose_yaml(text, filename="<string>"):
    """The YAML node tree of ``text`` (None for an empty document), checked
    against the limits on size, depth and alias/merge-key expansion (see
    :func:`_check_yaml_expansion`). Every failure is a ConfigError."""
    return _read_yaml(text, filename, construct=False)


def load_yaml_data(text, filename="<string>"):
    """``yaml.safe_load(text)`` within the limits of :func:`compose_yaml`, so
    that a YAML bomb is an error, not a hang. Errors are ConfigErrors."""
    return _read_yaml(text, filename, construct=True)


def _read_yaml(text, filename, construct):
    _check_length(text, MAX_TEXT_BYTES, filename, "the YAML text")
    loader = None
    try:
        loader = _SafeLoader(text)   # the pure-Python reader checks the characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_expansion(node, filename)
        return loader.construct_document(node) if construct else node
    except yaml.MarkedYAMLError as e:
        raise _yaml_syntax_error(e, filename) from None
    except yaml.reader.ReaderError as e:   # a character YAML does not allow (binary data)
        where = text[:e.position] if isinstance(e.position, int) else ""
        raise ConfigError(f"YAML syntax error: {' '.join(str(e).splitlines()[0].split())}", path=filename,
                          line=where.count("\n") + 1, column=len(where) - (where.rfind("\n") + 1) + 1) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {' '.join(str(e).split())}", path=filename) from None
    except RecursionError:   # the pure-Python composer; libyaml stops at 1000 levels by itself
        raise ConfigError(f"YAML nested too deeply (more than {MAX_YAML_DEPTH} levels)",
                          path=filename) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_children(node):
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return ()


def _yaml_error_mark(node):
    """Where to point at a node's expansion: its first merge key, else its start."""
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == _TAG_MERGE:
                return key.start_mark
    return node.start_mark


def _check_yaml_expansion(root, filename):
    """Refuse a node tree whose full expansion (every alias and merge key
    replaced by what it names) has more than MAX_YAML_NODES nodes,
    MAX_YAML_DEPTH levels or MAX_TEXT_BYTES of scalars, or that refers to
    itself. Computed once per distinct node (a post-order walk without
    recursion), so a "billion laughs" file is refused in time linear in its
    own size, before anything is expanded. The error points at the node
    (its merge key where it has one) where the expansion first passes a
    limit: the line of the aliases or merge keys that multiply it.
    """
    if isinstance(root, yaml.ScalarNode):
        return
    sizes = {}        # id(collection) -> (nodes, scalar characters, depth) of its expansion
    on_path = set()   # ids of the collections being expanded (their descendants are on the stack)
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _yaml_children(node)
        if not children_done:
            if key in sizes:
                continue
            if key in on_path:
                raise _yaml_limit_error(node, filename, "a YAML alias names a node that contains it "
                                                        "(a recursive structure)")
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children
                         if not isinstance(child, yaml.ScalarNode) and id(child) not in sizes)
            continue
        on_path.discard(key)
        nodes, chars, depth = 1, 0, 1
        for child in children:   # scalars (most nodes) inline, collections from `sizes`
            if isinstance(child, yaml.ScalarNode):
                nodes += 1
                chars += len(child.value)
                continue
            child_nodes, child_chars, child_depth = sizes[id(child)]
            nodes += child_nodes
            chars += child_chars
            depth = max(depth, child_depth)
        depth += 1
        if nodes > MAX_YAML_NODES:
            raise _yaml_limit_error(node, filename, f"YAML too large: more than {MAX_YAML_NODES:,} nodes "
                                                    "here once aliases and merge keys are expanded (the limit)")
        if chars > MAX_TEXT_BYTES:
            raise _yaml_limit_error(node, filename, f"YAML too large: more than {MAX_TEXT_BYTES:,} "
                                                    "characters of values here once aliases and merge keys "
                                                    "are expanded (the limit)")
        if depth > MAX_YAML_DEPTH:
            raise _yaml_limit_error(node, filename, f"YAML nested too deeply: more than {MAX_YAML_DEPTH} "
                                                    "levels here once aliases and merge keys are expanded "
                                                    "(the limit)")
        sizes[key] = (nodes, chars, depth)


def _yaml_limit_error(node, filename, message):
    mark = _yaml_error_mark(node)
    return ConfigError(message, path=filename, line=mark.line + 1, column=mark.column + 1)


def parse_net_text(text, filename="<string>"):
    """A NetParameter from a prototxt string."""
    return parse_text(text, caffe_pb2.NetParameter, filename)


def parse_solver_text(text, filename="<string>"):
    """A SolverParameter from a prototxt string."""
    return parse_text(text, caffe_pb2.SolverParameter, filename)


def message_from_string(text, message_class, fmt="prototxt", filename="<string>"):
    """A ``message_class`` from a string in ``fmt`` ("prototxt" or "yaml")."""
    kind = _FORMAT_ALIASES.get(str(fmt).lower())
    if kind == "prototxt":
        return parse_text(text, message_class, filename)
    if kind == "yaml":
        return parse_yaml(text, message_class, filename)
    if kind == "binary":
        return parse_binary(text, message_class, filename)
    raise ValueError(f"unknown config format {fmt!r}; use 'prototxt' or 'yaml'")


def net_from_string(text, fmt="prototxt", filename="<string>"):
    """A NetParameter from an inline prototxt (default) or YAML string."""
    return message_from_string(text, caffe_pb2.NetParameter, fmt, filename)


def solver_from_string(text, fmt="prototxt", filename="<string>"):
    """A SolverParameter from an inline prototxt (default) or YAML string."""
    return message_from_string(text, caffe_pb2.SolverParameter, fmt, filename)


# ---------------------------------------------------------------------------
# Text-format errors
# ---------------------------------------------------------------------------

_RE_LOCATION = re.compile(r"^\d+:\d+ : ")
_RE_QUOTED_LINE = re.compile(r"^'.*?': ", re.S)
_RE_NO_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "(\w+)"')
_RE_ENUM_NAME = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')
_RE_ENUM_NUMBER = re.compile(r'Enum type "([\w.]+)" has no value with number (-?\d+)')
_RE_VALUE_ERROR = re.compile(
    r"Couldn't parse|out of range|Expected \"true\" or \"false\"|Expected string|"
    r"Enum type|Invalid|Expected integer|Expected double|Expected float")
_RE_MULTIPLE = re.compile(r'Message type "([\w.]+)" should not have multiple "(\w+)" fields')


def _short(full_name):
    return full_name[len("caffe."):] if full_name.startswith("caffe.") else full_name


def _enum_names(full_name):
    try:
        enum = caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(full_name)
    except KeyError:
        return None
    return ", ".join(v.name for v in enum.values)


def _field_before(text, line, column):
    """The field name written just before ``line``:``column`` (1-based)."""
    if not line:
        return None
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return None
    head = lines[line - 1][:max(column - 1, 0)] if column else lines[line - 1]
    m = re.search(r"(\w+)\s*:\s*\[?[^:]*$", head)
    return m.group(1) if m else None


def _text_parse_error(e, text, message_class, filename):
    line, column = e.GetLine(), e.GetColumn()
    msg = _RE_QUOTED_LINE.sub("", _RE_LOCATION.sub("", str(e)))
    field = None
    m = _RE_NO_FIELD.search(msg)
    if m:
        field = m.group(2)
        msg = f"unknown field '{field}' in {_short(m.group(1))}"
    elif _RE_MULTIPLE.search(msg):
        m = _RE_MULTIPLE.search(msg)
        field = m.group(2)
        msg = (f"field '{field}' given more than once in {_short(m.group(1))} "
               f"(it is not a repeated field)")
    elif _RE_VALUE_ERROR.search(msg):
        field = _field_before(text, line, column)
        m = _RE_ENUM_NAME.search(msg)
        value = f"'{m.group(2)}'" if m else None
        if not m:
            m = _RE_ENUM_NUMBER.search(msg)
            value = m.group(2) if m else None
        if m:
            names = _enum_names(m.group(1))
            which = f"enum field '{field}'" if field else "an enum field"
            msg = (f"unknown value {value} for {which} "
                   f"({_short(m.group(1))}"
                   + (f"; expected one of {names})" if names else ")"))
        elif field:
            msg = f"field '{field}': {msg}"
    return ConfigError(msg, path=filename, line=line, column=column, field=field)


def _check_required_text(message, text, filename):
    """Caffe rejects messages with unset required fields; so do we."""
    if message.IsInitialized():
        return
    missing = message.FindInitializationErrors()
    first = missing[0]
    line = None
    m = re.match(r"layers?\[(\d+)\]\.", first)
    where = ""
    if m and hasattr(message, "layer"):
        field_name = first.split("[", 1)[0]
        layers = getattr(message, field_name)
        idx = int(m.group(1))
        if idx < len(layers) and layers[idx].name:
            where = f"layer '{layers[idx].name}': "
            line = _scan_prototxt_layer_line(text, layers[idx].name)
    raise ConfigError(f"{where}missing required field '{first}'"
                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                      path=filename, line=line, field=first)


# ---------------------------------------------------------------------------
# YAML -> message
# ---------------------------------------------------------------------------

_TAG_NULL = "tag:yaml.org,2002:null"
_TAG_BINARY = "tag:yaml.org,2002:binary"
_TAG_MERGE = "tag:yaml.org,2002:merge"
_STANDARD_SCALAR_TAGS = {
    "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool", _TAG_NULL, "tag:yaml.org,2002:timestamp", _TAG_BINARY,
    "tag:yaml.org,2002:value",
}
_TRUE = {"true", "yes", "on", "y", "t", "1"}
_FALSE = {"false", "no", "off", "n", "f", "0"}
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-2**31, 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-2**63, 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_MAX_INT_CHARS = 100   # a 64-bit integer in any base, with sign and prefix, is shorter
_RE_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)$")
_RE_FLOAT = re.compile(
    r"^[-+]?(([0-9][0-9_]*)?\.?[0-9_]*([eE][-+]?[0-9]+)?[fF]?|\.?inf(inity)?|\.?nan)$",
    re.IGNORECASE)


def _is_repeated(field):
    return field.is_repeated


class _YamlReader:
    """Fills messages from a composed YAML node tree, with node positions."""

    def __init__(self, filename):
        self.filename = filename

    def error(self, node, message, field=None):
        mark = node.start_mark if node is not None else None
        return ConfigError(message, path=self.filename,
                           line=mark.line + 1 if mark else None,
                           column=mark.column + 1 if mark else None, field=field)

    @staticmethod
    def is_null(node):
        return (isinstance(node, yaml.ScalarNode) and node.tag == _TAG_NULL
                and not node.style)

    def pairs(self, node):
        """(key node, value node) pairs of a mapping, merge keys applied."""
        own, merged = [], []
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == _TAG_MERGE:
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for src in sources:
                    if not isinstance(src, yaml.MappingNode):
                        raise self.error(src, "a '<<' merge key needs a mapping "
                                              "or a list of mappings")
                    merged.extend(self.pairs(src))
            else:
                own.append((key, value))
        own_names = {k.value for k, _ in own if isinstance(k, yaml.ScalarNode)}
        seen = set()
        result = []
        for key, value in merged:  # earlier merge sources win, own keys win over all
            if key.value in own_names or key.value in seen:
                continue
            seen.add(key.value)
            result.append((key, value))
        return result + own

    def fill(self, message, node):
        desc = message.DESCRIPTOR
        if self.is_null(node):  # `field:` with no value: an empty message
            self.check_required(message, node)
            return
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"expected a mapping of {desc.name} fields, "
                                   f"got {self.describe(node)}")
        seen = {}
        for key, value in self.pairs(node):
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(key, f"a {desc.name} field name must be a plain "
                                      f"name, got {self.describe(key)}")
            name = key.value
            field = desc.fields_by_name.get(name)
            if field is None:
                raise self.error(key, f"unknown field '{name}' in {desc.name}", field=name)
            if name in seen:
                hint = (" (a repeated field is written once, as a list)"
                        if _is_repeated(field) else "")
                raise self.error(key, f"field '{name}' given more than once in "
                                      f"{desc.name}{hint}", field=name)
            seen[name] = key
            self.set_field(message, field, value)
        self.check_required(message, node)

    def check_required(self, message, node):
        desc = message.DESCRIPTOR
        for field in desc.fields:
            if field.is_required and not message.HasField(field.name):
                raise self.error(node, f"missing required field '{field.name}' "
                                       f"in {desc.name}", field=field.name)

    def set_field(self, message, field, node):
        name = field.name
        if _is_repeated(field):
            if self.is_null(node):
                items = []
            elif isinstance(node, yaml.SequenceNode):
                items = node.value
            else:
                items = [node]
            container = getattr(message, name)
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for item in items:
                    if isinstance(item, yaml.SequenceNode):
                        raise self.error(item, f"field '{name}': expected a mapping "
                                               f"({field.message_type.name}), got a list",
                                         field=name)
                    self.fill(container.add(), item)
            else:
                values = [self.scalar(field, item) for item in items]
                container.extend(values)
            return
        if isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"field '{name}' is not repeated: give one value, "
                                   f"not a list", field=name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = getattr(message, name)
            sub.SetInParent()
            self.fill(sub, node)
            return
        value = self.scalar(field, node)
        try:
            setattr(message, name, value)
        except (TypeError, ValueError) as e:
            raise self.error(node, f"field '{name}': {e}", field=name) from None

    @staticmethod
    def describe(node):
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        return repr(node.value)

    def scalar(self, field, node):
        name = field.name
        ftype = field.type
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"field '{name}': expected a single value, "
                                   f"got {self.describe(node)}", field=name)
        if node.tag not in _STANDARD_SCALAR_TAGS:
            raise self.error(node, f"field '{name}': unsupported YAML tag {node.tag}",
                             field=name)
        if self.is_null(node):
            raise self.error(node, f"field '{name}' has no value", field=name)
        raw = node.value
        quoted = bool(node.style)  # '' or None: plain
        if node.tag == _TAG_BINARY:
            if ftype != FieldDescriptor.TYPE_BYTES:
                raise self.error(node, f"field '{name}': !!binary is only for bytes "
                                       f"fields", field=name)
            try:
                return base64.b64decode("".join(raw.split()), validate=True)
            except ValueError:
                raise self.error(node, f"field '{name}': invalid base64 data",
                                 field=name) from None
        if ftype == FieldDescriptor.TYPE_STRING:
            return raw
        if ftype == FieldDescriptor.TYPE_BYTES:
            return raw.encode("utf-8")
        if ftype == FieldDescriptor.TYPE_ENUM:
            return self.enum_value(field, node)
        if quoted:
            kind = "a boolean" if ftype == FieldDescriptor.TYPE_BOOL else "a number"
            raise self.error(node, f"field '{name}': expected {kind}, got the quoted "
                                   f"string {raw!r}", field=name)
        if ftype == FieldDescriptor.TYPE_BOOL:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise self.error(node, f"field '{name}': expected true or false, got {raw!r}",
                             field=name)
        if ftype in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            return self.float_value(field, node)
        return self.int_value(field, node)

    def int_value(self, field, node):
        raw = node.value
        if not _RE_INT.match(raw):
            raise self.error(node, f"field '{field.name}': expected an integer, "
                                   f"got {raw!r}", field=field.name)
        text = raw.replace("_", "")
        low, high = _INT_RANGES[field.type]
        if len(text) > _MAX_INT_CHARS:   # out of any range; and int() refuses 4300+ digits
            raise self.error(node, f"field '{field.name}': value {raw[:20]}... ({len(raw)} characters) "
                                   f"out of range [{low}, {high}]", field=field.name)
        try:
            value = int(text, 0)
        except ValueError:  # decimal with leading zeros
            value = int(text, 10)
        if not low <= value <= high:
            raise self.error(node, f"field '{field.name}': value {raw} out of range "
                                   f"[{low}, {high}]", field=field.name)
        return value

    def float_value(self, field, node):
        raw = node.value
        text = raw.replace("_", "")
        if not _RE_FLOAT.match(text) or not any(c.isdigit() for c in text) and \
                not re.search(r"inf|nan", text, re.IGNORECASE):
            raise self.error(node, f"field '{field.name}': expected a number, got {raw!r}",
                             field=field.name)
        if text[-1:] in "fF" and not text.lower().endswith("inf"):
            text = text[:-1]
        text = text.replace(".inf", "inf").replace(".INF", "inf").replace(".Inf", "inf")
        text = re.sub(r"^([-+]?)\.nan$", r"\1nan", text, flags=re.IGNORECASE)
        try:
            return float(text)
        except ValueError:
            raise self.error(node, f"field '{field.name}': expected a number, got {raw!r}",
                             field=field.name) from None

    def enum_value(self, field, node):
        enum = field.enum_type
        raw = node.value
        by_name = enum.values_by_name.get(raw)
        if by_name is not None:
            return by_name.number
        if not node.style and _RE_INT.match(raw) and len(raw) <= _MAX_INT_CHARS:
            number = int(raw.replace("_", ""), 0) if not re.match(r"^[-+]?0\d", raw) \
                else int(raw, 10)
            if number in enum.values_by_number:
                return number
        names = ", ".join(v.name for v in enum.values)
        raise self.error(node, f"unknown value {raw!r} for enum field '{field.name}' "
                               f"({_enum_display(enum)}; expected one of {names})",
                         field=field.name)


def _enum_display(enum):
    return _short(enum.full_name)


# ---------------------------------------------------------------------------
# message -> YAML / prototxt
# ---------------------------------------------------------------------------

class _FlowList(list):
    """A list of scalars, written on one line: ``bottom: [data, label]``."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents block lists and writes scalar lists inline."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _represent_flow_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(_FlowList, _represent_flow_list)


def _float32_value(value):
    """The shortest decimal (as a Python float) that reads back as ``value``
    once stored in a 32-bit float field."""
    if math.isnan(value) or math.isinf(value):
        return value
    for digits in range(1, 10):
        candidate = float("%.*g" % (digits, value))
        try:
            if struct.unpack("<f", struct.pack("<f", candidate))[0] == value:
                return candidate
        except OverflowError:
            continue
    return value


def _printable_text(data):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((not ch.isprintable()) and ch not in "\n\t" for ch in text):
        return None
    return text


def _yaml_scalar(field, value):
    ftype = field.type
    if ftype == FieldDescriptor.TYPE_ENUM:
        enum_value = field.enum_type.values_by_number.get(value)
        return enum_value.name if enum_value is not None else value
    if ftype == FieldDescriptor.TYPE_FLOAT:
        return _float32_value(value)
    if ftype == FieldDescriptor.TYPE_BYTES:
        text = _printable_text(value)
        return text if text is not None else bytes(value)  # bytes -> !!binary
    return value


def _message_to_data(message):
    data = {}
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if _is_repeated(field):
                data[field.name] = [_message_to_data(m) for m in value]
            else:
                data[field.name] = _message_to_data(value)
        elif _is_repeated(field):
            data[field.name] = _FlowList(_yaml_scalar(field, v) for v in value)
        else:
            data[field.name] = _yaml_scalar(field, value)
    return data


def to_yaml(message):
    """The message as YAML text, fields in field-number order (as the text
    format writes them). :func:`parse_yaml` reads it back to an equal
    message."""
    return yaml.dump(_message_to_data(message), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, allow_unicode=True, width=100)


def to_prototxt(message):
    """The message in protobuf text format (what Caffe's tools read)."""
    return text_format.MessageToString(message, as_utf8=True)


# ---------------------------------------------------------------------------
# Solver net paths
# ---------------------------------------------------------------------------

def resolve_solver_net_paths(solver_param, solver_path):
    """Make ``net``, ``train_net`` and ``test_net`` absolute, existing paths.

    Like Caffe, a relative path is first taken relative to the current
    directory; if no file is there, relative to the solver file's folder.
    Modifies ``solver_param`` in place and returns it. A net file found in
    neither place raises ConfigError naming the solver file, the line and
    the field.
    """
    solver_path = os.fspath(solver_path)
    solver_dir = os.path.dirname(os.path.abspath(solver_path))

    def resolve(field, value, index=None):
        label = field if index is None else f"{field}[{index}]"
        if not value:
            raise ConfigError(f"field '{label}' is empty", path=solver_path,
                              line=_find_field_line(solver_path, field, value),
                              field=label)
        candidates = [value] if os.path.isabs(value) else [
            os.path.abspath(value), os.path.join(solver_dir, value)]
        for candidate in candidates:
            if os.path.isfile(candidate):
                return os.path.normpath(os.path.abspath(candidate))
        where = ("" if os.path.isabs(value) else
                 f" (looked in the current directory {os.getcwd()} and in the "
                 f"solver's folder {solver_dir})")
        raise ConfigError(f"{label}: net file '{value}' not found{where}",
                          path=solver_path,
                          line=_find_field_line(solver_path, field, value),
                          field=label)

    resolved = {}
    for field in ("net", "train_net"):
        if solver_param.HasField(field):
            resolved[field] = resolve(field, getattr(solver_param, field))
    tests = [resolve("test_net", v, i) for i, v in enumerate(solver_param.test_net)]
    # Only modify once everything resolved (nothing half-done on error).
    for field, value in resolved.items():
        setattr(solver_param, field, value)
    if tests:
        del solver_param.test_net[:]
        solver_param.test_net.extend(tests)
    return solver_param


def _read_text_quietly(path):
    """A text file's contents for an error's location (best effort): None
    when it cannot be read, or is not a regular file within MAX_TEXT_BYTES."""
    try:
        return read_regular_file(path, MAX_TEXT_BYTES, "file").decode("utf-8", errors="replace")
    except ConfigError:
        return None


def _read_lines(path):
    text = _read_text_quietly(path)
    return None if text is None else text.splitlines()


def field_line(path, field, value=None):
    """1-based line of ``field: value`` (or just ``field:``) in the text file ``path``, for an
    error's location; None when there is no path or the line cannot be found (best effort)."""
    if not path:
        return None
    try:
        return _find_field_line(path, field, value)
    except Exception:   # a best-effort location only
        return None


def _find_field_line(path, field, value=None):
    """1-based line of ``field: value`` (or just ``field:``) in a text file."""
    lines = _read_lines(path)
    if not lines:
        return None
    pattern = re.compile(r"^\s*(-\s*)?" + re.escape(field) + r"\s*:")
    first = None
    for number, line in enumerate(lines, 1):
        code = line.split("#", 1)[0]
        if pattern.search(code):
            if first is None:
                first = number
            if value is None or value in code:
                return number
    return first


# ---------------------------------------------------------------------------
# Layer lines
# ---------------------------------------------------------------------------

def find_layer_line(path, layer_name):
    """1-based line of the ``name:`` of the layer called ``layer_name``.

    Works on prototxt files (a light scan that tracks braces, strings and
    comments, so ``param { name: ... }`` entries are not mistaken for
    layers) and on YAML files (from the YAML node tree). Returns None when
    the file cannot be read or no such layer is found.
    """
    path = os.fspath(path)
    text = _read_text_quietly(path)
    if text is None:
        return None
    if os.path.splitext(path)[1].lower() in YAML_EXTENSIONS:
        line = _yaml_layer_line(text, layer_name)
        if line is not None:
            return line
        return _loose_name_line(text, layer_name)
    line = _scan_prototxt_layer_line(text, layer_name)
    return line if line is not None else _loose_name_line(text, layer_name)


def _yaml_layer_line(text, layer_name):
    try:
        root = compose_yaml(text)
    except ConfigError:
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    for key, value in root.value:
        if not (isinstance(key, yaml.ScalarNode) and key.value in ("layer", "layers")):
            continue
        items = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for item in items:
            if not isinstance(item, yaml.MappingNode):
                continue
            for k, v in item.value:
                if (isinstance(k, yaml.ScalarNode) and k.value == "name"
                        and isinstance(v, yaml.ScalarNode) and v.value == layer_name):
                    return k.start_mark.line + 1
    return None


_RE_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|#[^\n]*|[{}]|[^\s{}:#"\']+|:|\n')


def _unquote(token):
    if token[:1] in "\"'":
        body = token[1:-1]
        try:
            return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            return body
    return token


def _scan_prototxt_layer_line(text, layer_name):
    """Line of ``name: "layer_name"`` directly inside a top-level
    ``layer``/``layers`` block of a prototxt."""
    line = 1
    depth = 0
    block_stack = []   # field name of each open block
    last_ident = None
    pending_name = None  # line of a `name` key waiting for its value
    for token in _RE_TOKEN.findall(text):
        if token == "\n":
            line += 1
            continue
        if token.startswith("#"):
            continue
        if token == "{":
            block_stack.append(last_ident)
            depth += 1
            last_ident = None
            pending_name = None
            continue
        if token == "}":
            if block_stack:
                block_stack.pop()
            depth = max(depth - 1, 0)
            last_ident = None
            pending_name = None
            continue
        if token == ":":
            if last_ident == "name":
                pending_name = line
            continue
        if pending_name is not None:
            if (depth == 1 and block_stack and block_stack[0] in ("layer", "layers")
                    and _unquote(token) == layer_name):
                return pending_name
            pending_name = None
            last_ident = None
            continue
        last_ident = token
    return None


def _loose_name_line(text, layer_name):
    pattern = re.compile(r"^\s*(-\s*)?name\s*:\s*([\"']?)" + re.escape(layer_name)
                         + r"\2\s*(#.*)?$")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def _temporary_host():
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _file_mode():
    """The mode open() would give a new file: 0666 less the umask."""
    try:   # Linux shows the umask without changing it (changing it races other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path, data):
    """Write bytes to ``path`` through a temporary file and a rename, so an
    interrupted write never leaves a half-written file behind.

    The temporary file, ``.NAME.tmp.HOST.PID.RANDOM`` in the same folder (it
    says whose it is: see remove_stale_temporaries), is made by ``tempfile.mkstemp`` (O_EXCL: a planted file or symlink is never
    opened, let alone followed), then given the mode of a normal new file,
    written, fsynced and renamed over ``path``. It is removed on any failure,
    Ctrl-C included; after a kill -9, remove_stale_temporaries removes it.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp.{_temporary_host()}.{os.getpid()}.",
                               dir=folder or ".")
    try:
        with open(fd, "wb") as f:
            os.chmod(f.fileno(), _file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def remove_stale_temporaries(prefix):
    """Remove the temporary files that write_atomic left behind in runs that
    died (kill -9, power loss) for the files whose path starts with
    ``prefix`` (a file's path, or a snapshot prefix such as ``snaps/run``,
    whose files are ``snaps/run_iter_N.caffemodel``...).

    Only files of ``prefix``'s folder named as write_atomic names them,
    ``.NAME.tmp.HOST.PID.RANDOM``, with NAME starting with the prefix's last
    part, HOST this host (the PID means nothing on another one) and a PID
    that no longer runs. Symlinks and anything but regular files are left
    alone. Logs one line per file removed and returns their paths.
    """
    folder, start = os.path.split(os.fspath(prefix))
    pattern = re.compile(r"\." + re.escape(start) + r".*\.tmp\." + re.escape(_temporary_host())
                         + r"\.(\d+)\.[a-z0-9_]+")
    removed = []
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match.group(1))
        if _process_alive(pid):
            continue
        try:
            os.remove(entry.path)
        except OSError:
            continue
        log.info(f"removed {entry.path}: a temporary file left by process {pid}, which has ended")
        removed.append(entry.path)
    return removed


def _process_alive(pid):
    if pid == os.getpid():
        return True
    if pid <= 0:          # not a process (os.kill would signal a whole group)
        return False
    try:
        os.kill(pid, 0)   # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:   # it exists, under another user
        return True
    return True


def write_binary(path, message):
    """Write a message in protobuf's binary form (.caffemodel, .solverstate, .binaryproto)."""
    write_atomic(path, message.SerializeToString())
