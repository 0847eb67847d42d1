"""Solvers against NumPy renderings of Caffe's formulas (src/caffe/solvers/*.cpp), lr
policies against closed forms, snapshots and exact resume, atomic snapshot writes."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time

import numpy as np
import pytest

import symnet as sn
import symnet.caffe as caffe
from symnet import solver as S
from symnet.formats.proto import caffe_pb2

N, D, K = 4, 3, 2     # batch, inputs, outputs of the tiny net

NET = """
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def batch(it, sub):
    """The data of iteration ``it``, sub-batch ``sub`` (deterministic)."""
    rng = np.random.default_rng(1000 * it + sub)
    x = rng.normal(size=(N, D)).astype(np.float32)
    w_true = np.array([[1.0, -2.0, 0.5], [0.3, 0.8, -1.0]], np.float32)
    y = (x @ w_true.T + rng.normal(scale=0.1, size=(N, K))).astype(np.float32)
    return x, y


def feed(solver, net, sub):
    x, y = batch(solver.iter, sub)
    return {"x": x, "y": y}


def make_solver(tmp_path, body, backend="cpu", type_=None, **kw):
    (tmp_path / "net.prototxt").write_text(NET)
    text = f'net: "{tmp_path / "net.prototxt"}"\n' \
           f'snapshot_prefix: "{tmp_path / "snap"}"\nsnapshot_after_train: false\n' + body
    if type_:
        text += f'type: "{type_}"\n'
    if "random_seed" not in body:   # as in Caffe, equal runs need a seeded solver
        text += "random_seed: 1701\n"
    path = tmp_path / "solver.prototxt"
    path.write_text(text)
    return sn.get_solver(str(path), backend=backend, feed=feed, **kw)


def grads(W, b, x, y):
    """InnerProduct + EuclideanLoss: loss and gradients (float64)."""
    p = x @ W.T + b
    d = (p - y) / N
    return float(((p - y) ** 2).sum() / (2 * N)), d.T @ x, d.sum(0)


class Ref:
    """Caffe's ApplyUpdate in NumPy for the tiny net's two params (weight, bias)."""

    def __init__(self, param, W, b):
        self.p = param
        self.data = [W.astype(np.float64), b.astype(np.float64)]
        self.lr_mult, self.decay_mult = [1.0, 2.0], [1.0, 0.0]
        n_hist = 2 if param.type in ("AdaDelta", "Adam") else 1
        self.hist = [[np.zeros_like(d) for d in self.data] for _ in range(n_hist)]
        self.iter, self.step_ = 0, 0

    def step(self):
        p = self.p
        diffs = [np.zeros_like(d) for d in self.data]
        loss = 0.0
        for sub in range(p.iter_size):
            x, y = batch(self.iter, sub)
            l, gW, gb = grads(self.data[0], self.data[1], x.astype(np.float64),
                              y.astype(np.float64))
            loss += l
            diffs[0] += gW
            diffs[1] += gb
        rate, self.step_ = S.learning_rate(p, self.iter, self.step_)
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum((g ** 2).sum() for g in diffs))
            if norm > p.clip_gradients:
                diffs = [g * (p.clip_gradients / norm) for g in diffs]
        for i, (w, g) in enumerate(zip(self.data, diffs)):
            g = g / p.iter_size
            decay = p.weight_decay * self.decay_mult[i]
            if decay:
                g = g + decay * (w if p.regularization_type == "L2" else np.sign(w))
            lr = rate * self.lr_mult[i]
            h = [hs[i] for hs in self.hist]
            if p.type == "SGD":
                h[0][...] = p.momentum * h[0] + lr * g
                upd = h[0]
            elif p.type == "Nesterov":
                old = h[0].copy()
                h[0][...] = p.momentum * h[0] + lr * g
                upd = (1 + p.momentum) * h[0] - p.momentum * old
            elif p.type == "AdaGrad":
                h[0] += g * g
                upd = lr * g / (np.sqrt(h[0]) + p.delta)
            elif p.type == "RMSProp":
                h[0][...] = p.rms_decay * h[0] + (1 - p.rms_decay) * g * g
                upd = lr * g / (np.sqrt(h[0]) + p.delta)
            elif p.type == "AdaDelta":
                h[0][...] = p.momentum * h[0] + (1 - p.momentum) * g * g
                u = g * np.sqrt((h[1] + p.delta) / (h[0] + p.delta))
                h[1][...] = p.momentum * h[1] + (1 - p.momentum) * u * u
                upd = lr * u
            elif p.type == "Adam":
                b1, b2 = p.momentum, p.momentum2
                h[0][...] = b1 * h[0] + (1 - b1) * g
                h[1][...] = b2 * h[1] + (1 - b2) * g * g
                t = self.iter + 1
                corr = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
                upd = lr * corr * h[0] / (np.sqrt(h[1]) + p.delta)
            w -= upd
        self.iter += 1
        return loss / p.iter_size, rate


