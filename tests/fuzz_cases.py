"""Fuzz cases for dltrain's CLI: mutated copies of the shipped nets and solvers.

A case is one shipped config (a solver with its net, or a net alone) with one
to three random text mutations (a line deleted, a number made extreme, a layer
type swapped, a layer block dropped or grafted from another net, ...), run
through the real CLI code path, `dltrain.cli.main.main(argv)`: `train` for a
solver, `time` for a net.  Everything about a case follows from
`random.Random(f"{seed}/{case_id}")`, so `(seed, case_id)` rebuilds it anywhere.

What must hold for every case (`check_case`): main() returns (nothing escapes
it, and it reports no internal error), stderr shows no traceback, the case
ends within its time limit, and the exit code is non-zero exactly when
`dltrain: error: <one line>` was printed.  Exit 0 is fine: many mutations are
harmless and the net simply trains.

Cases run in-process, many per worker subprocess (`python tests/fuzz_cases.py
--worker ...`): a fresh interpreter per case would be far too slow.  A worker
sends one JSON line when a case starts and one with its result; the parent
(`run_cases`) restarts a worker that dies or stops answering and charges that
case with a crash or a hang.  Before the cases, `warm_up` runs every shipped
config unmutated (each must exit 0), which also fills Numba's cache, so the
time limit measures the cases and not the compiler.

The harness, never the mutation, keeps a valid case short: when the mutated
solver still parses, max_iter, test_iter, test_interval and iter_size are
capped (a value the mutation made zero or negative is left alone), and
snapshots go to the case's own folder, which is also the current directory.
Data sources are made absolute so they still reach the shipped data.
"""
import argparse
import io
import json
import os
import queue
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
THIS_FILE = os.path.abspath(__file__)
# The Gram plugin, as its README says to use it without installing it: its folder on sys.path.
GRAM_FOLDER = os.path.join(CONFIGS, "plugins", "dltrain-gram")
GRAM_PLUGIN = "dltrain_gram.gram"

# Limits for a case that trains: the mutation may lower these, never raise them past this.  A test
# interval past max_iter tests once, at iteration 0 (a blob left dangling by a mutation is a net output
# whose every value is logged at each test: a few of these cost seconds).
CAPS = {"max_iter": 3, "test_iter": 1, "test_interval": 4, "iter_size": 2}
# A case silent for CASE_LIMIT_S, or running for LOGGING_LIMIT_FACTOR times that while it logs, is a hang.
# Valid cases take a few seconds; a few log every value of a large output blob (a mutation left it
# dangling: Caffe prints each value of a net output), which can take minutes and is no hang.
CASE_LIMIT_S = 60
LOGGING_LIMIT_FACTOR = 5
WARM_UP_LIMIT_S = 600      # an unmutated config, the first to compile its kernels (see warm_up)
# Per worker (RLIMIT_DATA: the memory it writes, not the address space threads reserve): an absurd
# allocation fails at once instead of filling the machine.  The shipped configs need under 1 GB.
MEMORY_LIMIT_BYTES = 4 << 30


# --------------------------------------------------------------------------------------------------
# The shipped configs a case starts from
# --------------------------------------------------------------------------------------------------
class TrainBase:
    """A shipped solver and its net, run as `dltrain train --solver`."""
    command = "train"

    def __init__(self, name, solver, net, plugin=None, copies=(), weight=1.0):
        self.name, self.solver, self.net = name, solver, net
        self.plugin, self.copies, self.weight = plugin, copies, weight


class TimeBase:
    """A shipped net, run as `dltrain time --model` (one untimed and one timed pass)."""
    command = "time"

    def __init__(self, name, net, phase="TRAIN", batch=None, weight=1.0):
        self.name, self.net, self.phase, self.batch, self.weight = name, net, phase, batch, weight


BASES = [
    TrainBase("digits", "digits/solver.prototxt", "digits/lenet_digits_train_test.prototxt", weight=3),
    TrainBase("digits-yaml", "digits/solver.yaml", "digits/lenet_digits_train_test.yaml", weight=3),
    TrainBase("gram", "plugins/gram_solver.prototxt", "plugins/gram_digits.prototxt", plugin=GRAM_PLUGIN),
    TrainBase("linreg", "plugins/python/linreg_solver.prototxt", "plugins/python/linreg.prototxt",
              copies=("plugins/python/pylayers.py",)),
    TrainBase("geoloc", "geoloc/solver.prototxt", "geoloc/train_val.prototxt", weight=1.5),
    TrainBase("geoloc-bag", "geoloc/bag_solver.prototxt", "geoloc/bag_train_val.prototxt"),
    TimeBase("lenet", "lenet/lenet.prototxt", weight=1.5),
    TimeBase("lstm-bench", "lstm/lstm_bench.prototxt"),
    TimeBase("geoloc-deploy", "geoloc/deploy.prototxt", phase="TEST", weight=0.5),
    TimeBase("geoloc-bag-deploy", "geoloc/bag_deploy.prototxt", phase="TEST", weight=0.5),
    TimeBase("digits-net-test", "digits/lenet_digits_train_test.prototxt", phase="TEST"),
    TimeBase("zoo-lenet", "zoo/lenet_deploy.prototxt", phase="TEST", weight=0.5),
    TimeBase("zoo-cifar10-quick", "zoo/cifar10_quick_deploy.prototxt", phase="TEST", weight=0.5),
    TimeBase("zoo-cifar10-full", "zoo/cifar10_full_deploy.prototxt", phase="TEST", weight=0.5),
    # The ImageNet nets are too big to train here: one image per batch, a light share of the cases.
    TimeBase("zoo-googlenet", "zoo/googlenet_deploy.prototxt", phase="TEST", batch=1, weight=0.25),
    TimeBase("zoo-caffenet", "zoo/caffenet_deploy.prototxt", phase="TEST", batch=1, weight=0.25),
]

