"""Every layer's CUDA kernels against its CPU code, on tiny shapes, float32 and float64.

Runs under Numba's CUDA simulator or on a real GPU (see tests/cuda_support.py);
skipped in the plain CPU run.
"""
import numpy as np
import pytest

from cuda_support import compare_layer, needs_cuda

pytestmark = needs_cuda

F32, F64 = np.float32, np.float64
BOTH = pytest.mark.parametrize("dtype", [F32, F64])


# --- neurons -----------------------------------------------------------------------------

@BOTH
def test_relu(dtype):
    compare_layer('type: "ReLU"', [(2, 3, 4)], dtype)
    compare_layer('type: "ReLU" relu_param { negative_slope: 0.1 }', [(5, 7)], dtype)


def test_relu_in_place():
    # in place: top is bottom; backward uses the output's sign
    from dlcore import Blob
    from cuda_support import make_layer
    layer, bottom, _ = make_layer('type: "ReLU" relu_param { negative_slope: 0.2 }', [(4, 5)], F64)
    x = bottom[0].data.copy()
    layer.gpu = True
    layer.forward(bottom, bottom)
    np.testing.assert_allclose(bottom[0].data, np.where(x > 0, x, 0.2 * x))
    bottom[0].diff[...] = 1.0
    layer.backward(bottom, [True], bottom)
    np.testing.assert_allclose(bottom[0].diff, np.where(x > 0, 1.0, 0.2))
    assert isinstance(bottom[0], Blob)


@BOTH
def test_sigmoid_tanh(dtype):
    compare_layer('type: "Sigmoid"', [(3, 11)], dtype, fill=(-6, 6))
    compare_layer('type: "TanH"', [(3, 11)], dtype, fill=(-4, 4))


