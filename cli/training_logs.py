"""Reading training logs: dltrain's and Caffe's glog lines, and dltrain's JSONL log.

:func:`read_log` returns a :class:`TrainingLog`: the curves ``dltrain plot``
draws, and the two tables of Caffe's ``tools/extra/parse_log.py``
(``LOG.train`` / ``LOG.test``), which :func:`write_csv_tables` writes.

The glog lines read (Caffe's solver prints the same ones as dltrain's;
Caffe 1.0 adds ``(x iter/s, ys/100 iters)`` to the loss line)::

    I0712 12:10:37.058123  4242 solver.cpp:218] Iteration 100, loss = 0.31
    I0712 12:10:37.058200  4242 solver.cpp:237]     Train net output #0: loss = 0.31 (* 1 = 0.31 loss)
    I0712 12:10:37.058301  4242 sgd_solver.cpp:105] Iteration 100, lr = 0.01
    I0712 12:10:39.000000  4242 solver.cpp:330] Iteration 500, Testing net (#0)
    I0712 12:10:39.100000  4242 solver.cpp:397]     Test net output #0: accuracy = 0.98

The line's prefix and the file's first line are :mod:`dlcore.log`'s
(``LINE``, ``FILE_HEADER``), which writes them; the JSONL records are those
``solvers/training_log.py``'s ``JsonLog`` writes (that module is not imported
here: it would load the whole training stack for a plot).

Seconds are counted, as parse_log.py counts them, from the time stamp of
the ``Solving NET`` line.  glog's stamps carry no year: it comes from the
``Log file created at: YYYY/MM/DD`` header glog writes (else from the
file's modification time), and a month smaller than the previous line's
starts the next year; a new day is in the stamp itself.
"""
import csv
import json
import math
import os
import re
from datetime import datetime

from dlcore import log as glog
from dlcore.errors import ConfigError

LOG_CREATED = re.compile("^" + re.escape(glog.FILE_HEADER) + r"(\d{4})/")
# parse_log.py's row key: the last "Iteration N" seen anywhere on a line.
ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_LOSS = re.compile(r"^Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")
LEARNING_RATE = re.compile(r"^Iteration (\d+), lr = (\S+)")
TESTING_NET = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)")
NET_OUTPUT = re.compile(r"^\s*(Train|Test) net output #(\d+): (\S+) = (\S+)")


class Series:
    """One curve: iterations, seconds since the start (NaN when unknown), values."""

    def __init__(self):
        self.iters, self.seconds, self.values = [], [], []

    def add(self, iteration, seconds, value):
        self.iters.append(iteration)
        self.seconds.append(seconds)
        self.values.append(value)

    def __len__(self):
        return len(self.values)


class TrainingLog:
    """What one log holds.

    ``train_loss``: the displayed (smoothed) loss; ``learning_rate``; ``train_outputs``
    and ``test_outputs``: {label: Series}, a test net other than #0 labelled
    ``"NAME (test net #k)"``; ``train_rows`` / ``test_rows``: parse_log.py's tables
    (dicts whose first keys are NumIters, Seconds, LearningRate).
    """

    def __init__(self, path, kind):
        self.path = path
        self.kind = kind            # "glog" or "jsonl"
        self.train_loss = Series()
        self.learning_rate = Series()
        self.train_outputs = {}
        self.test_outputs = {}
        self.train_rows = []
        self.test_rows = []

    @property
    def name(self):
        return os.path.basename(self.path)

    def is_empty(self):
        return not (len(self.train_loss) or len(self.learning_rate) or self.train_outputs or self.test_outputs)

    def add_output(self, phase, test_net, label, iteration, seconds, value):
        outputs = self.train_outputs if phase == "train" else self.test_outputs
        if phase == "test" and test_net:
            label = f"{label} (test net #{test_net})"
        outputs.setdefault(label, Series()).add(iteration, seconds, value)


