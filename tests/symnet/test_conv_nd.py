"""Convolution and Deconvolution with 1 or 3 spatial axes and with a channel axis other
than 1, as Caffe's N-d convolution (its im2col_nd path): a bottom (N, C, *spatial) with
the axes before convolution_param.axis batch-like; kernel_size, stride, pad and dilation
given once or once per spatial axis; top size (n + 2p - (d(k-1)+1)) / s + 1
(Deconvolution: s(n-1) + d(k-1) + 1 - 2p); weights [O, C/g, *k] ([C, O/g, *k]).
Checked against a NumPy implementation written here, finite differences, and on the
cpu and cuda-emu backends against the reference."""
import itertools

import numpy as np
import pytest

import symnet as sn
from symnet.layers import apply

R = np.random.default_rng(16)


def conv_nd(x, w, s, p, d, g):
    """Caffe's N-d convolution (cross-correlation), direct sum over kernel taps."""
    N, C = x.shape[:2]
    O, cg = w.shape[:2]
    k = w.shape[2:]
    nsp = len(k)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pi, pi) for pi in p])
    out = [(x.shape[2 + i] + 2 * p[i] - (d[i] * (k[i] - 1) + 1)) // s[i] + 1 for i in range(nsp)]
    y = np.zeros((N, O) + tuple(out))
    og = O // g
    for tap in itertools.product(*[range(ki) for ki in k]):
        sl = tuple(slice(tap[i] * d[i], tap[i] * d[i] + (out[i] - 1) * s[i] + 1, s[i])
                   for i in range(nsp))
        patch = xp[(slice(None), slice(None)) + sl]          # N, C, *out
        for gi in range(g):
            wt = w[(slice(gi * og, (gi + 1) * og), slice(None)) + tap]    # og, cg
            y[:, gi * og:(gi + 1) * og] += np.einsum("oc,nc...->no...", wt,
                                                     patch[:, gi * cg:(gi + 1) * cg])
    return y


def deconv_nd(x, w, s, p, d, g):
    """Caffe's N-d deconvolution: each input value scatters w's taps (col2im), then the
    padding is cropped."""
    N, C = x.shape[:2]
    cg_in, og = C // g, w.shape[1]
    k = w.shape[2:]
    nsp = len(k)
    full = [s[i] * (x.shape[2 + i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(nsp)]
    y = np.zeros((N, og * g) + tuple(full))
    for tap in itertools.product(*[range(ki) for ki in k]):
        sl = tuple(slice(tap[i] * d[i], tap[i] * d[i] + (x.shape[2 + i] - 1) * s[i] + 1, s[i])
                   for i in range(nsp))
        for gi in range(g):
            wt = w[(slice(gi * cg_in, (gi + 1) * cg_in), slice(None)) + tap]   # cg_in, og
            y[(slice(None), slice(gi * og, (gi + 1) * og)) + sl] += np.einsum(
                "co,nc...->no...", wt, x[:, gi * cg_in:(gi + 1) * cg_in])
    crop = tuple(slice(p[i], full[i] - p[i]) for i in range(nsp))
    return y[(slice(None), slice(None)) + crop]


def _tuple(v, n):
    return tuple(v) if isinstance(v, (list, tuple)) and len(v) == n else tuple(
        [v[0] if isinstance(v, (list, tuple)) else v] * n)


# (type, bottom shape, num_output, group, kernel, stride, pad, dilation)
CASES = [
    ("Convolution", (2, 4, 11), 6, 2, [3], [2], [1], [1]),
    ("Convolution", (1, 3, 9), 2, 1, [4], [1], [0], [2]),
    ("Convolution", (2, 2, 5, 6, 7), 4, 2, [3], [1], [1], [1]),
    ("Convolution", (1, 3, 6, 5, 7), 2, 1, [3, 2, 3], [2, 1, 2], [1, 0, 1], [1, 2, 1]),
    ("Deconvolution", (2, 4, 6), 2, 2, [3], [2], [1], [1]),
    ("Deconvolution", (1, 2, 3, 4, 3), 4, 2, [3], [2], [1], [1]),
    ("Deconvolution", (1, 3, 3, 3, 4), 2, 1, [2, 3, 2], [1, 2, 2], [0, 1, 1], [2, 1, 1]),
]
IDS = [f"{c[0][0]}{len(c[1]) - 2}d-{i}" for i, c in enumerate(CASES)]


def _layer(case, x):
    type_, _, out, g, k, s, p, d = case
    (y,), ctx = apply(type_, x, name="c", num_output=out, group=g, kernel_size=k, stride=s,
                      pad=p, dilation=d, weight_filler={"type": "gaussian", "std": 1.0},
                      bias_filler={"type": "gaussian", "std": 1.0})
    return y, [pd.tensor for pd in ctx.params]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_numpy_and_shape_rule(case):
    type_, xs, out, g, k, s, p, d = case
    nsp = len(xs) - 2
    k, s, p, d = (_tuple(v, nsp) for v in (k, s, p, d))
    x = sn.input("x", xs)
    y, (w, b) = _layer(case, x)
    wv, bv = w.op.get_value(), b.op.get_value()
    assert wv.shape == ((out, xs[1] // g) if type_ == "Convolution" else (xs[1], out // g)) + k
    xv = R.standard_normal(xs).astype(np.float32)
    ref = (conv_nd if type_ == "Convolution" else deconv_nd)(
        xv.astype(np.float64), wv.astype(np.float64), s, p, d, g)
    ref = ref + bv.reshape((1, -1) + (1,) * nsp)
    assert y.shape == ref.shape
    for backend in ("numpy", "cpu", "cuda-emu"):
        got = sn.function([x], [y], backend=backend)(xv)[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=backend)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_finite_differences_and_backends(case):
    xs = case[1]
    xv = R.standard_normal(xs)
    sn.gradcheck(lambda t: _layer(case, t)[0], [xv], params=["c_0", "c_1"])
    x = sn.input("x", xs)
    y, (w, b) = _layer(case, x)
    gy = sn.input("gy", y.shape)
    grads = sn.grad(sn.sum(y * gy), [x, w, b])
    gv = R.standard_normal(y.shape).astype(np.float32)
    want = sn.function([x, gy], grads, backend="numpy")(xv.astype(np.float32), gv)
    for backend in ("cpu", "cuda-emu"):
        got = sn.function([x, gy], grads, backend=backend)(xv.astype(np.float32), gv)
        for a, e in zip(got, want):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4, err_msg=backend)


def test_channel_axis_other_than_1_folds_leading_axes():
    # axis 2 of (2, 3, 4, 5, 6): items (2, 3), channels 4, a 2-d convolution of 5x6
    xv = R.standard_normal((2, 3, 4, 5, 6)).astype(np.float32)
    x = sn.input("x", xv.shape)
    (y,), ctx = apply("Convolution", x, name="c", num_output=2, kernel_size=[3], pad=[1],
                      axis=2, weight_filler={"type": "gaussian"})
    w, b = (pd.tensor.op.get_value() for pd in ctx.params)
    ref = conv_nd(xv.reshape(6, 4, 5, 6).astype(np.float64), w, (1, 1), (1, 1), (1, 1), 1)
    ref = ref.reshape(2, 3, 2, 5, 6) + b.reshape(1, 1, 2, 1, 1)
    assert y.shape == (2, 3, 2, 5, 6)
    for backend in ("numpy", "cpu"):
        np.testing.assert_allclose(sn.function([x], [y], backend=backend)(xv)[0], ref,
                                   rtol=1e-4, atol=1e-4)
    # axis -4 of a 4-d bottom is axis 0: one item of 2 channels, a 3-d convolution
    x4 = sn.input("x4", (2, 3, 4, 5))
    (y4,), ctx = apply("Convolution", x4, name="c4", num_output=3, kernel_size=[2],
                       axis=-4, weight_filler={"type": "gaussian"})
    assert y4.shape == (3, 2, 3, 4)
    w4, b4 = (pd.tensor.op.get_value() for pd in ctx.params)
    x4v = R.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref4 = conv_nd(x4v[None].astype(np.float64), w4, (1,) * 3, (0,) * 3, (1,) * 3, 1)[0]
    np.testing.assert_allclose(sn.function([x4], [y4], backend="cpu")(x4v)[0],
                               ref4 + b4.reshape(3, 1, 1, 1), rtol=1e-4, atol=1e-4)


NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 6 dim: 5 } } }
layer { name: "c3" type: "Convolution" bottom: "x" top: "c3"
        convolution_param { num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 2
                            pad: 1 stride: 1 stride: 2 stride: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "d3" type: "Deconvolution" bottom: "c3" top: "d3"
        convolution_param { num_output: 2 kernel_size: 2 stride: 2
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "tin" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 dim: 8 dim: 6 dim: 12 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "d3" bottom: "t" top: "loss" }
"""


def test_prototxt_net_with_3d_convolution_and_deconvolution():
    xv = R.standard_normal((2, 3, 4, 6, 5)).astype(np.float32)
    tv = R.standard_normal((2, 2, 8, 6, 12)).astype(np.float32)
    nets = {b: sn.Net(NET, sn.TRAIN, backend=b) for b in ("numpy", "cpu")}
    for name in ("c3", "d3"):
        for bc, bn in zip(nets["cpu"].params[name], nets["numpy"].params[name]):
            bc.data[...] = bn.data
    res = {}
    for b, net in nets.items():
        net.blobs["x"].data[...] = xv
        net.blobs["t"].data[...] = tv
        net.forward()
        net.backward()
        res[b] = (net.blobs["c3"].data.copy(), net.blobs["d3"].data.copy(),
                  net.params["c3"][0].diff.copy(), net.blobs["loss"].data.copy())
    w = nets["numpy"].params["c3"][0].data.astype(np.float64)
    ref = conv_nd(xv.astype(np.float64), w, (1, 2, 1), (1, 1, 1), (1, 1, 1), 1)
    ref += nets["numpy"].params["c3"][1].data.reshape(1, -1, 1, 1, 1)
    assert res["numpy"][0].shape == (2, 4, 4, 3, 6)
    np.testing.assert_allclose(res["numpy"][0], ref, rtol=1e-4, atol=1e-4)
    assert res["numpy"][1].shape == (2, 2, 8, 6, 12)
    for a, e in zip(res["cpu"], res["numpy"]):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4)
