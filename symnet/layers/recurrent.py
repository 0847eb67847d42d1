"""Caffe's recurrent layers: RNN, LSTM and LSTMUnit.

Caffe builds RNN and LSTM as an internal net unrolled over the T time steps of the
bottom, out of InnerProduct, Scale, Eltwise, TanH and LSTMUnit layers with shared
weights, and back-propagates through that net. Here the same unrolled computation is
written as one graph of symbolic ops (one GEMM for the input transform of all steps,
then per step a GEMM with the recurrent weights and one fused elementwise kernel), and
its backward through time is derived.

Bottoms: ``x`` (T x N x ...), ``cont`` (T x N: 0 where a new sequence starts; the
previous hidden state is multiplied by cont), an optional static input ``x_static``
(N x ...), and with ``expose_hidden`` the initial states ``h0`` (1 x N x H) and, for
LSTM, ``c0``; tops ``h``/``o`` (T x N x H) and with ``expose_hidden`` the final states
``hT`` (and ``cT``), each 1 x N x H.

Blobs, in Caffe's order (so a caffemodel Caffe trained loads unchanged), with I the
size of one step of x (axes 2 on flattened) and S that of x_static (axes 1 on):

    LSTM: W_xc (4H x I), b_c (4H), [W_xc_static (4H x S)], W_hc (4H x H)
    RNN:  W_xh (H x I),  b_h (H),  [W_xh_static (H x S)],  W_hh (H x H), W_ho (H x H), b_o (H)

the LSTM's gate rows in Caffe's order i, f, o, g. Weights take ``weight_filler`` and
biases ``bias_filler`` (both default constant 0, Caffe's unset FillerParameter), drawn
in that order. (Caffe's unrolled net also fills, then discards, one recurrent weight per
step that shares W_hc; symnet fills each blob once.)

Hidden state between forwards, as in Caffe: without ``expose_hidden`` each forward
starts from the final state of the previous forward (zeros at first), masked by cont at
the first step; with ``expose_hidden`` it starts from the h0/c0 bottoms. Caffe
back-propagates neither into the sequence indicators nor into h0/c0, and ignores diffs
on the hT/cT tops ("we can't backpropagate across batches"); the derived backward here
does the same (those values pass through ``stop_gradient``).

The carried state lives in blobs of the layer's own (not among its learnable blobs,
so not in a caffemodel, as in Caffe). In a TRAIN net it is exact for the solver's step
and for a separate ``net.backward()`` after ``net.forward()`` (see ``_carried_state``).
Differences from Caffe: a net rebuilt for new input shapes starts its state at zeros
again, and Caffe refuses a new number of time steps after setup where symnet rebuilds
the layer for it; in the TEST phase, a separate backward after a forward that continued
a carried state (cont != 0 at its first step, no expose_hidden) recomputes the layer
from the state that forward left rather than the one it started from.
"""
from __future__ import annotations

import math

import sympy as sp

from .. import functions as F
from ..errors import ShapeError
from .registry import context, layer, layer_param, state_update
from ._util import is_int, require

P = "recurrent_param"


def _layer_counts(kind, bottoms, expose_hidden, nrecur):
    """Caffe's RecurrentLayer: MinBottomBlobs 2 (+ the recurrent inputs with
    expose_hidden), MaxBottomBlobs one more (the static input); ExactNumTopBlobs 1 (+ the
    recurrent outputs with expose_hidden). Returns whether a static input is given."""
    lo = 2 + (nrecur if expose_hidden else 0)
    names = "x, cont" + (", [x_static], " + ", ".join(("h0", "c0")[:nrecur])
                         if expose_hidden else ", [x_static]")
    if not lo <= len(bottoms) <= lo + 1:
        raise ValueError(f"{kind} takes {lo} or {lo + 1} bottoms ({names}) with "
                         f"{P}.expose_hidden {'true' if expose_hidden else 'false'}; got "
                         f"{len(bottoms)}")
    ntop = context().ntop
    want = 1 + (nrecur if expose_hidden else 0)
    if ntop != want:
        raise ValueError(f"{kind} gives exactly {want} top{'s' if want > 1 else ''} with "
                         f"{P}.expose_hidden {'true' if expose_hidden else 'false'}; the "
                         f"layer names {ntop}")
    return len(bottoms) == lo + 1