SOLVER_TYPES = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]
LR_POLICIES = ["fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"]
EXTREME_NUMBERS = ["0", "-1", "2147483647", "-2147483648", "4294967296", "1e30", "-1e30", "1e-30",
                   "nan", "inf", "-inf", "3.5", "-0.5", "99999999999999999999999"]
YAML_EXTREMES = [".nan", ".inf", "-.inf", "0x7fffffff", "1_000"]
SMALL_NUMBERS = ["0", "1", "2", "3", "5", "7", "16", "-2"]
GARBAGE = ["", "x", "fuzz_Qx7", "\u00ff\u00e9", "a" * 3000, "null", "~", "true", "[]", "{}", "1 2 3", "-",
           "0x10", "..", "/", "/dev/null", "C:\\nul", "%s%n", "${HOME}", "\\x00"]
INSERTS = ["{", "}", "[", "]", ":", "\"", "'", "- ", "\t", "&a ", "*a", "<<: *a", "!!python/object/apply:os.system",
           "!!binary", "%YAML 1.1", "---", "...", "{ {", "} }", "layer {", "#", "\\", ";", ",", "<", ">"]


def _read(rel):
    with open(os.path.join(CONFIGS, rel), encoding="utf-8") as f:
        return f.read()


_vocabulary = None


def vocabulary():
    """What mutations draw from: built-in layer types, enum values (with their siblings), field names,
    the content lines of every shipped config, and their prototxt nets' layer blocks by type."""
    global _vocabulary
    if _vocabulary is None:
        from dlcore.registry import get_layer_class, layer_types
        from dltrain.proto import caffe_pb2
        enums, fields = {}, set()

        def walk(descriptor, seen):
            if descriptor.full_name in seen:
                return
            seen.add(descriptor.full_name)
            for enum in descriptor.enum_types:
                names = [v.name for v in enum.values]
                for name in names:
                    enums.setdefault(name, names)
            for field in descriptor.fields:
                fields.add(field.name)
                if field.message_type is not None:
                    walk(field.message_type, seen)
            for nested in descriptor.nested_types:
                walk(nested, seen)

        seen = set()
        for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
            walk(message, seen)
        lines, blocks = [], {}
        for base in BASES:
            for rel in (base.net, getattr(base, "solver", None)):
                if rel:
                    lines.extend(ln for ln in _read(rel).splitlines() if ln.strip() and not ln.strip().startswith("#"))
            if base.net.endswith(".prototxt"):
                net_lines = _read(base.net).splitlines()
                for first, last in layer_blocks(net_lines):
                    block = "\n".join(_code_part(ln) for ln in net_lines[first:last + 1])
                    kind = re.search(r'type:\s*"(\w+)"', block)
                    if kind and kind.group(1) not in ("Data", "HDF5Data", "Python", "Gram"):  # no data, no code
                        blocks.setdefault(kind.group(1), set()).add(block)
        # Built-in types only: a plugin's type (Gram) would resolve in a worker where an earlier case
        # loaded the plugin, and be unknown in another, so a case's outcome would depend on its worker.
        builtin = [t for t in layer_types() if get_layer_class(t).__module__.startswith("dltrain.layers.")]
        _vocabulary = {"layer_types": sorted(builtin), "enums": enums,
                       "fields": sorted(fields), "lines": sorted(set(lines)),
                       "layer_blocks": {kind: sorted(found) for kind, found in sorted(blocks.items())}}
    return _vocabulary


# --------------------------------------------------------------------------------------------------
# Mutations: each takes (text, rng) and returns (new text, description), or None where it does not apply
# --------------------------------------------------------------------------------------------------
NUMBER = re.compile(r"(?<![\w.+\-])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")
KEY_VALUE = re.compile(r"^(\s*-?\s*)([A-Za-z_]\w*)(\s*:\s*)(.*?)\s*$")


def _content_lines(lines):
    """Indices of lines that are neither blank nor comments."""
    return [i for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith("#")]


