"""Caffe's recurrent layers (symnet/layers/recurrent.py): RNN, LSTM and LSTMUnit.

What Caffe does, restated here in NumPy (BVLC Caffe's recurrent_layer.cpp,
rnn_layer.cpp, lstm_layer.cpp, lstm_unit_layer.cpp):

- bottoms x (T, N, ...), cont (T, N), [x_static (N, ...)], [h0 (1, N, H), c0 with
  expose_hidden]; each step t uses h_conted = cont_t * h_{t-1};
- LSTM: gates = W_xc x_t + b_c + W_xc_static x_static + W_hc h_conted, rows i, f, o, g;
  c_t = (cont_t == 0 ? 0 : cont_t sigmoid(f)) c_{t-1} + sigmoid(i) tanh(g),
  h_t = sigmoid(o) tanh(c_t); top h;
- RNN: h_t = tanh(W_xh x_t + b_h + W_xh_static x_static + W_hh h_conted),
  o_t = tanh(W_ho h_t + b_o); top o;
- blobs (the unrolled net's params in layer order): LSTM W_xc, b_c, [W_xc_static],
  W_hc; RNN W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o;
- without expose_hidden a forward starts from the previous forward's final state
  (zeros at first); with it from h0/c0 and the final states are tops hT (cT);
- no gradient to cont or h0/c0, none from hT/cT.
"""
import importlib.util
import os
import shutil

import numpy as np
import pytest

import symnet as sn
from symnet.formats.proto import caffe_pb2
from symnet.layers import LayerError, apply

R = np.random.default_rng(7)


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def lstm_ref(x, cont, xs, h0, c0, blobs):
    T, N = cont.shape
    w_xc, b_c = blobs[0], blobs[1]
    w_s = blobs[2] if xs is not None else None
    w_hc = blobs[-1]
    H = w_hc.shape[1]
    pre = x.reshape(T, N, -1) @ w_xc.T + b_c
    if xs is not None:
        pre = pre + xs.reshape(N, -1) @ w_s.T
    h, c, out = h0.reshape(N, H), c0.reshape(N, H), []
    for t in range(T):
        k = cont[t][:, None]
        g = (k * h) @ w_hc.T + pre[t]
        f = np.where(k == 0, 0.0, k * sig(g[:, H:2 * H]))
        c = f * c + sig(g[:, :H]) * np.tanh(g[:, 3 * H:])
        h = sig(g[:, 2 * H:3 * H]) * np.tanh(c)
        out.append(h)
    return np.stack(out), h[None], c[None]


def rnn_ref(x, cont, xs, h0, blobs):
    T, N = cont.shape
    w_xh, b_h = blobs[0], blobs[1]
    w_s = blobs[2] if xs is not None else None
    w_hh, w_ho, b_o = blobs[-3:]
    H = w_hh.shape[0]
    pre = x.reshape(T, N, -1) @ w_xh.T + b_h
    if xs is not None:
        pre = pre + xs.reshape(N, -1) @ w_s.T
    h, out = h0.reshape(N, H), []
    for t in range(T):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + pre[t])
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h[None]


def net_text(kind, T, N, xshape, H, static, expose, S=3):
    shapes = [(T, N) + xshape, (T, N)]
    bottoms = ["x", "cont"]
    if static:
        shapes.append((N, S))
        bottoms.append("xs")
    if expose:
        for name in ("h0", "c0")[:2 if kind == "LSTM" else 1]:
            shapes.append((1, N, H))
            bottoms.append(name)
    tops = ["y"] + (["hT", "cT"][:2 if kind == "LSTM" else 1] if expose else [])
    text = 'layer { name: "in" type: "Input" ' + " ".join(f'top: "{b}"' for b in bottoms)
    text += " input_param { " + " ".join(
        "shape { " + " ".join(f"dim: {d}" for d in s) + " }" for s in shapes) + " } }\n"
    text += f'layer {{ name: "rec" type: "{kind}" ' + \
        " ".join(f'bottom: "{b}"' for b in bottoms) + " " + \
        " ".join(f'top: "{t}"' for t in tops) + \
        f' recurrent_param {{ num_output: {H} expose_hidden: {"true" if expose else "false"}' \
        ' weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }' \
        " } }\n"
    return text, bottoms, shapes, tops


