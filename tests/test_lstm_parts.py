"""The LSTM's CPU passes in parts (layers/recurrent.py): split across threads or run in order, same numbers.

The hidden units are split into P parts whose steps run side by side on
Numba's threads, or one after another (PartsSchedule picks by time).  These
tests check that every split and both schedules give the same top and
gradients, bit for bit between the schedules, and that the schedule picks
the faster mode.
"""
import numpy as np
import pytest

from dlcore.blob import Blob
from dltrain.layers.recurrent import PartsSchedule

from test_recurrent import blob, make_layer

T, N, D, H = 4, 3, 5, 8
CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=float)


def run(dtype, parts, parallel, monkeypatch, static=False, expose=False):
    """Forward + backward of one LSTM with fixed weights and data; returns the top, the bottoms' and params' diffs."""
    monkeypatch.setenv("DLTRAIN_LSTM_PARTS", str(parts))
    rng = np.random.default_rng(7)
    layer = make_layer("LSTM", dtype, num_output=H, expose_hidden=expose, low=-0.6, high=0.6)
    bottom = [blob(rng.uniform(-1, 1, (T, N, D)), dtype), blob(CONT, dtype)]
    if static:
        bottom.append(blob(rng.uniform(-1, 1, (N, 2)), dtype))
    if expose:
        bottom += [blob(rng.uniform(-1, 1, (1, N, H)), dtype) for _ in range(2)]
    top = [Blob(1, dtype=dtype) for _ in range(3 if expose else 1)]
    layer.setup(bottom, top)
    layer.reshape(bottom, top)
    for b in layer.blobs:                       # the same weights in every run
        b.data[...] = rng.uniform(-0.6, 0.6, b.shape)
    schedule = PartsSchedule()
    schedule.pick = lambda: parallel             # this test's mode, every pass
    layer._schedule = schedule
    layer.forward(bottom, top)
    assert layer._P == parts and layer._parallel == (parallel and parts > 1)
    for t in top:
        t.diff[...] = rng.uniform(-1, 1, t.shape)
    for b in layer.blobs:
        b.diff[...] = 0
    down = [True, False] + [True] * (len(bottom) - 2)
    layer.backward(top, down, bottom)
    return ([t.data.copy() for t in top], [b.diff.copy() for b in layer.blobs],
            [b.diff.copy() for k, b in enumerate(bottom) if down[k]])


@pytest.mark.parametrize("static,expose", [(False, False), (True, True)])
def test_parts_and_schedules_agree(monkeypatch, static, expose):
    ref = run(np.float64, 1, False, monkeypatch, static, expose)
    for parts in (2, 4):
        serial = run(np.float64, parts, False, monkeypatch, static, expose)
        parallel = run(np.float64, parts, True, monkeypatch, static, expose)
        for a, b, c in zip(ref, serial, parallel):
            for x, y, z in zip(a, b, c):
                np.testing.assert_array_equal(y, z)          # the schedule never changes a bit
                np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-13)   # the split only the sums' order


def test_float32_parts_agree(monkeypatch):
    ref = run(np.float32, 1, False, monkeypatch)
    got = run(np.float32, 2, True, monkeypatch)
    for a, b in zip(ref, got):
        for x, y in zip(a, b):
            np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def test_default_parts_keep_32_units(monkeypatch):
    monkeypatch.delenv("DLTRAIN_LSTM_PARTS", raising=False)
    layer = make_layer("LSTM", np.float32, num_output=8)
    layer.setup([blob(np.zeros((2, 1, 3))), blob(np.zeros((2, 1)))], [Blob(1)])
    assert layer._parts() == 1                          # 8 units: too few to split
    monkeypatch.setenv("DLTRAIN_LSTM_PARTS", "3")
    assert layer._parts() == 2                          # the most parts <= 3 that divide 8
    monkeypatch.setenv("DLTRAIN_LSTM_PARTS", "two")
    with pytest.raises(Exception, match="DLTRAIN_LSTM_PARTS"):
        layer._parts()


