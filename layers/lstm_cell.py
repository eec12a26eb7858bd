"""The LSTM cell, written once: formulas used by LSTMUnit and the LSTM layer, on the CPU and the GPU.

Caffe's cell ("Learning to Execute" LSTM, no peepholes; lstm_unit_layer.cpp)
from the four gate inputs, in Caffe's gate order ``[i, f, o, g]``::

    i = sigmoid(a_i)   s_f = sigmoid(a_f)   o = sigmoid(a_o)   g = tanh(a_g)
    f = cont * s_f     c = f c_prev + i g   h = o tanh(c)

and its backward, with dc~ = dc + dh o (1 - tanh(c)^2)::

    dc_prev = dc~ f    di = dc~ g i (1 - i)    df = dc~ c_prev f (1 - s)
    do = dh tanh(c) o (1 - o)                   dg = dc~ i (1 - g^2)

where ``s`` is the sigmoid the forget gate's derivative uses: Caffe's unit
passes ``f`` (its ``f (1 - f)``), the LSTM layer passes ``s_f`` (the exact
derivative ``cont s_f (1 - s_f)``; the same for 0/1 flags).

The activations are arguments (``sigmoid(x, one)``, ``tanh(x, one)``): the
GPU kernels pass the exact ones below, LSTMUnit Caffe's, and the LSTM
layer's CPU kernels their own (layers/rational.py: a vectorizable rational
tanh for float32; they compute the gates themselves and call
``lstm_cell``).  ``one`` is 1 in the data's dtype, so float32 stays float32.
"""
import math

from dlcore.formula import formula


# --- activations --------------------------------------------------------------

@formula
def logistic(x, one):
    """The logistic sigmoid as Caffe's LSTMUnit writes it, 1 / (1 + exp(-x))."""
    return one / (one + math.exp(-x))


@formula
def exact_tanh(x, one):
    return math.tanh(x)


@formula
def caffe_tanh(x, one):
    """tanh as Caffe's LSTMUnit writes it: 2 sigmoid(2x) - 1."""
    return (one + one) * logistic((one + one) * x, one) - one


# --- the cell ------------------------------------------------------------------

@formula
def lstm_gates(ai, af, ao, ag, one, sigmoid, tanh):
    """The gates from their inputs: (i, s_f, o, g), s_f before ``cont`` scales it."""
    return sigmoid(ai, one), sigmoid(af, one), sigmoid(ao, one), tanh(ag, one)


@formula
def lstm_cell(i, f, o, g, c_prev, one, tanh):
    """The cell update: (c, tanh c, h)."""
    c = f * c_prev + i * g
    tc = tanh(c, one)
    return c, tc, o * tc


@formula
def lstm_cell_grad(i, f, s, o, g, c_prev, tanh_c, dh, dc, one):
    """The cell's backward from dL/dh and dL/dc: (dc_prev, di, df, do, dg), gradients w.r.t. the gate inputs."""
    dct = dc + dh * o * (one - tanh_c * tanh_c)
    return (dct * f,
            dct * g * i * (one - i),
            dct * c_prev * f * (one - s),
            dh * tanh_c * o * (one - o),
            dct * i * (one - g * g))


# --- what differs between the two users: the forget gate -----------------------

@formula
def caffe_forget(cont, s):
    """LSTMUnit's forget gate, Caffe's ``cont == 0 ? 0 : cont * s``.

    (``cont * 0`` has an integer literal, so with float32 data f is a float64
    and the unit computes c and h in float64 before storing them: what it
    has always computed.)
    """
    return cont * s if cont != 0 else cont * 0


@formula
def lstm_layer_cell_grad(i, sf, o, g, cont, c_prev, tanh_c, dh, dc, one):
    """The LSTM layer's backward of one cell from its stored gates [i, s_f, o, g]: (dc_prev, di, df, do, dg)."""
    return lstm_cell_grad(i, cont * sf, sf, o, g, c_prev, tanh_c, dh, dc, one)
