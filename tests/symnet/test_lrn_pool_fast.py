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


# ------------------------------------------------------------------------------- LRN

def _box(t, region, pre):
    """float64 sum over the window (channels, or a square of the plane), zeros outside."""
    out = np.zeros_like(t)
    n, c, h, w = t.shape
    if region == "ACROSS_CHANNELS":
        for ch in range(c):
            out[:, ch] = t[:, max(ch - pre, 0):ch + pre + 1].sum(axis=1)
        return out
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = t[:, :, max(i - pre, 0):i + pre + 1,
                                max(j - pre, 0):j + pre + 1].sum(axis=(2, 3))
    return out


def _lrn_closed_form(x, g, region, local_size, alpha, beta, k):
    """Caffe's LRN in float64: top and the bottom's gradient for top gradient g.
    ACROSS: scale = k + alpha/n * sum of squares over n channels; WITHIN: scale = 1 +
    alpha * (average of squares over an n x n square, divided by n^2 with the zeros
    outside the image counted). dx = g scale^-beta + 2 c x S(g x (-beta) scale^(-beta-1))
    with S the (symmetric) window sum and c the coefficient of the sum in scale."""
    x, g = x.astype(np.float64), g.astype(np.float64)
    pre = (local_size - 1) // 2
    if region == "ACROSS_CHANNELS":
        coeff, shift = alpha / local_size, k
    else:
        coeff, shift = alpha / local_size ** 2, 1.0
    scale = shift + coeff * _box(x * x, region, pre)
    y = x * scale ** -beta
    dx = g * scale ** -beta + 2 * coeff * x * _box(g * x * -beta * scale ** (-beta - 1),
                                                    region, pre)
    return y, dx


# (shape, local_size, alpha, beta, k)
LRN_CASES = [
    ((2, 7, 5, 9), 5, 1.0, 0.75, 1.0),
    ((2, 7, 5, 9), 3, 2.0, 0.5, 1.5),
    ((1, 5, 3, 7), 1, 0.7, 0.75, 2.0),
    ((2, 6, 4, 3), 5, 0.3, 0.6, 2.0),           # powf
    ((1, 3, 5, 5), 9, 1.5, 0.75, 1.0),          # the window reaches past every edge
    ((1, 1, 3, 5), 5, 1.0, 1.0, 0.5),           # one channel
    ((1, 9, 23, 29), 5, 1e-4, 0.75, 1.0),       # CaffeNet's constants; blocks of a plane
    ((2, 12, 3, 4), 7, 3.0, 0.25, 1.0),
    ((1, 4, 6, 37), 3, 5e-5, 0.75, 1.0),        # cifar10_full's constants (within)
    ((1, 3, 2, 2), 3, 1.0, 0.0, 1.0),           # beta 0: the identity
    ((1, 24, 3, 5), 21, 1.0, 0.75, 1.0),        # wide windows: running sums (across)
    ((1, 2, 12, 20), 17, 0.5, 0.75, 1.0),       # (within)
]
LRN_IDS = [f"{'x'.join(map(str, s))}n{n}a{a}b{b}k{k}" for s, n, a, b, k in LRN_CASES]
REGIONS = ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]


@pytest.mark.parametrize("backend", ["numpy"] + BACKENDS)
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("shape, local_size, alpha, beta, k", LRN_CASES, ids=LRN_IDS)
def test_lrn_forward_backward(backend, region, shape, local_size, alpha, beta, k):
    x = (R.standard_normal(shape) * 1.5).astype(np.float32)
    g = R.standard_normal(shape).astype(np.float32)
    with sn.graph_scope():
        xi, gi = sn.input("x", shape), sn.input("g", shape)
        (y,), _ = apply("LRN", xi, local_size=local_size, alpha=alpha, beta=beta, k=k,
                        norm_region=region)
        (dx,) = sn.vjp([y], [gi], [xi])
        got_y, got_dx = sn.function([xi, gi], [y, dx], backend=backend)(x, g)
    want_y, want_dx = _lrn_closed_form(x, g, region, local_size, alpha, beta, k)
    np.testing.assert_allclose(got_y, want_y, rtol=2e-6, atol=2e-6)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("shape, local_size, alpha, beta, k", LRN_CASES[:6],
                         ids=LRN_IDS[:6])