def _code_part(line):
    """The line without a trailing comment (a '#' outside quotes starts one)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def _show(line):
    text = line.strip()
    return repr(text if len(text) <= 70 else text[:67] + "...")


def _join(lines, ending):
    return "\n".join(lines) + ending


def _ending(text):
    return "\n" if text.endswith("\n") else ""


def mutate_delete_line(text, rng):
    lines = text.splitlines()
    candidates = _content_lines(lines)
    if not candidates:
        return None
    i = rng.choice(candidates)
    line = lines.pop(i)
    return _join(lines, _ending(text)), f"delete line {i + 1} {_show(line)}"


def mutate_duplicate_line(text, rng):
    lines = text.splitlines()
    candidates = _content_lines(lines)
    if not candidates:
        return None
    i = rng.choice(candidates)
    lines.insert(i, lines[i])
    return _join(lines, _ending(text)), f"duplicate line {i + 1} {_show(lines[i])}"


def mutate_swap_lines(text, rng):
    lines = text.splitlines()
    candidates = _content_lines(lines)
    if len(candidates) < 2:
        return None
    i, j = sorted(rng.sample(candidates, 2))
    lines[i], lines[j] = lines[j], lines[i]
    return _join(lines, _ending(text)), f"swap lines {i + 1} and {j + 1}"


def _replace_number(text, rng, choices, label):
    lines = text.splitlines()
    spots = [(i, m) for i in _content_lines(lines) for m in NUMBER.finditer(_code_part(lines[i]))]
    if not spots:
        return None
    i, m = rng.choice(spots)
    new = rng.choice([c for c in choices if c != m.group()])
    old_line = lines[i]
    lines[i] = old_line[:m.start()] + new + old_line[m.end():]
    return _join(lines, _ending(text)), f"{label} line {i + 1} {_show(old_line)}: {m.group()} -> {new}"


def mutate_extreme_number(text, rng, yaml_file=False):
    return _replace_number(text, rng, EXTREME_NUMBERS + (YAML_EXTREMES if yaml_file else []), "extreme number")


def mutate_small_number(text, rng):
    return _replace_number(text, rng, SMALL_NUMBERS, "number")


def _key_values(lines):
    """(line index, match) of the `key: value` lines that have a value."""
    out = []
    for i in _content_lines(lines):
        m = KEY_VALUE.match(_code_part(lines[i]))
        if m and m.group(4) and not m.group(4).endswith("{"):
            out.append((i, m))
    return out


def _set_value(lines, i, m, value, quoted):
    if quoted and not value.startswith(("[", "{")):
        value = '"' + value.replace('"', '\\"') + '"'
    old_line = lines[i]
    lines[i] = old_line[:m.start(4)] + value + old_line[m.end(4):]
    return old_line


def _unquote(value):
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1], True
    return value, False


def mutate_swap_enum(text, rng):
    """An enum value (pool: MAX, phase: TEST, backend: LMDB, solver_mode: CPU, ...) -> another value
    of the same enum, or any enum value at all."""
    enums = vocabulary()["enums"]
    lines = text.splitlines()
    spots = [(i, m) for i, m in _key_values(lines) if m.group(4) in enums]
    if not spots:
        return None
    i, m = rng.choice(spots)
    pool = enums[m.group(4)] if rng.random() < 0.7 else sorted(enums)
    new = rng.choice([name for name in pool if name != m.group(4)])
    old_line = _set_value(lines, i, m, new, quoted=False)
    return _join(lines, _ending(text)), f"enum line {i + 1} {_show(old_line)} -> {new}"


def mutate_garbage_value(text, rng):
    lines = text.splitlines()
    spots = _key_values(lines)
    if not spots:
        return None
    i, m = rng.choice(spots)
    new = rng.choice(GARBAGE)
    _, quoted = _unquote(m.group(4))
    quoted = quoted if rng.random() < 0.8 else not quoted
    old_line = _set_value(lines, i, m, new, quoted)
    return _join(lines, _ending(text)), f"garbage value line {i + 1} {_show(old_line)} -> {_show(lines[i])}"


def mutate_rename_field(text, rng):
    lines = text.splitlines()
    spots = [(i, KEY_VALUE.match(_code_part(lines[i]))) for i in _content_lines(lines)]
    spots = [(i, m) for i, m in spots if m]
    if not spots:
        return None
    i, m = rng.choice(spots)
    new = rng.choice(vocabulary()["fields"]) if rng.random() < 0.8 else rng.choice(["fuzz_field", "Name", "_"])
    old_line = lines[i]
    lines[i] = old_line[:m.start(2)] + new + old_line[m.end(2):]
    return _join(lines, _ending(text)), f"field line {i + 1} {_show(old_line)}: {m.group(2)} -> {new}"


def mutate_truncate(text, rng):
    if not text:
        return None
    at = 0 if rng.random() < 0.1 else rng.randrange(len(text))
    return text[:at], f"truncate at char {at} of {len(text)}"


def mutate_random_bytes(text, rng):
    """Raw bytes, not necessarily UTF-8: a byte >= 0x80 is carried as its surrogate escape (see write_case)."""
    at = rng.randrange(len(text) + 1)
    junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return text[:at] + junk.decode("utf-8", "surrogateescape") + text[at:], f"insert bytes {junk!r} at char {at}"


def mutate_insert_token(text, rng):
    lines = text.splitlines() or [""]
    i = rng.randrange(len(lines))
    token = rng.choice(INSERTS)
    line = lines[i]
    at = rng.choice([0, len(line), rng.randint(0, len(line))])
    lines[i] = line[:at] + token + line[at:]
    return _join(lines, _ending(text)), f"insert {token!r} in line {i + 1} at column {at + 1}"


def mutate_indent(text, rng):
    lines = text.splitlines()
    candidates = _content_lines(lines)
    if not candidates:
        return None
    i = rng.choice(candidates)
    old_line = lines[i]
    shift = rng.choice([-4, -2, -1, 1, 2, 4])
    lines[i] = " " * shift + old_line if shift > 0 else old_line[min(-shift, len(old_line) - len(old_line.lstrip())):]
    return _join(lines, _ending(text)), f"indent line {i + 1} {_show(old_line)} by {shift}"


def _string_fields(lines, keys):
    """(line index, start, end, value) of each value of the fields `keys`: `type: "X"`, `bottom: [a, b]`, ..."""
    out = []
    for i in _content_lines(lines):
        code = _code_part(lines[i])
        for key in keys:
            for m in re.finditer(r"(?<![\w])" + key + r"\s*:\s*", code):
                rest = code[m.end():]
                if rest.startswith("["):              # YAML flow list: bottom: [a, b]
                    close = rest.find("]")
                    body_start = m.end() + 1
                    body = rest[1:close if close >= 0 else len(rest)]
                    pos = body_start
                    for item in body.split(","):
                        stripped = item.strip()
                        if stripped:
                            start = pos + item.index(stripped)
                            out.append((i, start, start + len(stripped), stripped))
                        pos += len(item) + 1
                    continue
                vm = re.match(r"\"([^\"]*)\"|'([^']*)'|([\w./\-]+)", rest)
                if vm:
                    group = 1 if vm.group(1) is not None else 2 if vm.group(2) is not None else 3
                    start, end = m.end() + vm.start(group), m.end() + vm.end(group)
                    out.append((i, start, end, code[start:end]))
    return out


def _replace_span(lines, i, start, end, new):
    old_line = lines[i]
    lines[i] = old_line[:start] + new + old_line[end:]
    return old_line


def mutate_layer_type(text, rng):
    lines = text.splitlines()
    types = vocabulary()["layer_types"]
    spots = [s for s in _string_fields(lines, ["type"]) if s[3] in types]
    if not spots:
        return None
    i, start, end, old = rng.choice(spots)
    new = rng.choice([t for t in types if t != old])
    old_line = _replace_span(lines, i, start, end, new)
    return _join(lines, _ending(text)), f"layer type line {i + 1} {_show(old_line)}: {old} -> {new}"


def mutate_solver_choice(text, rng):
    """The solver's type or learning-rate policy -> another one (or an unknown one)."""
    lines = text.splitlines()
    spots = [s for s in _string_fields(lines, ["type", "lr_policy"])
             if s[3] in SOLVER_TYPES or s[3] in LR_POLICIES]
    if not spots:
        return None
    i, start, end, old = rng.choice(spots)
    pool = SOLVER_TYPES if old in SOLVER_TYPES else LR_POLICIES
    new = rng.choice([p for p in pool if p != old] + ["Fuzz"])
    old_line = _replace_span(lines, i, start, end, new)
    return _join(lines, _ending(text)), f"solver choice line {i + 1} {_show(old_line)}: {old} -> {new}"