def read_log(path):
    """The TrainingLog of ``path`` (JSONL if its first non-blank line is a JSON object, else glog lines)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        mtime = os.path.getmtime(path)
    except OSError as err:
        raise ConfigError(f"cannot read the training log: {err.strerror or err}", path=path) from None
    first = next((line.strip() for line in lines if line.strip()), "")
    log = _read_jsonl(path, lines) if first.startswith("{") else _read_glog(path, lines, mtime)
    if log.is_empty():
        raise ConfigError("no training progress found in this log (expected dltrain's or Caffe's glog lines "
                          "such as 'Iteration 100, loss = 0.3', or dltrain's JSONL log)", path=path)
    return log


def _number(text):
    """A number as printed by C++ or Python (``nan``, ``-nan``, ``inf`` included); None if it is not one."""
    try:
        return float(text)
    except ValueError:
        return None


# --- glog --------------------------------------------------------------------------------------------

def _stamped(lines, year):
    """(time stamp or None, message) per line.  glog stamps carry month and day but no year: a month
    smaller than the previous stamp's starts the next year."""
    out = []
    last_month = None
    for line in lines:
        match = glog.LINE.match(line)
        if not match:
            out.append((None, line))
            continue
        month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 6))
        if last_month is not None and month < last_month:
            year += 1                   # past New Year's Eve
        last_month = month
        micro = int(match.group(6)[:6].ljust(6, "0"))
        try:
            moment = datetime(year, month, day, hour, minute, second, micro)
        except ValueError:              # Feb 29 of a year guessed wrong, or a garbled stamp
            moment = None
        out.append((moment, match.group(7)))
    return out


class _Block:
    """The output lines of one display or one test: parse_log.py makes one table row of each."""

    def __init__(self, phase, test_net, iteration, seconds, rate):
        self.phase, self.test_net = phase, test_net
        self.iteration, self.seconds, self.rate = iteration, seconds, rate
        self.outputs = []           # (name, value)
        self.last_index = -1

    def labelled(self):
        """(label, value) per output; a name printed several times (an output blob of several
        values) is labelled name[0], name[1], ..."""
        counts = {}
        for name, _ in self.outputs:
            counts[name] = counts.get(name, 0) + 1
        seen = {}
        out = []
        for name, value in self.outputs:
            if counts[name] > 1:
                k = seen.get(name, 0)
                seen[name] = k + 1
                name = f"{name}[{k}]"
            out.append((name, value))
        return out


def _read_glog(path, lines, mtime):
    log = TrainingLog(path, "glog")
    year = datetime.fromtimestamp(mtime).year
    for line in lines[:5]:
        created = LOG_CREATED.match(line)
        if created:
            year = int(created.group(1))
            break
    stamped = _stamped(lines, year)
    # The start: the "Solving NET" line's stamp (parse_log.py's), else the first stamp (a log cut from
    # the middle of a run).
    stamps = [moment for moment, _ in stamped if moment is not None]
    start = next((moment for moment, message in stamped
                  if moment is not None and message.startswith("Solving ")), stamps[0] if stamps else None)
    iteration = None            # parse_log.py's: the last "Iteration N" seen; rows only after the first
    rate = math.nan             # parse_log.py's: the last "lr = X" seen
    test_net = 0
    block = None

    def close(current):
        if current is None:
            return
        row = {"NumIters": float(current.iteration), "Seconds": current.seconds, "LearningRate": current.rate}
        for label, value in current.labelled():
            row[label] = value
            log.add_output(current.phase, current.test_net, label, current.iteration, current.seconds, value)
        (log.train_rows if current.phase == "train" else log.test_rows).append(row)

    for moment, message in stamped:
        for found in ITERATION.finditer(message):
            iteration = int(found.group(1))
        if iteration is None:
            continue
        seconds = (moment - start).total_seconds() if moment is not None and start is not None else math.nan

        found = LEARNING_RATE.match(message)
        if found:
            value = _number(found.group(2))
            if value is not None:
                rate = value
                log.learning_rate.add(int(found.group(1)), seconds, value)
            continue
        found = TRAIN_LOSS.match(message)
        if found:
            value = _number(found.group(2))
            if value is not None:
                log.train_loss.add(int(found.group(1)), seconds, value)
            continue
        found = TESTING_NET.match(message)
        if found:
            test_net = int(found.group(2))
            continue
        found = NET_OUTPUT.match(message)
        if found:
            phase = found.group(1).lower()
            index, name, value = int(found.group(2)), found.group(3), _number(found.group(4))
            if value is None:
                continue
            # A new row: another phase or iteration, or the outputs counting from #0 again.
            if block is None or block.phase != phase or block.iteration != iteration or index <= block.last_index:
                close(block)
                block = _Block(phase, test_net if phase == "test" else 0, iteration, seconds, rate)
            block.outputs.append((name, value))
            block.last_index = index
    close(block)

    for rows in (log.train_rows, log.test_rows):
        # parse_log.py: the rate is printed after a display's outputs, so the first row has none yet.
        if len(rows) > 1 and math.isnan(rows[0]["LearningRate"]):
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return log


