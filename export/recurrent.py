"""LSTM and RNN as ONNX (layers/recurrent.py), in one of two forms (the export option ``recurrent``):

* ``"exact"`` (the default): a Scan over Caffe's own cell, ``cont`` included, so every use of the
  sequence-continuation flags (a stream restarting in the middle of a batch, fractional values,
  ``x_static``, ``expose_hidden``) computes what Caffe computes:
  ``a_t = W_x x_t + b [+ W_s x_static] + W_h (cont_t h_{t-1})``, ``i, o = sigmoid``,
  ``f = cont_t sigmoid(a_f)``, ``g = tanh``, ``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``
  (RNN: ``h_t = tanh(W_x x_t + b + W_hh (cont_t h_{t-1}))``, ``o_t = tanh(W_ho h_t + b_o)``).
* ``"onnx"``: ONNX's own LSTM / RNN operator (what TensorRT and OpenVINO run fastest), Caffe's gate
  order [i, f, o, g] permuted to ONNX's [i, o, f, c].  It is exact when ``cont`` is 1 at every step
  after the first (one sequence per stream, the usual use): the first step's flags multiply the
  initial state, as Caffe's do.  It cannot express ``x_static`` (refused).  ``cont`` stays an input
  of the graph (unused after the first step).

Both start from a zero state, or from the exposed ``h_0``/``c_0`` bottoms: a fresh Caffe net.  (Caffe
carries the last state over to the next forward call of the same net object; a stateless ONNX model
does not, which makes no difference whenever ``cont`` is 0 at the first step.)
"""
from math import prod

import numpy as np

from .registry import builtin_exporter

# Caffe's gate blocks [i, f, o, g] in ONNX's order [i, o, f, c]
ONNX_GATE_ORDER = (0, 2, 1, 3)


def _sequence_input(ctx):
    """x as (T, N, D) and cont as (T, N, 1)."""
    T, N = ctx.bottom_shapes[0][:2]
    varying = ctx.bottom_varying[0]
    D = prod(ctx.bottom_shapes[0][2:])
    x = ctx.bottoms[0]
    if len(ctx.bottom_shapes[0]) != 3:
        x = ctx.reshape(x, (T, N, D), (varying[0], varying[1], False), "x")
    cont = ctx.unsqueeze(ctx.bottoms[1], [2])
    return x, cont


