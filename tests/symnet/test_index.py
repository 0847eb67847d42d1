"""gather (out-of-range gives 0), argmax / topk, seeded uniform random."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(6)
S = R.standard_normal((4, 5))


def gather_np(x, idx, axis):
    idx = idx.astype(np.int64)
    valid = (idx >= 0) & (idx < x.shape[axis])
    return np.where(valid, np.take_along_axis(x, np.where(valid, idx, 0), axis), 0)


@pytest.mark.parametrize("axis, idx", [
    (1, np.array([[0], [4], [2], [1]])),                      # labels into scores
    (1, np.array([[0, 0, 3], [4, 1, 1], [2, 2, 2], [1, 0, 4]])),
    (0, np.array([[3, 0, 1, 2, 0]])),
    (-1, np.array([[-1], [5], [2], [255]])),                  # out of range: 0
])
def test_gather_forward(axis, idx):
    out = run(lambda x, i: sn.gather(x, i, axis), S, idx)
    assert out.shape == idx.shape
    close(out, gather_np(S, idx, axis % 2))


def test_gather_with_numpy_indices():
    idx = np.array([[1], [1], [0], [7]])
    close(run(lambda x: sn.gather(x, idx, 1), S), gather_np(S, idx, 1))


def test_gather_grad_scatter_adds():
    idx = np.array([[0, 0, 3], [4, 1, 1], [2, -1, 9], [1, 0, 4]])
    check_grad(lambda x: sn.gather(x, sn.constant(idx), 1), S)
    with sn.graph_scope():
        x = sn.input("x", S.shape)
        g = sn.grad(sn.gather(x, idx, 1).sum(), x)
        out = sn.function([x], g, backend="numpy")(S)
    want = np.zeros(S.shape)
    for r in range(4):
        for c in idx[r]:
            if 0 <= c < 5:
                want[r, c] += 1
    close(out, want)


def test_gather_second_order():
    idx = np.array([[2, 2], [0, 1], [4, 3], [1, 1]])     # becomes a constant
    check_grad(lambda x: sn.grad((sn.gather(x, idx, 1) ** 3).sum(), x), S)


def test_argmax():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, -5.0, 0.0, -0.5]])
    close(run(sn.argmax, x), [1, 0, 2])                 # ties -> lowest index
    close(run(lambda a: sn.argmax(a, axis=0), x), np.argmax(x, 0))
    out = run(lambda a: sn.argmax(a, 1, keepdims=True), x)
    assert out.shape == (3, 1)
    a3 = R.standard_normal((2, 3, 4))
    close(run(lambda a: sn.argmax(a, axis=-2), a3), np.argmax(a3, -2))


@pytest.mark.parametrize("k, axis", [(1, -1), (3, 1), (5, 1), (2, 0)])
def test_topk(k, axis):
    vals, idx = run(lambda a: list(sn.topk(a, k, axis)), S)
    order = np.argsort(-S, axis=axis, kind="stable")
    want_idx = np.take(order, range(k), axis=axis)
    close(idx, want_idx)
    close(vals, np.take_along_axis(S, want_idx, axis))


def test_topk_grad_through_values():
    check_grad(lambda a: sn.topk(a, 2, axis=1)[0], S)


def test_index_outputs_have_zero_gradient():
    with sn.graph_scope():
        x = sn.input("x", S.shape)
        loss = (sn.argmax(x) * x[:, 0]).sum() + sn.topk(x, 2)[1].sum()
        g = sn.grad(loss, x)
        out = sn.function([x], g, backend="numpy")(S)
    want = np.zeros(S.shape)
    want[:, 0] = np.argmax(S, 1)       # only through the x[:, 0] factor
    close(out, want)


def test_uniform_seeded_range_and_statistics():
    with sn.graph_scope():
        u = sn.uniform((200, 500), seed=7)
        u_same = sn.uniform((200, 500), seed=7)
        u_other = sn.uniform((200, 500), seed=8)
        a, b, c = sn.function([], [u, u_same, u_other], backend="numpy")()
        a2 = sn.function([], u, backend="numpy")()
    assert a.dtype == np.float32 and a.shape == (200, 500)
    assert a.min() >= 0.0 and a.max() < 1.0
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, a2)                # same numbers on every call
    assert np.mean(a == c) < 1e-3
    n = a.size
    assert abs(a.mean() - 0.5) < 4 * np.sqrt(1 / 12 / n)
    assert abs(a.var() - 1 / 12) < 2e-3
    hist, _ = np.histogram(a, bins=10, range=(0, 1))
    expected = n / 10
    chi2 = ((hist - expected) ** 2 / expected).sum()
    assert chi2 < 40                                    # 9 dof: p ~ 1e-5
    assert abs(np.corrcoef(a.ravel()[:-1], a.ravel()[1:])[0, 1]) < 0.01


def test_uniform_counter_selects_stream():
    with sn.graph_scope():
        step = sn.input("step", (1,))
        u = sn.uniform((1000,), seed=3, counter=step.reshape(()))
        f = sn.function([step], u, backend="numpy")
        a, b, a_again = f(np.array([0.0])), f(np.array([1.0])), f(np.array([0.0]))
    np.testing.assert_array_equal(a, a_again)
    assert np.mean(a == b) < 0.01
    assert 0 <= b.min() and b.max() < 1


def test_uniform_has_zero_gradient():
    with sn.graph_scope():
        x = sn.input("x", (3,))
        g = sn.grad((x * sn.uniform((3,), seed=1)).sum() + sn.uniform((), seed=2) * 0, x)
        u = sn.uniform((3,), seed=1)
        gu, uv = sn.function([x], [g, u], backend="numpy")(np.ones(3))
    close(gu, uv)
