"""Hostile or broken input files end with one clean error, fast: YAML bombs and
deep nesting, deep protobuf text and binary, files that are not regular files
(a FIFO, /dev/zero) or too large; snapshot temporaries that a planted symlink
cannot redirect and that a later run cleans up; and a dltrain.yaml (or a
.numba_config.yaml) found in the current folder that does not run its code
unless the user says so."""
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading

import pytest

from dlcore import TEST, ConfigError, Net, config
from dltrain.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(args, cwd, env=None, timeout=120):
    """`python -m dltrain ARGS` in ``cwd``: (exit code, stderr)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("DLTRAIN_ALLOW_PROJECT_PLUGINS", "DLTRAIN_ALLOW_NUMBA_CONFIG")}
    full_env["PYTHONPATH"] = ROOT
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-m", "dltrain", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stderr


def assert_one_clean_error(code, err, *words):
    """Exit 1, no traceback, and exactly one `dltrain: error:` line (the last), holding ``words``."""
    assert code == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("dltrain: error: ")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    for word in words:
        assert word in errors[0]
    return errors[0]


def one_line_config_error(function, *args):
    """The message of the ConfigError ``function(*args)`` raises, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        function(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def merge_bomb(levels=9, width=10):
    """A YAML net whose merge keys nest: layer i merges ``width`` copies of layer i-1."""
    lines = ["name: bomb", "layer:", "  - &l0 {name: relu, type: ReLU, bottom: [x], top: [x]}"]
    for i in range(1, levels + 1):
        lines.append(f"  - &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * width)}]}}")
    return "\n".join(lines) + "\n"


def alias_bomb(levels=9, width=10):
    """A "billion laughs": each list holds ``width`` aliases of the previous one."""
    lines = ["name: laughs", "input: &s0 [data]"]
    lines += [f"x{i}: &s{i} [{', '.join([f'*s{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    lines.append(f"input_dim: *s{levels}")
    return "\n".join(lines) + "\n"


# --- YAML ---------------------------------------------------------------------------------------------
def test_merge_key_bomb_ends_at_once_with_one_line_naming_file_and_line(tmp_path):
    (tmp_path / "net.yaml").write_text(merge_bomb())
    assert len(merge_bomb()) < 2800
    (tmp_path / "solver.prototxt").write_text('net: "net.yaml"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n'
                                              'solver_mode: CPU\n')
    code, err = run_cli(["train", "--solver", "solver.prototxt"], tmp_path, timeout=60)
    line = assert_one_clean_error(code, err, "YAML too large: more than 2,000,000 nodes")
    # Layer 6 (line 9) is the first whose expansion passes the limit: 10**6 copies of layer 0's 11 nodes.
    assert line.startswith(f"dltrain: error: {tmp_path / 'net.yaml'}:9:14: ")


def test_plain_alias_bomb(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(alias_bomb())
    with pytest.raises(ConfigError) as info:
        config.load_net(path)
    assert str(info.value).startswith(f"{path}:8:5: ")   # x6: 2,111,111 nodes
    assert "more than 2,000,000 nodes" in str(info.value)
    # Aliases within the limits load, expanded.
    net = config.parse_yaml("input: &blobs [data]\nlayer:\n  - &relu {name: a, type: ReLU, bottom: *blobs, "
                            "top: *blobs}\n  - {<<: *relu, name: b}\n", caffe_pb2.NetParameter)
    assert [(layer.name, list(layer.bottom)) for layer in net.layer] == [("a", ["data"]), ("b", ["data"])]


def test_expanded_values_are_bounded_too():
    big = "x" * (2**20)
    text = f"a: &a0 '{big}'\n" + "".join(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
                                         for i in range(1, 5))
    with pytest.raises(ConfigError, match=r"^n\.yaml:5:\d+: YAML too large: more than 67,108,864 characters"):
        config.parse_yaml(text, caffe_pb2.NetParameter, "n.yaml")


@pytest.mark.parametrize("text, message", [
    ("layer: " + "[" * 5000 + "]" * 5000, "n.yaml:1:1007: YAML syntax error: exceeded maximum nesting depth"),
    ("layer: " + "[" * 300 + "]" * 300, "n.yaml:1:208: YAML nested too deeply: more than 100 levels"),
    ("a0: &a0 {x: 1}\n" + "".join(f"a{i}: &a{i} {{<<: *a{i - 1}}}\n" for i in range(1, 200)),
     "n.yaml:100:12: YAML nested too deeply: more than 100 levels here once aliases and merge keys are expanded"),
    ("layer: &a {<<: *a}\n", "n.yaml:1:12: a YAML alias names a node that contains it"),
    ("layer: &a [*a]\n", "n.yaml:1:8: a YAML alias names a node that contains it"),
    ("name: x\nlayer:\n  - name: a\n    type: ReLU\n    bottom: [a, *missing]\n",
     "n.yaml:5:17: YAML syntax error: found undefined alias"),
    ("force_backward: true\n\x00", "n.yaml:2:1: YAML syntax error: unacceptable character #x0000"),
])
def test_yaml_depth_cycles_and_bad_characters(text, message):
    assert one_line_config_error(config.parse_yaml, text, caffe_pb2.NetParameter, "n.yaml").startswith(message)


def test_yaml_integer_with_thousands_of_digits():
    with pytest.raises(ConfigError, match=r"^s\.yaml:1:11: field 'max_iter': value 1{20}\.\.\. \(5000 characters\) "
                                          r"out of range"):
        config.parse_yaml("max_iter: " + "1" * 5000, caffe_pb2.SolverParameter, "s.yaml")
    with pytest.raises(ConfigError, match="unknown value"):
        config.parse_yaml("solver_mode: " + "1" * 5000, caffe_pb2.SolverParameter, "s.yaml")


def test_load_yaml_data_is_bounded_like_safe_load():
    assert config.load_yaml_data("a: &x {k: 1}\nb: {<<: *x, j: 2}\n") == {"a": {"k": 1}, "b": {"k": 1, "j": 2}}
    assert config.load_yaml_data("") is None
    with pytest.raises(ConfigError, match=r"^p\.yaml:9:14: YAML too large"):
        config.load_yaml_data(merge_bomb(), "p.yaml")


# --- protobuf text and binary ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("layer { " * 10000 + "}" * 10000, "deep.prototxt:1:9: unknown field 'layer' in LayerParameter"),
    ('layer { name: "a" convolution_param { weight_filler { ' * 3000 + "}" * 9000,
     "deep.prototxt:1:55: unknown field 'layer' in FillerParameter"),
    ("{" * 10000, "deep.prototxt:1:1:"),
])
def test_deeply_nested_prototxt_is_one_line(tmp_path, text, message):
    path = tmp_path / "deep.prototxt"
    path.write_text(text)
    assert one_line_config_error(config.load_net, path).startswith(f"{tmp_path}/{message}")


def _varint(n):
    out = b""
    while n > 0x7F:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


@pytest.mark.parametrize("depth", [150, 100_000])
def test_deeply_nested_binary_is_one_line(tmp_path, depth):
    # Unknown groups (wire types 3/4) nest without a schema; so do layers' length-delimited blobs.
    data = _varint(999 << 3 | 3) * depth + _varint(999 << 3 | 4) * depth
    path = tmp_path / "deep.caffemodel"
    path.write_bytes(data)
    assert one_line_config_error(config.load_net, path).startswith(f"{path}: cannot decode binary NetParameter: ")


def test_files_larger_than_the_limits_are_refused_before_reading(tmp_path):
    weights = tmp_path / "huge.caffemodel"
    with open(weights, "wb") as f:       # sparse: costs no disk
        f.truncate(2**31)
    with pytest.raises(ConfigError) as info:
        config.load_net(weights)
    assert str(info.value) == (f"{weights}: cannot read NetParameter file: it is 2,147,483,648 bytes, more than "
                               "the limit of 2,147,483,647")
    text = tmp_path / "huge.prototxt"
    with open(text, "wb") as f:
        f.truncate(64 * 2**20 + 1)
    with pytest.raises(ConfigError, match=r"it is 67,108,865 bytes, more than the limit of 67,108,864$"):
        config.load_net(text)
    with pytest.raises(ConfigError, match=r"^s: the text is 67,108,865 characters long, more than the limit"):
        config.parse_text("#" * (64 * 2**20 + 1), caffe_pb2.NetParameter, "s")


# --- files that are not regular files ------------------------------------------------------------------
def finishes(function, seconds=20):
    """Run ``function`` in a thread; its exception, or a failure if it is still blocked."""
    result = {}

    def body():
        try:
            function()
        except BaseException as err:     # handed to the test
            result["error"] = err

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function} blocked"
    return result.get("error")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.caffemodel"
    os.mkfifo(path)
    yield path
    try:   # unblock a reader that a failed test left waiting
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


