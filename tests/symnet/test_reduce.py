"""Reductions sum/mean/max/min: axes (None, int, negative, tuples), keepdims, gradients
(max/min share the gradient among ties)."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(1)
A = R.standard_normal((2, 3, 4))

AXES = [None, 0, 1, -1, (0, 2), (-1, 0), (0, 1, 2), (-2,), ()]
HOW = {"sum": (sn.sum, np.sum), "mean": (sn.mean, np.mean), "max": (sn.max, np.max),
       "min": (sn.min, np.min)}


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_forward(how, axis, keepdims):
    fn, ref = HOW[how]
    out = run(lambda x: fn(x, axis=axis, keepdims=keepdims), A)
    want = ref(A.astype(np.float32).astype(np.float64), axis=axis, keepdims=keepdims)
    assert out.shape == want.shape
    close(out, want)


def test_methods_match_functions():
    outs = run(lambda x: [x.sum(), x.mean(axis=1), x.max(-1, keepdims=True),
                          x.min(axis=(0, 1))], A)
    a = A.astype(np.float32).astype(np.float64)
    for o, w in zip(outs, [a.sum(), a.mean(1), a.max(-1, keepdims=True), a.min((0, 1))]):
        close(o, w)


def test_mean_of_non_tensor_and_numpy_axis():
    close(run(lambda x: sn.mean(x, axis=np.int64(-1)) + sn.mean(np.ones((2, 3))), A),
          A.mean(-1) + 1.0)


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("axis, keepdims", [(None, False), (1, False), ((0, -1), True),
                                            (-1, False)])
def test_grad(how, axis, keepdims):
    fn, _ = HOW[how]
    check_grad(lambda x: fn(x, axis=axis, keepdims=keepdims), A)


def test_mean_grad_closed_form():
    with sn.graph_scope():
        x = sn.input("x", (2, 3, 4))
        g = sn.grad(x.mean(axis=(0, 2)).sum(), x)
        close(sn.function([x], g, backend="numpy")(A), np.full(A.shape, 1 / 8))


@pytest.mark.parametrize("how, pick", [("max", np.max), ("min", np.min)])
def test_max_min_ties_share_gradient(how, pick):
    a = np.array([[1.0, 3.0, 3.0, -2.0], [-2.0, 0.0, -2.0, -2.0]])
    with sn.graph_scope():
        x = sn.input("x", a.shape)
        w = sn.constant(np.array([2.0, -1.0]))
        g = sn.grad((getattr(sn, how)(x, axis=1) * w).sum(), x)
        out = sn.function([x], g, backend="numpy")(a)
    mask = a == pick(a, axis=1, keepdims=True)
    want = mask / mask.sum(1, keepdims=True) * np.array([[2.0], [-1.0]])
    close(out, want)
    # the shared gradient is a subgradient: it sums to the cotangent of each row
    close(out.sum(1), [2.0, -1.0])


def test_max_grad_of_grad():
    # second order through the tie mask: d/dx of (dmax/dx . x) is dmax/dx again
    check_grad(lambda x: sn.grad(sn.max(x, axis=0).sum(), x) * x, A)
