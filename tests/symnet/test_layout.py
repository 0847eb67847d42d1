"""Layout ops: reshape (-1), transpose, flatten(axis), __getitem__, concat, split, pad,
forward against NumPy and gradients."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(2)
A = R.standard_normal((2, 3, 4))
B = R.standard_normal((2, 5, 4))
M = R.standard_normal((5, 6))


@pytest.mark.parametrize("shape", [(6, 4), (-1,), (4, -1), (2, -1, 2), (24, 1), (1, 2, 12)])
def test_reshape(shape):
    close(run(lambda x: x.reshape(*shape), A), A.reshape(shape))
    close(run(lambda x: sn.reshape(x, shape), A), A.reshape(shape))
    check_grad(lambda x: x.reshape(shape), A)


@pytest.mark.parametrize("perm", [(), (1, 0, 2), (2, 0, 1), (-1, 0, 1), (0, 1, 2)])
def test_transpose(perm):
    close(run(lambda x: x.transpose(*perm), A), np.transpose(A, perm or None))
    check_grad(lambda x: x.transpose(*perm) * np.arange(A.size).reshape(
        np.transpose(A, perm or None).shape), A)


def test_T_and_transpose_list():
    close(run(lambda x: x.T, M), M.T)
    close(run(lambda x: sn.transpose(x, [2, 1, 0]), A), A.transpose(2, 1, 0))


@pytest.mark.parametrize("axis, shape", [(0, (24,)), (1, (2, 12)), (2, (2, 3, 4)),
                                         (-1, (2, 3, 4)), (-2, (2, 12))])
def test_flatten(axis, shape):
    out = run(lambda x: x.flatten(axis), A)
    assert out.shape == shape
    close(out, A.reshape(shape))
    close(run(lambda x: sn.flatten(x), A), A.reshape(2, 12))


INDEXES = [
    1, -1, (0, 2), (1, -1, -2), slice(None), slice(1, 3), (slice(None), slice(None, None, 2)),
    (slice(None), slice(None, None, -1)), (Ellipsis, slice(None, None, -2)),
    (slice(None, None, -1), slice(2, 0, -1), slice(3, None, -3)),
    (slice(-1, -4, -2), 1), (Ellipsis, 1), (0, Ellipsis), (1, Ellipsis, 3),
    (None,), (None, 0, None), (Ellipsis, None), (slice(None), None, Ellipsis, -1),
    (slice(5, 9),), (slice(0, 0),), (slice(1, 0, 1),), (slice(None), slice(10, None, -1)),
    (slice(-100, 100, 3), slice(None), slice(1, 2)),
]


@pytest.mark.parametrize("index", INDEXES, ids=str)
def test_getitem(index):
    want = A[index]
    out = run(lambda x: x[index], A)
    assert out.shape == want.shape
    close(out, want)


@pytest.mark.parametrize("index", [i for i in INDEXES if A[i].size], ids=str)
def test_getitem_grad(index):
    check_grad(lambda x: x[index], A)


def test_getitem_grad_scatters_into_zeros():
    with sn.graph_scope():
        x = sn.input("x", A.shape)
        g = sn.grad((x[1, ::-2, 1:] * 3).sum(), x)
        out = sn.function([x], g, backend="numpy")(A)
    want = np.zeros(A.shape)
    want[1, ::-2, 1:] = 3
    close(out, want)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    parts = [R.standard_normal(tuple(k if i == axis % 3 else d for i, d in enumerate(A.shape)))
             for k in (1, 2, 3)]
    close(run(lambda *xs: sn.concat(xs, axis), *parts), np.concatenate(parts, axis))
    check_grad(lambda *xs: sn.concat(list(xs), axis=axis), *parts)


def test_concat_same_tensor_twice():
    close(run(lambda x: sn.concat([x, x * 2], 1), M), np.concatenate([M, 2 * M], 1))
    check_grad(lambda x: sn.concat([x, x], 0), M)


@pytest.mark.parametrize("sections, axis", [(2, 0), (3, 1), ([1, 3], -1), ([0, 2, 2], 2),
                                            (1, 1)])
def test_split(sections, axis):
    outs = run(lambda x: sn.split(x, sections, axis), A)
    idx = sections if isinstance(sections, int) else np.cumsum(sections)[:-1]
    want = np.split(A, idx, axis)
    assert len(outs) == len(want)
    for o, w in zip(outs, want):
        assert o.shape == w.shape
        close(o, w)
    check_grad(lambda x: sn.concat([p * (i + 1) for i, p in
                                    enumerate(sn.split(x, sections, axis))], axis), A)


@pytest.mark.parametrize("pads, value", [([(0, 0), (1, 2), (0, 3)], 0.0),
                                         ([(2, 0), (0, 0), (1, 1)], -1.5)])
def test_pad(pads, value):
    close(run(lambda x: sn.pad(x, pads, value), A), np.pad(A, pads, constant_values=value))
    check_grad(lambda x: sn.pad(x, pads, value), A)


def test_layout_chain_grad():
    check_grad(lambda x, y: sn.concat([x, y], 1)[:, ::-1].transpose(1, 0, 2)
               .reshape(-1, 8).flatten(0)[3:40:3], A, B)
