"""Deep graphs: a Caffe net of thousands of in-place elementwise layers builds, compiles
and runs, with forward and backward matching a NumPy chain of the same functions.

Fusion bounds each elementwise kernel (codegen.fusion.MAX_GROUP_DEPTH), so a long
chain becomes several fused kernels whose count grows linearly with the chain; the
recursion limit is lowered in the tests to show nothing walks the whole chain
recursively.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import fusion
from symnet.net import Net

SHAPE = (1, 8, 4, 4)
# (prototxt fields, forward f(x), derivative f'(x)) of each layer kind, in turn
KINDS = [
    ('type: "ReLU"', lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    ('type: "TanH"', np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x)),
     lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2),
    ('type: "Power" power_param { power: 1.0 scale: 0.9 shift: 0.05 }',
     lambda x: 0.9 * x + 0.05, lambda x: np.full_like(x, 0.9)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }',
     lambda x: np.where(x > 0, x, 0.1 * x), lambda x: np.where(x > 0, 1.0, 0.1)),
]


def prototxt(n):
    lines = ['name: "deep"', 'force_backward: true',
             'layer { name: "in" type: "Input" top: "data" input_param { shape { '
             + " ".join(f"dim: {d}" for d in SHAPE) + " } } }"]
    for i in range(n):
        # the first layer reads the input blob, the rest work in place on "x"
        lines.append(f'layer {{ name: "l{i}" {KINDS[i % len(KINDS)][0]} '
                     f'bottom: "{"data" if i == 0 else "x"}" top: "x" }}')
    lines.append('layer { name: "loss" type: "Reduction" bottom: "x" top: "loss" '
                 'loss_weight: 1 reduction_param { operation: SUMSQ } }')
    return "\n".join(lines)


def reference(n, x):
    """Forward (final x, loss) and d loss / d x in float64."""
    values = [x.astype(np.float64)]
    for i in range(n):
        values.append(KINDS[i % len(KINDS)][1](values[-1]))
    y = values[-1]
    g = 2 * y
    for i in reversed(range(n)):
        g = g * KINDS[i % len(KINDS)][2](values[i])
    return y, float(np.sum(y * y)), g


def input_array(seed=0):
    return np.random.RandomState(seed).uniform(-2, 2, SHAPE).astype(np.float32)


def run(n, x, backend="cpu"):
    net = Net(prototxt(n), sn.TEST, backend=backend)
    net.blobs["data"].data[...] = x
    out = net.forward()
    net.backward()
    return net, out


@pytest.fixture
def low_recursion_limit():
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def test_chain_of_50_matches_numpy(low_recursion_limit):
    x = input_array()
    net, out = run(50, x)
    y, loss, g = reference(50, x)
    np.testing.assert_allclose(net.blobs["x"].data, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out["loss"]), loss, rtol=1e-4)
    np.testing.assert_allclose(net.blobs["data"].diff, g, rtol=1e-3, atol=1e-14)


def test_chain_gradient_matches_finite_differences():
    """Central differences in float64 of the reference loss against the net's float32
    gradient, on a chain long enough to cross a kernel boundary."""
    n = fusion.MAX_GROUP_DEPTH + 8
    x = input_array(1)
    net, _ = run(n, x)
    rng = np.random.RandomState(2)
    eps = 1e-4
    for flat in rng.choice(x.size, 8, replace=False):
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp.flat[flat] += eps
        xm.flat[flat] -= eps
        fd = (reference(n, xp)[1] - reference(n, xm)[1]) / (2 * eps)
        assert net.blobs["data"].diff.flat[flat] == pytest.approx(fd, rel=2e-3, abs=1e-5)


def _kernel_depths(fn):
    """(number of elementwise kernels, the deepest chain of ops inside one)."""
    part = fusion.partition(fn.graph, [o.id for o in fn.outputs])
    count, deepest = 0, 0
    for k in part.kernels:
        if k.kind == "elementwise":
            count += 1
            need = set(k.needed)
            depth = {}
            for m in k.needed:
                depth[m] = 1 + max((depth[a] for a in fn.graph.args(m) if a in need),
                                   default=0)
            deepest = max(deepest, max(depth.values()))
        elif k.kind == "reduce":
            for s in k.stages:
                assert len(k.prologue[s]) <= fusion.MAX_GROUP_SIZE
    return count, deepest


def test_kernels_bounded_and_linear_in_chain_length():
    counts = {}
    for n in (200, 400):
        net = Net(prototxt(n), sn.TEST, backend="cpu")
        fwd, bwd = net.functions()
        for name, fn in (("forward", fwd), ("backward", bwd)):
            count, deepest = _kernel_depths(fn)
            assert deepest <= fusion.MAX_GROUP_DEPTH
            counts[name, n] = count
    for name in ("forward", "backward"):
        # a chain twice as long: about twice the kernels, each still fused
        assert counts[name, 400] >= 2 * counts[name, 200] - 2
        assert counts[name, 400] <= 2 * counts[name, 200] + 2
        assert counts[name, 400] <= 400 // fusion.MAX_GROUP_DEPTH * 2 + 4


@pytest.mark.slow
def test_chain_of_5000_in_place_layers(low_recursion_limit):
    n = 5000
    x = input_array(3)
    net, out = run(n, x)
    y, loss, g = reference(n, x)
    np.testing.assert_allclose(net.blobs["x"].data, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out["loss"]), loss, rtol=1e-4)
    np.testing.assert_allclose(net.blobs["data"].diff, g, rtol=1e-3, atol=1e-14)