def mutate_blob_name(text, rng):
    lines = text.splitlines()
    spots = _string_fields(lines, ["bottom", "top"])
    if not spots:
        return None
    names = sorted({s[3] for s in spots})
    i, start, end, old = rng.choice(spots)
    others = [n for n in names if n != old]
    new = rng.choice(others) if others and rng.random() < 0.8 else "fuzz_blob"
    old_line = _replace_span(lines, i, start, end, new)
    return _join(lines, _ending(text)), f"blob line {i + 1} {_show(old_line)}: {old} -> {new}"


def mutate_layer_name(text, rng):
    lines = text.splitlines()
    spots = _string_fields(lines, ["name"])
    if len(spots) < 2:
        return None
    i, start, end, old = rng.choice(spots)
    others = sorted({s[3] for s in spots} - {old})
    if not others:
        return None
    new = rng.choice(others)
    old_line = _replace_span(lines, i, start, end, new)
    return _join(lines, _ending(text)), f"name line {i + 1} {_show(old_line)}: {old} -> {new}"


def layer_blocks(lines):
    """(first, last) line indices of each layer: `layer { ... }` in prototxt, a `- ` item of `layer:` in YAML."""
    blocks = []
    i = 0
    while i < len(lines):
        code = _code_part(lines[i])
        if re.match(r"^\s*layers?\s*\{", code):          # prototxt: count braces to the matching close
            depth, j = 0, i
            while j < len(lines):
                part = re.sub(r"\"[^\"]*\"|'[^']*'", "", _code_part(lines[j]))
                depth += part.count("{") - part.count("}")
                if depth <= 0:
                    break
                j += 1
            blocks.append((i, min(j, len(lines) - 1)))
            i = j + 1
            continue
        if re.match(r"^layers?\s*:\s*$", code):           # YAML: the items of the top-level list
            j = i + 1
            item_indent, start = None, None
            while j < len(lines):
                line = lines[j]
                if line.strip() and not line.strip().startswith("#"):
                    indent = len(line) - len(line.lstrip())
                    if line.lstrip().startswith("- ") and (item_indent is None or indent == item_indent):
                        item_indent = indent
                        if start is not None:
                            blocks.append((start, j - 1))
                        start = j
                    elif item_indent is not None and indent <= item_indent and not line.lstrip().startswith("- "):
                        break
                j += 1
            if start is not None:
                blocks.append((start, j - 1))
            i = j
            continue
        i += 1
    return blocks


def mutate_drop_layer(text, rng):
    lines = text.splitlines()
    blocks = layer_blocks(lines)
    if not blocks:
        return None
    first, last = rng.choice(blocks)
    del lines[first:last + 1]
    return _join(lines, _ending(text)), f"drop the layer at lines {first + 1}-{last + 1}"


def mutate_duplicate_layer(text, rng):
    lines = text.splitlines()
    blocks = layer_blocks(lines)
    if not blocks:
        return None
    first, last = rng.choice(blocks)
    lines[last + 1:last + 1] = lines[first:last + 1]
    return _join(lines, _ending(text)), f"duplicate the layer at lines {first + 1}-{last + 1}"


def mutate_move_layer(text, rng):
    lines = text.splitlines()
    blocks = layer_blocks(lines)
    if len(blocks) < 2:
        return None
    (first, last), (to, _) = rng.sample(blocks, 2)
    block = lines[first:last + 1]
    del lines[first:last + 1]
    if to > last:
        to -= len(block)
    lines[to:to] = block
    return _join(lines, _ending(text)), f"move the layer at lines {first + 1}-{last + 1} before line {to + 1}"


def mutate_graft_line(text, rng):
    """A line of another shipped config, inserted anywhere (often a field the message here lacks)."""
    lines = text.splitlines()
    i = rng.randint(0, len(lines))
    graft = rng.choice(vocabulary()["lines"])
    lines.insert(i, graft)
    return _join(lines, _ending(text)), f"insert line {i + 1} {_show(graft)}"


