"""Bad nets and weights end in one clean error, never in a silent wrong result.

Duplicate layer names, a net with no layers, weights that copy nothing,
stored blobs whose values do not fit their shape, blobs too large for the
machine, sys.exit() or KeyboardInterrupt inside a layer, and `dltrain time
--iterations 0`; a few of them through the CLI in a subprocess.
"""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from dlcore import ConfigError, DLTrainError, Layer, Net, PluginError, TEST, TRAIN, register_layer
from dlcore import blob as blob_module
from dlcore import registry
from dlcore.blob import Blob
from dlcore.config import net_from_string
from dlcore.errors import AllocationError, BlobError, Interrupted
from dltrain.cli.main import main
from dltrain.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INPUT = ('layer { name: "data" type: "Input" top: "data" top: "label"\n'
         '        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 } } }\n')


def ip(name, bottom, top, n=2, extra=""):
    return (f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" top: "{top}" {extra}\n'
            f'        inner_product_param {{ num_output: {n} weight_filler {{ type: "gaussian" std: 0.1 }} }} }}\n')


LOSS = 'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "label" top: "loss" }\n'
SMALL = INPUT + ip("ip1", "data", "hidden", 4) + ip("ip2", "hidden", "out") + LOSS


def write(tmp_path, text, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_cli(args, cwd):
    """``dltrain ARGS`` in a subprocess: (exit code, stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "dltrain", *args], cwd=cwd, env=env, stderr=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, timeout=120)
    return proc.returncode, proc.stderr


def assert_one_error_line(code, err, *words):
    assert code == 1, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("dltrain: error:")]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# --- duplicate layer names ---------------------------------------------------------------------------
def test_duplicate_names_with_parameters_are_an_error_naming_both_and_the_line(tmp_path):
    text = INPUT + ip("fc", "data", "hidden", 4) + ip("fc", "hidden", "out") + LOSS
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert "two layers of the net are named 'fc' (InnerProduct and InnerProduct)" in message
    assert "\n" not in message


def test_duplicate_name_of_a_parameter_layer_and_a_parameterless_one_is_an_error():
    text = (INPUT + ip("fc", "data", "hidden", 4)
            + 'layer { name: "fc" type: "ReLU" bottom: "hidden" top: "relu" }\n'
            + ip("ip2", "relu", "out") + LOSS)
    with pytest.raises(ConfigError, match=r"named 'fc' \(InnerProduct and ReLU\)"):
        Net(net_from_string(text), TRAIN)


def test_parameterless_duplicates_warn_and_the_net_builds(tmp_path, capsys):
    text = (INPUT + ip("ip1", "data", "hidden", 4)
            + 'layer { name: "act" type: "ReLU" bottom: "hidden" top: "hidden" }\n'
            + ip("ip2", "hidden", "mid", 4)
            + 'layer { name: "act" type: "ReLU" bottom: "mid" top: "mid" }\n'
            + ip("ip3", "mid", "out") + LOSS)
    net = Net(write(tmp_path, text), TRAIN)
    assert net.layer_names.count("act") == 2
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("W") and "named 'act'" in line]
    assert len(warnings) == 1 and "net.prototxt:5: two layers" in warnings[0]


def test_train_and_test_variants_of_one_name_are_not_duplicates(capsys):
    text = ('layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TRAIN }\n'
            '        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }\n'
            'layer { name: "data" type: "Input" top: "data" top: "label" include { phase: TEST }\n'
            '        input_param { shape { dim: 1 dim: 3 } shape { dim: 1 dim: 2 } } }\n'
            + ip("fc", "data", "out", extra='include { phase: TRAIN }')
            + ip("fc", "data", "out", extra='include { phase: TEST }') + LOSS)
    for phase, batch in ((TRAIN, 4), (TEST, 1)):
        net = Net(net_from_string(text), phase)
        assert net.layer_names == ["data", "fc", "loss"] and net.blobs["data"].shape == (batch, 3)
    assert "named" not in capsys.readouterr().err


def test_shipped_nets_have_no_duplicate_names(capsys):
    for path in ("configs/digits/lenet_digits_train_test.prototxt", "configs/zoo/googlenet_deploy.prototxt"):
        for phase in (TRAIN, TEST):
            Net(os.path.join(ROOT, path), phase)
    assert "named" not in capsys.readouterr().err


# --- a net with no layers ----------------------------------------------------------------------------------
def test_empty_net_file_is_an_error_naming_the_file(tmp_path):
    path = write(tmp_path, "# nothing here\n")
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    assert str(info.value) == f"{path}: the net has no layers"


def test_net_whose_rules_leave_out_every_layer_says_so(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" include { phase: TEST }\n'
            '        input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "data" top: "out" include { phase: TEST } }\n')
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    assert str(info.value) == (f"{path}: the net has no layers for phase TRAIN: the include/exclude rules "
                               "leave out all 2 of its layers")
    assert Net(path, TEST).layer_names == ["data", "relu"]
    capped = net_from_string(text.replace("phase: TEST", "phase: TEST max_level: 2"))
    with pytest.raises(ConfigError, match="^the net has no layers for phase TEST, level 3, stages deploy: .* all 2 of"):
        Net(capped, TEST, level=3, stages=["deploy"])


def test_empty_net_parameter_names_the_net():
    with pytest.raises(ConfigError, match="^net 'nothing' has no layers$"):
        Net(caffe_pb2.NetParameter(name="nothing"), TRAIN)


def test_empty_net_through_the_cli_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "")
    assert main(["time", "--model", path, "--iterations", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dltrain: error: {path}: the net has no layers"]


# --- weights that copy nothing ---------------------------------------------------------------------------
def saved_weights(tmp_path, text=SMALL, name="w.caffemodel"):
    net = Net(net_from_string(text), TRAIN)
    path = str(tmp_path / name)
    net.save(path)
    return net, path


def test_copy_from_logs_each_ignored_source_layer_and_returns_the_count(tmp_path, capsys):
    other = INPUT + ip("ip1", "data", "hidden", 4) + ip("other", "hidden", "out") + LOSS
    source, path = saved_weights(tmp_path, other)
    net = Net(net_from_string(SMALL), TRAIN)
    capsys.readouterr()
    assert net.copy_from(path) == 1
    err = capsys.readouterr().err
    assert "] Ignoring source layer other" in err and "Ignoring source layer ip1" not in err
    assert "no weights were copied" not in err
    np.testing.assert_array_equal(net.params["ip1"][0].data, source.params["ip1"][0].data)


def test_weights_matching_no_layer_warn(tmp_path, capsys):
    renamed = SMALL.replace('"ip1"', '"a1"').replace('"ip2"', '"a2"')
    _, path = saved_weights(tmp_path, renamed)
    net = Net(net_from_string(SMALL), TRAIN)
    before = net.params["ip1"][0].data.copy()
    capsys.readouterr()
    assert net.copy_from(path) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.endswith("] Ignoring source layer a1") for line in err)
    warning = [line for line in err if line.startswith("W")]
    assert len(warning) == 1 and f"no weights were copied from '{path}'" in warning[0]
    assert "none of its 4 layers matches" in warning[0]
    np.testing.assert_array_equal(net.params["ip1"][0].data, before)


def test_empty_caffemodel_warns(tmp_path, capsys):
    path = tmp_path / "empty.caffemodel"
    path.write_bytes(b"")
    net = Net(net_from_string(SMALL), TRAIN)
    capsys.readouterr()
    assert net.copy_from(str(path)) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("W")]
    assert len(warning) == 1 and "no weights were copied" in warning[0] and "it holds no layers" in warning[0]


# --- stored blobs whose values do not fit their shape ----------------------------------------------------
def caffemodel_with(tmp_path, edit):
    """Weights of SMALL, with ``edit(NetParameter)`` applied to them, written to a file."""
    net = Net(net_from_string(SMALL), TRAIN)
    param = net.to_proto()
    edit(param)
    path = tmp_path / "edited.caffemodel"
    path.write_bytes(param.SerializeToString())
    return Net(net_from_string(SMALL), TRAIN), str(path)


def ip1(param):
    return next(layer for layer in param.layer if layer.name == "ip1")


def test_caffemodel_blob_with_too_few_values_names_file_layer_and_shape(tmp_path):
    def truncate(param):
        del ip1(param).blobs[0].data[10:]
    net, path = caffemodel_with(tmp_path, truncate)
    with pytest.raises(ConfigError) as info:
        net.copy_from(path)
    assert str(info.value) == f"{path}: layer 'ip1' param 0: the file holds 10 values for shape 4 3 (12)"


def test_caffemodel_blob_with_no_values_is_an_error(tmp_path):
    def empty(param):
        del ip1(param).blobs[1].data[:]
    net, path = caffemodel_with(tmp_path, empty)
    with pytest.raises(ConfigError, match=r"layer 'ip1' param 1: the file holds 0 values for shape 4 \(4\)"):
        net.copy_from(path)


def test_caffemodel_diff_count_mismatch_is_an_error(tmp_path):
    def diff(param):
        ip1(param).blobs[0].diff.extend([1.0, 2.0])
    net, path = caffemodel_with(tmp_path, diff)
    with pytest.raises(ConfigError, match="the file holds 2 diff values for shape 4 3"):
        net.copy_from(path)


def test_double_data_wins_over_data_as_in_caffe(tmp_path):
    def double(param):
        stored = ip1(param).blobs[0]
        del stored.data[:3]                       # float data now wrong: ignored
        stored.double_data.extend([0.5] * 12)
    net, path = caffemodel_with(tmp_path, double)
    net.copy_from(path)
    np.testing.assert_array_equal(net.params["ip1"][0].data, np.full((4, 3), 0.5, np.float32))

    def short_double(param):
        ip1(param).blobs[0].double_data.extend([0.5] * 11)
    net, path = caffemodel_with(tmp_path, short_double)
    with pytest.raises(ConfigError, match="holds 11 values for shape 4 3 \\(12\\)"):
        net.copy_from(path)


def test_legacy_num_channels_height_width_blobs(tmp_path):
    def legacy(param, values):
        stored = ip1(param).blobs[0]
        stored.ClearField("shape")
        stored.num, stored.channels, stored.height, stored.width = 1, 1, 4, 3
        del stored.data[:]
        stored.data.extend(values)
    net, path = caffemodel_with(tmp_path, lambda p: legacy(p, [0.25] * 12))
    net.copy_from(path)                            # 1 x 1 x 4 x 3 fills the 4 x 3 blob, as in Caffe
    np.testing.assert_array_equal(net.params["ip1"][0].data, np.full((4, 3), 0.25, np.float32))
    net, path = caffemodel_with(tmp_path, lambda p: legacy(p, [0.25] * 7))
    with pytest.raises(ConfigError, match=r"layer 'ip1' param 0: the file holds 7 values for shape 1 1 4 3 \(12\)"):
        net.copy_from(path)


def test_blob_from_proto_raises_blob_error_without_location():
    proto = caffe_pb2.BlobProto()
    proto.shape.dim.extend([2, 5])
    proto.data.extend([1.0] * 3)
    with pytest.raises(BlobError) as info:
        Blob().from_proto(proto)
    assert info.value.message == "the file holds 3 values for shape 2 5 (10)" and info.value.path is None
    proto.shape.dim[:] = [2, -5]
    with pytest.raises(BlobError, match="must be >= 0"):
        Blob().from_proto(proto)
    proto.shape.dim[:] = [10 ** 12, 10 ** 12]         # checked before any allocation
    with pytest.raises(BlobError, match="holds 3 values for shape 1000000000000 1000000000000"):
        Blob().from_proto(proto)


def test_blobs_stored_in_a_net_definition_are_checked(tmp_path):
    text = (INPUT + 'layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "out"\n'
            '        blobs { shape { dim: 2 dim: 3 } data: 1 data: 2 } blobs { shape { dim: 2 } data: 0 data: 0 }\n'
            '        inner_product_param { num_output: 2 } }\n' + LOSS)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    assert str(info.value) == (f"{path}:3: layer 'ip1' (InnerProduct) param 0, stored in the net definition: "
                               "the file holds 2 values for shape 2 3 (6)")


def test_bad_caffemodel_through_the_cli_is_one_line(tmp_path):
    def truncate(param):
        del ip1(param).blobs[0].data[5:]
    _, weights = caffemodel_with(tmp_path, truncate)
    model = write(tmp_path, SMALL)
    code, err = run_cli(["test", "--model", model, "--weights", weights, "--iterations", "1"], tmp_path)
    assert_one_error_line(code, err, weights, "layer 'ip1' param 0: the file holds 5 values for shape 4 3 (12)")


# --- blobs too large for the machine ---------------------------------------------------------------------
HUGE_IP = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 500 } } }\n'
           'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
           '        inner_product_param { num_output: 2000000000 } }\n')


def test_huge_num_output_is_refused_before_allocating(tmp_path):
    path = write(tmp_path, HUGE_IP)
    with pytest.raises(ConfigError) as info:
        Net(path, TRAIN)
    message = str(info.value)
    assert message.startswith(f"{path}:2: layer 'fc' (InnerProduct): cannot allocate 4.0 TB for a blob of shape "
                              "2000000000 x 500 x 4 bytes")
    assert "num_output" in message and "batch_size" in message


def test_blob_shapes_that_cannot_be():
    with pytest.raises(AllocationError, match="cannot allocate .* for a blob of shape 4294967296 x 4294967296 x 2"):
        Blob(2 ** 32, 2 ** 32, 2)               # 2**65 values: past int64, no wrap-around to a small count
    with pytest.raises(BlobError, match="must be >= 0"):
        Blob(4, -3)
    with pytest.raises(BlobError, match="too large to index"):
        Blob(0, 2 ** 70)
    blob = Blob(2, 3)
    with pytest.raises(AllocationError):
        blob.reshape(10 ** 10, 10 ** 10)
    assert blob.shape == (2, 3) and blob.data.shape == (2, 3)    # unchanged after the refusal


def test_huge_dummy_data_and_overflowing_input_shapes(tmp_path):
    dummy = write(tmp_path, 'layer { name: "noise" type: "DummyData" top: "x"\n'
                  '  dummy_data_param { shape { dim: 100000 dim: 100000 dim: 1000 } } }\n', "dummy.prototxt")
    with pytest.raises(ConfigError, match=r"dummy.prototxt:1: layer 'noise' \(DummyData\): cannot allocate 40.0 TB"):
        Net(dummy, TRAIN)
    overflow = write(tmp_path, 'layer { name: "in" type: "Input" top: "x"\n'
                     '  input_param { shape { dim: 4294967296 dim: 4294967296 dim: 2 } } }\n', "overflow.prototxt")
    with pytest.raises(ConfigError, match=r"layer 'in' \(Input\).*cannot allocate"):
        Net(overflow, TRAIN)
    negative = write(tmp_path, 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: -3 } } }\n',
                     "negative.prototxt")
    with pytest.raises(ConfigError, match=r"negative.prototxt:1: layer 'in' \(Input\).*must be >= 0"):
        Net(negative, TRAIN)


def test_nets_larger_in_total_than_the_machine_are_refused(monkeypatch):
    monkeypatch.setattr(blob_module, "PHYSICAL_MEMORY", 100_000)        # a 100 kB machine
    one_blob = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 100 dim: 1000 } } }\n'
    with pytest.raises(ConfigError, match=r"layer 'in' \(Input\): cannot allocate 400.0 kB .* \(100.0 kB\)"):
        Net(net_from_string(one_blob), TRAIN)
    # Each top (40 kB) fits; together they do not.  The in-place ReLU's top is its bottom's memory.
    text = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 10 dim: 1000 } } }\n'
            'layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }\n'
            'layer { name: "sig" type: "Sigmoid" bottom: "x" top: "y" }\n'
            'layer { name: "tanh" type: "TanH" bottom: "y" top: "z" }\n')
    with pytest.raises(ConfigError) as info:
        Net(net_from_string(text), TRAIN)
    assert str(info.value).startswith("layer 'tanh' (TanH): the net's blobs need 120.0 kB up to this layer, "
                                      "more than this machine's memory (100.0 kB); is a num_output")
    # A shared parameter (80 kB here) is counted once.
    shared = ('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1000 } } }\n'
              + "".join(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "x" top: "{name}"\n'
                        '  param { name: "w" } param { name: "b" } inner_product_param { num_output: 20 } }\n'
                        for name in ("ip_a", "ip_b")))
    assert Net(net_from_string(shared), TRAIN).params["ip_b"][0].shape == (20, 1000)


def test_numpy_memory_error_is_caught_and_named(monkeypatch):
    real = blob_module.SyncedMemory

    def no_memory(count, dtype):
        if count > 4:
            raise MemoryError(f"Unable to allocate an array of {count} values")
        return real(count, dtype)
    monkeypatch.setattr(blob_module, "SyncedMemory", no_memory)
    with pytest.raises(ConfigError) as info:
        Net(net_from_string(SMALL), TRAIN)
    assert str(info.value).startswith("layer 'data' (Input): cannot allocate 24 B for a blob of shape 2 x 3 x 4 "
                                      "bytes: Unable to allocate an array of 6 values")


def test_a_top_growing_past_memory_in_forward_names_the_layer(monkeypatch):
    net = Net(net_from_string(SMALL), TRAIN)
    monkeypatch.setattr(blob_module, "PHYSICAL_MEMORY", 10_000)
    net.blobs["data"].reshape(400, 3)           # 4.8 kB; ip1's top (400 x 4): 6.4 kB
    net.blobs["label"].reshape(400, 2)
    net.forward()
    net.blobs["data"].reshape(800, 3)           # 9.6 kB fits; ip1's top (800 x 4) does not
    with pytest.raises(ConfigError, match=r"^layer 'ip1' \(InnerProduct\): cannot allocate 12.8 kB"):
        net.forward()


def test_huge_num_output_through_the_cli_is_one_line(tmp_path):
    path = write(tmp_path, HUGE_IP)
    code, err = run_cli(["time", "--model", path, "--iterations", "1"], tmp_path)
    assert_one_error_line(code, err, f"{path}:2", "layer 'fc'", "cannot allocate 4.0 TB")


# --- sys.exit() and KeyboardInterrupt inside a layer ------------------------------------------------------
EXITING = '''
import sys

import caffe
from dlcore.errors import Interrupted


class Exiting(caffe.Layer):
    """Passes its bottom through; from forward number int(param_str) on, it runs RAISE."""

    def setup(self, bottom, top):
        self.calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        self.calls += 1
        if self.calls >= int(self.param_str):
            RAISE
        top[0].data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff
'''

_module_count = [0]


def new_module(tmp_path, monkeypatch, text):
    """Write ``text`` as a module of a new name in ``tmp_path``; sys.path and sys.modules are
    restored after the test.  Returns the module's name."""
    _module_count[0] += 1
    module = f"exiting_{os.getpid()}_{_module_count[0]}"
    (tmp_path / f"{module}.py").write_text(text)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, module, None)      # so that monkeypatch removes it afterwards
    del sys.modules[module]
    return module


