"""Shared helpers for the symnet core tests: build a function of fresh inputs in its
own graph and run it on the NumPy reference."""
from __future__ import annotations

import numpy as np

import symnet as sn


def run(fn, *arrays):
    """fn applied to one ``sn.input`` per array, evaluated with backend="numpy".

    ``fn`` may return a Tensor or a list/tuple of Tensors; the result mirrors that.
    """
    arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", a.shape) for i, a in enumerate(arrays)]
        out = fn(*xs)
        many = isinstance(out, (list, tuple))
        f = sn.function(xs, list(out) if many else out, backend="numpy")
        res = f(*arrays)
    if many:
        assert all(r.dtype == np.float32 for r in res)
        return list(res)
    assert res.dtype == np.float32
    return res


def check_grad(fn, *arrays, **kw):
    """sn.gradcheck that must actually compare something."""
    res = sn.gradcheck(fn, [np.asarray(a, dtype=np.float64) for a in arrays], **kw)
    assert res.checked > 0, res
    return res


def close(actual, expected, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol)


def check_cases(build_all, backend, rtol, atol, finite=False):
    """Compile every case of a layer test file into one function on ``backend`` and
    compare each output with its expected array. ``build_all()`` gives (inputs, feeds,
    outputs, [(case id, what, expected array)])."""
    with sn.graph_scope():
        ins, feeds, outs, want = build_all()
        assert len(outs) == len(want)
        fn = sn.function(ins, outs, backend=backend)
        got = fn(*feeds)
    for (cid, what, expected), actual in zip(want, got):
        assert actual.shape == np.shape(expected), (cid, what, actual.shape)
        if finite:
            assert np.all(np.isfinite(actual)), (cid, what)
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"{cid}: {what} on {backend}")