def run_against_reference(tmp_path, body, type_, steps=6, backend="cpu", rtol=2e-5):
    solver = make_solver(tmp_path, body, backend=backend, type_=type_)
    ip = solver.net.params["ip"]
    ref = Ref(solver.param, ip[0].data.copy(), ip[1].data.copy())
    losses = []
    solver.listeners.append(lambda e: losses.append(e["loss"])
                            if e["event"] == "iteration" else None)
    for k in range(steps):
        solver.step(1)
        loss, rate = ref.step()
        np.testing.assert_allclose(losses[-1], loss, rtol=1e-5, atol=1e-6)
        assert solver.lr == pytest.approx(rate, rel=1e-6)
        np.testing.assert_allclose(ip[0].data, ref.data[0], rtol=rtol, atol=1e-6,
                                   err_msg=f"weights after step {k + 1}")
        np.testing.assert_allclose(ip[1].data, ref.data[1], rtol=rtol, atol=1e-6,
                                   err_msg=f"bias after step {k + 1}")
        for j, hs in enumerate(ref.hist):
            np.testing.assert_allclose(solver.history[2 * j], hs[0], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(solver.history[2 * j + 1], hs[1], rtol=1e-4,
                                       atol=1e-6)
    assert solver.iter == steps
    return solver


BASE = 'base_lr: 0.05\nlr_policy: "fixed"\nmax_iter: 100\n'

SOLVER_CASES = {
    "SGD": "momentum: 0.9\nweight_decay: 0.01\n",
    "Nesterov": "momentum: 0.9\nweight_decay: 0.01\n",
    "AdaGrad": "weight_decay: 0.01\ndelta: 1e-6\n",
    "RMSProp": "weight_decay: 0.01\nrms_decay: 0.95\ndelta: 1e-6\n",
    "AdaDelta": "momentum: 0.95\ndelta: 1e-6\nweight_decay: 0.01\nbase_lr: 1.0\n",
    "Adam": "momentum: 0.9\nmomentum2: 0.999\ndelta: 1e-8\nweight_decay: 0.01\n",
}


@pytest.mark.parametrize("type_", list(SOLVER_CASES))
def test_solver_update_matches_caffe_formula(tmp_path, type_):
    body = SOLVER_CASES[type_]
    if "base_lr" in body:
        body = body + 'lr_policy: "fixed"\nmax_iter: 100\n'
    else:
        body = BASE + body
    solver = run_against_reference(tmp_path, body, type_)
    assert type(solver).__name__ == f"{type_}Solver"
    assert len(solver.history) == (4 if type_ in ("AdaDelta", "Adam") else 2)


@pytest.mark.parametrize("backend", ["numpy", "cuda-emu"])
def test_sgd_update_other_backends(tmp_path, backend):
    run_against_reference(tmp_path, BASE + "momentum: 0.9\nweight_decay: 0.01\n", "SGD",
                          steps=3, backend=backend)


def test_l1_regularization(tmp_path):
    run_against_reference(tmp_path, BASE + 'momentum: 0.5\nweight_decay: 0.05\n'
                          'regularization_type: "L1"\n', "SGD")


def test_clip_gradients(tmp_path):
    run_against_reference(tmp_path, BASE + "momentum: 0.9\nclip_gradients: 0.1\n", "SGD")
    # a bound above the norm changes nothing
    run_against_reference(tmp_path, BASE + "momentum: 0.9\nclip_gradients: 1e6\n", "Adam")


def test_iter_size_accumulates_and_normalizes(tmp_path):
    run_against_reference(tmp_path, BASE + "momentum: 0.9\niter_size: 3\n"
                          "weight_decay: 0.001\n", "SGD")


def test_lr_mult_and_decay_mult_classes(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\nweight_decay: 0.1\n")
    classes = sorted((g["lr_mult"], g["decay_mult"]) for g in solver._layout)
    assert classes == [(1.0, 1.0), (2.0, 0.0)]
    # each class's blobs are views of its flat buffers
    for g in solver._layout:
        for b, off in zip(g["blobs"], g["offsets"]):
            assert np.shares_memory(b.data, g["data"].host_read()) and \
                np.shares_memory(b.diff, g["diff"].host_read())


def policy_param(**fields):
    p = caffe_pb2.SolverParameter()
    p.base_lr = 0.1
    for k, v in fields.items():
        if k == "stepvalue":
            p.stepvalue.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.mark.parametrize("policy,fields,closed", [
    ("fixed", {}, lambda it: 0.1),
    ("step", {"gamma": 0.5, "stepsize": 3}, lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", {"gamma": 0.9}, lambda it: 0.1 * 0.9 ** it),
    ("inv", {"gamma": 1e-2, "power": 0.75}, lambda it: 0.1 * (1 + 1e-2 * it) ** -0.75),
    ("multistep", {"gamma": 0.1, "stepvalue": [2, 5, 6]},
     lambda it: 0.1 * 0.1 ** sum(it >= s for s in (2, 5, 6))),
    ("poly", {"power": 2.0, "max_iter": 10}, lambda it: 0.1 * (1 - it / 10) ** 2),
    ("sigmoid", {"gamma": -0.0 + 0.5, "stepsize": 4},
     lambda it: 0.1 / (1 + math.exp(-0.5 * (it - 4)))),
])
def test_lr_policy_closed_form(policy, fields, closed):
    p = policy_param(lr_policy=policy, **fields)
    step = 0
    for it in range(10):
        rate, step = S.learning_rate(p, it, step)
        assert rate == pytest.approx(closed(it), rel=1e-6), (policy, it)


def test_lr_policy_errors():
    with pytest.raises(S.SolverError, match="unknown lr_policy"):
        S.learning_rate(policy_param(lr_policy="cosine"), 0)
    with pytest.raises(S.SolverError, match="stepsize"):
        S.learning_rate(policy_param(lr_policy="step", gamma=0.1), 0)
    with pytest.raises(S.SolverError, match="no lr_policy"):
        S.learning_rate(policy_param(), 0)


def test_solver_uses_policy(tmp_path):
    solver = run_against_reference(
        tmp_path, 'base_lr: 0.05\nlr_policy: "multistep"\ngamma: 0.5\nstepvalue: 2\n'
        'stepvalue: 4\nmax_iter: 100\nmomentum: 0.9\n', "SGD", steps=6)
    assert solver.current_step == 2
    assert solver.lr == pytest.approx(0.05 * 0.25)


def test_solver_checks(tmp_path):
    with pytest.raises(S.SolverError, match="Momentum cannot be used with AdaGrad"):
        make_solver(tmp_path, BASE + "momentum: 0.9\n", type_="AdaGrad")
    (tmp_path / "bad.prototxt").write_text('base_lr: 0.1\nlr_policy: "fixed"\n')
    with pytest.raises(S.SolverError, match="exactly one train net"):
        sn.get_solver(str(tmp_path / "bad.prototxt"))
    (tmp_path / "bad2.prototxt").write_text('net: "missing.prototxt"\n')
    with pytest.raises(S.SolverError, match="missing.prototxt' not found"):
        sn.get_solver(str(tmp_path / "bad2.prototxt"))
    (tmp_path / "bad3.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}"\n'
                                            'type: "Lion"\n')
    with pytest.raises(S.SolverError, match='unknown solver type "Lion"'):
        sn.get_solver(str(tmp_path / "bad3.prototxt"))


def test_pycaffe_names(tmp_path):
    make_solver(tmp_path, BASE)
    path = str(tmp_path / "solver.prototxt")
    for name in ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver",
                 "AdaDeltaSolver", "AdamSolver"):
        s = getattr(caffe, name)(path, feed=feed, backend="numpy")
        assert type(s).__name__ == name
    assert type(caffe.get_solver(path, feed=feed, backend="numpy")).__name__ == "SGDSolver"
    assert sn.get_solver is caffe.get_solver


def test_solver_type_upgrade(tmp_path):
    make_solver(tmp_path, BASE)
    text = (tmp_path / "solver.prototxt").read_text() + "solver_type: NESTEROV\n"
    (tmp_path / "old.prototxt").write_text(text)
    s = sn.get_solver(str(tmp_path / "old.prototxt"), feed=feed, backend="numpy")
    assert isinstance(s, S.NesterovSolver)


def test_inline_net_param_and_test_nets(tmp_path):
    text = f"""
    net_param {{ {NET} }}
    test_iter: 3
    test_interval: 2
    test_compute_loss: true
    base_lr: 0.05 lr_policy: "fixed" max_iter: 4 display: 2 momentum: 0.9
    snapshot_after_train: false
    """
    solver = sn.get_solver(text, backend="cpu", feed=feed,
                           test_feed=lambda s, n, i: dict(zip("xy", batch(99, i))))
    events = []
    solver.listeners.append(events.append)
    solver.solve()
    tests = [e for e in events if e["event"] == "test"]
    assert [e["iter"] for e in tests] == [0, 2, 4]
    assert tests[0]["outputs"][0]["name"] == "loss"
    assert "loss" in tests[0]
    # test net shares the train net's weights at test time
    np.testing.assert_array_equal(solver.test_nets[0].params["ip"][0].data,
                                  solver.net.params["ip"][0].data)
    # the test score is the mean of test_iter forward passes with shared weights
    W, b = (a.data.astype(np.float64) for a in solver.net.params["ip"])
    mean = np.mean([grads(W, b, *batch(99, i))[0] for i in range(3)])
    assert tests[-1]["outputs"][0]["value"] == pytest.approx(mean, rel=1e-5)
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == sn.TEST


def test_average_loss_smoothing(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\naverage_loss: 3\ndisplay: 1\n")
    raw, shown = [], []
    solver.listeners.append(lambda e: raw.append(e["loss"]) if e["event"] == "iteration"
                            else shown.append(e["loss"]) if e["event"] == "train" else None)
    solver.step(6)
    for i in range(6):
        window = raw[max(0, i - 2):i + 1]
        assert shown[i] == pytest.approx(np.mean(window), rel=1e-5)


def test_loss_goes_down(tmp_path):
    solver = make_solver(tmp_path, 'base_lr: 0.05\nlr_policy: "inv"\ngamma: 0.01\n'
                         'power: 0.75\nmomentum: 0.9\nweight_decay: 0.0005\nmax_iter: 60\n')
    losses = []
    solver.listeners.append(lambda e: losses.append(e["loss"])
                            if e["event"] == "iteration" else None)
    solver.solve()
    assert solver.iter == 60
    assert np.mean(losses[-10:]) < 0.2 * np.mean(losses[:5])


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_clip_message_reports_the_norm_of_all_diffs(tmp_path, caplog, backend):
    """Caffe's "Gradient clipping" line gives the L2 norm of every param diff; the update
    computes it where the diffs live and only that scalar is read back."""
    solver = make_solver(tmp_path, BASE + "clip_gradients: 1e-4\ndisplay: 1\n",
                         backend=backend)
    solver.net.forward_backward()
    diffs = [b.diff.astype(np.float64) for blobs in solver.net.params.values() for b in blobs]
    norm = np.sqrt(sum(float((d ** 2).sum()) for d in diffs))
    from symnet import runtime
    runtime.reset_transfer_counts()
    with caplog.at_level(logging.INFO, logger="symnet"):
        solver.apply_update()
    if backend != "cpu":        # the diffs stay on the device; the scalar comes down
        assert runtime.transfer_counts()["d2h_bytes"] == 4
    (line,) = [r.getMessage() for r in caplog.records if "Gradient clipping" in r.getMessage()]
    got = float(re.search(r"L2 norm ([\d.e+-]+) >", line).group(1))
    assert got == pytest.approx(norm, rel=1e-5) and norm > 1e-4


def test_update_is_a_few_fused_kernels(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\nweight_decay: 0.01\n")
    fn = solver.update_function()
    kernels = [r for r in fn.report() if r["kind"] != "alias"]
    # one elementwise kernel per (lr_mult, decay_mult) class: weights and biases here
    assert len(kernels) == len(solver._layout) == 2
    solver = make_solver(tmp_path, BASE + "clip_gradients: 1.0\n", type_="Adam")
    assert len(solver.update_function().report()) <= 2 * len(solver._layout) + 2


def test_lenet_update_kernels():
    net = "tests/data/models/bvlc_mnist/lenet_train_test.prototxt"
    param = caffe_pb2.SolverParameter(net=net, base_lr=0.01, lr_policy="fixed",
                                      momentum=0.9, weight_decay=5e-4)
    solver = S.SGDSolver(param, backend="cpu",
                         input_shapes={"data": (2, 1, 28, 28), "label": (2,)})
    rows = solver.update_function().report()
    assert len(rows) == 2      # lr_mult 1 (weights) and 2 (biases): 8 params, 2 kernels
    assert sum(len(r["ops"]) for r in rows) >= 6


# --------------------------------------------------------------------------- snapshots

def trajectory(solver, n):
    losses = []
    solver.listeners.append(lambda e: losses.append(e["loss"])
                            if e["event"] == "iteration" else None)
    solver.step(n)
    return losses


@pytest.mark.parametrize("type_,body", [
    ("SGD", 'base_lr: 0.05\nlr_policy: "step"\ngamma: 0.5\nstepsize: 3\nmomentum: 0.9\n'
     "weight_decay: 0.01\nmax_iter: 100\n"),
    ("Adam", BASE + "momentum: 0.9\nmomentum2: 0.999\n"),
])
def test_snapshot_then_resume_equals_uninterrupted(tmp_path, type_, body):
    full = trajectory(make_solver(tmp_path, body, type_=type_), 10)
    first = make_solver(tmp_path, body, type_=type_)
    part1 = trajectory(first, 5)
    model, state = first.snapshot()
    assert model == str(tmp_path / "snap_iter_5.caffemodel")
    assert state == str(tmp_path / "snap_iter_5.solverstate")
    resumed = make_solver(tmp_path, body, type_=type_)
    resumed.restore(state)
    assert resumed.iter == 5
    part2 = trajectory(resumed, 5)
    assert part1 + part2 == full
    for a, b in zip(resumed.history, make_solver_after(tmp_path, body, type_, 10).history):
        np.testing.assert_array_equal(a, b)


def make_solver_after(tmp_path, body, type_, n):
    s = make_solver(tmp_path, body, type_=type_)
    s.step(n)
    return s


def test_solverstate_is_caffes_message(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n", type_="Adam")
    solver.step(3)
    model, state_path = solver.snapshot()
    data = open(state_path, "rb").read()
    state = caffe_pb2.SolverState()
    state.ParseFromString(data)
    assert state.iter == 3 and state.learned_net == model and state.current_step == 0
    assert len(state.history) == 4      # Adam: m for both params, then v for both
    np.testing.assert_array_equal(
        np.array(state.history[0].data).reshape(2, 3), solver.history[0])
    assert list(state.history[0].shape.dim) == [2, 3]
    # the symnet extra data is an unknown field for Caffe's schema
    assert S._top_level_field(data, S.EXTRA_FIELD) is not None
    net = caffe_pb2.NetParameter()
    net.ParseFromString(open(model, "rb").read())
    assert [l.name for l in net.layer if len(l.blobs)] == ["ip"]


def test_restore_finds_model_next_to_state(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(2)
    model, state = solver.snapshot()
    moved = tmp_path / "moved"
    moved.mkdir()
    os.replace(model, moved / os.path.basename(model))
    os.replace(state, moved / os.path.basename(state))
    other = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    other.restore(str(moved / os.path.basename(state)))
    np.testing.assert_array_equal(other.net.params["ip"][0].data,
                                  solver.net.params["ip"][0].data)


def test_restore_errors(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(1)
    _, state = solver.snapshot()
    adam = make_solver(tmp_path, BASE, type_="Adam")
    with pytest.raises(S.SolverError, match="history blobs"):
        adam.restore(state)
    with pytest.raises(S.SolverError, match="x.solverstate.h5: .*no HDF5 file at"):
        adam.restore("x.solverstate.h5")
    with pytest.raises(S.SolverError, match="nothing.solverstate: no such file"):
        adam.restore("nothing.solverstate")


def test_interrupted_snapshot_keeps_previous(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(2)
    model, state = solver.snapshot()
    before = {p: open(p, "rb").read() for p in (model, state)}
    solver.step(2)
    files = sorted(os.listdir(tmp_path))

    def interrupted(fd):             # the write stops midway (Ctrl-C, kill)
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    solver.iter = 2                  # the same file names as the intact snapshot
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()
    monkeypatch.undo()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(S.SolverError, match="No space left"):
        solver.snapshot()
    monkeypatch.undo()
    for p, data in before.items():
        assert open(p, "rb").read() == data
    assert sorted(os.listdir(tmp_path)) == files      # no partial or temporary files
    other = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    other.restore(state)
    assert other.iter == 2


def test_snapshot_interval_and_after_train(tmp_path):
    solver = make_solver(tmp_path, BASE.replace("100", "7") + "snapshot: 3\n")
    solver.param.snapshot_after_train = True
    solver.solve()
    names = sorted(f for f in os.listdir(tmp_path) if f.startswith("snap_iter_"))
    assert names == [f"snap_iter_{i}.{e}" for i in (3, 6, 7)
                     for e in ("caffemodel", "solverstate")]


def test_snapshot_prefix_defaults(tmp_path):
    p = caffe_pb2.SolverParameter()
    assert S._snapshot_prefix(p, str(tmp_path / "lenet_solver.prototxt")) == \
        str(tmp_path / "lenet_solver")
    p.snapshot_prefix = str(tmp_path)
    assert S._snapshot_prefix(p, str(tmp_path / "s.prototxt")) == str(tmp_path / "s")


def test_signal_actions(tmp_path):
    import signal
    solver = make_solver(tmp_path, BASE.replace("100", "50") + "momentum: 0.9\n")
    before = signal.getsignal(signal.SIGINT)    # SIG_IGN in a background job
    with S.SignalHandler(sigint_effect="stop", sighup_effect="snapshot") as h:
        solver.action_function = h.requested_action
        solver.add_callback(on_start=lambda: solver.iter == 3 and
                            os.kill(os.getpid(), signal.SIGHUP))
        solver.add_callback(on_start=lambda: solver.iter == 5 and
                            os.kill(os.getpid(), signal.SIGINT))
        solver.solve()
    assert solver.iter == 6 and solver.requested_early_exit
    assert os.path.exists(tmp_path / "snap_iter_4.solverstate")
    assert not os.path.exists(tmp_path / "snap_iter_50.solverstate")
    assert signal.getsignal(signal.SIGINT) is before          # put back as it was


def test_data_layer_state_resume(tmp_path):
    """A data layer whose source has state()/set_state(): resuming continues with the
    batch an uninterrupted run would read."""
    from symnet import data

    class Counter:
        def __init__(self, lp, phase, base):
            self.i = 0

        def top_shapes(self):
            return [(N, D), (N, K)]

        def next_batch(self):
            self.i += 1
            return list(batch(self.i, 0))

        def state(self):
            return {"i": self.i}

        def set_state(self, s):
            self.i = s["i"]

    data.register("SymnetTestCounter")(Counter)
    net = NET.replace('layer { name: "x" type: "Input" top: "x" input_param '
                      '{ shape { dim: 4 dim: 3 } } }\n', "").replace(
        'layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 2 } } }',
        'layer { name: "d" type: "SymnetTestCounter" top: "x" top: "y" }')
    (tmp_path / "net.prototxt").write_text(net)
    text = f'net: "{tmp_path / "net.prototxt"}"\nsnapshot_prefix: "{tmp_path / "s"}"\n' + \
        BASE + "momentum: 0.9\nrandom_seed: 1701\n"
    (tmp_path / "solver.prototxt").write_text(text)
    full = trajectory(sn.get_solver(str(tmp_path / "solver.prototxt"), backend="cpu"), 8)
    first = sn.get_solver(str(tmp_path / "solver.prototxt"), backend="cpu")
    part1 = trajectory(first, 4)
    _, state = first.snapshot()
    resumed = sn.get_solver(str(tmp_path / "solver.prototxt"), backend="cpu")
    resumed.restore(state)
    assert part1 + trajectory(resumed, 4) == full


def test_restore_refuses_a_negative_iteration_and_changes_nothing(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(2)
    _, state_path = solver.snapshot()
    state = caffe_pb2.SolverState()
    state.ParseFromString(open(state_path, "rb").read())
    state.iter = -5
    bad = tmp_path / "bad.solverstate"
    bad.write_bytes(state.SerializeToString())
    weights = solver.net.params["ip"][0].data.copy()
    with pytest.raises(S.SolverError, match="iter -5"):
        solver.restore(str(bad))
    assert solver.iter == 2
    np.testing.assert_array_equal(solver.net.params["ip"][0].data, weights)


# --------------------------------------------------------------------------- whole-state checks

DUMMY_NET = """
name: "dummy"
layer { name: "dx" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 4 dim: 3 } data_filler { type: "gaussian" } } }
layer { name: "dy" type: "DummyData" top: "y"
  dummy_data_param { shape { dim: 4 dim: 2 } data_filler { type: "uniform" } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "p"
  param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def dummy_solver(tmp_path, type_="SGD", body=BASE + "momentum: 0.9\n"):
    (tmp_path / "dnet.prototxt").write_text(DUMMY_NET)
    text = f'net: "{tmp_path / "dnet.prototxt"}"\nsnapshot_prefix: "{tmp_path / "d"}"\n' \
           f'snapshot_after_train: false\nrandom_seed: 1701\ntype: "{type_}"\n' + body
    (tmp_path / "dsolver.prototxt").write_text(text)
    return sn.get_solver(str(tmp_path / "dsolver.prototxt"), backend="cpu")


def everything(solver):
    """What a failed restore must leave as it was."""
    return {"iter": solver.iter, "current_step": solver.current_step,
            "net_iteration": solver.net.iteration,
            "params": [np.array(b.data) for b, _, _ in solver.learnable_params()],
            "history": [np.array(h) for h in solver.history],
            "data": [f.state() for _, f in solver.net._feeders]}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k in ("params", "history"):
            assert len(a[k]) == len(b[k])
            for x, y in zip(a[k], b[k]):
                np.testing.assert_array_equal(x, y)
        else:
            assert a[k] == b[k], k


def split_state(path):
    """(SolverState, resume data dict) of a symnet .solverstate."""
    data = open(path, "rb").read()
    state = caffe_pb2.SolverState()
    state.ParseFromString(data)
    clean = caffe_pb2.SolverState()             # the known fields only
    clean.iter, clean.current_step = state.iter, state.current_step
    clean.learned_net = state.learned_net
    clean.history.extend(state.history)
    return clean, json.loads(S._top_level_field(data, S.EXTRA_FIELD))


def join_state(state, extra, path, raw_extra=None):
    blob = raw_extra if raw_extra is not None else json.dumps(extra).encode()
    path.write_bytes(state.SerializeToString() + S._encode_varint(S.EXTRA_FIELD << 3 | 2)
                     + S._encode_varint(len(blob)) + blob)
    return str(path)


def _shape_bad(st, ex):
    st.history[1].shape.dim[:] = [1, 2]         # the bias (2,) as (1, 2)


def _count_bad(st, ex):
    del st.history[0].data[-1]


def _fewer(st, ex):
    del st.history[-1]


def _learned_missing(st, ex):
    st.learned_net = "/nonexistent/x.caffemodel"


def _rng_bad(st, ex):
    ex["data"]["train"]["dy"]["rng"]["state"]["inc"] = "seven"


def _type_bad(st, ex):
    ex["data"]["train"]["dx"]["type"] = "MemoryData"


def _seed_negative(st, ex):
    ex["data"]["train"]["dx"]["seed"] = -3


def _key_missing(st, ex):
    del ex["data"]["train"]["dy"]["rng"]


def _net_iteration(st, ex):
    ex["net_iteration"] = "12"


def _format(st, ex):
    ex["format"] = "something-else/9"


def _test_list(st, ex):
    ex["data"]["test"] = {"a": 1}


@pytest.mark.parametrize("mutate,message", [
    (_shape_bad, r"history blob 1 has shape \[1, 2\], its param has \[2\]"),
    (_count_bad, r"history blob 0: BlobProto of shape \[2, 3\] \(6 values\) holds 5"),
    (_fewer, r"holds 1 history blobs, the SGD solver of this net needs 2 \(one history "
             r"blob per learnable param, 2 params"),
    (_learned_missing, r"learned_net '/nonexistent/x.caffemodel' was not found"),
    (_rng_bad, r"data layer 'dy' \(DummyData\) of the train net: rng.state.inc is "
               r"'seven', expected an integer >= 0"),
    (_type_bad, r"saved by a source of type 'MemoryData', the layer's source is a 'DummyData' source"),
    (_seed_negative, r"seed is -3, expected an integer >= 0"),
    (_key_missing, r"keys .* expected .*\(missing \['rng'\]\)"),
    (_net_iteration, r"net_iteration is '12', expected an integer >= 0"),
    (_format, r"format 'something-else/9', expected 'symnet-solverstate/1'"),
    (_test_list, r"'data.test' must be a list of objects"),
])
def test_malformed_state_is_refused_and_changes_nothing(tmp_path, mutate, message):
    solver = dummy_solver(tmp_path)
    solver.step(3)
    _, path = solver.snapshot()
    state, extra = split_state(path)
    mutate(state, extra)
    bad = join_state(state, extra, tmp_path / "bad.solverstate")
    solver.step(2)                   # the solver moved on since the snapshot
    before = everything(solver)
    with pytest.raises(S.SolverError, match=message) as info:
        solver.restore(bad)
    assert str(info.value).startswith(bad)
    assert_same(everything(solver), before)
    twin = dummy_solver(tmp_path)    # and it goes on as one that never saw the file
    twin.step(5)
    assert trajectory(solver, 2) == trajectory(twin, 2)
    np.testing.assert_array_equal(solver.net.params["ip"][0].data,
                                  twin.net.params["ip"][0].data)


def test_broken_resume_json_is_an_error(tmp_path):
    solver = dummy_solver(tmp_path)
    solver.step(1)
    _, path = solver.snapshot()
    state, _ = split_state(path)
    bad = join_state(state, None, tmp_path / "bad.solverstate", raw_extra=b'{"format": ')
    before = everything(solver)
    with pytest.raises(S.SolverError, match=r"bad.solverstate: symnet resume data "
                                            r"\(field 1000\) is not JSON"):
        solver.restore(bad)
    assert_same(everything(solver), before)


def test_failing_data_position_rolls_back_the_others(tmp_path):
    """The second data layer's position passes the form check but its source refuses
    it: the first layer's position, already set, is put back."""
    solver = dummy_solver(tmp_path)
    solver.step(3)
    _, path = solver.snapshot()
    state, extra = split_state(path)
    extra["data"]["train"]["dy"]["rng"]["bit_generator"] = "MT19937"
    bad = join_state(state, extra, tmp_path / "bad.solverstate")
    solver.step(2)
    before = everything(solver)
    with pytest.raises(S.SolverError, match=r"cannot restore the position of data layer "
                                            r"'dy' \(DummyData\) of the train net"):
        solver.restore(bad)
    assert_same(everything(solver), before)
    twin = dummy_solver(tmp_path)
    twin.step(5)
    assert trajectory(solver, 2) == trajectory(twin, 2)


def test_adam_history_count_names_two_per_param(tmp_path):
    sgd = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    sgd.step(1)
    _, state = sgd.snapshot()
    adam = make_solver(tmp_path, BASE, type_="Adam")
    with pytest.raises(S.SolverError, match=r"holds 2 history blobs, the Adam solver of "
                                            r"this net needs 4 \(2 history blobs per "
                                            r"learnable param, 2 params"):
        adam.restore(state)


def test_resume_of_dummy_data_is_exact(tmp_path):
    full = trajectory(dummy_solver(tmp_path), 6)
    first = dummy_solver(tmp_path)
    part1 = trajectory(first, 3)
    _, path = first.snapshot()
    resumed = dummy_solver(tmp_path)
    resumed.step(1)                  # somewhere else first
    import warnings as w
    with w.catch_warnings():
        w.simplefilter("error")      # an exact resume says nothing
        resumed.restore(path)
    assert part1 + trajectory(resumed, 3) == full


def test_state_without_resume_data_warns(tmp_path):
    """A state without symnet's resume data (as Caffe writes it) restores, and says the
    data layers start from their current position."""
    solver = dummy_solver(tmp_path)
    solver.step(3)
    _, path = solver.snapshot()
    state, _ = split_state(path)
    caffe_like = tmp_path / "caffe.solverstate"
    caffe_like.write_bytes(state.SerializeToString())
    other = dummy_solver(tmp_path)
    with pytest.warns(S.ResumeWarning, match=r"holds no symnet resume data .* the data "
                                             r"layers 'dx' \(the train net\), 'dy' \(the "
                                             r"train net\) start from their current"):
        other.restore(str(caffe_like))
    assert other.iter == 3 and other.net.iteration == 3
    np.testing.assert_array_equal(other.net.params["ip"][0].data,
                                  solver.net.params["ip"][0].data)


def test_source_that_cannot_seek_warns(tmp_path):
    from symnet import data

    class NoSeek:
        def __init__(self, lp, phase, base):
            self.i = 0

        def top_shapes(self):
            return [(N, D), (N, K)]

        def next_batch(self):
            self.i += 1
            return list(batch(self.i, 0))

    data.register("SymnetTestNoSeek")(NoSeek)
    net = NET.replace('layer { name: "x" type: "Input" top: "x" input_param '
                      '{ shape { dim: 4 dim: 3 } } }\n', "").replace(
        'layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 4 dim: 2 } } }',
        'layer { name: "d" type: "SymnetTestNoSeek" top: "x" top: "y" }')
    (tmp_path / "net.prototxt").write_text(net)
    text = f'net: "{tmp_path / "net.prototxt"}"\nsnapshot_prefix: "{tmp_path / "s"}"\n' + \
        BASE + "momentum: 0.9\nrandom_seed: 1701\n"
    (tmp_path / "solver.prototxt").write_text(text)
    first = sn.get_solver(str(tmp_path / "solver.prototxt"), backend="cpu")
    first.step(2)
    _, state = first.snapshot()
    resumed = sn.get_solver(str(tmp_path / "solver.prototxt"), backend="cpu")
    with pytest.warns(S.ResumeWarning, match=r"the source of data layer 'd' "
                                             r"\(SymnetTestNoSeek\) of the train net cannot "
                                             r"seek"):
        resumed.restore(state)
    assert resumed.iter == 2


def _write_caffe_h5_state(path, proto_path, *, history_shape=None, drop=None):
    h5py = pytest.importorskip("h5py")
    state = caffe_pb2.SolverState()
    state.ParseFromString(open(proto_path, "rb").read())
    with h5py.File(path, "w") as f:             # SnapshotSolverStateToHDF5's layout
        f.create_dataset("iter", data=np.array([state.iter], np.int32))
        f.create_dataset("learned_net", data=state.learned_net.encode())
        f.create_dataset("current_step", data=np.array([state.current_step], np.int32))
        g = f.create_group("history")
        for i, bp in enumerate(state.history):
            if i == drop:
                continue
            a = np.array(bp.data, np.float32).reshape(tuple(bp.shape.dim))
            if history_shape is not None and i == 0:
                a = a.reshape(history_shape)
            g.create_dataset(str(i), data=a)
    return str(path)


def test_restore_from_caffe_hdf5_state(tmp_path):
    body = BASE + "momentum: 0.9\nmomentum2: 0.999\n"
    first = make_solver(tmp_path, body, type_="Adam")
    first.step(3)
    _, proto_path = first.snapshot()
    h5 = _write_caffe_h5_state(tmp_path / "snap_iter_3.solverstate.h5", proto_path)
    a = make_solver(tmp_path, body, type_="Adam")
    a.restore(h5)
    b = make_solver(tmp_path, body, type_="Adam")
    b.restore(proto_path)
    assert a.iter == b.iter == 3
    for x, y in zip(a.history, b.history):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.net.params["ip"][0].data, b.net.params["ip"][0].data)
    assert trajectory(a, 2) == trajectory(b, 2)


@pytest.mark.parametrize("kw,message", [
    ({"history_shape": (3, 2)}, r"history blob 0 has shape \[3, 2\], expected \[2, 3\]"),
    ({"drop": 3}, r"holds 3 history blobs, the Adam solver of this net needs 4"),
])
def test_malformed_hdf5_state_changes_nothing(tmp_path, kw, message):
    body = BASE + "momentum: 0.9\n"
    solver = make_solver(tmp_path, body, type_="Adam")
    solver.step(2)
    _, proto_path = solver.snapshot()
    h5 = _write_caffe_h5_state(tmp_path / "bad.solverstate.h5", proto_path, **kw)
    solver.step(1)
    before = everything(solver)
    with pytest.raises(S.SolverError, match=message):
        solver.restore(h5)
    assert_same(everything(solver), before)
    (tmp_path / "junk.solverstate.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(S.SolverError, match="junk.solverstate.h5: not a readable HDF5"):
        solver.restore(str(tmp_path / "junk.solverstate.h5"))
    assert_same(everything(solver), before)


def test_snapshot_sweeps_old_temporary_files_only(tmp_path):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(1)
    hour_ago = time.time() - 3700
    old = tmp_path / ".snap_iter_7.solverstate.0123456789ab.symnet-tmp"
    old_legacy = tmp_path / ".snap_iter_7.caffemodel.ab_cd9xy.tmp"
    fresh = tmp_path / ".snap_iter_8.caffemodel.aaaaaaaaaaaa.symnet-tmp"
    # the user's files, even old ones with similar names, stay
    users = [tmp_path / ".notes.0123456789ab.symnet-tmp",            # not a snapshot
             tmp_path / ".other_iter_7.caffemodel.0123456789ab.symnet-tmp",  # other prefix
             tmp_path / ".snap_iter_7.caffemodel.0123456789ab.tmp",  # neither pattern
             tmp_path / "snap_iter_7.caffemodel.0123456789ab.symnet-tmp"]    # not hidden
    for p in [old, old_legacy, fresh] + users:
        p.write_bytes(b"partial")
    for p in [old, old_legacy] + users:
        os.utime(p, (hour_ago, hour_ago))
    (tmp_path / "linkdir").mkdir()
    link = tmp_path / ".snap_iter_9.caffemodel.0123456789ab.symnet-tmp"
    os.symlink(tmp_path / "linkdir", link)      # not a regular file: left alone
    os.utime(link, (hour_ago, hour_ago), follow_symlinks=False)
    solver.snapshot()
    assert not old.exists() and not old_legacy.exists()
    assert fresh.exists() and link.is_symlink()
    assert all(p.exists() for p in users)
    # the snapshot's own temporary files are gone, its files are in place
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(S.TEMP_SUFFIX)
                 and f.startswith(".snap_iter_1")]
    assert leftovers == [] and (tmp_path / "snap_iter_1.solverstate").exists()


def test_snapshot_temporary_names_have_the_swept_form(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(os.path.basename(src))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(1)
    solver.snapshot()
    monkeypatch.undo()
    assert [re.sub(r"\.[0-9a-f]{12}\.", ".X.", n) for n in seen] == \
        [".snap_iter_1.caffemodel.X.symnet-tmp", ".snap_iter_1.solverstate.X.symnet-tmp"]
    for n in seen:
        assert S._TEMP_RE.match(n)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, umask):
    """Snapshots, upgraded prototxt and caffemodel files get the permissions a plain
    write gives (0666 less the umask), as other tools' outputs; only the kernel cache
    is private."""
    from symnet.formats import upgrade
    old = os.umask(umask)
    try:
        solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
        solver.step(1)
        model, state = solver.snapshot()
        src = tmp_path / "old.prototxt"
        src.write_text('layers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" }\n')
        upgrade.upgrade_file(src, tmp_path / "new.prototxt")
        upgrade.upgrade_file(model, tmp_path / "up.caffemodel", kind="binary")
    finally:
        os.umask(old)
    for path in (model, state, tmp_path / "new.prototxt", tmp_path / "up.caffemodel"):
        assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask, path


def test_learned_net_path_that_is_not_utf8(tmp_path):
    """learned_net is a path in the file system's bytes: a name that is not UTF-8 (which
    protobuf hands over as bytes) still finds its file, or is a SolverError."""
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    solver.step(2)
    model, path = solver.snapshot()
    raw = os.fsencode(str(tmp_path)) + b"/w\xff.caffemodel"
    os.replace(model, os.fsdecode(raw))
    data = open(path, "rb").read()
    old = os.fsencode(model)
    assert len(old) > len(raw)
    # the same length keeps the message valid: pad the new name with "/" after the folder
    padded = os.fsencode(str(tmp_path)) + b"/" * (len(old) - len(raw)) + b"/w\xff.caffemodel"
    bad = tmp_path / "moved.solverstate"
    bad.write_bytes(data.replace(old, padded))
    other = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    other.restore(str(bad))
    np.testing.assert_array_equal(other.net.params["ip"][0].data,
                                  solver.net.params["ip"][0].data)
    os.unlink(os.fsdecode(raw))
    before = everything(other)
    with pytest.raises(S.SolverError, match="was not found"):
        other.restore(str(bad))
    assert_same(everything(other), before)


def test_state_from_a_device_is_read_up_to_the_limit(tmp_path, monkeypatch):
    solver = make_solver(tmp_path, BASE + "momentum: 0.9\n")
    monkeypatch.setenv("SYMNET_MAX_TEXT_BYTES", "4K")
    before = everything(solver)
    with pytest.raises(S.SolverError, match="/dev/zero: .*limit of 4096 bytes"):
        solver.restore("/dev/zero")
    assert_same(everything(solver), before)
