"""The gradient of a tensor read through disjoint slices of one axis is one concat of
the slices' cotangents (zeros in the gaps), not a zero-filled tensor of the whole shape
per slice added together; values against the NumPy closed form."""
from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from symnet import ops


def _grad_nodes(x, y):
    (gx,) = sn.grad(y, [x])
    g = gx.graph
    anc = g.ancestors([gx.id])
    return gx, [type(g.op(n)).__name__ for n in anc]


def _weights(shape, k):
    return np.random.default_rng(k).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-emu"])
def test_steps_along_leading_axis(backend):
    T, N, I = 6, 2, 3
    xv = _weights((T, N, I), 1)
    ws = [_weights((N, I), 10 + t) for t in range(T)]
    with sn.graph_scope():
        x = sn.input("x", (T, N, I))
        # every step but t = 2 (a gap), step 4 read twice (one slice, two uses)
        y = sum((x[t] * w).sum() for t, w in enumerate(ws) if t != 2) + (x[4] * 3.0).sum()
        gx, kinds = _grad_nodes(x, y)
        got = sn.function([x], [gx], backend=backend)(xv)[0]
    assert "SliceGrad" not in kinds and "Concat" in kinds
    want = np.stack([w for w in ws])
    want[2] = 0
    want[4] += 3.0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_inner_axis_with_gaps_and_other_terms(backend):
    xv = _weights((3, 10), 2)
    with sn.graph_scope():
        x = sn.input("x", (3, 10))
        y = (sn.exp(x[:, 1:3])).sum() + (x[:, 5:6] * 2.0).sum() + (x * x).sum()
        gx, kinds = _grad_nodes(x, y)
        got = sn.function([x], [gx], backend=backend)(xv)[0]
    assert "SliceGrad" not in kinds and "Concat" in kinds
    want = 2 * xv
    want[:, 1:3] += np.exp(xv[:, 1:3])
    want[:, 5:6] += 2.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_overlapping_or_strided_slices_are_added(backend):
    xv = _weights((8, 3), 3)
    with sn.graph_scope():
        x = sn.input("x", (8, 3))
        y = (x[0:5] * 2.0).sum() + (x[3:8] * 3.0).sum() + (x[::2] * 5.0).sum()
        gx, kinds = _grad_nodes(x, y)
        got = sn.function([x], [gx], backend=backend)(xv)[0]
    assert kinds.count("SliceGrad") == 3 and "Concat" not in kinds
    want = np.zeros((8, 3), np.float32)
    want[0:5] += 2.0
    want[3:8] += 3.0
    want[::2] += 5.0
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_slab_detection():
    from symnet.autodiff import _slab
    assert _slab(ops.SliceGrad(((2, 3, 1), (0, 4, 1)), (5, 4))) == (0, 2, 3)
    assert _slab(ops.SliceGrad(((0, 5, 1), (1, 3, 1)), (5, 4))) == (1, 1, 3)
    assert _slab(ops.SliceGrad(((2, 3, 1), (1, 3, 1)), (5, 4))) is None     # two axes
    assert _slab(ops.SliceGrad(((0, 5, 2),), (5,))) is None                 # strided
    assert _slab(ops.SliceGrad(((0, 5, 1),), (5,))) is None                 # whole


# A weight used by several products (an unrolled loop's steps, shared weights): its
# gradient is one product over the uses' rows stacked, not a product per use added.

@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-emu"])
def test_weight_used_at_every_step(backend):
    T, N, I, H = 5, 3, 4, 6
    xv, wv = _weights((T, N, I), 4), _weights((I, H), 5)
    cs = [_weights((N, H), 20 + t) for t in range(T)]
    extra = _weights((2, I), 6)        # one more use with another number of rows
    with sn.graph_scope():
        x, w = sn.input("x", (T, N, I)), sn.input("w", (I, H))
        e = sn.input("e", (2, I))
        y = sum((sn.tanh(sn.matmul(x[t], w)) * c).sum() for t, c in enumerate(cs)) + \
            sn.matmul(e, w).sum()
        (gw,) = sn.grad(y, [w])
        g = gw.graph
        products = [n for n in g.ancestors([gw.id]) if isinstance(g.op(n), ops.MatMul)
                    and g.shape(n) == (I, H)]
        got = sn.function([x, w, e], [gw], backend=backend)(xv, wv, extra)[0]
    assert len(products) == 1
    want = extra.T @ np.ones((2, H), np.float32)
    for t in range(T):
        want = want + xv[t].T @ (cs[t] * (1 - np.tanh(xv[t] @ wv) ** 2))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
