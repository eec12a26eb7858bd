"""Log lines in glog's format, so Caffe's log parsers read dltrain's logs.

``I1126 04:11:22.703542  4242 solver.py:228] Iteration 0, loss = 2.3``:
severity, month and day, time with microseconds, thread id, source, message.
"""
import os
import re
import sys
import threading
from datetime import datetime


# One line as _prefix writes it (and Caffe's glog): groups month, day, hour, minute, second, fraction, message.
# cli/training_logs.py reads logs with it.
LINE = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s+\d+\s+[^\]\s]+\] ?(.*)$")
# The first line of a glog log file (cli/main.py's log_dir files start with it too): it names the year.
FILE_HEADER = "Log file created at: "


def _prefix(severity, depth):
    now = datetime.now()
    frame = sys._getframe(depth)
    source = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
    tid = threading.get_native_id() % 100000
    return f"{severity}{now:%m%d %H:%M:%S}.{now.microsecond:06d} {tid:5d} {source}] "


# Ranks other than 0 of a data-parallel run keep quiet (their errors still show): rank 0 logs for the job.
quiet = False


def _emit(severity, message, stream=None, depth=3):
    """Write one line; ``depth``: how many frames up (from _prefix) the line's source is."""
    if quiet and severity != "E":
        return
    stream = stream or sys.stderr
    stream.write(_prefix(severity, depth) + str(message) + "\n")
    stream.flush()


def info(message, stream=None):
    _emit("I", message, stream)


def warning(message, stream=None):
    _emit("W", message, stream)


def error(message, stream=None):
    _emit("E", message, stream)