@BOTH
def test_dropout_matches_cpu_mask(dtype):
    # the GPU draws the mask from the same RNG as the CPU: identical results
    compare_layer('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [(4, 9)], dtype)
    compare_layer('type: "Dropout" dropout_param { dropout_ratio: 0.5 } phase: TEST', [(4, 9)], dtype)


# --- softmax, losses, accuracy --------------------------------------------------------------

@BOTH
def test_softmax(dtype):
    compare_layer('type: "Softmax"', [(3, 5)], dtype, fill=(-3, 3))
    compare_layer('type: "Softmax" softmax_param { axis: 1 }', [(2, 4, 3, 2)], dtype, fill=(-3, 3))


@BOTH
def test_softmax_with_loss(dtype):
    compare_layer('type: "SoftmaxWithLoss"', [(6, 5), (6,)], dtype, integer_bottoms={1: 5}, fill=(-3, 3))
    # spatial, ignore_label, VALID normalization, the probability top
    compare_layer('type: "SoftmaxWithLoss" top: "loss" top: "prob" loss_param { ignore_label: 1 normalization: VALID }',
                  [(2, 4, 3, 2), (2, 3, 2)], dtype, integer_bottoms={1: 4}, fill=(-3, 3), skip_tops=(1,))


def test_softmax_with_loss_bad_label_is_an_error():
    from dlcore import DLTrainError
    from cuda_support import make_layer
    layer, bottom, top = make_layer('type: "SoftmaxWithLoss"', [(3, 4), (3,)], F32, bottom_data={1: [0, 7, 1]})
    layer.gpu = True
    with pytest.raises(DLTrainError, match="label 7 at position 1 of bottom 1"):
        layer.forward(bottom, top)


@BOTH
def test_euclidean_loss(dtype):
    compare_layer('type: "EuclideanLoss"', [(4, 3), (4, 3)], dtype)
    compare_layer('type: "EuclideanLoss"', [(2, 3, 2), (2, 6)], dtype, propagate_down=[False, True])


@BOTH
def test_accuracy(dtype):
    compare_layer('type: "Accuracy" top: "acc" top: "per_class"', [(7, 4), (7,)], dtype, integer_bottoms={1: 4},
                  backward=False)
    compare_layer('type: "Accuracy" accuracy_param { top_k: 2 ignore_label: 0 }', [(2, 5, 3), (2, 3)], dtype,
                  integer_bottoms={1: 5}, backward=False)
    # ties count against the prediction, as on the CPU
    compare_layer('type: "Accuracy"', [(4, 3), (4,)], dtype, bottom_data={0: np.ones((4, 3)), 1: [0, 1, 2, 0]},
                  backward=False)


# --- structural -----------------------------------------------------------------------------

@BOTH
def test_concat(dtype):
    compare_layer('type: "Concat" bottom: "a" bottom: "b" top: "c"', [(2, 3, 2), (2, 1, 2)], dtype)
    compare_layer('type: "Concat" concat_param { axis: 0 } bottom: "a" bottom: "b" bottom: "c" top: "d"',
                  [(1, 4), (2, 4), (3, 4)], dtype, propagate_down=[True, False, True])


@BOTH
def test_split_flatten_reshape(dtype):
    compare_layer('type: "Split" bottom: "a" top: "b" top: "c" top: "d"', [(3, 4)], dtype)
    compare_layer('type: "Flatten"', [(2, 3, 2, 2)], dtype)
    compare_layer('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 2 } }', [(2, 3, 4)], dtype)


def test_silence_zeroes_diffs():
    from cuda_support import make_layer
    layer, bottom, top = make_layer('type: "Silence" bottom: "a"', [(2, 3)], F32, n_top=0)
    bottom[0].diff[...] = 5
    layer.gpu = True
    layer.forward(bottom, top)
    layer.backward(top, [True], bottom)
    assert (bottom[0].diff == 0).all()


# --- inner product, convolution, pooling ------------------------------------------------------

def _needs_gpu_methods(type_name):
    from dlcore.registry import get_layer_class
    cls = get_layer_class(type_name)
    if not cls.has_gpu_forward():
        pytest.skip(f"{type_name} has no forward_gpu yet")


@BOTH
def test_inner_product(dtype):
    _needs_gpu_methods("InnerProduct")
    compare_layer('type: "InnerProduct" inner_product_param { num_output: 7 }', [(5, 2, 3)], dtype)
    compare_layer('type: "InnerProduct" inner_product_param { num_output: 4 transpose: true bias_term: false }',
                  [(3, 9)], dtype)
    compare_layer('type: "InnerProduct" inner_product_param { num_output: 3 axis: 2 }', [(2, 3, 4)], dtype)


@BOTH
def test_convolution(dtype):
    _needs_gpu_methods("Convolution")
    compare_layer('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 }', [(2, 3, 6, 5)], dtype)
    compare_layer('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 3 }',
                  [(2, 3, 7, 6)], dtype)


def test_convolution_dilation_rectangular_two_bottoms():
    _needs_gpu_methods("Convolution")
    compare_layer('type: "Convolution" bottom: "a" bottom: "b" top: "c" top: "d" convolution_param { num_output: 3 '
                  'kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 dilation: 2 bias_term: false }',
                  [(1, 2, 7, 8), (1, 2, 7, 8)], F64, propagate_down=[True, False])


@BOTH
def test_pooling(dtype):
    _needs_gpu_methods("Pooling")
    compare_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [(2, 2, 7, 6)], dtype)
    compare_layer('type: "Pooling" top: "p" top: "mask" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }',
                  [(1, 2, 5, 5)], dtype, skip_tops=(1,))
    compare_layer('type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', [(2, 2, 6, 7)],
                  dtype)
    compare_layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [(2, 3, 4, 5)], dtype)


# --- recurrent, embed, geolocation loss ------------------------------------------------------------

T, N, D, H = 3, 2, 3, 4
CONT = np.ones((T, N))
CONT[0] = 0
CONT[2, 1] = 0          # stream 1 restarts at t = 2


def _reset(layer):
    if hasattr(layer, "reset"):
        layer.reset()


@BOTH
def test_lstm(dtype):
    _needs_gpu_methods("LSTM")
    compare_layer(f'type: "LSTM" bottom: "x" bottom: "c" bottom: "h0" bottom: "c0" top: "h" top: "hT" top: "cT" '
                  f'recurrent_param {{ num_output: {H} expose_hidden: true }}',
                  [(T, N, D), (T, N), (1, N, H), (1, N, H)], dtype, bottom_data={1: CONT},
                  propagate_down=[True, False, True, True])
    compare_layer(f'type: "LSTM" bottom: "x" bottom: "c" bottom: "xs" recurrent_param {{ num_output: {H} }}',
                  [(T, N, D), (T, N), (N, 5)], dtype, bottom_data={1: CONT}, propagate_down=[True, False, True],
                  reset=_reset)