NET = 'name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 2 }\n' \
      'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }\n'


def test_fifo_and_dev_zero_as_weights_and_as_net_file(tmp_path, fifo):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    err = finishes(lambda: Net(str(net), TEST, weights=str(fifo)))
    assert isinstance(err, ConfigError)
    assert str(err) == f"{fifo}: cannot read NetParameter file: it is a FIFO (named pipe), not a regular file"
    err = finishes(lambda: Net(str(net), TEST, weights="/dev/zero"))
    assert str(err) == "/dev/zero: cannot read NetParameter file: it is a character device, not a regular file"
    net_fifo = tmp_path / "fifo.prototxt"
    os.mkfifo(net_fifo)
    err = finishes(lambda: config.load_net(net_fifo))
    assert str(err).endswith("fifo.prototxt: cannot read NetParameter file: it is a FIFO (named pipe), not a "
                             "regular file")
    err = finishes(lambda: config.load_solver(tmp_path))
    assert str(err) == f"{tmp_path}: cannot read SolverParameter file: it is a directory, not a regular file"


def test_read_regular_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"12345")
    assert config.read_regular_file(path, 5, "a test file") == b"12345"
    with pytest.raises(ConfigError, match=r"f\.bin: cannot read a test file: it is 5 bytes, more than the limit of 4"):
        config.read_regular_file(path, 4, "a test file")
    with pytest.raises(ConfigError, match="cannot read a test file: No such file or directory"):
        config.read_regular_file(tmp_path / "missing", 5, "a test file")
    sock_path = os.path.join(tempfile.mkdtemp(dir="/tmp"), "s.sock")   # AF_UNIX paths are short
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(sock_path)
        with pytest.raises(ConfigError, match="it is a socket, not a regular file"):
            config.read_regular_file(sock_path, 5, "a test file")
    os.remove(sock_path)
    os.rmdir(os.path.dirname(sock_path))