def _check_inputs(x, cont, x_static, recur, num_output):
    # Caffe: CHECK_GT(num_output, 0) "num_output must be positive"
    require(is_int(num_output) and num_output >= 1, f"{P}.num_output", num_output,
            "an integer >= 1 (num_output must be positive)")
    # Caffe: CHECK_GE(bottom[0]->num_axes(), 2) "(#timesteps, #streams, ...)"
    if x.ndim < 2:
        raise ShapeError(f"bottom 0 (x) has {x.ndim} axes {x.shape}; it must have at least "
                         "2 axes -- (#timesteps, #streams, ...)")
    T, N = x.shape[:2]
    # Caffe: CHECK_EQ(bottom[1]->num_axes(), 2), CHECK_EQ(T_, ...), CHECK_EQ(N_, ...)
    if cont.shape != (T, N):
        raise ShapeError(f"bottom 1 (cont) has shape {cont.shape}; it must have exactly 2 "
                         f"axes -- (#timesteps, #streams) = ({T}, {N}) as bottom 0 {x.shape}")
    if x_static is not None and (x_static.ndim < 1 or x_static.shape[0] != N):
        # Caffe: CHECK_GE(bottom[2]->num_axes(), 1); CHECK_EQ(N_, bottom[2]->shape(0))
        raise ShapeError(f"bottom 2 (x_static) has shape {x_static.shape}; its first axis "
                         f"must be the {N} streams of bottom 0 {x.shape}")
    H = int(num_output)
    for i, (name, t) in enumerate(recur):
        # Caffe (Reshape): the bottom's shape must match the hidden state input shape
        if t.shape != (1, N, H):
            raise ShapeError(f"bottom {2 + (x_static is not None) + i} ({name}) has shape "
                             f"{t.shape}; it must match the hidden state input shape "
                             f"(1, {N}, {H})")
    return T, N, H


def _carried_state(like, shape):
    """The hidden state a layer without expose_hidden carries from one forward to the
    next: (value read now, function registering the value for the next forward).

    Inside a training Net the state is double-buffered on the parity of the net's
    iteration, which every forward advances and a later backward reuses: forward k reads
    buffer k % 2 and writes the other, so a backward run after it (which recomputes the
    layer from what it read) still finds the state forward k started from. Elsewhere
    (TEST phase, a layer built outside a Net) one buffer is read and then replaced."""
    from ..net import BlobParam          # net imports the layers: import when building
    from ..runtime.blob import Blob
    ctx = context()
    g = F.graph_of(like)

    def buffer(k):
        return g.add(BlobParam(f"{ctx.name}_state{k}", Blob(shape, f"{ctx.name}_state")),
                     [], name=f"{ctx.name}_state{k}")

    if ctx.counter is None or ctx.phase != "TRAIN":
        s = buffer(0)
        return F.stop_gradient(s), lambda v: state_update(s, F.stop_gradient(v))
    s0, s1 = buffer(0), buffer(1)
    k = ctx.counter
    odd = F.stop_gradient(k - 2.0 * F.elementwise(lambda a: sp.floor(a / 2), k,
                                                  label="half"))
    now = F.where(odd > 0.5, s1, s0)

    def write(v):
        v = F.stop_gradient(v)
        state_update(s0, F.where(odd > 0.5, v, s0))
        state_update(s1, F.where(odd > 0.5, s1, v))
    return F.stop_gradient(now), write


