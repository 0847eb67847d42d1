"""The Plan: plain serialisable data (buffers, steps, kernels, sources), buffers reused
where lifetimes do not overlap, and runnable after a JSON round trip."""
from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower
from symnet.codegen.plan import Plan
from symnet.runtime.executor import Executor
from cghelp import assert_close, rng_for

CODEGEN = ["cpu", "cuda-emu"]


@pytest.fixture
def backend(compiled_backend):
    """Here: the backends that run generated code (cuda skips without a GPU)."""
    return compiled_backend


def mixed_graph():
    """Inputs, a param, a constant, library ops, reductions and several outputs."""
    x = sn.input("x", (2, 3, 6, 6))
    w = sn.param("w", (4, 3, 3, 3), value=rng_for("w").standard_normal((4, 3, 3, 3)) * 0.3)
    c = sn.constant(rng_for("c").standard_normal((1, 4, 1, 1)).astype(np.float32))
    h = sn.maximum(sn.conv2d(x, w, pad=1) + c, 0.0)
    p = sn.max_pool2d(h, 2).reshape(2, -1)
    y = sn.exp(p - p.max(1, keepdims=True))
    loss = sn.log(y.sum(1)).sum()
    dx, dw = sn.grad(loss, [x, w])
    return [x], [y, loss, dx, dw]


def plans_equal(p, q):
    assert p.backend == q.backend
    assert [asdict(b) for b in p.buffers] == [asdict(b) for b in q.buffers]
    assert [asdict(s) for s in p.steps] == [asdict(s) for s in q.steps]
    assert {k: asdict(v) for k, v in p.kernels.items()} == \
        {k: asdict(v) for k, v in q.kernels.items()}
    assert list(p.inputs) == list(q.inputs)
    assert [list(x) for x in p.params] == [list(x) for x in q.params]
    assert [(b, tuple(s)) for b, s in p.outputs] == [(b, tuple(s)) for b, s in q.outputs]
    assert set(p.constants) == set(q.constants)
    for k in p.constants:
        np.testing.assert_array_equal(p.constants[k], q.constants[k])
        assert q.constants[k].dtype == np.float32
    assert p.sources == q.sources


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu", "cuda"])
def test_plan_json_round_trip(backend):
    with sn.graph_scope() as g:
        ins, outs = mixed_graph()
        plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
    text = plan.to_json()
    json.loads(text)                       # valid JSON
    back = Plan.from_json(text)
    plans_equal(plan, back)
    assert back.to_json() == text          # stable
    assert plan.constants, "the graph has a constant"
    assert plan.params, "the graph has a param"
    assert {s.kind for s in plan.steps} <= {"kernel", "gemm", "host"}
    for s in plan.steps:
        if s.kind == "kernel":
            assert s.name in plan.kernels and s.grid >= 1 and s.block >= 1
            info = plan.kernels[s.name]
            assert len(info.arg_types) == len(s.args)
            for t, a in zip(info.arg_types, s.args):
                assert (t == "p") == (a[0] in ("buf", "null")), (s.name, info.arg_types, s.args)
        for a in s.args:
            if a[0] == "buf":
                assert 0 <= a[1] < len(plan.buffers)
                assert 0 <= a[2] < plan.buffers[a[1]].size or plan.buffers[a[1]].size == 1


def test_deserialised_plan_runs(backend):
    x = rng_for("x").standard_normal((2, 3, 6, 6)).astype(np.float32)
    with sn.graph_scope() as g:
        ins, outs = mixed_graph()
        fn = sn.function(ins, outs, backend=backend)
        ref = sn.function(ins, outs, backend="numpy")(x)
        params = [g.op(n).get_value() for n, _ in fn.plan.params]
    plan = Plan.from_json(fn.plan.to_json())
    got = Executor(plan).run([x], params)
    for a, b in zip(got, ref):
        assert_close(a, b, 1e-4)
    for a, b in zip(got, fn(x)):
        np.testing.assert_array_equal(a, b)


def temp_buffers(plan):
    return [b for b in plan.buffers if b.role == "temp"]


@pytest.mark.parametrize("backend", CODEGEN + ["cuda"])
def test_buffers_reused_along_matmul_chain(backend):
    """x @ w1 @ ... @ w6: five intermediates, at most two alive at a time."""
    with sn.graph_scope() as g:
        x = sn.input("x", (8, 16))
        ws = [sn.input(f"w{i}", (16, 16)) for i in range(6)]
        y = x
        for w in ws:
            y = sn.matmul(y, w)
        plan = lower.lower(g, [x.id] + [w.id for w in ws], [y.id], backend)
    temps = temp_buffers(plan)
    assert len(temps) <= 2, [asdict(b) for b in plan.buffers]
    assert len([b for b in plan.buffers if b.role == "output"]) == 1


def test_buffer_reuse_keeps_results_right(backend):
    """Interleaved library and elementwise kernels sharing temporaries."""
    r = rng_for("reuse")
    x = r.standard_normal((8, 16)).astype(np.float32)
    ws = [r.standard_normal((16, 16)).astype(np.float32) * 0.3 for _ in range(5)]
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        wi = [sn.input(f"w{i}", w.shape) for i, w in enumerate(ws)]
        h, hs = xi, []
        for w in wi:
            h = sn.tanh(sn.matmul(h, w)) + h
            hs.append(h)
        loss = (h * h).sum()
        grads = sn.grad(loss, [xi] + wi)
        outs = [h, hs[1]] + grads
        fn = sn.function([xi] + wi, outs, backend=backend)
        ref = sn.function([xi] + wi, outs, backend="numpy")
    temps = temp_buffers(fn.plan)
    n_values = sum(1 for s in fn.plan.steps)      # every step writes at least one value
    assert len(temps) < n_values, fn.report_text()
    for a, b in zip(fn(x, *ws), ref(x, *ws)):
        assert_close(a, b, 1e-4)


def test_buffer_sizes_cover_accesses(backend):
    """Every buffer argument's offset lies inside its buffer; temporaries shared by
    values of different sizes are as large as the largest."""
    with sn.graph_scope() as g:
        ins, outs = mixed_graph()
        plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
    for s in plan.steps:
        for a in s.args:
            if a[0] == "buf":
                assert a[2] < max(plan.buffers[a[1]].size, 1)
    by_id = {b.id: b for b in plan.buffers}
    assert sorted(by_id) == list(range(len(plan.buffers)))
    assert all(b.size >= 1 for b in plan.buffers)
