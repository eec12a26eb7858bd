"""`dltrain plot`: reading dltrain's and Caffe's logs, parse_log.py's tables, and the picture.

Fixtures (tests/data/logs/): ``digits.log`` and ``digits_log.jsonl`` are the log file (log_dir) and the
JSONL log of one real run of ``dltrain configs/digits/solver.prototxt``, whole; ``caffe_lenet.log`` is a
log in the lines Caffe 1.0's solver writes (LeNet on MNIST, 1000 iterations), made by hand, that runs
across midnight of New Year's Eve.
"""
import csv
import math
import os
import shutil
import sys
from datetime import datetime

import pytest

from dltrain.cli.main import main
from dltrain.cli.plot import _xy, make_panels
from dltrain.cli.training_logs import read_log, write_csv_tables

LOGS = os.path.join(os.path.dirname(__file__), "data", "logs")
DIGITS_LOG = os.path.join(LOGS, "digits.log")
DIGITS_JSONL = os.path.join(LOGS, "digits_log.jsonl")
CAFFE_LOG = os.path.join(LOGS, "caffe_lenet.log")

# The seconds of the Caffe log's last test: its first output line's stamp minus the "Solving" line's,
# a year apart on the calendar.
CAFFE_LAST_TEST_SECONDS = (datetime(2017, 1, 1, 0, 0, 2, 591963)
                           - datetime(2016, 12, 31, 23, 59, 58, 199391)).total_seconds()


def _read_table(path):
    with open(path, newline="") as handle:
        text = handle.read()
    rows = list(csv.reader(text.splitlines()))
    return text, rows[0], rows[1:]


# --- reading ------------------------------------------------------------------------------------------

def test_dltrain_glog_log():
    log = read_log(DIGITS_LOG)
    assert log.kind == "glog"
    assert log.train_loss.iters == list(range(0, 3001, 100))
    assert log.train_loss.values[:2] == [2.2941, 0.243606]
    assert log.train_loss.values[-1] == 0.0107569
    assert log.learning_rate.iters == list(range(0, 3000, 100))     # no update, no rate, at max_iter
    assert log.learning_rate.values[:2] == [0.01, 0.00992565]
    assert sorted(log.test_outputs) == ["accuracy", "loss"]
    accuracy = log.test_outputs["accuracy"]
    assert accuracy.iters == list(range(0, 3001, 500))
    assert accuracy.values[0] == 0.0611111 and accuracy.values[-1] == 0.986111
    assert list(log.train_outputs) == ["loss"]
    seconds = log.train_loss.seconds
    assert 0 < seconds[0] < seconds[-1] < 600 and seconds == sorted(seconds)


def test_jsonl_log_holds_the_same_run():
    glog, jsonl = read_log(DIGITS_LOG), read_log(DIGITS_JSONL)
    assert jsonl.kind == "jsonl"
    assert jsonl.train_loss.iters == glog.train_loss.iters
    for ours, theirs in zip(jsonl.train_loss.values, glog.train_loss.values):
        assert ours == pytest.approx(theirs, rel=1e-5)          # glog prints 6 significant digits
    for name in ("accuracy", "loss"):
        assert jsonl.test_outputs[name].iters == glog.test_outputs[name].iters
        assert jsonl.test_outputs[name].values == pytest.approx(glog.test_outputs[name].values, rel=1e-5)
    # The JSONL rate is the one used at each displayed iteration.
    assert jsonl.learning_rate.values[:2] == [0.01, 0.00992565]
    # Both count seconds from the run's start: the same to within the log's own latency.
    for ours, theirs in zip(jsonl.test_outputs["accuracy"].seconds, glog.test_outputs["accuracy"].seconds):
        assert ours == pytest.approx(theirs, abs=0.05)


def test_caffe_log_across_new_year():
    log = read_log(CAFFE_LOG)
    assert log.kind == "glog"
    # Caffe 1.0's "Iteration N (x iter/s, ys/100 iters), loss = L" and the final "Iteration N, loss = L".
    assert log.train_loss.iters == list(range(0, 1001, 100))
    assert log.train_loss.values[0] == 2.32474 and log.train_loss.values[-1] == 0.0784301
    assert log.learning_rate.iters == list(range(0, 901, 100))
    assert log.test_outputs["accuracy"].values == [0.1084, 0.9717, 0.9803]
    assert log.test_outputs["loss"].values == [2.3096, 0.0868702, 0.0611484]
    assert log.test_outputs["accuracy"].seconds[-1] == pytest.approx(CAFFE_LAST_TEST_SECONDS, abs=1e-6)
    assert log.train_loss.seconds == sorted(log.train_loss.seconds)


