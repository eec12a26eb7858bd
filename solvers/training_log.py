"""What training writes besides snapshots: glog lines, a JSON-lines log, a live progress line.

- :func:`info` writes one glog-format line (``I1126 04:11:22.703542  4242
  solver.py:NN] ...``, :mod:`dlcore.log`'s format, naming the caller), first
  clearing the progress line if one is drawn.
- :class:`JsonLog` appends one JSON object per display / test result to
  ``<snapshot_prefix>_log.jsonl``:
  ``{"iter": 100, "phase": "train", "loss": 0.31, "lr": 0.01,
  "outputs": {"loss": 0.31}, "time": 12.5}`` (``time``: seconds since the
  run started; ``wall_time``: Unix time).  Test records carry ``"net"``
  (the test net's index) as well.
- :class:`Progress` redraws one status line in place (``\\r``) on a
  terminal: iteration, loss, learning rate, iterations per second, ETA.
  It draws nothing when stderr is not a TTY.
"""
import json
import math
import os
import sys
import time

import numpy as np

from dlcore import log as dlcore_log
from dlcore.errors import DLTrainError

__all__ = ["info", "warning", "JsonLog", "Progress", "fmt"]

_active_progress = None


def fmt(value):
    """A number as C++'s default ostream prints it (6 significant digits, %g)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "%g" % value


def _clear_progress():
    if _active_progress is not None:
        _active_progress.clear()


def _emit(severity, message):
    """One glog line (dlcore.log's) naming the caller of info/warning, after clearing the progress line."""
    _clear_progress()
    dlcore_log._emit(severity, message, depth=4)      # _prefix, log._emit, this, info/warning, their caller


def info(message):
    _emit("I", message)


def warning(message):
    _emit("W", message)


def _json_number(value):
    """A JSON number: a float32 value as its shortest repr (0.01, not
    0.009999999776); NaN and inf (which JSON lacks) as strings."""
    if isinstance(value, np.floating):
        text = str(value)
        value = float(text) if math.isfinite(value) else float(value)
    value = float(value)
    return value if math.isfinite(value) else str(value)


class JsonLog:
    """Appends JSON records to ``path`` (its folder is created if needed).

    Opened lazily on the first record, line by line, so a run that fails
    before its first display leaves no file, and a resumed run appends.
    """

    def __init__(self, path, start_time=None):
        self.path = path
        self.start_time = time.time() if start_time is None else start_time
        self._fd = None             # unbuffered appends: a record is on disk (or cut off) when write returns

    def write(self, iter, phase, loss=None, lr=None, outputs=None, **extra):
        if not self.path:
            return
        record = {"iter": int(iter), "phase": phase}
        record.update(extra)
        record["loss"] = None if loss is None else _json_number(loss)
        record["lr"] = None if lr is None else _json_number(lr)
        record["outputs"] = {name: (_json_number(v) if not isinstance(v, list) else [_json_number(x) for x in v])
                             for name, v in (outputs or {}).items()}
        now = time.time()
        record["time"] = round(now - self.start_time, 6)
        record["wall_time"] = round(now, 6)
        data = (json.dumps(record) + "\n").encode("utf-8")
        try:
            if self._fd is None:
                folder = os.path.dirname(self.path)
                if folder:
                    os.makedirs(folder, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            end = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError:
                # A full disk: cut the half-written record off, so the lines before stay a valid log.
                try:
                    os.ftruncate(self._fd, end)
                except OSError:
                    pass
                raise
        except OSError as err:
            raise DLTrainError(f"cannot write the training log '{self.path}': {err.strerror or err}") from None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class Progress:
    """A status line redrawn in place on a terminal; silent otherwise."""

    def __init__(self, start_iter, max_iter, stream=None, min_interval=0.1, enabled=None):
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.start_iter = start_iter
        self.max_iter = max_iter
        self.min_interval = min_interval
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self._rate_iter, self._rate_time = start_iter, self._t0
        self._speed = None

    def __enter__(self):
        global _active_progress
        if self.enabled:
            _active_progress = self
        return self

    def __exit__(self, *exc):
        global _active_progress
        self.clear()
        if _active_progress is self:
            _active_progress = None

    def update(self, iter, loss, lr):
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last_draw < self.min_interval and iter < self.max_iter:
            return
        done = iter - self.start_iter
        elapsed = now - self._t0
        if done > 0 and elapsed > 0:
            self._speed = done / elapsed
        speed = self._speed
        parts = [f"iter {iter}/{self.max_iter}", f"loss {fmt(loss)}"]
        if lr is not None:
            parts.append(f"lr {fmt(lr)}")
        if speed:
            parts.append(f"{speed:.3g} it/s")
            left = max(self.max_iter - iter, 0) / speed
            parts.append("ETA " + _duration(left))
        line = "  ".join(parts)
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self._drawn = True
        self._last_draw = now

    def clear(self):
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


def _duration(seconds):
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
