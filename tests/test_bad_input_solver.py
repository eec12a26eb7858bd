"""Bad solver settings and bad names that the fuzz test found: each one clean line through the CLI."""
import sys

import pytest

from dlcore import ConfigError, DLTrainError, Net, TRAIN
from dlcore.config import net_from_string
from dltrain.cli.main import main, one_line
from dltrain.solvers import get_solver

NET = """
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "out"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "label" top: "loss" }
"""


def solver_file(tmp_path, settings):
    (tmp_path / "net.prototxt").write_text(NET)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'net: "{tmp_path}/net.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 2 solver_mode: CPU '
                    f'snapshot_prefix: "{tmp_path}/snap" {settings}')
    return str(path)


@pytest.mark.parametrize("solver_type", ["AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_a_zero_delta_is_refused_where_it_divides(tmp_path, solver_type):
    with pytest.raises(ConfigError, match=f"delta must be positive for {solver_type}"):
        get_solver(solver_file(tmp_path, f'type: "{solver_type}" delta: 0'))


def test_sgd_ignores_delta(tmp_path):
    assert get_solver(solver_file(tmp_path, 'type: "SGD" delta: 0')).param.delta == 0


def test_an_error_quoting_a_newline_stays_on_one_line(tmp_path, capsys):
    (tmp_path / "net.prototxt").write_text(NET.replace('type: "InnerProduct"', 'type: "C:\\nul"'))
    assert main(["time", "--model", str(tmp_path / "net.prototxt")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dltrain: error:") and "C:\\nul" in err[0]
    assert one_line(ValueError("a\tb\rc")) == "a\\tb\\rc"


def test_a_nul_byte_in_the_snapshot_prefix_is_a_config_error(tmp_path):
    path = solver_file(tmp_path, "snapshot: 1")
    text = open(path).read().replace(f'snapshot_prefix: "{tmp_path}/snap"', 'snapshot_prefix: "a\\000b"')
    open(path, "w").write(text)
    with pytest.raises(ConfigError, match="cannot write to snapshot prefix"):
        get_solver(path)


def test_a_test_output_that_changes_size_is_an_error(tmp_path):
    net = NET + 'layer { name: "pick" type: "Python" bottom: "out" top: "varying" include { phase: TEST } ' \
                'python_param { module: "varying_output" layer: "Varying" } }\n'
    (tmp_path / "varying_output.py").write_text(
        "import caffe\n\nclass Varying(caffe.Layer):\n"
        "    def setup(self, bottom, top):\n        self.calls = 0\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(1 + self.calls % 2)\n"
        "    def forward(self, bottom, top):\n        self.calls += 1\n        top[0].reshape(self.calls)\n"
        "        top[0].data[...] = 1\n"
        "    def backward(self, top, propagate_down, bottom):\n        pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        path = solver_file(tmp_path, "test_iter: 3 test_interval: 1 test_initialization: true")
        (tmp_path / "net.prototxt").write_text(net)
        solver = get_solver(path)
        with pytest.raises(DLTrainError, match="output 'varying' has 2 values in test iteration 1, 1 before"):
            solver.solve()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("varying_output", None)


def test_a_shared_helper_error_in_setup_names_the_layer():
    text = NET.replace('weight_filler { type: "gaussian" std: 0.1 }', 'weight_filler { type: "gaussian" std: -1 }')
    with pytest.raises(ConfigError, match="layer 'ip' \\(InnerProduct\\): "):
        Net(net_from_string(text), TRAIN)