def mutate_graft_layer(text, rng):
    """A layer of another shipped prototxt net, wired to this net's blobs, inserted between two layers:
    other layer types, with their own parameters, on real shapes (in place, now and then)."""
    lines = text.splitlines()
    blocks = layer_blocks(lines)
    if not blocks or not re.search(r"^\s*layers?\s*\{", text, re.M):     # prototxt nets only
        return None
    at = rng.choice([first for first, _ in blocks] + [blocks[-1][1] + 1])
    # Bottoms among the blobs made before that point, mostly: an unknown bottom is a case of its own.
    names = sorted({s[3] for s in _string_fields(lines[:at], ["top"])}) or ["fuzz_blob"]
    kinds = vocabulary()["layer_blocks"]
    block = rng.choice(kinds[rng.choice(sorted(kinds))])
    bottoms = []

    def new_bottom(m):
        bottoms.append(rng.choice(names))
        return f'{m.group(1)}"{bottoms[-1]}"'

    def new_top(m):
        roll = rng.random()
        name = (bottoms[0] if roll < 0.3 and bottoms else rng.choice(names) if roll < 0.4
                else f"graft_{rng.randrange(1000)}")
        return f'{m.group(1)}"{name}"'

    block = re.sub(r'(bottom\s*:\s*)"[^"]*"', new_bottom, block)
    block = re.sub(r'(top\s*:\s*)"[^"]*"', new_top, block)
    block = re.sub(r'(name\s*:\s*)"([^"]*)"', lambda m: f'{m.group(1)}"graft_{m.group(2)}"', block, count=1)
    lines[at:at] = block.splitlines()
    kind = re.search(r'type:\s*"(\w+)"', block)
    wiring = " ".join(re.findall(r'(?:bottom|top):\s*"[^"]*"', block))
    return _join(lines, _ending(text)), f"graft a {kind.group(1) if kind else '?'} layer at line {at + 1}: {wiring}"


# (mutation, weight, applies to: "net", "solver" or "any")
MUTATIONS = [
    (mutate_delete_line, 2, "any"),
    (mutate_duplicate_line, 1, "any"),
    (mutate_swap_lines, 1, "any"),
    (mutate_extreme_number, 4, "any"),
    (mutate_small_number, 2, "any"),
    (mutate_swap_enum, 1.5, "any"),
    (mutate_garbage_value, 1.5, "any"),
    (mutate_rename_field, 1, "any"),
    (mutate_truncate, 0.7, "any"),
    (mutate_random_bytes, 0.5, "any"),
    (mutate_insert_token, 1, "any"),
    (mutate_indent, 0.5, "any"),
    (mutate_graft_line, 1, "any"),
    (mutate_solver_choice, 1.5, "solver"),
    (mutate_layer_type, 2.5, "net"),
    (mutate_blob_name, 2, "net"),
    (mutate_layer_name, 1, "net"),
    (mutate_drop_layer, 1.5, "net"),
    (mutate_duplicate_layer, 0.5, "net"),
    (mutate_move_layer, 0.7, "net"),
    (mutate_graft_layer, 2, "net"),
]


def mutation_names():
    return [fn.__name__[len("mutate_"):] for fn, _, _ in MUTATIONS]


def mutate(text, rng, kind, yaml_file, only=None):
    """Apply one random mutation that fits (kind: 'net' or 'solver'; `only`: a list of mutation names
    to choose from, for runs by hand); returns (text, description)."""
    pool = [(fn, w) for fn, w, applies in MUTATIONS if applies in ("any", kind)
            and (not only or fn.__name__[len("mutate_"):] in only)]
    if not pool:
        return text, "no mutation applied"
    for _ in range(50):
        fn = rng.choices([fn for fn, _ in pool], [w for _, w in pool])[0]
        result = fn(text, rng, yaml_file=True) if fn is mutate_extreme_number and yaml_file else fn(text, rng)
        if result is not None:
            return result
    return text, "no mutation applied"


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------
def _absolute_sources(text, lists_dir):
    """Data paths made absolute (the case runs in its own folder); HDF5 list files get absolute copies."""
    def fix(m):
        rel = m.group(2)
        path = os.path.join(ROOT, rel)
        if rel.endswith(".txt") and os.path.isfile(path):       # an HDF5 list: its entries are relative too
            copy = os.path.join(lists_dir, rel.replace("/", "_"))
            if not os.path.exists(copy):            # written whole, then renamed: workers share the folder
                with open(path, encoding="utf-8") as f:
                    entries = [os.path.join(ROOT, e.strip()) for e in f if e.strip()]
                with open(f"{copy}.{os.getpid()}", "w", encoding="utf-8") as f:
                    f.write("\n".join(entries) + "\n")
                os.replace(f"{copy}.{os.getpid()}", copy)
            path = copy
        return m.group(1) + path
    return re.sub(r"(source:\s*[\"']?)(configs/[\w./\-]+)", fix, text)


def _set_field_line(text, field, value, yaml_file):
    line = f"{field}: {value}" if yaml_file else f'{field}: "{value}"'
    return re.sub(r"(?m)^" + field + r"\s*:.*$", line.replace("\\", "\\\\"), text, count=1)


def _choose_count(rng):
    return rng.choices([1, 2, 3], [0.6, 0.3, 0.1])[0]