def exiting_net(tmp_path, monkeypatch, raise_statement, at=1):
    """A net with a Python layer running ``raise_statement`` from its ``at``-th forward on."""
    module = new_module(tmp_path, monkeypatch, EXITING.replace("RAISE", raise_statement))
    text = (INPUT + ip("ip1", "data", "hidden")
            + f'layer {{ name: "exit" type: "Python" bottom: "hidden" top: "out"\n'
              f'        python_param {{ module: "{module}" layer: "Exiting" param_str: "{at}" }} }}\n' + LOSS)
    return write(tmp_path, text, f"{module}.prototxt")


@pytest.mark.parametrize("statement, original", [("sys.exit(0)", SystemExit), ("sys.exit()", SystemExit),
                                                 ("raise KeyboardInterrupt", KeyboardInterrupt)])
def test_sys_exit_or_keyboard_interrupt_in_a_python_layer_is_a_layer_failure(tmp_path, monkeypatch, statement,
                                                                              original):
    net = Net(exiting_net(tmp_path, monkeypatch, statement), TRAIN)
    with pytest.raises(PluginError) as info:
        net.forward()
    err = info.value
    assert isinstance(err, DLTrainError)
    assert not isinstance(err, (SystemExit, KeyboardInterrupt))     # neither a silent exit 0 nor a Ctrl-C
    assert isinstance(err.original, original) and err.__cause__ is err.original
    assert err.layer_name == "exit" and err.stage == "forward"
    assert str(err).startswith("layer 'exit' (type 'Python', module 'exiting_")
    assert f"raised in forward: {original.__name__}" in str(err)