def test_schedule_keeps_the_faster_mode():
    schedule = PartsSchedule()
    schedule.probe_every = 4
    seconds = {True: 5.0, False: 1.0}                   # in order is faster (a busy machine)
    modes = []
    for _ in range(12):
        mode = schedule.pick()
        modes.append(mode)
        schedule.record(mode, seconds[mode])
    # 1st pass side by side (untimed: compilation), 2nd the other mode, 3rd side by side timed;
    # then the faster (in order), probing side by side again at pass 4, then 8 (each probe that
    # confirms the mode doubles the wait), next at 16
    assert modes == [True, False, True, True, False, False, False, True, False, False, False, False]
    assert schedule.growth == 4
    assert schedule.parallel is False
    seconds = {True: 1.0, False: 5.0}                   # the machine became idle: back to side by side
    for _ in range(8):
        mode = schedule.pick()
        schedule.record(mode, seconds[mode])
    # found at the probe of pass 16 (the wait back to 4 passes), confirmed at pass 20 (8)
    assert schedule.parallel is True and schedule.growth == 2


NET_WITH_LSTM = """
layer { name: "in" type: "Input" top: "x" top: "cont"
        input_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 8 weight_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y" inner_product_param { num_output: %d axis: 2 } }
"""


@pytest.mark.parametrize("parts,ip_outputs,single", [(1, 2, False), (2, 2, True), (2, 100, False)])
def test_net_keeps_numpy_blas_on_one_thread_beside_lstm_parts(monkeypatch, tmp_path, parts, ip_outputs, single):
    """OpenBLAS's idle pool threads spin after each call: a net whose LSTM runs parts on Numba's
    threads and does most of the net's matrix work (LSTM 3*2*32*(4+8) = 2,304 multiply-adds against
    the InnerProduct's 6*8*ip_outputs) runs its passes with NumPy's BLAS on one thread; otherwise
    (one part, or the InnerProduct outweighs it) BLAS keeps its threads."""
    from dlcore import TEST
    from dlcore.net import Net
    from dltrain.layers import blas_threads
    if not blas_threads.controllable():
        pytest.skip("no BLAS whose threads threadpoolctl can set")
    monkeypatch.setenv("DLTRAIN_LSTM_PARTS", str(parts))
    path = tmp_path / "net.prototxt"
    path.write_text(NET_WITH_LSTM % ip_outputs)
    net = Net(str(path), TEST)
    assert net.layers[1].runs_numba_threads == (parts > 1)
    assert net.layers[1].matrix_work() == 2304 and net.layers[2].matrix_work() == 48 * ip_outputs
    seen = []
    net.before_forward(lambda i: seen.append(blas_threads.thread_counts()))
    net.before_backward(lambda i: seen.append(blas_threads.thread_counts()))
    with blas_threads._blas().limit(limits=2, user_api="blas"):
        outside = blas_threads.thread_counts()
        net.forward()
        net.backward()
        assert blas_threads.thread_counts() == outside          # restored after the passes
    want = [1] * len(outside) if single else outside
    assert seen and all(counts == want for counts in seen)


def test_matrix_work_counts_forward_multiply_adds(tmp_path):
    """What a net weighs (Layer.matrix_work): weights x positions x images for (de)convolutions, weights x
    rows for InnerProduct, 0 for layers without matrix products."""
    from dlcore import TEST
    from dlcore.net import Net
    path = tmp_path / "net.prototxt"
    path.write_text("""
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 6 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        convolution_param { num_output: 2 kernel_size: 3 } }
layer { name: "deconv" type: "Deconvolution" bottom: "c" top: "d"
        convolution_param { num_output: 7 kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "d" top: "y" inner_product_param { num_output: 5 } }
""")
    net = Net(str(path), TEST)
    conv, deconv, ip = (net.layer_dict[name] for name in ("conv", "deconv", "ip"))
    assert net.layer_dict["in"].matrix_work() == 0
    assert conv.matrix_work() == (2 * 3 * 3 * 3) * 4 * (4 * 3)           # output 4x3 per image
    assert deconv.matrix_work() == (2 * 7 * 2 * 2) * 4 * (4 * 3)         # its input is conv's 4x3 output
    assert ip.matrix_work() == (5 * 7 * 8 * 6) * 4                       # deconv's top: 7 x 8 x 6