def base_case(base, case_id, lists_dir):
    """The unmutated case of `base`: its files (paths made absolute, snapshots kept in the case's folder)
    and its command line."""
    case = {"id": case_id, "seed": None, "base": base.name, "command": base.command, "mutations": [],
            "files": {}, "plugin": getattr(base, "plugin", None), "only": None}
    net_name = "net" + os.path.splitext(base.net)[1]
    net_text = _absolute_sources(_read(base.net), lists_dir)
    if base.command == "time" and base.batch is not None:
        net_text = re.sub(r"(input_param\s*\{\s*shape\s*:?\s*\{\s*dim:\s*)\d+", rf"\g<1>{base.batch}", net_text)
    case["files"][net_name] = net_text
    if base.command == "train":
        solver_name = "solver" + os.path.splitext(base.solver)[1]
        yaml_solver = solver_name.endswith((".yaml", ".yml"))
        solver_text = _set_field_line(_read(base.solver), "net", net_name, yaml_solver)
        case["files"][solver_name] = _set_field_line(solver_text, "snapshot_prefix", base.name, yaml_solver)
        case["argv"], case["solver"] = ["train", "--solver", solver_name], solver_name
        for rel in base.copies:
            case["files"][os.path.basename(rel)] = _read(rel)
    else:
        case["argv"], case["solver"] = ["time", "--model", net_name, "--iterations", "1", "--phase", base.phase], None
    if case["plugin"]:
        case["argv"] = ["--plugin", case["plugin"]] + case["argv"]
    case["net"] = net_name
    return case


def build_case(seed, case_id, lists_dir, only=None):
    """The case `case_id` of `seed`: its base, command, mutations and file texts (before solver capping)."""
    rng = random.Random(f"{seed}/{case_id}")
    base = rng.choices(BASES, [b.weight for b in BASES])[0]
    case = base_case(base, case_id, lists_dir)
    case["seed"], case["only"] = seed, only
    files = case["files"]
    targets = ["net"]
    if base.command == "train":
        targets = rng.choices([["net"], ["solver"], ["solver", "net"]], [0.65, 0.25, 0.1])[0]
    for _ in range(_choose_count(rng)):
        for target in targets:
            name = case[target]
            files[name], what = mutate(files[name], rng, target, name.endswith((".yaml", ".yml")), only)
            case["mutations"].append(f"{target}: {what}")
    return case


def write_case(case, folder):
    """Write the case's files into `folder` (the raw bytes a mutation inserted go out as they were)."""
    for name, text in case["files"].items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(text.encode("utf-8", "surrogateescape"))


def cap_solver(case, folder):
    """Where the mutated solver still parses, cap the run's length (as the module docstring says) and
    keep snapshots in `folder`; rewrites the file only if something changed.  Returns what was capped."""
    if case["command"] != "train":
        return []
    from dlcore.config import load_solver, to_prototxt, to_yaml
    name = case["solver"]
    path = os.path.join(folder, name)
    try:
        param = load_solver(path)
    except Exception:      # the CLI meets the same text: its error (or traceback) is what the case checks
        return []
    capped = []
    for field in ("max_iter", "test_interval", "iter_size"):
        if getattr(param, field) > CAPS[field]:
            capped.append(f"{field} {getattr(param, field)} -> {CAPS[field]}")
            setattr(param, field, CAPS[field])
    for i, value in enumerate(param.test_iter):
        if value > CAPS["test_iter"]:
            capped.append(f"test_iter[{i}] {value} -> {CAPS['test_iter']}")
            param.test_iter[i] = CAPS["test_iter"]
    prefix = param.snapshot_prefix
    if os.path.isabs(prefix) or ".." in prefix.split("/"):
        capped.append(f"snapshot_prefix {prefix!r} -> {case['base']!r}")
        param.snapshot_prefix = case["base"]
    if capped:
        text = to_yaml(param) if name.endswith((".yaml", ".yml")) else to_prototxt(param)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return capped


# --------------------------------------------------------------------------------------------------
# Running a case in-process, and checking its outcome
# --------------------------------------------------------------------------------------------------
class CaseTimeout(BaseException):
    """Raised by SIGALRM in a case that ran past its limit (a BaseException: no `except Exception` eats it)."""


def _alarm_handler(stream, limit_s, heartbeat):
    """SIGALRM every limit_s: a case that logged since the last one goes on (up to its logging limit;
    `heartbeat()` tells the parent it lives), one that did not is hung."""
    seen = [0]
    deadline = time.monotonic() + LOGGING_LIMIT_FACTOR * limit_s

    def on_alarm(signum, frame):
        size = stream.tell()
        if size > seen[0] and time.monotonic() < deadline:
            seen[0] = size
            if heartbeat:
                heartbeat()
            return
        raise CaseTimeout()
    return on_alarm


ERROR_PREFIX = "dltrain: error:"
INTERNAL_ERROR_PREFIX = "dltrain: internal error:"       # main()'s line for an unexpected exception
TRACEBACK_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
GLOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} ")


def check_case(result):
    """The failure of a finished case as one short phrase, or None if it ended as it must."""
    err = result.get("stderr", "")
    if result.get("hang"):
        return (f"hang: silent for {result['limit_s']:g} s, or running for {LOGGING_LIMIT_FACTOR} times that "
                f"({len(err.splitlines())} lines logged)")
    if result.get("escaped"):
        return f"traceback: {result['escaped']} escaped main()"
    if "Traceback (most recent call last)" in err or "Exception in thread" in err:
        return "traceback printed on stderr"
    lines = err.splitlines()
    internal = [ln for ln in lines if ln.startswith(INTERNAL_ERROR_PREFIX)]
    if internal:
        return "internal error: " + internal[-1][len(INTERNAL_ERROR_PREFIX):].split(":")[0].strip()
    error_at = [i for i, ln in enumerate(lines) if ln.startswith(ERROR_PREFIX)]
    code = result.get("exit")
    if error_at and code == 0:
        return "exit 0 after printing an error"
    if code not in (0, None) and not error_at:
        return f"exit {code} without a '{ERROR_PREFIX}' line"
    if error_at:
        after = [ln for ln in lines[error_at[-1] + 1:]
                 if ln.strip() and not ln.startswith("dltrain: ") and not GLOG_LINE.match(ln)]
        if after:
            return "the error message spans several lines"
    return None


