"""Loading configs: prototxt, YAML and binary, with located errors."""

import glob
import os
import textwrap

import pytest

from dlcore import config
from dlcore.errors import ConfigError
from dltrain.proto import caffe_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = textwrap.dedent("""\
    name: "LeNet"
    layer {
      name: "mnist"
      type: "Data"
      top: "data"
      top: "label"
      include { phase: TRAIN }
      transform_param { scale: 0.00390625 mirror: false mean_value: 0.1 mean_value: 104 }
      data_param { source: "train_lmdb" batch_size: 64 backend: LMDB }
    }
    layer {
      name: "mnist"
      type: "Data"
      top: "data"
      top: "label"
      include { phase: TEST stage: "val" }
      exclude { not_stage: "deploy" min_level: -1 }
      data_param { source: "test_lmdb" batch_size: 100 backend: LMDB }
    }
    layer {
      name: "conv1"
      type: "Convolution"
      bottom: "data"
      top: "conv1"
      param { lr_mult: 1 name: "w" share_mode: PERMISSIVE }
      param { lr_mult: 2 decay_mult: 0 }
      convolution_param {
        num_output: 20
        kernel_size: 5
        stride: 1
        pad: 0 pad: 1
        weight_filler { type: "xavier" variance_norm: AVERAGE }
        bias_filler { type: "constant" value: 0.1 }
      }
    }
    layer {
      name: "pool1"
      type: "Pooling"
      bottom: "conv1"
      top: "pool1"
      pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR }
    }
    layer {
      name: "loss"
      type: "SoftmaxWithLoss"
      bottom: "pool1"
      bottom: "label"
      top: "loss"
      loss_weight: 1
      propagate_down: true
      propagate_down: false
      loss_param { ignore_label: -1 normalization: VALID }
    }
    layer {
      name: "py"
      type: "Python"
      bottom: "pool1"
      top: "out"
      python_param { module: "m" layer: "L" param_str: "{'a': 1, \\"b\\": [2]}\\nsecond line" }
    }
    layer {
      name: "blobby"
      type: "Parameter"
      top: "p"
      blobs { shape { dim: 2 dim: 1 } data: 0.1 data: -3.5e-12 double_data: 0.1 }
      clip_param { min: -1e-8 max: 0.999 }
    }
    """)

SOLVER = textwrap.dedent("""\
    net: "lenet_train_test.prototxt"
    test_iter: 100
    test_interval: 500
    base_lr: 0.01
    momentum: 0.9
    momentum2: 0.999
    delta: 1e-8
    weight_decay: 0.0005
    lr_policy: "multistep"
    stepvalue: 1000
    stepvalue: 2000
    gamma: 0.1
    power: 0.75
    display: 100
    max_iter: 10000
    snapshot: 5000
    snapshot_prefix: "examples/mnist/lenet"
    solver_mode: CPU
    type: "Adam"
    clip_gradients: 35.5
    random_seed: 1701
    test_initialization: false
    train_state { phase: TRAIN stage: "a" }
    """)


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------

def test_net_text_yaml_round_trip():
    net = config.net_from_string(NET)
    assert len(net.layer) == 7
    yaml_text = config.to_yaml(net)
    back = config.net_from_string(yaml_text, fmt="yaml")
    assert back == net
    # and back to prototxt, and parse again
    again = config.net_from_string(config.to_prototxt(back))
    assert again == net
    # spot checks
    assert net.layer[0].include[0].phase == caffe_pb2.TRAIN
    assert back.layer[2].param[0].share_mode == caffe_pb2.ParamSpec.PERMISSIVE
    assert back.layer[5].python_param.param_str.endswith("\nsecond line")


def test_floats_keep_float32_values():
    net = config.net_from_string(NET)
    yaml_text = config.to_yaml(net)
    # the shortest decimal is written, not the float32's full expansion
    assert "0.1" in yaml_text and "0.10000000149" not in yaml_text
    assert "scale: 0.00390625" in yaml_text
    back = config.net_from_string(yaml_text, fmt="yaml")
    assert back.layer[6].clip_param.min == net.layer[6].clip_param.min
    assert back.layer[6].blobs[0].double_data[0] == 0.1


def test_solver_text_yaml_round_trip():
    solver = config.solver_from_string(SOLVER)
    assert solver.solver_mode == caffe_pb2.SolverParameter.CPU
    assert list(solver.stepvalue) == [1000, 2000]
    yaml_text = config.to_yaml(solver)
    back = config.solver_from_string(yaml_text, fmt="yaml")
    assert back == solver
    assert config.solver_from_string(config.to_prototxt(back)) == solver


