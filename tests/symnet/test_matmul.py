"""matmul: 2-d, batched, broadcasting batch axes, numpy operands; gradients."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(3)

SHAPES = [((3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
          ((3, 4), (6, 4, 2)), ((1, 3, 4), (2, 1, 4, 1)), ((1, 4), (4, 1))]


@pytest.mark.parametrize("sa, sb", SHAPES, ids=str)
def test_forward(sa, sb):
    a, b = R.standard_normal(sa), R.standard_normal(sb)
    out = run(lambda x, y: x @ y, a, b)
    want = a @ b
    assert out.shape == want.shape
    close(out, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sa, sb", SHAPES, ids=str)
def test_grad(sa, sb):
    check_grad(lambda x, y: sn.matmul(x, y), R.standard_normal(sa), R.standard_normal(sb))


def test_numpy_operands():
    a, w = R.standard_normal((3, 4)), R.standard_normal((4, 2)).astype(np.float32)
    close(run(lambda x: x @ w, a), a @ w, atol=1e-5)
    close(run(lambda x: w.T @ x.T, a), w.T @ a.T, atol=1e-5)
    check_grad(lambda x: sn.matmul(w.T, x.T), a)


def test_same_tensor_both_sides():
    a = R.standard_normal((4, 4))
    close(run(lambda x: x @ x, a), a @ a, atol=1e-5)
    check_grad(lambda x: (x @ x.T) @ x, a)