def _run_main(case, folder, limit_s, argv, heartbeat=None):
    """Write the case into `folder` and run `main(argv)` there, with stdout/stderr captured and a time
    limit; returns what happened (exit, hang or escaped), the capping done, and the captured text."""
    from dltrain.cli.main import main
    os.makedirs(folder, exist_ok=True)
    write_case(case, folder)
    outcome = {}
    saved = (sys.stdout, sys.stderr, os.getcwd())
    stream = io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm_handler(stream, limit_s, heartbeat))
    try:
        os.chdir(folder)
        signal.setitimer(signal.ITIMER_REAL, limit_s, limit_s)
        outcome["capped"] = cap_solver(case, folder)
        sys.stdout = sys.stderr = stream
        outcome["exit"] = main(list(argv))
    except CaseTimeout:
        outcome["hang"] = True
    except BaseException as err:      # anything out of main() is what a user would see as a traceback
        outcome["escaped"] = f"{type(err).__name__}: {str(err)[:200]}"
        stream.write("".join(traceback.format_exception(type(err), err, err.__traceback__)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if sys.stderr is not stream and hasattr(sys.stderr, "close"):
            sys.stderr.close()        # a log tee main() left in place
        sys.stdout, sys.stderr = saved[0], saved[1]
        os.chdir(saved[2])
    return outcome, stream.getvalue()


def run_case(case, folder, limit_s=CASE_LIMIT_S, heartbeat=None):
    """Run the case in `folder` (see _run_main) and judge it.  main() turns an unexpected exception into
    an 'internal error' line: such a case runs once more with --debug, for the traceback's last lines."""
    result = {k: case[k] for k in ("id", "seed", "base", "command", "mutations", "only")}
    result["argv"] = case["argv"]
    result["limit_s"] = limit_s
    start = time.perf_counter()
    outcome, result["stderr"] = _run_main(case, folder, limit_s, case["argv"], heartbeat)
    result.update(outcome)
    result["elapsed_s"] = round(time.perf_counter() - start, 3)
    result["threads"] = threading.active_count()
    result["failure"] = check_case(result)
    if INTERNAL_ERROR_PREFIX in result["stderr"]:
        _, debug_stderr = _run_main(case, folder + "-debug", limit_s, ["--debug"] + case["argv"], heartbeat)
        shutil.rmtree(folder + "-debug", ignore_errors=True)
        result["stderr"] += "\n--- the same case with --debug ---\n" + debug_stderr
    return result


def summarize(result, tail_lines=4):
    """The result without its whole stderr: the last few lines are enough to see what happened."""
    err = result.get("stderr", "")
    out = {k: v for k, v in result.items() if k != "stderr"}
    out["tail"] = [ln[:300] for ln in err.splitlines()[-tail_lines:]]
    # The innermost frame in dltrain's own code (not NumPy's or the harness's) says whose bug it is.
    frames = [f for f in TRACEBACK_FRAME.findall(err)
              if f[0].startswith(ROOT) and "site-packages" not in f[0] and f[0] != THIS_FILE]
    if result.get("failure") and frames:
        path, line, function = frames[-1]
        exception = result.get("escaped") or next(
            (ln for ln in reversed(err.splitlines()) if re.match(r"^\w+(Error|Exception|Exit)\b", ln)), "")
        out["where"] = f"{os.path.relpath(path, ROOT)}:{line} in {function}: {exception.split(':')[0]}"
    return out


# --------------------------------------------------------------------------------------------------
# The worker (a subprocess running many cases) and the parent that drives workers
# --------------------------------------------------------------------------------------------------
def prepare_process(memory_limit=True):
    """What a process running cases needs: the Gram plugin importable, and a cap on its memory."""
    if GRAM_FOLDER not in sys.path:
        sys.path.insert(0, GRAM_FOLDER)
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def _send(message):
    """One JSON line to the parent, on the worker's own stdout (a case's output is captured apart)."""
    sys.__stdout__.write(json.dumps(message) + "\n")
    sys.__stdout__.flush()


def worker_main(seed, ids, workdir, limit_s, keep=False, only=None):
    """Run cases in this process, sending a JSON line at each case's start and one with its result."""
    prepare_process()
    lists_dir = os.path.join(workdir, "lists")
    os.makedirs(lists_dir, exist_ok=True)
    for case_id in ids:
        _send({"start": case_id})
        folder = os.path.join(workdir, f"case{case_id}")
        case = build_case(seed, case_id, lists_dir, only)
        result = run_case(case, folder, limit_s, heartbeat=lambda: _send({"alive": case_id}))
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        _send({"result": summarize(result)})
        if result.get("hang"):
            return 3          # the process state after an interrupted case is not to be trusted
    return 0


def warm_up_main(workdir, limit_s):
    """Run every base config unmutated, printing a result line for each (see warm_up)."""
    prepare_process()
    lists_dir = os.path.join(workdir, "lists")
    os.makedirs(lists_dir, exist_ok=True)
    for base in BASES:
        folder = os.path.join(workdir, f"base-{base.name}")
        result = run_case(base_case(base, f"base {base.name}", lists_dir), folder, limit_s)
        if not result["failure"] and result.get("exit") != 0:
            result["failure"] = f"the unmutated config failed (exit {result.get('exit')})"
        shutil.rmtree(folder, ignore_errors=True)
        _send({"result": summarize(result)})
    return 0


def warm_up(workdir, limit_s=WARM_UP_LIMIT_S):
    """Run each shipped config unmutated, in one worker, before the cases.  Each must run cleanly (exit
    0) under the harness; and this first run compiles the kernels they use into Numba's on-disk cache,
    so that the cases' time limit measures the cases, not the compiler (a cold cache costs a minute).
    Returns the results, one per base."""
    os.makedirs(workdir, exist_ok=True)
    cmd = [sys.executable, THIS_FILE, "--warm-up", "--workdir", workdir, "--limit", str(limit_s)]
    try:
        proc = subprocess.run(cmd, capture_output=True, env=_worker_env(), cwd=workdir, timeout=2 * limit_s)
        out, err, why = proc.stdout, proc.stderr, f"the worker ended (exit {proc.returncode})"
    except subprocess.TimeoutExpired as timeout:
        out, err, why = timeout.stdout or b"", timeout.stderr or b"", f"the worker hung ({2 * limit_s} s)"
    results = [json.loads(line)["result"] for line in out.splitlines() if line.startswith(b'{"result"')]
    done = {r["base"] for r in results}
    tail = err[-2000:].decode("utf-8", "replace").splitlines()[-4:]
    for base in BASES:
        if base.name not in done:
            results.append({"id": f"base {base.name}", "base": base.name, "command": base.command,
                            "mutations": [], "failure": f"crash: {why} before this config ran", "tail": tail})
    return results


def _worker_env():
    """The workers' environment: the same outcome on any machine."""
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ""        # solver_mode: GPU falls back to the CPU everywhere
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def _run_worker_queue(seed, ids, workdir, limit_s, results, progress=None, only=None):
    """Drive workers through `ids` (in order), restarting one that dies or hangs; results go to `results`."""
    remaining = list(ids)
    n = 0
    while remaining:
        n += 1
        log_path = os.path.join(workdir, f"worker{remaining[0]}_{n}.stderr")
        cmd = [sys.executable, THIS_FILE, "--worker", "--seed", str(seed), "--workdir", workdir,
               "--limit", str(limit_s), "--ids", ",".join(map(str, remaining))] + (
                   ["--only", ",".join(only)] if only else [])
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=_worker_env(), cwd=workdir)
        lines = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout] + [lines.put(None)],
                                  daemon=True)
        reader.start()
        current, answered = None, False
        # Hard limit per case: the worker's own alarm cannot stop a Numba kernel, this can.  The first case
        # also pays for imports and loading compiled kernels.
        hard_limit = limit_s + 60
        while True:
            try:
                line = lines.get(timeout=hard_limit)
            except queue.Empty:
                proc.kill()
                proc.wait()
                if current is not None:
                    results.append(_lost_case(seed, current, "hang", f"no answer from the worker after "
                                              f"{hard_limit} s (killed)", log_path, only))
                    remaining.remove(current)
                break
            if line is None:
                code = proc.wait()
                if current is None and remaining and not answered:
                    current = remaining[0]       # died before its first case: charge that one, go on
                if current is not None:
                    results.append(_lost_case(seed, current, "crash", f"the worker died (exit {code})", log_path,
                                              only))
                    remaining.remove(current)
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue           # something in the case wrote to fd 1 directly
            if "start" in message:
                current = message["start"]
            elif "result" in message:
                answered = True
                results.append(message["result"])
                remaining.remove(message["result"]["id"])
                current = None
                if progress:
                    progress(message["result"])
        proc.stdout.close()