def test_sys_exit_in_python_layer_setup_is_a_layer_failure(tmp_path, monkeypatch):
    module = new_module(tmp_path, monkeypatch,
                        EXITING.replace("def setup(self, bottom, top):\n        self.calls = 0",
                                        "def setup(self, bottom, top):\n        sys.exit(3)"))
    net_text = (INPUT + f'layer {{ name: "exit" type: "Python" bottom: "data" top: "out"\n'
                f'  python_param {{ module: "{module}" layer: "Exiting" param_str: "1" }} }}\n')
    with pytest.raises(PluginError) as info:
        Net(write(tmp_path, net_text, "setup.prototxt"), TRAIN)
    assert isinstance(info.value.original, SystemExit) and info.value.original.code == 3
    assert info.value.stage == "setup" and not isinstance(info.value, SystemExit)


def test_the_users_ctrl_c_passes_through_a_python_layer_untouched(tmp_path, monkeypatch):
    net = Net(exiting_net(tmp_path, monkeypatch, "raise Interrupted"), TRAIN)
    with pytest.raises(Interrupted) as info:
        net.forward()
    assert type(info.value) is Interrupted and isinstance(info.value, KeyboardInterrupt)


@pytest.fixture
def isolated_registry(monkeypatch):
    registry._load_builtins()
    monkeypatch.setattr(registry, "_LAYERS", dict(registry._LAYERS))