def test_yaml_written_by_hand():
    text = textwrap.dedent("""\
        name: tiny
        layer:
          - name: data
            type: Input
            top: data               # a single value for a repeated field
            input_param:
              shape: {dim: [1, 3, 8, 8]}
          - name: ip
            type: InnerProduct
            bottom: [data]
            top: [ip]
            param: [{lr_mult: 1}, {lr_mult: 2, decay_mult: 0}]
            inner_product_param:
              num_output: 10
              weight_filler: {type: gaussian, std: 1e-2}
              bias_term: yes
            include: {phase: 1}     # enum by number
            loss_weight: 1
          - name: relu
            type: ReLU
            bottom: ip
            top: ip
            relu_param: {}
        """)
    net = config.net_from_string(text, fmt="yaml")
    assert list(net.layer[0].top) == ["data"]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    ip = net.layer[1]
    assert ip.inner_product_param.weight_filler.std == pytest.approx(0.01)
    assert ip.inner_product_param.bias_term is True
    assert ip.include[0].phase == caffe_pb2.TEST
    assert list(ip.loss_weight) == [1.0]
    assert net.layer[2].HasField("relu_param")
    # equals the same net written as prototxt
    proto = config.net_from_string(config.to_prototxt(net))
    assert proto == net


def test_yaml_anchors_and_merge_keys():
    text = textwrap.dedent("""\
        layer:
          - &base
            name: a
            type: ReLU
            param: &p [{lr_mult: 1}]
          - <<: *base
            name: b
            param: *p
        """)
    net = config.net_from_string(text, fmt="yaml")
    assert [l.name for l in net.layer] == ["a", "b"]
    assert net.layer[1].type == "ReLU"
    assert net.layer[1].param[0].lr_mult == 1


def test_bytes_in_yaml():
    datum = caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes([0, 255, 7, 10]),
                            label=3, float_data=[0.1, 1e-8], encoded=False)
    text = config.to_yaml(datum)
    assert "!!binary" in text
    assert config.parse_yaml(text, caffe_pb2.Datum) == datum
    printable = caffe_pb2.Datum(data=b"hello: world")
    text = config.to_yaml(printable)
    assert "!!binary" not in text
    assert config.parse_yaml(text, caffe_pb2.Datum) == printable
    assert config.parse_yaml("data: abc", caffe_pb2.Datum).data == b"abc"
    # and in prototxt
    assert config.parse_text(config.to_prototxt(datum), caffe_pb2.Datum) == datum


def test_empty_yaml_is_empty_message():
    assert config.net_from_string("", fmt="yaml") == caffe_pb2.NetParameter()
    assert config.to_yaml(caffe_pb2.NetParameter()).strip() == "{}"


def test_unknown_format_name():
    with pytest.raises(ValueError):
        config.net_from_string("name: 'x'", fmt="json")


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------

def test_load_by_extension(tmp_path):
    net = config.net_from_string(NET)
    (tmp_path / "n.prototxt").write_text(config.to_prototxt(net))
    (tmp_path / "n.yaml").write_text(config.to_yaml(net))
    (tmp_path / "n.yml").write_text(config.to_yaml(net))
    (tmp_path / "n.caffemodel").write_bytes(net.SerializeToString())
    (tmp_path / "n.weird").write_text(config.to_prototxt(net))
    (tmp_path / "b.weird").write_bytes(net.SerializeToString())
    for name in ("n.prototxt", "n.yaml", "n.yml", "n.caffemodel", "n.weird", "b.weird"):
        assert config.load_net(tmp_path / name) == net, name


def test_binary_round_trip(tmp_path):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend([0.1 * i for i in range(6)])
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(blob.SerializeToString())
    back = config.load_message(path, caffe_pb2.BlobProto)
    assert back == blob
    state = caffe_pb2.SolverState(iter=10, learned_net="x.caffemodel", current_step=1)
    state.history.add().CopyFrom(blob)
    spath = tmp_path / "x.solverstate"
    spath.write_bytes(state.SerializeToString())
    assert config.load_message(spath, caffe_pb2.SolverState) == state
    # binary -> yaml -> binary
    assert config.parse_yaml(config.to_yaml(state), caffe_pb2.SolverState) == state


def test_load_solver_resolve_paths(tmp_path, monkeypatch):
    (tmp_path / "net.prototxt").write_text('name: "n"')
    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.1\n')
    monkeypatch.chdir("/")
    solver = config.load_solver(tmp_path / "solver.prototxt", resolve_paths=True)
    assert solver.net == str(tmp_path / "net.prototxt")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def _error(text, fmt="prototxt", cls=caffe_pb2.NetParameter, filename="net.prototxt"):
    with pytest.raises(ConfigError) as info:
        config.message_from_string(text, cls, fmt, filename)
    return info.value