def _state_inputs(ctx, count):
    """The initial states (N, H): the exposed bottoms squeezed, or zeros of the batch's size."""
    L = ctx.layer
    if L.expose_hidden:
        first = 2 + int(L.static_input)
        return [ctx.squeeze(ctx.bottoms[first + k], [0]) for k in range(count)]
    streams = ctx.node("Slice", [ctx.node("Shape", [ctx.bottoms[1]]), ctx.ints([1], "one"), ctx.ints([2], "two")])
    shape = ctx.node("Concat", [streams, ctx.ints([L.H], "H")], axis=0)
    from onnx import helper, TensorProto
    zeros = ctx.node("ConstantOfShape", [shape], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    return [zeros] * count


def _input_projection(ctx, x, G):
    """W_x x_t + b (+ W_s x_static) for all steps: (T, N, G)."""
    L = ctx.layer
    w_x = np.asarray(L.blobs[0].data, np.float32).reshape(G, -1)
    proj = ctx.node("MatMul", [x, ctx.const(w_x.T, "W_x_T")])
    proj = ctx.node("Add", [proj, ctx.weight(1, "b")])
    if L.static_input:
        xs_shape = ctx.bottom_shapes[2]
        xs = ctx.bottoms[2]
        if len(xs_shape) != 2:
            xs = ctx.reshape(xs, (xs_shape[0], prod(xs_shape[1:])), (ctx.bottom_varying[2][0], False), "x_static")
        w_s = np.asarray(L.blobs[2].data, np.float32)
        static = ctx.node("MatMul", [xs, ctx.const(w_s.T, "W_static_T")])       # (N, G): the same every step
        proj = ctx.node("Add", [proj, static])
    return proj


def _scan(ctx, states, sequences, body_fn, n_state, what):
    """A Scan over axis 0 of ``sequences`` with ``states``; ``body_fn(ctx, state_values, step_values)``
    adds the body's nodes and returns (new states, per-step outputs)."""
    from onnx import TensorProto, helper
    builder = ctx.builder
    outer_nodes, builder.nodes = builder.nodes, []
    state_in = [builder.fresh(f"{ctx.name}/{what}_state{k}") for k in range(n_state)]
    step_in = [builder.fresh(f"{ctx.name}/{what}_step{k}") for k in range(len(sequences))]
    new_states, outputs = body_fn(ctx, state_in, step_in)
    # every body output a value of its own (Scan's state and scan outputs may not share one)
    body_out = [ctx.node("Identity", [v]) for v in list(new_states) + list(outputs)]
    body_nodes, builder.nodes = builder.nodes, outer_nodes

    def info(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, None)

    body = helper.make_graph(body_nodes, f"{ctx.name}_{what}_step", [info(n) for n in state_in + step_in],
                             [info(n) for n in body_out])
    return ctx.node("Scan", list(states) + list(sequences), n_state + len(outputs), body=body,
                    num_scan_inputs=len(sequences))


def _lstm_step(ctx, w_h_t):
    H = ctx.layer.H

    def body(ctx, state, step):
        h, c = state
        a_x, cont = step
        a = ctx.node("Add", [a_x, ctx.node("MatMul", [ctx.node("Mul", [h, cont]), w_h_t])])
        gate = [ctx.slice(a, 1, k * H, (k + 1) * H) for k in range(4)]
        i = ctx.node("Sigmoid", [gate[0]])
        f = ctx.node("Mul", [cont, ctx.node("Sigmoid", [gate[1]])])
        o = ctx.node("Sigmoid", [gate[2]])
        g = ctx.node("Tanh", [gate[3]])
        c_new = ctx.node("Add", [ctx.node("Mul", [f, c]), ctx.node("Mul", [i, g])])
        h_new = ctx.node("Mul", [o, ctx.node("Tanh", [c_new])])
        return [h_new, c_new], [h_new]
    return body


def _rnn_step(ctx, w_hh_t):
    def body(ctx, state, step):
        (h,), (a_x, cont) = state, step
        h_new = ctx.node("Tanh", [ctx.node("Add", [a_x, ctx.node("MatMul", [ctx.node("Mul", [h, cont]), w_hh_t])])])
        return [h_new], [h_new]
    return body


def _exposed_tops(ctx, finals):
    if not ctx.layer.expose_hidden:
        return []
    return [ctx.unsqueeze(v, [0]) for v in finals]


@builtin_exporter("LSTM")
def lstm(ctx):
    L = ctx.layer
    G = 4 * L.H
    x, cont = _sequence_input(ctx)
    if ctx.options.get("recurrent", "exact") == "onnx":
        W, R, b = (_permuted(L.blobs[k], L.H) for k in (0, -1, 1))
        y, exposed = _onnx_op(ctx, "LSTM", x, cont, W, R, b, 2)
        return [y] + exposed
    proj = _input_projection(ctx, x, G)
    w_h_t = ctx.const(np.asarray(L.blobs[-1].data, np.float32).T, "W_h_T")
    h_T, c_T, y = _scan(ctx, _state_inputs(ctx, 2), [proj, cont], _lstm_step(ctx, w_h_t), 2, "lstm")
    return [y] + _exposed_tops(ctx, [h_T, c_T])


@builtin_exporter("RNN")
def rnn(ctx):
    L = ctx.layer
    x, cont = _sequence_input(ctx)
    nst = int(L.static_input)
    w_hh, w_ho, b_o = (np.asarray(b.data, np.float32) for b in L.blobs[2 + nst:])
    onnx_op = ctx.options.get("recurrent", "exact") == "onnx"
    if onnx_op:
        W, b = (np.asarray(L.blobs[k].data, np.float32) for k in (0, 1))
        y, exposed = _onnx_op(ctx, "RNN", x, cont, W, w_hh, b, 1)
    else:
        proj = _input_projection(ctx, x, L.H)
        w_hh_t = ctx.const(w_hh.T, "W_hh_T")
        h_T, y = _scan(ctx, _state_inputs(ctx, 1), [proj, cont], _rnn_step(ctx, w_hh_t), 1, "rnn")
    o = ctx.node("Tanh", [ctx.node("Add", [ctx.node("MatMul", [y, ctx.const(w_ho.T, "W_ho_T")]),
                                           ctx.const(b_o, "b_o")])])
    return [o] + (exposed if onnx_op else _exposed_tops(ctx, [h_T]))


# --- ONNX's own operators (recurrent: "onnx") --------------------------------------------------

def _onnx_op_initial_states(ctx, cont, count):
    """The exposed initial states times cont_0 (as Caffe's first step applies them), (1, N, H) each;
    without expose_hidden, none (ONNX's default zero state)."""
    L = ctx.layer
    if not L.expose_hidden:
        return [""] * count
    cont0 = ctx.slice(cont, 0, 0, 1)                  # (1, N, 1)
    first = 2 + int(L.static_input)
    return [ctx.node("Mul", [ctx.bottoms[first + k], cont0]) for k in range(count)]


def _permuted(blob, H):
    data = np.asarray(blob.data, np.float32)
    blocks = [data[k * H:(k + 1) * H] for k in ONNX_GATE_ORDER]
    return np.concatenate(blocks, axis=0)


def _onnx_op(ctx, op, x, cont, W, R, b, n_state):
    """ONNX's ``op`` (LSTM or RNN) over x (T, N, D) with Caffe's weights (an LSTM's in ONNX's gate
    order): W_x ``W``, W_h ``R`` and the bias ``b`` (ONNX's second, recurrent bias is zero).  Returns
    (y (T, N, H), the exposed tops: the final states, (1, N, H) as ONNX gives them, or none without
    expose_hidden)."""
    L = ctx.layer
    if L.static_input:
        raise ctx.fail(f"x_static (a third bottom) is not expressible with ONNX's {op} operator; "
                       "export with recurrent='exact' (the default)")
    B = np.concatenate([b, np.zeros_like(b)])[None]
    states = _onnx_op_initial_states(ctx, cont, n_state)
    inputs = [x, ctx.const(W[None], "W"), ctx.const(R[None], "R"), ctx.const(B, "B"), "", *states]
    while inputs[-1] == "":                           # omitted optional inputs: the default zero state
        inputs.pop()
    y, *finals = ctx.node(op, inputs, 1 + n_state, hidden_size=L.H)
    y = ctx.squeeze(y, [1])                            # (T, 1, N, H) -> (T, N, H)
    return y, finals if L.expose_hidden else []