def test_plugin_layer_exiting_in_a_later_reshape_or_backward_is_a_layer_failure(isolated_registry):
    @register_layer("ExitLater")
    class ExitLater(Layer):
        exact_num_bottom_blobs = exact_num_top_blobs = 1
        reshapes = 0

        def reshape(self, bottom, top):
            ExitLater.reshapes += 1
            if ExitLater.reshapes == 3:
                sys.exit(0)
            top[0].reshape_like(bottom[0])

        def forward_cpu(self, bottom, top):
            top[0].data[...] = bottom[0].data

        def backward_cpu(self, top, propagate_down, bottom):
            raise KeyboardInterrupt

    text = (INPUT + 'layer { name: "later" type: "ExitLater" bottom: "data" top: "out" }\n'
            'layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "data" top: "loss" }\n'
            'layer { name: "sink" type: "Silence" bottom: "label" }\nforce_backward: true\n')
    net = Net(net_from_string(text), TRAIN)           # reshape 1 (setup)
    net.forward()                                     # reshape 2
    with pytest.raises(PluginError) as info:
        net.backward()
    assert isinstance(info.value.original, KeyboardInterrupt) and info.value.stage == "backward"
    assert not isinstance(info.value, KeyboardInterrupt)
    with pytest.raises(PluginError) as info:
        net.forward()                                 # reshape 3
    assert isinstance(info.value.original, SystemExit) and info.value.stage == "reshape"
    assert "layer 'later' (type 'ExitLater'" in str(info.value)


