"""`dltrain plot`: training curves from logs, and Caffe parse_log.py's tables.

    dltrain plot OUT.png LOG [LOG ...] [--x iters|seconds] [--title TEXT] [--csv [DIR]]
    dltrain plot --csv [DIR] LOG [LOG ...]          # the tables only, no picture

Each LOG is dltrain's glog-format log (stderr, or the file ``log_dir`` keeps),
dltrain's ``<snapshot_prefix>_log.jsonl``, or a log Caffe wrote; the format is
found per file (see cli/training_logs.py).  The picture has one panel per
quantity: the training loss, the learning rate, each test output (an
accuracy in percent), and each train output when the train net has several;
a loss or rate that is positive and spans more than a decade gets a log
scale.  Several logs are overlaid, one colour each, the legend naming the
files.  OUT's suffix picks the format: .png, .svg, .pdf, .jpg.

``--csv`` writes ``LOG.train`` and ``LOG.test`` beside each log (or in DIR),
the tables of Caffe's Python 2 script ``tools/extra/parse_log.py``: columns
NumIters, Seconds, LearningRate, then the net's outputs by name, one row per
display or test; LearningRate is, as there, the rate most recently printed
before the row (Caffe prints it after a display's outputs).
"""
import math
import os
import re

from dlcore.errors import ConfigError, DLTrainError, require_module

from .training_logs import read_log, write_csv_tables

IMAGE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")
PERCENT_NAME = re.compile(r"acc|top-?\d", re.IGNORECASE)
LINE_STYLES = ("-", (0, (5, 3)), (0, (1, 2)), (0, (6, 2, 1, 2)))
MARKERS = ("o", "s", "^", "D")


def cmd_plot(args):
    image, log_paths, csv_dir = _arguments(args)
    delimiter = _delimiter(args.delimiter)
    logs = [read_log(path) for path in log_paths]
    if csv_dir is not None:
        _write_tables(logs, csv_dir, delimiter)
    if image is not None:
        panels = draw_curves(logs, image, x=args.x, title=args.title)
        print(f"Wrote {image} ({panels} panel{'s' if panels != 1 else ''}, "
              f"{len(logs)} log{'s' if len(logs) != 1 else ''})")


def _arguments(args):
    """(picture path or None, log paths, CSV folder or None); '' as the folder: beside each log."""
    paths = list(args.paths)
    csv_dir = args.csv
    # `--csv` takes an optional folder: a file or a picture name right after it is the next argument.
    if csv_dir and not os.path.isdir(csv_dir) and (os.path.isfile(csv_dir)
                                                   or csv_dir.lower().endswith(IMAGE_SUFFIXES)):
        paths.insert(0, csv_dir)
        csv_dir = ""
    if not paths:
        raise DLTrainError("name the picture to write (OUT.png) and at least one training log")
    image = paths[0] if paths[0].lower().endswith(IMAGE_SUFFIXES) else None
    if image is None and csv_dir is None:
        raise DLTrainError(f"the first argument names the picture, ending in "
                           f"{', '.join(IMAGE_SUFFIXES)} (got '{paths[0]}'); or give --csv for the tables only")
    logs = paths[1:] if image is not None else paths
    if not logs:
        raise DLTrainError("name at least one training log")
    return image, logs, csv_dir


def _delimiter(text):
    text = "\t" if text in ("\\t", "tab") else text
    if len(text) != 1:
        raise DLTrainError(f"--delimiter must be one character (got '{text}')")
    return text


def _write_tables(logs, csv_dir, delimiter):
    targets = {}
    for log in logs:
        folder = csv_dir or os.path.dirname(log.path)
        key = os.path.abspath(os.path.join(folder or ".", log.name))
        if key in targets:
            raise DLTrainError(f"'{targets[key]}' and '{log.path}' would both write "
                               f"{key}.train: give them different names or --csv folders")
        targets[key] = log.path
    for log in logs:
        written = write_csv_tables(log, csv_dir or os.path.dirname(log.path), delimiter)
        for path in written:
            print(f"Wrote {path}")
        if not written:
            print(f"{log.path}: no Train/Test net output lines, no table written")


# --- the picture ---------------------------------------------------------------------------------------

class Panel:
    """One quantity: its title and, per log, the Series to draw (None where the log lacks it)."""

    def __init__(self, title, series, loss_like=False, test=False):
        self.title, self.series, self.loss_like, self.test = title, series, loss_like, test

    def values(self):
        return [v for s in self.series if s is not None for v in s.values if math.isfinite(v)]

    def percent(self):
        """An accuracy (by its name) whose values are fractions: drawn in percent."""
        values = self.values()
        return (self.title.startswith(("test ", "train ")) and bool(PERCENT_NAME.search(self.title))
                and bool(values) and all(0.0 <= v <= 1.0 for v in values))

    def log_scale(self):
        """A loss or rate, positive, spanning more than a decade."""
        values = self.values()
        return self.loss_like and bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def make_panels(logs):
    panels = [Panel("training loss", [log.train_loss if len(log.train_loss) else None for log in logs],
                    loss_like=True),
              Panel("learning rate", [log.learning_rate if len(log.learning_rate) else None for log in logs],
                    loss_like=True)]
    for label in _labels(log.test_outputs for log in logs):
        panels.append(Panel(f"test {label}", [log.test_outputs.get(label) for log in logs],
                            loss_like="loss" in label.lower(), test=True))
    # A train net with one output: that output is the loss the first panel already shows.
    several = [log.train_outputs if len(log.train_outputs) > 1 else {} for log in logs]
    for label in _labels(several):
        panels.append(Panel(f"train {label}", [outputs.get(label) for outputs in several],
                            loss_like="loss" in label.lower()))
    return [panel for panel in panels if any(s is not None for s in panel.series)]