@pytest.mark.parametrize("text, line, column, field, words", [
    ('name: "x"\nlayer {\n  name: "c"\n  convolution_param {\n    kernal_size: 3\n  }\n}\n',
     5, 5, "kernal_size", ["unknown field 'kernal_size' in ConvolutionParameter"]),
    ('layer {\n  pooling_param {\n    pool: MAXX\n  }\n}\n',
     3, 11, "pool", ["'MAXX'", "PoolingParameter.PoolMethod", "MAX, AVE, STOCHASTIC"]),
    ('layer {\n  convolution_param { num_output: abc }\n}\n',
     2, 35, "num_output", ["num_output", "abc"]),
    ('layer {\n  convolution_param { num_output: -3 }\n}\n',
     2, 35, "num_output", ["num_output", "out of range"]),
    ('layer {\n  name: "a"\n  name: "b"\n}\n',
     3, 9, "name", ["'name'", "more than once"]),
    ('layer {\n  name: "a"\n', 2, None, None, ["Expected"]),
    ('layer {\n  include { phase: 5 }\n}\n',
     2, 20, "phase", ["5", "Phase", "TRAIN, TEST"]),
    ('force_backward: maybe\n', 1, 17, "force_backward", ["force_backward"]),
])
def test_text_errors(text, line, column, field, words):
    err = _error(text)
    assert err.path == "net.prototxt"
    assert err.line == line
    if column is not None:
        assert err.column == column
    if field is not None:
        assert err.field == field
    message = str(err)
    assert message.startswith(f"net.prototxt:{line}:")
    for word in words:
        assert word in message


def test_text_missing_required_field():
    err = _error('layer {\n  name: "c1"\n  type: "Clip"\n  clip_param { min: 1 }\n}\n')
    assert "clip_param.max" in str(err)
    assert "c1" in str(err)
    assert err.line == 2


@pytest.mark.parametrize("text, line, column, field, words", [
    ("layer:\n  - name: c\n    convolution_param:\n      kernal_size: 3\n",
     4, 7, "kernal_size", ["unknown field 'kernal_size' in ConvolutionParameter"]),
    ("layer:\n  - pooling_param: {pool: MAXX}\n",
     2, 27, "pool", ["'MAXX'", "PoolingParameter.PoolMethod"]),
    ("layer:\n  - convolution_param:\n      num_output: abc\n",
     3, 19, "num_output", ["integer", "'abc'"]),
    ("layer:\n  - convolution_param:\n      num_output: -3\n",
     3, 19, "num_output", ["out of range"]),
    ("layer:\n  - convolution_param:\n      num_output: '3'\n",
     3, 19, "num_output", ["quoted"]),
    ("layer:\n  - name: a\n    name: b\n", 3, 5, "name", ["more than once"]),
    ("layer:\n  - name: [a, b]\n", 2, 11, "name", ["not repeated"]),
    ("layer:\n  - name: a\n   bad indent: x\n", 3, None, None, ["YAML syntax error"]),
    ("force_backward: maybe\n", 1, 17, "force_backward", ["true or false"]),
    ("layer:\n  - transform_param: 3\n", 2, 22, None, ["expected a mapping"]),
    ("layer:\n  - clip_param: {min: 1}\n", 2, 17, "max", ["required", "max"]),
    ("layer:\n  - loss_weight: [1, x]\n", 2, 22, "loss_weight", ["number"]),
    ("layer:\n  - include: {phase: 7}\n", 2, 22, "phase", ["7", "Phase"]),
    ("layer:\n  - name: !!python/object:os.system x\n", 2, 11, "name", ["tag"]),
    ("- a\n- b\n", 1, 1, None, ["expected a mapping"]),
])
def test_yaml_errors(text, line, column, field, words):
    err = _error(text, fmt="yaml", filename="net.yaml")
    assert err.path == "net.yaml"
    assert err.line == line
    if column is not None:
        assert err.column == column
    if field is not None:
        assert err.field == field
    for word in words:
        assert word in str(err)
    assert str(err).startswith(f"net.yaml:{line}:")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load_net(tmp_path / "missing.prototxt")
    assert "missing.prototxt" in str(info.value)
    assert "cannot read" in str(info.value)

    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff\xff\xff\xff")
    with pytest.raises(ConfigError) as info:
        config.load_net(bad)
    assert str(info.value).startswith(str(bad) + ": ")
    assert "NetParameter" in str(info.value)

    partial = caffe_pb2.LayerParameter()
    partial.clip_param.min = 1
    part = tmp_path / "part.pb"
    part.write_bytes(partial.SerializePartialToString())
    with pytest.raises(ConfigError) as info:
        config.load_message(part, caffe_pb2.LayerParameter)
    assert "clip_param.max" in str(info.value)

    latin = tmp_path / "latin.prototxt"
    latin.write_bytes(b'name: "x"\nname2: "\xe9"\n')
    with pytest.raises(ConfigError) as info:
        config.load_net(latin)
    assert info.value.line == 2

    typo = tmp_path / "typo.prototxt"
    typo.write_text('name: "x"\nlayer {\n  nme: "c"\n}\n')
    with pytest.raises(ConfigError) as info:
        config.load_net(typo)
    assert str(info.value) == f"{typo}:3:3: unknown field 'nme' in LayerParameter"

    garbage = tmp_path / "garbage.unknown"
    garbage.write_text("this is not { a net")
    with pytest.raises(ConfigError) as info:
        config.load_net(garbage)
    assert info.value.line == 1