def test_second_ctrl_c_raises_interrupted():
    from dltrain.solvers.signals import SignalHandler, raise_interrupted
    handler = SignalHandler()
    handler._handle(signal.SIGINT, None)              # the first: a stop request
    assert handler.requested_action() == "stop"
    with pytest.raises(Interrupted):
        handler._handle(signal.SIGINT, None)
    with pytest.raises(Interrupted):
        raise_interrupted(signal.SIGINT, None)


SOLVER = """net: "NET"
base_lr: 0.01
lr_policy: "fixed"
display: 1
max_iter: 10
snapshot_prefix: "snap/run"
solver_mode: CPU
"""


def test_sys_exit_0_in_a_python_layer_during_train_exits_non_zero(tmp_path, monkeypatch):
    net = exiting_net(tmp_path, monkeypatch, "sys.exit(0)", at=4)
    (tmp_path / "solver.prototxt").write_text(SOLVER.replace("NET", os.path.basename(net)))
    code, err = run_cli(["train", "--solver", "solver.prototxt"], tmp_path)
    assert code != 0
    assert_one_error_line(code, err, "layer 'exit' (type 'Python'", "raised in forward: SystemExit")
    # As for Ctrl-C: a snapshot of the last completed iteration (forward number 4 is iteration 3's).
    assert sorted(os.listdir(tmp_path / "snap")) == ["run_iter_3.caffemodel", "run_iter_3.solverstate",
                                                     "run_log.jsonl"]


# --- `dltrain time` ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("iterations", ["0", "-3"])
def test_time_needs_at_least_one_iteration(tmp_path, capsys, iterations):
    path = write(tmp_path, SMALL)
    assert main(["time", "--model", path, "--iterations", iterations]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dltrain: error: --iterations must be at least 1 (got {iterations})"]