def test_lrn_gradient_finite_differences(region, shape, local_size, alpha, beta, k):
    x = R.standard_normal(shape)
    check_grad(lambda t: apply("LRN", t, local_size=local_size, alpha=alpha, beta=beta,
                               k=k, norm_region=region)[0][0], x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lrn_large_values(backend):
    """Squares spanning many orders of magnitude in one channel column and plane:
    windows next to a huge value are not disturbed by it."""
    x = np.full((1, 12, 2, 3), 1e-3, np.float32)
    x[0, 2] = 3e4
    x[0, 9] = 7.0
    for region in REGIONS:
        with sn.graph_scope():
            xi = sn.input("x", x.shape)
            (y,), _ = apply("LRN", xi, local_size=3, alpha=1.0, beta=0.75, k=1e-6,
                            norm_region=region)
            got = sn.function([xi], y, backend=backend)(x)
        want, _ = _lrn_closed_form(x, x, region, 3, 1.0, 0.75, 1e-6)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lrn_is_one_kernel(backend):
    """A forward LRN is a single step: the window sum and the power in one pass."""
    with sn.graph_scope():
        xi = sn.input("x", (2, 8, 6, 6))
        for region in REGIONS:
            (y,), _ = apply("LRN", xi, norm_region=region)
            f = sn.function([xi], y, backend=backend)
            assert [s.name for s in f._impl.plan.steps] == \
                ["sn_lrn_" + ("across" if region == "ACROSS_CHANNELS" else "within")]


def test_max_pool_argmax_only_when_read():
    """A forward-only plan on the cpu computes max pooling's values alone (no argmax
    buffer); with the gradient in the plan, the argmax is written and read by it."""
    with sn.graph_scope():
        a = sn.input("a", (1, 2, 7, 7))
        y = sn.max_pool2d(a, 3, 2)
        fwd = sn.function([a], y, backend="cpu")
        both = sn.function([a], [y, sn.grad((y * y).sum(), a)], backend="cpu")
    assert [s.name for s in fwd._impl.plan.steps] == ["sn_maxpool_value"]
    assert len(fwd._impl.plan.buffers) == 2
    names = [s.name for s in both._impl.plan.steps]
    assert "sn_maxpool" in names and "sn_maxpool_value" not in names
    x = R.standard_normal((1, 2, 7, 7)).astype(np.float32)
    np.testing.assert_array_equal(fwd(x), both(x)[0])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape, axis, before, after", [
    ((2, 7, 3, 5), 1, 2, 2), ((2, 7, 3, 5), 3, 1, 1), ((2, 7, 3, 19), 3, 2, 3),
    ((3, 4, 21), 2, 0, 4), ((3, 4, 21), 2, 5, 0), ((2, 3, 4), 2, 6, 6),
    ((2, 5, 6, 3), 2, 7, 1), ((40,), 0, 3, 2)])
def test_window_sum(backend, shape, axis, before, after):
    """window_sum (LRN's gradient uses it) against a float64 loop, and its gradient."""
    x = R.standard_normal(shape).astype(np.float32)
    g = R.standard_normal(shape).astype(np.float32)

    def loop(t):
        t = np.moveaxis(t.astype(np.float64), axis, 0)
        out = np.zeros_like(t)
        for c in range(t.shape[0]):
            out[c] = t[max(c - before, 0):c + after + 1].sum(axis=0)
        return np.moveaxis(out, 0, axis)

    with sn.graph_scope():
        xi, gi = sn.input("x", shape), sn.input("g", shape)
        y = sn.window_sum(xi, axis, before, after)
        (dx,) = sn.vjp([y], [gi], [xi])
        got_y, got_dx = sn.function([xi, gi], [y, dx], backend=backend)(x, g)
    np.testing.assert_allclose(got_y, loop(x), rtol=1e-5, atol=1e-5)
    # the adjoint: the window mirrored
    before, after = after, before
    np.testing.assert_allclose(got_dx, loop(g), rtol=1e-5, atol=1e-5)