def _labels(output_dicts):
    labels = []
    for outputs in output_dicts:
        labels.extend(label for label in outputs if label not in labels)
    return labels


def _legend_names(logs):
    """File names; the paths as given where two logs share a file name."""
    names = [log.name for log in logs]
    return [log.path if names.count(log.name) > 1 else log.name for log in logs]


def _xy(series, x, scale):
    """The points to draw; a NaN between points where x goes back (a resumed run appended to the log),
    so no line joins them."""
    xs_in = series.iters if x == "iters" else series.seconds
    xs, ys = [], []
    for px, py in zip(xs_in, series.values):
        if xs and not math.isnan(px) and not math.isnan(xs[-1]) and px < xs[-1]:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(float(px))
        ys.append(py * scale)
    return xs, ys


def draw_curves(logs, out_path, x="iters", title=None):
    """Write the curves of ``logs`` (TrainingLog objects) to ``out_path``; returns the number of panels."""
    require_module("matplotlib", "dltrain plot", "matplotlib", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    if x == "seconds":
        for log in logs:
            if not any(not math.isnan(s) for series in _all_series(log) for s in series.seconds):
                raise ConfigError("no time stamps to plot against seconds: use --x iters", path=log.path)
    panels = make_panels(logs)
    count = len(panels)
    columns = 1 if count == 1 else 2 if count <= 4 else 3
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(4.6 * columns, 3.0 * rows + (0.4 if len(logs) > 1 or title else 0)),
                    layout="constrained")
    FigureCanvasAgg(figure)
    axes_grid = figure.subplots(rows, columns, squeeze=False)
    names = _legend_names(logs)
    handles = {}
    for i, panel in enumerate(panels):
        axes = axes_grid[i // columns][i % columns]
        percent = panel.percent()
        scale = 100.0 if percent else 1.0
        for k, series in enumerate(panel.series):
            if series is None:
                continue
            xs, ys = _xy(series, x, scale)
            # Each log its colour and dash pattern: identical runs still show one under the other.
            style = dict(color=f"C{k % 10}", linestyle=LINE_STYLES[k % len(LINE_STYLES)], linewidth=1.2)
            if panel.test:
                style.update(marker=MARKERS[k % len(MARKERS)], markersize=3.5)
            (line,) = axes.plot(xs, ys, label=names[k], **style)
            handles.setdefault(k, line)
        if panel.log_scale():
            axes.set_yscale("log")
        axes.set_title(panel.title + (" (%)" if percent else ""), fontsize=10)
        axes.grid(True, alpha=0.3)
        axes.tick_params(labelsize=8)
        if i + columns >= count:            # the lowest panel of its column
            axes.set_xlabel("iterations" if x == "iters" else "seconds", fontsize=9)
    for i in range(count, rows * columns):
        axes_grid[i // columns][i % columns].set_visible(False)
    if len(logs) > 1:
        order = sorted(handles)
        figure.legend([handles[k] for k in order], [names[k] for k in order], loc="outside upper center",
                      ncols=min(len(order), 3), fontsize=9, frameon=False)
    if title or len(logs) == 1:
        figure.suptitle(title or names[0], fontsize=11)
    try:
        figure.savefig(out_path, dpi=100)
    except OSError as err:
        raise ConfigError(f"cannot write the picture: {err.strerror or err}", path=out_path) from None
    return count


def _all_series(log):
    return [log.train_loss, log.learning_rate, *log.train_outputs.values(), *log.test_outputs.values()]


def register(sub):
    p = sub.add_parser("plot", help="draw training curves from logs (and write parse_log.py's CSV tables)",
                       usage="dltrain plot OUT.png LOG [LOG ...] [--x iters|seconds] [--title TEXT] [--csv [DIR]]\n"
                             "       dltrain plot --csv [DIR] LOG [LOG ...]",
                       description="Plot the training loss, learning rate and every test output of one or "
                                   "more training logs (dltrain's glog log or JSONL log, or a Caffe log), "
                                   "overlaid for comparison.")
    p.add_argument("paths", nargs="*", metavar="OUT.png|LOG",
                   help="the picture to write (.png, .svg, .pdf, .jpg), then one or more logs; with --csv the "
                        "picture may be left out")
    p.add_argument("--x", choices=("iters", "seconds"), default="iters",
                   help="the horizontal axis: iterations (default) or seconds since the run started")
    p.add_argument("--title", help="a title above the panels (default: the log's name, for one log)")
    p.add_argument("--csv", nargs="?", const="", default=None, metavar="DIR",
                   help="also write Caffe parse_log.py's tables LOG.train and LOG.test, beside each log or in DIR")
    p.add_argument("--delimiter", default=",",
                   help="the tables' column delimiter, one character ('\\t' or tab: a tab; default ',')")
    p.set_defaults(func=cmd_plot)
