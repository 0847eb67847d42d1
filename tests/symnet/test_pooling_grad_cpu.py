"""The cpu backend's max pooling with its argmax (the training forward) and its input
gradient, and average pooling's input gradient, against the NumPy backend where the
argmax decides: ties (integer-valued inputs, so many windows hold several equal
maxima; Caffe's rule takes the first in row-major order), NaN (the first NaN wins), and
infinities; strides smaller than, equal to and larger than the kernel, padding, odd
sizes, batch 1 and many planes, 1 and 3 threads. Average pooling's gradient is also
checked against finite differences of the float64 closed form."""
import numpy as np
import pytest

import symnet as sn

R = np.random.default_rng(33)

# (N, C, H, W), kernel, stride, pad
CASES = [
    ((2, 3, 16, 16), 3, 2, 0),       # CIFAR10-quick's pools, smaller
    ((1, 2, 9, 11), 3, 2, 1),
    ((3, 2, 7, 13), (2, 3), (1, 2), (1, 1)),
    ((1, 1, 5, 5), 2, 2, 0),
    ((2, 2, 8, 9), 3, 3, 1),
    ((1, 3, 10, 7), 2, 3, 0),         # stride larger than the kernel
    ((4, 8, 12, 12), 5, 1, 2),
    ((1, 1, 2, 3), 3, 1, 1),          # kernel larger than the image
]
IDS = [f"x{c[0]}k{c[1]}s{c[2]}p{c[3]}" for c in CASES]


@pytest.fixture(params=[1, 3], ids=["t1", "t3"])
def threads(request, monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", str(request.param))
    return request.param


def _both(method, xs, k, s, p, x, gy_seed=0):
    out = {}
    for backend in ("numpy", "cpu"):
        with sn.graph_scope():
            a = sn.input("a", xs)
            y = sn.pool2d(a, k, s, p, method=method)
            gy = sn.input("gy", y.shape)
            (dx,) = sn.vjp([y], [gy], [a])
            g = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(np.float32)
            out[backend] = sn.function([a, gy], [y, dx], backend=backend)(x, g)
    return out


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool_ties_argmax(threads, case):
    xs, k, s, p = case
    x = R.integers(-2, 3, xs).astype(np.float32)         # many equal maxima
    out = _both("max", xs, k, s, p, x)
    for a, b in zip(out["cpu"], out["numpy"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES[:3], ids=IDS[:3])
def test_max_pool_nan_and_infinities_argmax(threads, case):
    xs, k, s, p = case
    x = R.integers(-2, 3, xs).astype(np.float32)
    flat = x.reshape(-1)
    idx = R.choice(flat.size, size=max(2, flat.size // 20), replace=False)
    flat[idx[: len(idx) // 2]] = np.nan
    flat[idx[len(idx) // 2:]] = np.inf
    out = _both("max", xs, k, s, p, x)
    for a, b in zip(out["cpu"], out["numpy"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ave_pool_gradient(threads, case):
    xs, k, s, p = case
    x = R.standard_normal(xs).astype(np.float32)
    out = _both("ave", xs, k, s, p, x)
    for a, b in zip(out["cpu"], out["numpy"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _ave64(x, k, s, p):
    """Caffe's average pooling in float64 (ceil rounding, the divisor the window
    clipped to the padded image, a last window starting in the padding dropped)."""
    (kh, kw), (sh, sw), (ph, pw) = [v if isinstance(v, tuple) else (v, v) for v in (k, s, p)]
    n, c, h, w = x.shape

    def out_len(size, kk, ss, pp):
        o = -(-(size + 2 * pp - kk) // ss) + 1
        return o - 1 if pp > 0 and (o - 1) * ss >= size + pp else o
    oh, ow = out_len(h, kh, sh, ph), out_len(w, kw, sw, pw)
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            y[:, :, i, j] = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)].sum(
                axis=(2, 3)) / ((he - hs) * (we - ws))
    return y


@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])
def test_ave_pool_gradient_finite_differences(monkeypatch, case):
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    xs, k, s, p = case
    x = R.standard_normal(xs)
    wy = R.standard_normal(_ave64(x, k, s, p).shape)
    with sn.graph_scope():
        a = sn.input("a", xs)
        loss = (sn.pool2d(a, k, s, p, method="ave") * sn.constant(wy.astype(np.float32))).sum()
        (dx,) = sn.function([a], [sn.grad(loss, a)], backend="cpu")(x.astype(np.float32))
    v = R.standard_normal(xs)
    eps = 1e-6
    fd = (np.sum(_ave64(x + eps * v, k, s, p) * wy) -
          np.sum(_ave64(x - eps * v, k, s, p) * wy)) / (2 * eps)
    np.testing.assert_allclose(np.vdot(dx.astype(np.float64), v), fd, rtol=1e-4, atol=1e-5)