def test_caffe_log_without_header_takes_the_year_from_the_file(tmp_path):
    with open(CAFFE_LOG) as handle:
        lines = handle.read().splitlines()
    bare = tmp_path / "caffe.INFO"
    bare.write_text("\n".join(lines[3:]) + "\n")            # no "Log file created at" header
    stamp = datetime(2021, 6, 1).timestamp()
    os.utime(bare, (stamp, stamp))
    log = read_log(str(bare))
    assert log.test_outputs["accuracy"].seconds[-1] == pytest.approx(CAFFE_LAST_TEST_SECONDS, abs=1e-6)


def test_several_test_nets_and_multi_value_outputs(tmp_path):
    text = """\
I0301 10:00:00.000000  4242 solver.py:404] Solving Net
I0301 10:00:00.100000  4242 solver.py:744] Iteration 0, Testing net (#0)
I0301 10:00:00.200000  4242 solver.py:614]     Test net output #0: accuracy = 0.5
I0301 10:00:00.300000  4242 solver.py:744] Iteration 0, Testing net (#1)
I0301 10:00:00.400000  4242 solver.py:614]     Test net output #0: accuracy = 0.25
I0301 10:00:01.000000  4242 solver.py:618] Iteration 0, loss = 1.5
I0301 10:00:01.000010  4242 solver.py:614]     Train net output #0: prob = 0.75
I0301 10:00:01.000020  4242 solver.py:614]     Train net output #1: prob = 0.25
I0301 10:00:01.000030  4242 solver.py:614]     Train net output #2: loss = 1.5 (* 1 = 1.5 loss)
I0301 10:00:01.000040  4242 solver.py:637] Iteration 0, lr = 0.1
"""
    path = tmp_path / "two_nets.log"
    path.write_text(text)
    log = read_log(str(path))
    assert log.test_outputs["accuracy"].values == [0.5]
    assert log.test_outputs["accuracy (test net #1)"].values == [0.25]
    assert list(log.train_outputs) == ["prob[0]", "prob[1]", "loss"]
    assert [row["accuracy"] for row in log.test_rows] == [0.5, 0.25]       # one row per test net, as Caffe
    titles = [panel.title for panel in make_panels([log])]
    assert titles == ["training loss", "learning rate", "test accuracy", "test accuracy (test net #1)",
                      "train prob[0]", "train prob[1]", "train loss"]


def test_a_run_appended_to_its_jsonl_log_is_drawn_apart(tmp_path):
    with open(DIGITS_JSONL) as handle:
        records = handle.read().splitlines()
    twice = tmp_path / "twice_log.jsonl"
    twice.write_text("\n".join(records[:4] + records[:4]) + "\n")     # a second run from iteration 0
    loss = read_log(str(twice)).train_loss
    assert loss.iters == [0, 100, 200] * 2
    xs, ys = _xy(loss, "iters", 1.0)
    assert xs[:3] == [0, 100, 200] and math.isnan(xs[3]) and math.isnan(ys[3]) and xs[4:] == [0, 100, 200]


def test_jsonl_cut_off_last_record_is_skipped_and_a_bad_one_named(tmp_path):
    with open(DIGITS_JSONL) as handle:
        records = handle.read().splitlines()
    cut = tmp_path / "cut_log.jsonl"
    cut.write_text("\n".join(records[:5]) + "\n" + records[5][:20])
    assert len(read_log(str(cut)).train_loss) == 4          # records 1..4 are train records, 0 a test
    bad = tmp_path / "bad_log.jsonl"
    bad.write_text("\n".join(records[:2] + ["{oops"] + records[2:4]) + "\n")
    with pytest.raises(Exception, match=r"bad_log\.jsonl:3: not a JSON record"):
        read_log(str(bad))


# --- parse_log.py's tables ------------------------------------------------------------------------------

def test_caffe_tables_as_parse_log_writes_them(tmp_path):
    written = write_csv_tables(read_log(CAFFE_LOG), str(tmp_path))
    assert written == [str(tmp_path / "caffe_lenet.log.train"), str(tmp_path / "caffe_lenet.log.test")]

    text, header, rows = _read_table(tmp_path / "caffe_lenet.log.train")
    assert text.startswith("NumIters,Seconds,LearningRate,loss\r\n")          # csv.excel, as parse_log.py
    assert header == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert [row[0] for row in rows] == [f"{i}.0" for i in range(0, 901, 100)]  # the final display has no outputs
    assert float(rows[0][1]) == pytest.approx(0.090558)    # its first output line 23:59:58.289949 - 23:59:58.199391
    # LearningRate: the rate printed last before the row (Caffe prints it after the outputs); the first
    # row's, never printed before it, is copied from the second.
    assert [float(row[2]) for row in rows[:3]] == [0.01, 0.01, 0.00992565]
    assert [float(row[3]) for row in rows[:2]] == [2.32474, 0.213427]

    _, header, rows = _read_table(tmp_path / "caffe_lenet.log.test")
    assert header == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [(row[0], row[3], row[4]) for row in rows] == [
        ("0.0", "0.1084", "2.3096"), ("500.0", "0.9717", "0.0868702"), ("1000.0", "0.9803", "0.0611484")]
    assert [float(row[2]) for row in rows] == [0.00971013, 0.00971013, 0.00937411]
    assert float(rows[2][1]) == pytest.approx(CAFFE_LAST_TEST_SECONDS, abs=1e-6)