def _recurrent(kind, bottoms, num_output, weight_filler, bias_filler, expose_hidden):
    nrecur = 2 if kind == "LSTM" else 1
    static = _layer_counts(kind, bottoms, expose_hidden, nrecur)
    x, cont = bottoms[0], bottoms[1]
    x_static = bottoms[2] if static else None
    names = ("h0", "c0")[:nrecur]
    given = list(zip(names, bottoms[2 + static:])) if expose_hidden else []
    T, N, H = _check_inputs(x, cont, x_static, given, num_output)
    G = 4 * H if kind == "LSTM" else H

    I = math.prod(x.shape[2:])
    w_x_t = F.transpose(layer_param((G, I), weight_filler))
    b = layer_param((G,), bias_filler)
    static_term = None
    if x_static is not None:
        S = math.prod(x_static.shape[1:])
        w_s = layer_param((G, S), weight_filler)
        static_term = F.matmul(F.reshape(x_static, (N, S)), F.transpose(w_s))
    # The input transform W_x x_t + b (+ W_s x_static). Each step reads its piece of a
    # (T, ...) tensor through a slice, and the gradient of a slice is a zero-filled
    # tensor of the whole (T, ...) shape, so the backward's work grows with T * T times
    # the sliced width: slice x (width I) per step when it is narrower than the gate
    # pre-activations (width G), which also needs no slice gradient at all when x takes
    # no gradient (a data bottom); otherwise one GEMM for all steps, sliced per step.
    if I <= G:
        x2 = F.reshape(x, (T, N, I))

        def step_input(t):
            u = F.matmul(F.reshape(x2[t], (N, I)), w_x_t) + b
            return u if static_term is None else u + static_term
    else:
        pre = F.matmul(F.reshape(x, (T * N, I)), w_x_t) + b
        if static_term is not None:
            pre = F.reshape(pre, (T, N, G)) + F.reshape(static_term, (1, N, G))
        pre = F.reshape(pre, (T, N, G))

        def step_input(t):
            return pre[t]
    w_h_t = F.transpose(layer_param((G, H), weight_filler))
    if kind == "RNN":
        w_o_t = F.transpose(layer_param((H, H), weight_filler))
        b_o = layer_param((H,), bias_filler)

    # Caffe computes no gradient for the sequence indicators
    cont = F.stop_gradient(cont)
    if expose_hidden:
        start = [F.stop_gradient(t) for _, t in given]
        writers = None
    else:
        carried = [_carried_state(x, (1, N, H)) for _ in names]
        start = [c for c, _ in carried]
        writers = [w for _, w in carried]
    h = F.reshape(start[0], (N, H))
    c = F.reshape(start[1], (N, H)) if kind == "LSTM" else None

    outs = []
    for t in range(T):
        cont_t = F.reshape(cont[t], (N, 1))
        # h_conted_{t-1} = cont_t * h_{t-1} (Caffe's Scale layer, axis 0)
        gates = F.matmul(h * cont_t, w_h_t) + step_input(t)
        if kind == "LSTM":
            # LSTMUnit: f is 0 where cont is 0, else cont * sigmoid(f')
            c, h = _lstm_unit(c, gates, cont_t, H)
            outs.append(h)
        else:
            h = F.tanh(gates)
            outs.append(F.tanh(F.matmul(h, w_o_t) + b_o))
    top = F.concat([F.reshape(o, (1, N, H)) for o in outs], 0)
    finals = [F.reshape(h, (1, N, H))] + ([F.reshape(c, (1, N, H))] if kind == "LSTM"
                                          else [])
    if not expose_hidden:
        for write, v in zip(writers, finals):
            write(v)
        return top
    # Caffe shares the hT/cT tops' data, not their diffs: nothing flows back from them
    return [top] + [F.stop_gradient(v) for v in finals]


def _lstm_unit(c_prev, gates, cont, H):
    """Caffe's LSTMUnit on (N, H) c_prev, (N, 4H) gate inputs (i, f, o, g) and (N, 1)
    cont: returns (c, h)."""
    i = F.sigmoid(gates[:, 0:H])
    f = F.where(F.eq(cont, 0.0), 0.0, cont * F.sigmoid(gates[:, H:2 * H]))
    o = F.sigmoid(gates[:, 2 * H:3 * H])
    g = F.tanh(gates[:, 3 * H:4 * H])
    c = f * c_prev + i * g
    return c, o * F.tanh(c)


