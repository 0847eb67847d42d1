"""The cpu backend's pooling and LRN kernels (and cuda-emu's) against independent
references: pooling against a direct loop of Caffe's PoolingLayer (loops.pool2d) and
the NumPy backend, with padding, strides, ceil rounding, clipped windows, ties, NaN;
max pooling's values alone (forward only) and with its argmax (with a gradient); LRN
across and within channels against a float64 closed form of Caffe's formula, forward
and backward, the gradient also against finite differences."""
import numpy as np
import pytest

import symnet as sn
from symnet.layers.registry import apply
from snhelp import check_grad

R = np.random.default_rng(15)
BACKENDS = ["cpu", "cuda-emu"]

# (H, W, kernel, stride, pad, ceil_mode)
POOL = [
    (6, 6, 3, 2, 0, True),
    (5, 5, 2, 2, 0, True),            # ceil: the last window hangs over the edge
    (7, 6, 3, 2, 0, True),
    (6, 6, 3, 2, 1, True),
    (5, 7, 3, 3, 1, True),
    (4, 4, 3, 2, 2, True),            # the last window starts in the padding: dropped
    (6, 5, 2, 2, 1, True),
    (7, 7, 3, 1, 1, True),            # GoogLeNet's inception pools
    (5, 6, (3, 2), (2, 1), (1, 0), True),
    (3, 3, 3, 1, 0, True),
    (2, 2, 3, 1, 1, True),            # kernel larger than the image: no interior
    (1, 9, 1, 1, 0, True),
    (9, 1, 3, 2, 1, True),
    (8, 8, 3, 3, 0, False),           # floor rounding
    (9, 11, 2, 3, 0, False),          # stride larger than the kernel: skipped rows
    (23, 37, 3, 2, 0, True),          # long rows: a vectorised interior and borders
    (24, 40, 3, 2, 1, True),
    (16, 33, 2, 2, 0, True),
    (15, 29, 5, 1, 2, True),
    (13, 45, (2, 4), (3, 2), (1, 3), True),
]
IDS = [f"{h}x{w}k{k}s{s}p{p}" + ("" if c else "floor") for h, w, k, s, p, c in POOL]


def _out_len(n, k, s, p, ceil_mode):
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if p > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


def _caffe_pool(x, k, s, p, method, ceil_mode):
    """Caffe's PoolingLayer forward, one output at a time, in float64."""
    (kh, kw), (sh, sw), (ph, pw) = [v if isinstance(v, tuple) else (v, v) for v in (k, s, p)]
    n, c, h, wd = x.shape
    oh, ow = _out_len(h, kh, sh, ph, ceil_mode), _out_len(wd, kw, sw, pw, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, wd + pw)
            area = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, wd)].astype(np.float64)
            y[:, :, i, j] = win.max(axis=(2, 3)) if method == "max" else \
                win.sum(axis=(2, 3)) / area
    return y


def _compile(fn, shapes, backend):
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        out = fn(*xs)
        return sn.function(xs, out, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("h, w, k, s, p, ceil_mode", POOL, ids=IDS)
def test_pool_forward(backend, method, h, w, k, s, p, ceil_mode):
    x = R.standard_normal((2, 3, h, w)).astype(np.float32)
    f = _compile(lambda a: sn.pool2d(a, k, s, p, method, ceil_mode), [x.shape], backend)
    want = _caffe_pool(x, k, s, p, method, ceil_mode)
    got = f(x)
    assert got.shape == want.shape
    if method == "max":
        np.testing.assert_array_equal(got, want.astype(np.float32))
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("h, w, k, s, p, ceil_mode", POOL[::3], ids=IDS[::3])
def test_pool_forward_and_gradient(backend, method, h, w, k, s, p, ceil_mode):
    """With a gradient in the same plan (max pooling keeps its argmax): the values and
    the input gradient equal the NumPy backend's."""
    x = (R.permutation(2 * h * w).reshape(1, 2, h, w) / 7.0).astype(np.float32)
    g = R.standard_normal(x.shape).astype(np.float32)

    def fn(a, b):
        y = sn.pool2d(a, k, s, p, method, ceil_mode)
        return [y, sn.grad((y * y).sum() + (b * a).sum(), a)]

    want = _compile(fn, [x.shape, g.shape], "numpy")(x, g)
    got = _compile(fn, [x.shape, g.shape], backend)(x, g)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_nan_and_ties(backend):
    """NaN in a window makes its maximum NaN; ties and infinities as a plain maximum."""
    x = np.zeros((1, 2, 9, 20), np.float32)
    x[0, 0, 4, 7] = np.nan
    x[0, 0, 0, 0] = np.nan
    x[0, 1, 3, 3:9] = np.inf
    x[0, 1, 6, 10] = -np.inf
    x[0, 1, 8, 19] = 5.0
    f = _compile(lambda a: sn.max_pool2d(a, 3, 2, 1), [x.shape], backend)
    got = f(x)
    want = _compile(lambda a: sn.max_pool2d(a, 3, 2, 1), [x.shape], "numpy")(x)
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[0, 0, 2, 3]) and np.isnan(got[0, 0, 2, 4]) and np.isnan(got[0, 0, 0, 0])
    assert np.isinf(got[0, 1, 2, 2]) and got[0, 1, 4, 10] == 5.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_many_planes(backend):
    """Enough planes to split over threads, shapes of cifar10_quick's pools."""
    x = R.standard_normal((3, 32, 16, 16)).astype(np.float32)
    for method, k, s in (("ave", 3, 2), ("max", 3, 2), ("ave", 2, 2)):
        f = _compile(lambda a: sn.pool2d(a, k, s, 0, method), [x.shape], backend)
        np.testing.assert_allclose(f(x), _caffe_pool(x, k, s, 0, method, True), rtol=1e-6,
                                   atol=1e-6)