def test_tables_from_the_jsonl_log(tmp_path):
    write_csv_tables(read_log(DIGITS_JSONL), str(tmp_path), delimiter="\t")
    text, _, _ = _read_table(tmp_path / "digits_log.jsonl.test")
    rows = [line.split("\t") for line in text.splitlines()]
    assert rows[0] == ["NumIters", "Seconds", "LearningRate", "accuracy", "loss"]
    assert [row[0] for row in rows[1:]] == [f"{i}.0" for i in range(0, 3001, 500)]
    assert float(rows[-1][3]) == pytest.approx(0.986111, rel=1e-5)


# --- the command ------------------------------------------------------------------------------------------

def _picture_checks(path, colours):
    import numpy as np
    from PIL import Image
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 600 and height >= 400
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    assert len(np.unique(pixels, axis=0)) > 50                  # lines, text, antialiasing: not blank
    assert (pixels != 255).any(axis=1).mean() > 0.02
    for colour in colours:                                      # each log's line colour is drawn
        assert (np.abs(pixels - colour).sum(axis=1) < 30).sum() > 100


C0, C1, C2 = (0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c)     # matplotlib's first colours


def test_plot_command_overlays_logs(tmp_path, capsys):
    out = tmp_path / "curves.png"
    # The first two are the same run: the second's dashes let the first show through.
    assert main(["plot", str(out), DIGITS_LOG, DIGITS_JSONL, CAFFE_LOG]) == 0
    assert f"Wrote {out} (4 panels, 3 logs)" in capsys.readouterr().out
    _picture_checks(out, [C0, C1, C2])


def test_plot_against_seconds_with_tables_in_a_folder(tmp_path, capsys):
    out = tmp_path / "curves.png"
    tables = tmp_path / "tables"
    assert main(["plot", str(out), CAFFE_LOG, "--x", "seconds", "--csv", str(tables)]) == 0
    _picture_checks(out, [C0])
    assert sorted(os.listdir(tables)) == ["caffe_lenet.log.test", "caffe_lenet.log.train"]


def test_tables_only_beside_the_log(tmp_path):
    log = tmp_path / "caffe.INFO"
    shutil.copy(CAFFE_LOG, log)
    # "--csv" right before a file takes no folder: the file is a log, and no picture is asked for.
    assert main(["plot", "--csv", str(log)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["caffe.INFO", "caffe.INFO.test", "caffe.INFO.train"]


def test_readable_defaults():
    panels = {panel.title: panel for panel in make_panels([read_log(DIGITS_LOG)])}
    assert list(panels) == ["training loss", "learning rate", "test accuracy", "test loss"]
    assert panels["training loss"].log_scale() and panels["test loss"].log_scale()
    assert not panels["learning rate"].log_scale()                 # 0.01 to 0.0083: linear
    assert panels["test accuracy"].percent() and not panels["test loss"].percent()


@pytest.mark.parametrize("content", ["", "I0301 10:00:00.000000  4242 solver.py:404] Solving Net\n"])
def test_a_log_without_progress_is_one_line_naming_it(tmp_path, capsys, content):
    empty = tmp_path / "empty.log"
    empty.write_text(content)
    assert main(["plot", str(tmp_path / "x.png"), str(empty)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "no training progress" in err
    assert not (tmp_path / "x.png").exists()


def test_missing_log_and_bad_picture_name(tmp_path, capsys):
    missing = tmp_path / "nope.log"
    assert main(["plot", str(tmp_path / "x.png"), str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err
    assert main(["plot", str(tmp_path / "x.txt"), CAFFE_LOG]) == 1
    assert "the first argument names the picture" in capsys.readouterr().err


def test_seconds_need_time_stamps(tmp_path, capsys):
    plain = tmp_path / "plain.txt"          # the messages without glog's prefix
    plain.write_text("Iteration 0, loss = 2\nIteration 0, lr = 0.1\nIteration 100, loss = 1\n")
    assert read_log(str(plain)).train_loss.values == [2.0, 1.0]
    assert main(["plot", str(tmp_path / "x.png"), str(plain), "--x", "seconds"]) == 1
    err = capsys.readouterr().err
    assert str(plain) in err and "--x iters" in err
    assert main(["plot", str(tmp_path / "x.png"), str(plain)]) == 0


def test_missing_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["plot", str(tmp_path / "x.png"), CAFFE_LOG]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'dltrain[plot]'" in err