def _lost_case(seed, case_id, kind, why, log_path, only=None):
    """The result of a case whose worker died or hung: rebuilt here, with the worker's last stderr lines."""
    with open(log_path, "rb") as f:
        tail = f.read()[-2000:].decode("utf-8", "replace").splitlines()[-4:]
    with tempfile.TemporaryDirectory() as lists_dir:
        case = build_case(seed, case_id, lists_dir, only)
    return {"id": case_id, "seed": seed, "base": case["base"], "command": case["command"],
            "mutations": case["mutations"], "only": only, "argv": case["argv"], "exit": None, "elapsed_s": None,
            "failure": f"{kind}: {why}", "tail": tail}


def run_cases(seed, ids, workdir, workers=2, limit_s=CASE_LIMIT_S, progress=None, only=None):
    """Run the cases `ids` of `seed` in `workers` parallel worker processes; the results, sorted by id.
    `only`: restrict the mutations to these names (see mutation_names)."""
    os.makedirs(workdir, exist_ok=True)
    results = []
    threads = [threading.Thread(target=_run_worker_queue,
                                args=(seed, ids[w::workers], workdir, limit_s, results, progress, only))
               for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(results, key=lambda r: r["id"])


def _main(argv=None):
    parser = argparse.ArgumentParser(description="Worker side of the dltrain fuzz test (see tests/test_fuzz.py).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--worker", action="store_true", help="run the cases --ids of --seed")
    mode.add_argument("--warm-up", action="store_true", help="run every shipped config unmutated")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--ids", default="")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--limit", type=float, default=CASE_LIMIT_S)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--only", help="comma-separated mutation names")
    args = parser.parse_args(argv)
    if args.warm_up:
        return warm_up_main(args.workdir, args.limit)
    ids = [int(x) for x in args.ids.split(",") if x]
    only = args.only.split(",") if args.only else None
    return worker_main(args.seed, ids, args.workdir, args.limit, args.keep, only)


if __name__ == "__main__":
    sys.exit(_main())