def feeds_for(bottoms, shapes, T, N):
    out = {}
    for b, s in zip(bottoms, shapes):
        if b == "cont":
            c = np.ones((T, N), np.float32)
            c[0, :] = 0
            c[min(2, T - 1), 0] = 0          # a new sequence inside the batch
            if N > 1:
                c[1, 1] = 0.5                # non-binary: scales h and the forget gate
            out[b] = c
        else:
            out[b] = R.standard_normal(s).astype(np.float32)
    return out


CASES = [(False, False, (2, 2)), (True, False, (2, 2)), (False, True, (2, 2)),
         (True, True, (2, 2)), (True, True, (3, 4, 2))]


@pytest.mark.parametrize("static,expose,xshape", CASES, ids=[
    "plain", "static", "expose", "static+expose", "static+expose+wide"])
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_forward_against_numpy(backend, kind, static, expose, xshape):
    """A step of x of 4 values is narrower than the RNN's 5 and the LSTM's 20 gates
    (sliced per step); "wide", 24 values, is wider than the RNN's gates (one input
    transform for all steps)."""
    T, N, H = 4, 3, 5
    text, bottoms, shapes, tops = net_text(kind, T, N, xshape, H, static, expose)
    sn.fillers.set_random_seed(3)
    net = sn.Net(text, sn.TEST, backend=backend)
    blobs = [b.data.copy() for b in net.params["rec"]]
    G = 4 * H if kind == "LSTM" else H
    want_shapes = [(G, int(np.prod(xshape))), (G,)] + ([(G, 3)] if static else []) + [(G, H)] + \
        ([(H, H), (H,)] if kind == "RNN" else [])
    assert [b.shape for b in blobs] == want_shapes
    feeds = feeds_for(bottoms, shapes, T, N)
    out = net.forward(**feeds)
    x, cont, xs = feeds["x"], feeds["cont"], feeds.get("xs")
    zero = np.zeros((1, N, H), np.float32)
    if kind == "LSTM":
        want = lstm_ref(x, cont, xs, feeds.get("h0", zero), feeds.get("c0", zero), blobs)
    else:
        want = rnn_ref(x, cont, xs, feeds.get("h0", zero), blobs)
    for name, w in zip(tops, want):
        np.testing.assert_allclose(out[name], w, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_state_carried_between_forwards(kind):
    """Without expose_hidden, forward 2 continues from forward 1's final state (cont 1
    at its first step): both together equal one forward over 2T steps; with
    expose_hidden, feeding hT (cT) back as h0 (c0) does the same."""
    T, N, H = 3, 2, 4
    x = R.standard_normal((2 * T, N, 3)).astype(np.float32)
    cont = np.ones((2 * T, N), np.float32)
    cont[0] = 0
    cont[4, 1] = 0
    for expose in (False, True):
        text, bottoms, shapes, tops = net_text(kind, T, N, (3,), H, False, expose)
        sn.fillers.set_random_seed(5)
        net = sn.Net(text, sn.TEST, backend="cpu")
        blobs = [b.data.copy() for b in net.params["rec"]]
        zero = np.zeros((1, N, H), np.float32)
        ref = lstm_ref(x, cont, None, zero, zero, blobs) if kind == "LSTM" else \
            rnn_ref(x, cont, None, zero, blobs)
        extra = {b: zero for b in bottoms[2:]}
        first = net.forward(x=x[:T], cont=cont[:T], **extra)["y"].copy()
        if expose:
            extra = {b: net.blobs[t].data.copy() for b, t in zip(bottoms[2:], tops[1:])}
        second = net.forward(x=x[T:], cont=cont[T:], **extra)["y"]
        np.testing.assert_allclose(np.concatenate([first, second]), ref[0], rtol=1e-4,
                                   atol=1e-5, err_msg=f"expose_hidden {expose}")


def _apply_fn(kind, cont, h=None, static=False, **params):
    def build(x, *rest):
        bottoms = [x, sn.constant(cont)] + list(rest[:1] if static else [])
        if h is not None:
            bottoms += [sn.constant(v) for v in h]
        tops, ctx = apply(kind, *bottoms, name="L", ntop=1 + (len(h) if h else 0),
                          num_output=3, expose_hidden=h is not None,
                          weight_filler={"type": "gaussian", "std": 0.6},
                          bias_filler={"type": "gaussian", "std": 0.3}, **params)
        build.names = [d.tensor.name for d in ctx.params]
        build.sizes = [int(np.prod(d.tensor.shape)) for d in ctx.params]
        return tops[0]
    return build


@pytest.mark.parametrize("width", [2, 13], ids=["narrow", "wide"])
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_backward_through_time_finite_differences(kind, width):
    """The derived backward through time, for x, x_static and every blob, against
    central differences in float64 (cont with a restart and a non-binary value). A
    step of x narrower than the gates is sliced per step, a wider one transformed for
    all steps at once: both paths."""
    T, N = 4, 2
    cont = np.array([[0, 0], [1, 0.5], [0, 1], [1, 1]], np.float64)
    h = [R.standard_normal((1, N, 3)) for _ in range(2 if kind == "LSTM" else 1)]
    for hidden in (None, h):
        fn = _apply_fn(kind, cont, hidden, static=True)
        with sn.graph_scope():
            fn(sn.input("a", (T, N, width)), sn.input("b", (N, 2)))
        res = sn.gradcheck(fn, [R.standard_normal((T, N, width)),
                                R.standard_normal((N, 2))], params=fn.names)
        assert res.skipped == 0 and \
            res.checked == T * N * width + N * 2 + sum(fn.sizes), res


def test_no_gradient_to_cont_or_initial_state():
    """Caffe back-propagates to neither cont nor h0/c0, and ignores hT/cT's diffs."""
    T, N, H = 3, 2, 4
    text, bottoms, shapes, tops = net_text("LSTM", T, N, (2,), H, False, True)
    text += 'layer { name: "l" type: "EuclideanLoss" bottom: "hT" bottom: "h0" top: "l" }'
    net = sn.Net("force_backward: true\n" + text, sn.TRAIN, backend="numpy")
    feeds = feeds_for(bottoms, shapes, T, N)
    net.forward(**feeds)
    net.blobs["y"].diff[...] = 1.0
    net.backward()
    for b in ("cont", "c0"):
        assert not net.blobs[b].diff.any(), b
    # h0's diff is the loss's direct term only (-(hT - h0) / num, Caffe's num = shape(0)
    # = 1), nothing through the LSTM
    np.testing.assert_allclose(net.blobs["h0"].diff,
                               -(net.blobs["hT"].data - feeds["h0"]), rtol=1e-5,
                               atol=1e-6)
    assert net.blobs["x"].diff.any()


@pytest.mark.parametrize("backend_", ["numpy", "cpu", "cuda-emu"])
def test_train_backward_after_carried_state(backend_):
    """A TRAIN net's separate backward after its second forward uses the state that
    forward started from (forward 1's final state), not the one it left: x's diff
    matches central differences of the NumPy LSTM started from that state."""
    T, N, H = 3, 2, 3
    text, bottoms, shapes, _ = net_text("LSTM", T, N, (2,), H, False, False)
    sn.fillers.set_random_seed(11)
    net = sn.Net("force_backward: true\n" + text, sn.TRAIN, backend=backend_)
    blobs = [b.data.astype(np.float64) for b in net.params["rec"]]
    x1, x2 = (R.standard_normal((T, N, 2)).astype(np.float32) for _ in range(2))
    c1 = np.ones((T, N), np.float32)
    c1[0] = 0
    c2 = np.ones((T, N), np.float32)
    net.forward(x=x1, cont=c1)
    net.forward(x=x2, cont=c2)
    w = R.standard_normal((T, N, H))
    net.blobs["y"].diff[...] = w
    net.backward()
    zero = np.zeros((1, N, H))
    _, h1, cc1 = lstm_ref(x1.astype(np.float64), c1, None, zero, zero, blobs)

    def loss(xv):
        return float(np.sum(lstm_ref(xv, c2, None, h1, cc1, blobs)[0] * w))
    num = np.zeros_like(x2, np.float64)
    for idx in np.ndindex(x2.shape):
        p, m = x2.astype(np.float64), x2.astype(np.float64)
        p[idx] += 1e-6
        m[idx] -= 1e-6
        num[idx] = (loss(p) - loss(m)) / 2e-6
    np.testing.assert_allclose(net.blobs["x"].diff, num, rtol=1e-3, atol=1e-4)
    # and the state it leaves is forward 2's final state
    out = net.forward(x=x2, cont=c2)["y"]
    _, h2, cc2 = lstm_ref(x2.astype(np.float64), c2, None, h1, cc1, blobs)
    np.testing.assert_allclose(out, lstm_ref(x2.astype(np.float64), c2, None, h2, cc2,
                                             blobs)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_caffemodel_in_caffes_blob_order(tmp_path, kind):
    """A .caffemodel written here by hand with Caffe's blobs (names, order, shapes)
    loads with copy_from and gives the NumPy outputs; net.save writes it back equal."""
    T, N, H, S = 3, 2, 4, 3
    text, bottoms, shapes, _ = net_text(kind, T, N, (2,), H, True, False, S=S)
    G = 4 * H if kind == "LSTM" else H
    arrays = [R.standard_normal(s).astype(np.float32) * 0.5 for s in
              [(G, 2), (G,), (G, S), (G, H)] + ([(H, H), (H,)] if kind == "RNN" else [])]
    msg = caffe_pb2.NetParameter()
    lp = msg.layer.add(name="rec", type=kind)
    for a in arrays:
        bp = lp.blobs.add()
        bp.shape.dim.extend(a.shape)
        bp.data.extend(a.ravel().tolist())
    path = tmp_path / "rec.caffemodel"
    path.write_bytes(msg.SerializeToString())
    net = sn.Net(text, sn.TEST, backend="cpu")
    net.copy_from(str(path))
    feeds = feeds_for(bottoms, shapes, T, N)
    out = net.forward(**feeds)["y"]
    zero = np.zeros((1, N, H), np.float32)
    want = lstm_ref(feeds["x"], feeds["cont"], feeds["xs"], zero, zero, arrays)[0] \
        if kind == "LSTM" else rnn_ref(feeds["x"], feeds["cont"], feeds["xs"], zero,
                                       arrays)[0]
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-5)
    saved = tmp_path / "saved.caffemodel"
    net.save(str(saved))
    back = caffe_pb2.NetParameter()
    back.ParseFromString(saved.read_bytes())
    (rec,) = [l for l in back.layer if l.name == "rec"]
    assert len(rec.blobs) == len(arrays)
    for bp, a in zip(rec.blobs, arrays):
        assert tuple(bp.shape.dim) == a.shape
        np.testing.assert_array_equal(np.array(bp.data, np.float32).reshape(a.shape), a)


def test_lstm_unit_against_numpy(backend):
    N, H = 3, 4
    c_prev = R.standard_normal((1, N, H)).astype(np.float32)
    x = R.standard_normal((1, N, 4 * H)).astype(np.float32)
    cont = np.array([[0.0, 1.0, 0.5]], np.float32)
    with sn.graph_scope():
        ins = [sn.input("c", c_prev.shape), sn.input("x", x.shape), sn.input("k", cont.shape)]
        tops, _ = apply("LSTMUnit", *ins, ntop=2)
        c, h = sn.function(ins, tops, backend=backend)(c_prev, x, cont)
    g = x[0]
    k = cont[0][:, None]
    f = np.where(k == 0, 0.0, k * sig(g[:, H:2 * H]))
    wc = f * c_prev[0] + sig(g[:, :H]) * np.tanh(g[:, 3 * H:])
    np.testing.assert_allclose(c, wc[None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h, (sig(g[:, 2 * H:3 * H]) * np.tanh(wc))[None], rtol=1e-5,
                               atol=1e-6)


def test_lstm_unit_gradients():
    cont = np.array([[0.0, 1.0, 1.0]])

    def fn(c, x):
        tops, _ = apply("LSTMUnit", c, x, sn.constant(cont), ntop=2)
        return tops[0] * 0.7 + tops[1]
    res = sn.gradcheck(fn, [R.standard_normal((1, 3, 2)), R.standard_normal((1, 3, 8))])
    assert res.checked == 6 + 24


@pytest.mark.parametrize("kind,bottoms,params,ntop,match", [
    ("LSTM", [(2, 3, 4), (2, 3)], {"num_output": 0}, 1,
     r"recurrent_param.num_output 0: must be an integer >= 1"),
    ("LSTM", [(2, 3, 4)], {"num_output": 2}, 1, r"takes 2 or 3 bottoms.*got 1"),
    ("RNN", [(2, 3, 4), (2, 3), (3, 1), (1, 3, 2), (1, 3, 2)],
     {"num_output": 2, "expose_hidden": True}, 2, r"takes 3 or 4 bottoms.*got 5"),
    ("LSTM", [(2, 3, 4), (2, 3)], {"num_output": 2, "expose_hidden": True}, 3,
     r"takes 4 or 5 bottoms"),
    ("LSTM", [(2, 3, 4), (2, 3), (1, 3, 2), (1, 3, 2)],
     {"num_output": 2, "expose_hidden": True}, 1, r"exactly 3 tops.*names 1"),
    ("LSTM", [(2, 3, 4), (3, 2)], {"num_output": 2}, 1,
     r"bottom 1 \(cont\) has shape \(3, 2\).*\(2, 3\)"),
    ("LSTM", [(2, 3, 4), (2, 3, 1)], {"num_output": 2}, 1, r"bottom 1 \(cont\)"),
    ("RNN", [(6,), (6, 1)], {"num_output": 2}, 1, r"at least 2 axes"),
    ("RNN", [(2, 3, 4), (2, 3), (2, 5)], {"num_output": 2}, 1,
     r"bottom 2 \(x_static\).*3 streams"),
    ("LSTM", [(2, 3, 4), (2, 3), (1, 3, 2), (3, 2)],
     {"num_output": 2, "expose_hidden": True}, 3,
     r"bottom 3 \(c0\) has shape \(3, 2\).*\(1, 3, 2\)"),
    ("LSTMUnit", [(1, 3, 2), (1, 3, 7), (1, 3)], {}, 2, r"last axis must be 4 x 2 = 8"),
    ("LSTMUnit", [(1, 3, 2), (1, 3, 8), (3,)], {}, 2, r"bottom 2 has shape \(3,\)"),
    ("LSTMUnit", [(1, 3, 2), (1, 3, 8)], {}, 2, r"exactly 3 bottoms"),
    ("LSTMUnit", [(1, 3, 2), (1, 3, 8), (1, 3)], {}, 1, r"exactly 2 tops"),
])
def test_errors(kind, bottoms, params, ntop, match):
    with sn.graph_scope():
        ins = [sn.input(f"b{i}", s) for i, s in enumerate(bottoms)]
        with pytest.raises(LayerError, match=rf"layer 'r' \({kind}\): .*{match}"):
            apply(kind, *ins, name="r", ntop=ntop, **params)


def test_error_in_a_net_names_the_file_layer():
    text, *_ = net_text("LSTM", 2, 2, (3,), 0, False, False)
    with pytest.raises(LayerError, match=r"layer 'rec' \(LSTM\).*recurrent_param.num_output"):
        sn.Net(text, sn.TEST, backend="numpy")


@pytest.mark.slow
def test_lstm_example_learns(tmp_path, monkeypatch):
    """examples/lstm as its README runs it, for 300 of its 1500 iterations: the
    training loss falls from about 1 to far below that of predicting s(t + 1) = s(t)."""
    src = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "lstm")
    dst = tmp_path / "examples" / "lstm"
    dst.mkdir(parents=True)
    for name in ("make_sines.py", "lstm_train.prototxt", "lstm_solver.prototxt"):
        shutil.copy(os.path.join(src, name), dst / name)
    spec = importlib.util.spec_from_file_location("make_sines", dst / "make_sines.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    persist = mod.main(str(dst))
    monkeypatch.chdir(tmp_path)
    solver = sn.get_solver("examples/lstm/lstm_solver.prototxt")
    solver.step(1)
    first = float(solver.net.blobs["loss"].data)
    solver.step(299)
    losses = []
    for _ in range(20):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert first > 0.3 and np.mean(losses) < persist / 4, (first, losses, persist)