@layer("LSTM", params="recurrent_param")
def lstm(*bottoms, num_output=0, weight_filler=None, bias_filler=None, debug_info=False,
         expose_hidden=False):
    """Long short-term memory unrolled over the T steps of x (Caffe's LSTMLayer):

        [i' f' o' g'] = W_xc x_t + b_c + W_xc_static x_static + W_hc (cont_t h_{t-1})
        i, f, o = sigmoid(i', f', o');  g = tanh(g')
        c_t = cont_t f * c_{t-1} + i g  (the forget term is 0 where cont_t is 0)
        h_t = o tanh(c_t)

    Bottoms x, cont, [x_static], [h0, c0 with expose_hidden]; tops h (T x N x H) and
    with expose_hidden hT, cT. Blobs W_xc, b_c, [W_xc_static], W_hc. ``debug_info``
    only makes Caffe log its internal net; it changes nothing here."""
    return _recurrent("LSTM", bottoms, num_output, weight_filler, bias_filler,
                      bool(expose_hidden))


@layer("RNN", params="recurrent_param")
def rnn(*bottoms, num_output=0, weight_filler=None, bias_filler=None, debug_info=False,
        expose_hidden=False):
    """Elman recurrent net unrolled over the T steps of x (Caffe's RNNLayer):

        h_t = tanh(W_xh x_t + b_h + W_xh_static x_static + W_hh (cont_t h_{t-1}))
        o_t = tanh(W_ho h_t + b_o)

    Bottoms x, cont, [x_static], [h0 with expose_hidden]; tops o (T x N x H) and with
    expose_hidden hT. Blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o."""
    return _recurrent("RNN", bottoms, num_output, weight_filler, bias_filler,
                      bool(expose_hidden))


@layer("LSTMUnit", params=())
def lstm_unit(*bottoms):
    """One LSTM step (Caffe's LSTMUnitLayer): bottoms c_prev (1 x N x H), x (1 x N x 4H,
    gate inputs i, f, o, g) and cont (1 x N); tops c and h (1 x N x H):
    c = (cont == 0 ? 0 : cont sigmoid(f)) c_prev + sigmoid(i) tanh(g), h = sigmoid(o)
    tanh(c). No gradient reaches cont (Caffe refuses to back-propagate to it)."""
    # Caffe: ExactNumBottomBlobs 3, ExactNumTopBlobs 2
    if len(bottoms) != 3:
        raise ValueError(f"LSTMUnit takes exactly 3 bottoms (c_prev, x, cont); got "
                         f"{len(bottoms)}")
    ntop = context().ntop
    if ntop != 2:
        raise ValueError(f"LSTMUnit gives exactly 2 tops (c, h); the layer names {ntop}")
    c_prev, x, cont = bottoms
    # Caffe: bottoms 0 and 1 have 3 axes, bottom 2 has 2, each with shape(0) == 1 and
    # shape(1) == bottom[0]->shape(1); bottom 1's last axis is 4 x bottom 0's
    n = c_prev.shape[1] if c_prev.ndim >= 2 else None
    for i, (t, nd) in enumerate(((c_prev, 3), (x, 3), (cont, 2))):
        if t.ndim != nd or t.shape[0] != 1 or t.shape[1] != n:
            raise ShapeError(f"bottom {i} has shape {t.shape}; LSTMUnit needs c_prev "
                             f"(1, N, H), x (1, N, 4H), cont (1, N) (N from bottom 0 "
                             f"{c_prev.shape})")
    N, H = c_prev.shape[1], c_prev.shape[2]
    if x.shape[2] != 4 * H:
        raise ShapeError(f"bottom 1 (x) has shape {x.shape}; its last axis must be 4 x "
                         f"{H} = {4 * H} (the gate inputs i, f, o, g)")
    c, h = _lstm_unit(F.reshape(c_prev, (N, H)), F.reshape(x, (N, 4 * H)),
                      F.reshape(F.stop_gradient(cont), (N, 1)), H)
    return [F.reshape(c, (1, N, H)), F.reshape(h, (1, N, H))]