# ---------------------------------------------------------------------------
# solver net paths
# ---------------------------------------------------------------------------

def test_solver_paths_cwd_first(tmp_path, monkeypatch):
    solver_dir = tmp_path / "solver_dir"
    work = tmp_path / "work"
    solver_dir.mkdir()
    work.mkdir()
    (solver_dir / "net.prototxt").write_text("")
    (work / "net.prototxt").write_text("")
    (solver_dir / "test.prototxt").write_text("")
    solver_path = solver_dir / "solver.prototxt"
    solver_path.write_text('net: "net.prototxt"\ntest_net: "test.prototxt"\n')
    monkeypatch.chdir(work)
    solver = config.load_solver(solver_path)
    config.resolve_solver_net_paths(solver, solver_path)
    assert solver.net == str(work / "net.prototxt")            # cwd wins
    assert list(solver.test_net) == [str(solver_dir / "test.prototxt")]  # fallback


def test_solver_paths_solver_folder_and_absolute(tmp_path, monkeypatch):
    (tmp_path / "train.prototxt").write_text("")
    other = tmp_path / "elsewhere"
    other.mkdir()
    absolute = other / "abs.prototxt"
    absolute.write_text("")
    solver_path = tmp_path / "solver.yaml"
    solver_path.write_text(f"train_net: train.prototxt\ntest_net: [{absolute}]\n")
    monkeypatch.chdir(other)
    solver = config.load_solver(solver_path)
    out = config.resolve_solver_net_paths(solver, solver_path)
    assert out is solver
    assert solver.train_net == str(tmp_path / "train.prototxt")
    assert list(solver.test_net) == [str(absolute)]


def test_solver_paths_missing(tmp_path, monkeypatch):
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text('base_lr: 0.1\n\ntest_net: "nope.prototxt"\n')
    monkeypatch.chdir(tmp_path)
    solver = config.load_solver(solver_path)
    before = caffe_pb2.SolverParameter()
    before.CopyFrom(solver)
    with pytest.raises(ConfigError) as info:
        config.resolve_solver_net_paths(solver, solver_path)
    err = info.value
    assert err.path == str(solver_path)
    assert err.line == 3
    assert "test_net" in str(err) and "nope.prototxt" in str(err)
    assert solver == before  # nothing half-resolved


# ---------------------------------------------------------------------------
# layer lines
# ---------------------------------------------------------------------------

def test_find_layer_line_prototxt(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(textwrap.dedent("""\
        name: "conv1"   # the net's name, not a layer's
        layer {
          name: "data"
          type: "Input"
          param { name: "conv1" }  # a param name, not a layer's
        }
        layer { # comment with name: "conv1"
          type: "Convolution"
          name: 'conv1'
        }
        layer { name: "relu1" type: "ReLU" }
        """))
    assert config.find_layer_line(path, "data") == 3
    assert config.find_layer_line(path, "conv1") == 9
    assert config.find_layer_line(path, "relu1") == 11
    assert config.find_layer_line(path, "nope") is None
    assert config.find_layer_line(tmp_path / "missing.prototxt", "x") is None


def test_find_layer_line_yaml(tmp_path):
    path = tmp_path / "net.yaml"
    path.write_text(textwrap.dedent("""\
        name: conv1
        layer:
          - name: data
            type: Input
          - type: Convolution
            param: [{name: conv1}]
            name: conv1
        """))
    assert config.find_layer_line(path, "data") == 3
    assert config.find_layer_line(path, "conv1") == 7


# ---------------------------------------------------------------------------
# shipped configs
# ---------------------------------------------------------------------------

def _shipped_configs():
    found = []
    for pattern in ("*.prototxt", "*.yaml", "*.yml"):
        found.extend(glob.glob(os.path.join(ROOT, "configs", "**", pattern), recursive=True))
    return sorted(found)


def _message_class_for(path):
    name = os.path.basename(path).lower()
    return caffe_pb2.SolverParameter if "solver" in name else caffe_pb2.NetParameter


@pytest.mark.parametrize("path", _shipped_configs(),
                         ids=lambda p: os.path.relpath(p, ROOT))
def test_shipped_configs_round_trip(path):
    cls = _message_class_for(path)
    message = config.load_message(path, cls)
    assert config.parse_yaml(config.to_yaml(message), cls, path) == message
    assert config.parse_text(config.to_prototxt(message), cls, path) == message