def test_a_file_swapped_for_a_fifo_after_the_check_does_not_block(tmp_path, monkeypatch):
    path = tmp_path / "n.prototxt"
    os.mkfifo(path)
    real_stat = os.stat
    # The check before opening sees a regular file; the FIFO is what gets opened.
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: real_stat(__file__ if os.fspath(p) == str(path) else p,
                                                                 *a, **k))
    err = finishes(lambda: config.load_net(path))
    assert str(err) == f"{path}: cannot read NetParameter file: it is a FIFO (named pipe), not a regular file"


# --- snapshot temporaries --------------------------------------------------------------------------------
def test_a_planted_symlink_at_the_temporary_name_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "snap.caffemodel"
    host = config._temporary_host()
    pid = os.getpid()
    # The old name, and the first name mkstemp will try (its random part made predictable here).
    old_style = tmp_path / f"snap.caffemodel.tmp.{pid}"
    planted = tmp_path / f".snap.caffemodel.tmp.{host}.{pid}.aaaaaaaa"
    for link in (old_style, planted):
        link.symlink_to(victim)
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["aaaaaaaa", "bbbbbbbb"]))
    config.write_atomic(target, b"weights")
    assert target.read_bytes() == b"weights" and not target.is_symlink()
    assert victim.read_text() == "precious"
    assert os.readlink(planted) == str(victim) and os.readlink(old_style) == str(victim)
    assert sorted(os.listdir(tmp_path)) == sorted(["victim.txt", "snap.caffemodel", old_style.name, planted.name])