def test_lstm_carries_its_state_across_devices():
    # without expose_hidden the final state of one forward starts the next, whichever device ran it
    _needs_gpu_methods("LSTM")
    from cuda_support import make_layer
    definition = f'type: "LSTM" bottom: "x" bottom: "c" recurrent_param {{ num_output: {H} }}'
    cont = np.ones((T, N))
    runs = []
    for devices in ([False, False, False], [True, False, True]):
        layer, bottom, top = make_layer(definition, [(T, N, D), (T, N)], np.float64, bottom_data={1: cont})
        outs = []
        for gpu in devices:
            layer.gpu = gpu
            layer.reshape(bottom, top)
            layer.forward(bottom, top)
            outs.append(top[0].data.copy())
        runs.append(outs)
    for a, b in zip(*runs):
        np.testing.assert_allclose(a, b, rtol=1e-10)


@BOTH
def test_rnn(dtype):
    _needs_gpu_methods("RNN")
    compare_layer(f'type: "RNN" bottom: "x" bottom: "c" bottom: "h0" top: "o" top: "hT" '
                  f'recurrent_param {{ num_output: {H} expose_hidden: true }}',
                  [(T, N, D), (T, N), (1, N, H)], dtype, bottom_data={1: CONT}, propagate_down=[True, False, True])
    compare_layer(f'type: "RNN" bottom: "x" bottom: "c" bottom: "xs" recurrent_param {{ num_output: {H} }}',
                  [(T, N, D), (T, N), (N, 2)], dtype, bottom_data={1: CONT}, propagate_down=[True, False, True],
                  reset=_reset)


@BOTH
def test_embed(dtype):
    _needs_gpu_methods("Embed")
    compare_layer('type: "Embed" embed_param { input_dim: 7 num_output: 3 }', [(4, 2)], dtype,
                  integer_bottoms={0: 7})
    compare_layer('type: "Embed" embed_param { input_dim: 5 num_output: 2 bias_term: false }', [(6,)], dtype,
                  integer_bottoms={0: 5})


def test_embed_bad_index_is_an_error():
    _needs_gpu_methods("Embed")
    from dlcore import DLTrainError
    from cuda_support import make_layer
    layer, bottom, top = make_layer('type: "Embed" embed_param { input_dim: 4 num_output: 2 }', [(3,)], F32,
                                    bottom_data={0: [1, 2.5, 9]})
    layer.gpu = True
    with pytest.raises(DLTrainError, match=r"index 2.5 at position \(1,\)"):
        layer.forward(bottom, top)


@BOTH
def test_geoloc_loss(dtype):
    _needs_gpu_methods("GeolocLoss")
    rng = np.random.default_rng(3)
    pred = np.c_[rng.uniform(-90, 90, 6), rng.uniform(-180, 180, 6)]
    label = np.c_[rng.uniform(-90, 90, 6), rng.uniform(-180, 180, 6)]
    label[0] = pred[0]                                  # coincident: gradient 0
    label[1] = [-pred[1, 0], pred[1, 1] + 180]          # antipodal
    label[2] = pred[2] + [1e-5, -2e-5]                  # very near
    compare_layer('type: "GeolocLoss" geoloc_loss_param { radius: 6371 }', [(6, 2), (6, 2)], dtype,
                  bottom_data={0: pred, 1: label})
    compare_layer('type: "GeolocLoss" geoloc_loss_param { unit: RADIANS }', [(5, 2), (5, 2)], dtype, fill=(-3, 3))


# --- a plugin with GPU code (configs/plugins/dltrain-gram) ---------------------------------------

@BOTH
def test_gram_plugin_gpu_pair(dtype):
    import os
    import sys
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "plugins",
                        "dltrain-gram")
    if root not in sys.path:
        sys.path.insert(0, root)
    import dltrain_gram.gram  # noqa: F401  (registers "Gram")
    compare_layer('type: "Gram" python_param { param_str: "normalize: all\\nscale: 2" }', [(2, 3, 2, 2)], dtype)


def test_lstm_unfused_steps(monkeypatch):
    # the two-launch step (a product, then the cell kernel) that the fused step replaces
    _needs_gpu_methods("LSTM")
    from dltrain.layers import recurrent_cuda
    monkeypatch.setattr(recurrent_cuda, "FUSED", False)
    compare_layer(f'type: "LSTM" bottom: "x" bottom: "c" bottom: "h0" bottom: "c0" top: "h" top: "hT" top: "cT" '
                  f'recurrent_param {{ num_output: {H} expose_hidden: true }}',
                  [(T, N, D), (T, N), (1, N, H), (1, N, H)], F64, bottom_data={1: CONT},
                  propagate_down=[True, False, True, True])
