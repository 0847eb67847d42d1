"""Random fused graphs: DAGs of elementwise ops over broadcasting inputs (scalars,
per-channel vectors, rows, full tensors), with reductions and several outputs, forward
and backward, on every compiled backend against the NumPy reference.

The graphs come from seeded NumPy generators (one seed per test case), so every run
builds the same graphs and a failure names its seed.
"""
from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from cghelp import assert_close

SPACE = (2, 3, 4, 5)
# broadcastable input shapes: full, scalar, per-channel, row, trailing plane, per-sample
INPUT_SHAPES = [SPACE, (), (1, 3, 1, 1), (5,), (4, 5), (2, 1, 1, 1), (3, 1, 5), SPACE]

UNARY = [
    ("tanh", sn.tanh),
    ("sigmoid", sn.sigmoid),
    ("sin", sn.sin),
    ("softplus", sn.softplus),
    ("relu", lambda a: sn.maximum(a, 0.0)),
    ("square", lambda a: a * a),
    ("scale", lambda a: a * -1.5 + 0.25),
    ("exp_neg_sq", lambda a: sn.exp(-a * a)),
    ("abs", sn.abs),
    ("safe_log", lambda a: sn.log(1.0 + a * a)),
    ("safe_sqrt", lambda a: sn.sqrt(a * a + 1.0)),
    ("erf", sn.erf),
    ("cube_clip", lambda a: sn.clip(a * a * a, -2.0, 2.0)),
]
BINARY = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("safe_div", lambda a, b: a / (1.0 + b * b)),
    ("maximum", sn.maximum),
    ("minimum", sn.minimum),
    ("where", lambda a, b: sn.where(a > 0.1, b, a * 0.5)),
    ("mix", lambda a, b: sn.tanh(a) * b + a),
]


def bounded(t):
    """Keep magnitudes moderate so that float32 comparisons stay meaningful."""
    return sn.tanh(t) * 2.0


def random_graph(seed, n_ops, n_inputs, with_reductions):
    """A builder: inputs -> list of outputs (shapes vary), and the input shapes."""
    rng = np.random.default_rng(seed)
    shapes = [INPUT_SHAPES[0]] + [INPUT_SHAPES[int(i)] for i in
                                  rng.integers(0, len(INPUT_SHAPES), n_inputs - 1)]
    plan = []
    for k in range(n_ops):
        avail = n_inputs + k
        # prefer recent values: deep chains, but reuse of old values makes DAGs
        pick = lambda: int(max(0, avail - rng.geometric(0.35))) \
            if rng.random() < 0.7 else int(rng.integers(0, avail))
        r = rng.random()
        if with_reductions and r < 0.15:
            axes = tuple(sorted(rng.choice(4, size=int(rng.integers(1, 4)), replace=False)))
            plan.append(("reduce", ["sum", "max", "min", "mean"][int(rng.integers(0, 4))],
                         axes, pick()))
        elif r < 0.5:
            plan.append(("unary", int(rng.integers(0, len(UNARY))), pick()))
        else:
            plan.append(("binary", int(rng.integers(0, len(BINARY))), pick(), pick()))
    n_out = int(rng.integers(1, 4))
    outs = sorted(set([n_inputs + n_ops - 1] +
                      [int(i) for i in rng.integers(n_inputs, n_inputs + n_ops, n_out - 1)]))

    def build(*xs):
        vals = list(xs)
        for step in plan:
            if step[0] == "unary":
                vals.append(UNARY[step[1]][1](vals[step[2]]))
            elif step[0] == "binary":
                vals.append(BINARY[step[1]][1](vals[step[2]], vals[step[3]]))
            else:
                _, how, axes, a = step
                x = sn.broadcast_to(vals[a], SPACE)     # reduce over the full space
                r = getattr(x, how)(axes, keepdims=True)
                # broadcast back (softmax-like patterns): x op reduced
                vals.append(bounded(x - r) if how != "mean" else x * r)
        return [vals[o] for o in outs]

    return build, shapes, plan, outs


def run_case(backend, seed, n_ops, n_inputs, with_reductions, grad=True):
    build, shapes, plan, outs = random_graph(seed, n_ops, n_inputs, with_reductions)
    rng = np.random.default_rng(seed + 1000)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        ys = build(*xs)
        ins, feeds, allouts = list(xs), list(arrays), list(ys)
        if grad:
            cots = [sn.input(f"g{j}", y.shape) for j, y in enumerate(ys)]
            ins += cots
            feeds += [rng.standard_normal(y.shape).astype(np.float32) for y in ys]
            allouts += sn.vjp(ys, cots, xs)
        want = sn.function(ins, allouts, backend="numpy")(*feeds)
        fn = sn.function(ins, allouts, backend=backend)
    got = fn(*feeds)
    desc = f"seed {seed}: plan {plan}, outputs {outs}"
    for k, (g, w) in enumerate(zip(got, want)):
        # reductions and gradients (summed over broadcast axes) cancel terms of order 1
        # (inputs, cotangents and bounded intermediates are): their float32 error is
        # relative to that magnitude, not to the (possibly tiny) result
        scale = max(1.0, float(np.abs(w[np.isfinite(w)]).max(initial=0)))
        assert_close(g, w, 5e-5, scale=scale, what=f"{desc}: output {k}")
    return fn


FORWARD_SEEDS = list(range(6))
GRAD_SEEDS = list(range(100, 110))
SLOW_SEEDS = list(range(200, 230))


def same_space_components(graph, output_ids):
    """Connected components of the elementwise nodes the outputs need, joined along
    argument edges between nodes of one shape: the groups that fusion must form."""
    nodes = [n for n in graph.ancestors(output_ids)
             if isinstance(graph.op(n), sn.ops.Elementwise) and graph.op(n).n > 0]
    parent = {n: n for n in nodes}

    def find(n):
        while parent[n] != n:
            n = parent[n]
        return n

    for n in nodes:
        for a in graph.args(n):
            if a in parent and graph.shape(a) == graph.shape(n):
                parent[find(a)] = find(n)
    return len({find(n) for n in nodes})


@pytest.mark.parametrize("seed", FORWARD_SEEDS)
def test_random_elementwise_forward(compiled_backend, seed):
    fn = run_case(compiled_backend, seed, n_ops=12, n_inputs=4, with_reductions=False,
                  grad=False)
    # one kernel per maximal group of connected same-space elementwise ops, however
    # many outputs it has
    kernels = [r for r in fn.report() if r["kind"] == "kernel"]
    assert len(fn.report()) == len(kernels)
    expected = same_space_components(fn.graph, [o.id for o in fn.outputs])
    assert len(kernels) == expected, fn.report_text()


@pytest.mark.parametrize("seed", GRAD_SEEDS)
def test_random_graph_forward_backward(compiled_backend, seed):
    run_case(compiled_backend, seed, n_ops=10, n_inputs=4, with_reductions=True)


# Seeds 212 and 228 found the max/min tie-mask recomputation bug (regressions at the
# end of test_ops.py).
@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_random_graph_forward_backward_more(compiled_backend, seed):
    run_case(compiled_backend, seed, n_ops=16, n_inputs=5, with_reductions=seed % 2 == 0)