# --- JSONL ---------------------------------------------------------------------------------------------

def _json_value(value):
    """A JSONL number (NaN and infinities are written as strings); None if it is not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return _number(value) if isinstance(value, str) else None


def _read_jsonl(path, lines):
    log = TrainingLog(path, "jsonl")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    run_start = None
    for position, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except ValueError:
            if position == len(numbered) - 1:
                break               # a last record cut off by a killed run
            raise ConfigError("not a JSON record (a dltrain JSONL log has one object per line)",
                              path=path, line=number) from None
        if not isinstance(record, dict) or "iter" not in record or record.get("phase") not in ("train", "test"):
            raise ConfigError("not a dltrain training record (expected 'iter' and 'phase')", path=path, line=number)
        iteration = int(record["iter"])
        elapsed = _json_value(record.get("time"))
        wall = _json_value(record.get("wall_time"))
        if wall is not None and elapsed is not None:
            # Wall-clock seconds since the first run began: a resumed run (appended) keeps counting.
            if run_start is None:
                run_start = wall - elapsed
            seconds = round(wall - run_start, 6)
        else:
            seconds = math.nan if elapsed is None else elapsed
        phase = record["phase"]
        loss, rate = _json_value(record.get("loss")), _json_value(record.get("lr"))
        if phase == "train":
            if loss is not None:
                log.train_loss.add(iteration, seconds, loss)
            if rate is not None:
                log.learning_rate.add(iteration, seconds, rate)
        test_net = int(record.get("net") or 0) if phase == "test" else 0
        row = {"NumIters": float(iteration), "Seconds": seconds,
               "LearningRate": math.nan if rate is None else rate}
        for name, value in (record.get("outputs") or {}).items():
            values = value if isinstance(value, list) else [value]
            for k, item in enumerate(values):
                label = f"{name}[{k}]" if isinstance(value, list) else name
                item = _json_value(item)
                if item is None:
                    continue
                row[label] = item
                log.add_output(phase, test_net, label, iteration, seconds, item)
        (log.train_rows if phase == "train" else log.test_rows).append(row)
    return log


# --- parse_log.py's tables -----------------------------------------------------------------------------

def write_csv_tables(log, folder, delimiter=","):
    """Write ``FOLDER/NAME.train`` and ``FOLDER/NAME.test`` as parse_log.py does (a header of NumIters,
    Seconds, LearningRate and the outputs' names, then one row per display or test; Excel's CSV
    dialect).  A table without rows is not written, as parse_log.py skips it.  Returns the paths
    written."""
    written = []
    for suffix, rows in ((".train", log.train_rows), (".test", log.test_rows)):
        if not rows:
            continue
        path = os.path.join(folder, log.name + suffix)
        columns = []
        for row in rows:
            columns.extend(key for key in row if key not in columns)
        try:
            os.makedirs(folder or ".", exist_ok=True)
            with open(path, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, delimiter=delimiter)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow([repr(row[key]) if key in row else "" for key in columns])
        except OSError as err:
            raise ConfigError(f"cannot write the table: {err.strerror or err}", path=path) from None
        written.append(path)
    return written