def test_the_written_file_has_a_normal_mode_and_failures_leave_nothing(tmp_path, monkeypatch):
    old = os.umask(0o027)
    try:
        config.write_atomic(tmp_path / "a.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o640

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        config.write_atomic(tmp_path / "b.bin", b"y")
    assert os.listdir(tmp_path) == ["a.bin"]


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host = config._temporary_host()
    try:
        names = {
            "dead": f".run_iter_10.caffemodel.tmp.{host}.{dead.pid}.abcd1234",
            "dead_state": f".run_iter_20.solverstate.tmp.{host}.{dead.pid}.x_y_z123",
            "alive": f".run_iter_10.caffemodel.tmp.{host}.{alive.pid}.abcd1234",
            "mine": f".run_iter_30.caffemodel.tmp.{host}.{os.getpid()}.abcd1234",
            "other_host": f".run_iter_10.caffemodel.tmp.otherhost.{dead.pid}.abcd1234",
            "other_prefix": f".other_iter_10.caffemodel.tmp.{host}.{dead.pid}.abcd1234",
            "not_ours": f"run_iter_10.caffemodel.tmp.{dead.pid}",
        }
        for name in names.values():
            (tmp_path / name).write_bytes(b"partial")
        link = tmp_path / f".run_iter_40.caffemodel.tmp.{host}.{dead.pid}.abcd1234"
        link.symlink_to(tmp_path / names["alive"])
        folder = tmp_path / f".run_iter_50.caffemodel.tmp.{host}.{dead.pid}.abcd1234"
        folder.mkdir()
        removed = config.remove_stale_temporaries(str(tmp_path / "run"))
        # A file's own path works too; the live process's file stays while it runs.
        assert config.remove_stale_temporaries(str(tmp_path / "run_iter_10.caffemodel")) == []
    finally:
        alive.kill()
        alive.wait()
    assert sorted(removed) == sorted(str(tmp_path / names[k]) for k in ("dead", "dead_state"))
    left = set(os.listdir(tmp_path))
    assert left == {names[k] for k in ("alive", "mine", "other_host", "other_prefix", "not_ours")} | \
        {link.name, folder.name}
    log_lines = [line for line in capsys.readouterr().err.splitlines() if "a temporary file left by" in line]
    assert len(log_lines) == 2
    assert log_lines[0].endswith("which has ended") and f"process {dead.pid}" in log_lines[0]
    # Once it has ended, its file goes too; a folder that cannot be listed is no error.
    assert config.remove_stale_temporaries(str(tmp_path / "run_iter_10.caffemodel")) == \
        [str(tmp_path / names["alive"])]
    assert config.remove_stale_temporaries(str(tmp_path / "missing" / "run")) == []


# --- no surprise code --------------------------------------------------------------------------------------
MARKER_PLUGIN = '''
import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported.marker"), "w").close()
'''


def test_dltrain_yaml_found_in_the_folder_does_not_import_its_plugins(tmp_path):
    (tmp_path / "marker_plugin.py").write_text(MARKER_PLUGIN)
    (tmp_path / "dltrain.yaml").write_text("plugins: [marker_plugin]\n")
    code, err = run_cli(["plugins"], tmp_path)
    assert code == 0, err
    assert not (tmp_path / "imported.marker").exists()
    assert err.count("\n") == 1 and "not loading the plugins listed in dltrain.yaml (marker_plugin)" in err
    assert "set DLTRAIN_ALLOW_PROJECT_PLUGINS=1" in err

    code, err = run_cli(["plugins"], tmp_path, env={"DLTRAIN_ALLOW_PROJECT_PLUGINS": "1"})
    assert code == 0, err
    assert (tmp_path / "imported.marker").exists()
    assert f"loaded plugin marker_plugin (from dltrain.yaml) from {tmp_path / 'marker_plugin.py'}" in err
    os.remove(tmp_path / "imported.marker")

    code, err = run_cli(["--config", "dltrain.yaml", "plugins"], tmp_path)
    assert code == 0, err
    assert (tmp_path / "imported.marker").exists()


def test_binary_dltrain_yaml_is_one_line(tmp_path):
    (tmp_path / "dltrain.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    code, err = run_cli(["plugins"], tmp_path)
    assert_one_clean_error(code, err, "dltrain.yaml:1:1: file is not UTF-8 text")


def test_numba_config_in_the_folder_is_refused_unless_allowed(tmp_path):
    (tmp_path / ".numba_config.yaml").write_text("cache_dir: ./cache\n")
    code, err = run_cli(["plugins"], tmp_path)
    assert_one_clean_error(code, err, ".numba_config.yaml in the current folder would be read by Numba",
                           "DLTRAIN_ALLOW_NUMBA_CONFIG=1")
    code, err = run_cli(["plugins"], tmp_path, env={"DLTRAIN_ALLOW_NUMBA_CONFIG": "1"})
    assert code == 0, err
