"""Pooling's mask top and STOCHASTIC pooling, against NumPy implementations of Caffe's
kernels written here.

Caffe (src/caffe/layers/pooling_layer.cpp and .cu):
- MAX with two tops: top[1] is the mask, the flat index h * W + w inside the input
  plane (as a float) of the first maximum in the window's row-major scan: the best
  starts at -FLT_MAX and a value is taken only when it is greater (``>``). The mask
  receives no gradient.
- STOCHASTIC runs on the GPU only (the CPU path is NOT_IMPLEMENTED). Windows start at
  i * stride (padding is refused: "Padding implemented only for average and max
  pooling") and are clipped to the bottom. StoPoolForwardTrain: u uniform in (0, 1]
  per window, thres = u * sum(window); the first element at which the running sum
  reaches thres (>=) is taken and its index kept; StoPoolBackward sends the top diff to
  that element. StoPoolForwardTest: cumsum starts at FLT_MIN, top = sum(x^2) / cumsum
  (so 0 for a window of zeros).
symnet draws u as 1 - Philox uniform (symnet.ops.index.philox_uniform), seeded as
Dropout (from the layer's name; the iteration selects the stream).
"""
import numpy as np
import pytest

import symnet as sn
from symnet.layers import apply
from symnet.ops.index import philox_uniform

FLT_MAX = np.float32(3.4028235e38)
FLT_MIN = np.float32(1.1754944e-38)
R = np.random.default_rng(3)
BACKENDS = ["numpy", "cpu", "cuda-emu"]


def pooled(n, k, s, p, ceil=True):
    span = n + 2 * p - k
    o = (-(-span // s) if ceil else span // s) + 1
    if p and (o - 1) * s >= n + p:
        o -= 1
    return o


def caffe_max_mask(x, k, s, p, ceil=True):
    N, C, H, W = x.shape
    oh, ow = pooled(H, k[0], s[0], p[0], ceil), pooled(W, k[1], s[1], p[1], ceil)
    y = np.full((N, C, oh, ow), -FLT_MAX, np.float32)
    m = np.full((N, C, oh, ow), -1, np.float32)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * s[0] - p[0], j * s[1] - p[1]
                    he, we = min(hs + k[0], H), min(ws + k[1], W)
                    for h in range(max(hs, 0), he):
                        for w in range(max(ws, 0), we):
                            if x[n, c, h, w] > y[n, c, i, j]:
                                y[n, c, i, j] = x[n, c, h, w]
                                m[n, c, i, j] = h * W + w
    return y, m


def caffe_sto(x, k, s, u=None):
    """StoPoolForwardTrain (u given: values and chosen flat indices) or
    StoPoolForwardTest (u None: values), in float32 as Caffe's kernels."""
    N, C, H, W = x.shape
    oh, ow = pooled(H, k[0], s[0], 0), pooled(W, k[1], s[1], 0)
    y = np.zeros((N, C, oh, ow), np.float32)
    idx = np.zeros((N, C, oh, ow), np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * s[0], j * s[1]
                    cells = [(h, w) for h in range(hs, min(hs + k[0], H))
                             for w in range(ws, min(ws + k[1], W))]
                    if u is None:
                        cs, cv = FLT_MIN, np.float32(0)
                        for h, w in cells:
                            cs = np.float32(cs + x[n, c, h, w])
                            cv = np.float32(cv + x[n, c, h, w] * x[n, c, h, w])
                        y[n, c, i, j] = cv / cs
                        continue
                    total = np.float32(0)
                    for h, w in cells:
                        total = np.float32(total + x[n, c, h, w])
                    thres = np.float32(u[n, c, i, j] * total)
                    run = np.float32(0)
                    for h, w in cells:
                        run = np.float32(run + x[n, c, h, w])
                        if run >= thres:
                            y[n, c, i, j] = x[n, c, h, w]
                            idx[n, c, i, j] = h * W + w
                            break
    return y, idx


def layer_seed(name):
    # as Dropout's (symnet/layers/activation.py)
    return sum(ord(c) * 131 ** i for i, c in enumerate(name)) & 0xFFFFFFFF


MASK_CASES = [((2, 3, 7, 7), dict(kernel_size=3, stride=2, pad=1)),
              ((1, 2, 8, 9), dict(kernel_h=2, kernel_w=3, stride_h=2, stride_w=1)),
              ((2, 2, 6, 6), dict(kernel_size=2, stride=2)),
              ((1, 2, 7, 5), dict(kernel_size=3, stride=2, round_mode="FLOOR")),
              ((2, 2, 5, 4), dict(global_pooling=True))]


@pytest.mark.parametrize("shape,params", MASK_CASES)
def test_max_mask_top_is_caffes_first_maximum(shape, params):
    xv = R.integers(0, 3, shape).astype(np.float32)      # many ties
    x = sn.input("x", shape)
    (y, m), _ = apply("Pooling", x, name="p", ntop=2, **params)
    if params.get("global_pooling"):
        k, s, p = shape[2:], (1, 1), (0, 0)
    else:
        k = (params.get("kernel_h", params.get("kernel_size")),
             params.get("kernel_w", params.get("kernel_size")))
        s = (params.get("stride_h", params.get("stride", 1)),
             params.get("stride_w", params.get("stride", 1)))
        p = (params.get("pad", 0),) * 2
    ry, rm = caffe_max_mask(xv, k, s, p, params.get("round_mode") != "FLOOR")
    gy, gm = sn.input("gy", y.shape), sn.input("gm", m.shape)
    # the mask takes no gradient: x's gradient is max pooling's from gy alone
    (gx,) = sn.grad(sn.sum(y * gy) + sn.sum(m * gm), [x])
    gyv = R.standard_normal(y.shape).astype(np.float32)
    ref_gx = np.zeros_like(xv).reshape(shape[0], shape[1], -1)
    for n in range(shape[0]):
        for c in range(shape[1]):
            for o, g in zip(rm[n, c].ravel().astype(int), gyv[n, c].ravel()):
                ref_gx[n, c, o] += g
    for b in BACKENDS:
        fy, fm, fgx = sn.function([x, gy, gm], [y, m, gx], backend=b)(
            xv, gyv, np.ones(m.shape, np.float32))
        np.testing.assert_array_equal(fy, ry, err_msg=b)
        np.testing.assert_array_equal(fm, rm, err_msg=b)
        np.testing.assert_allclose(fgx, ref_gx.reshape(shape), rtol=1e-6, err_msg=b)


STO_CASES = [((2, 3, 8, 8), (3, 3), (2, 2)),      # ceil rounding: last windows clipped
             ((1, 2, 6, 9), (2, 3), (2, 3)),      # disjoint windows
             ((2, 2, 5, 7), (3, 2), (1, 2)),
             ((1, 2, 3, 3), (4, 4), (2, 2))]      # a kernel larger than the plane


@pytest.mark.parametrize("shape,k,s", STO_CASES)
def test_stochastic_test_phase_is_caffes_weighted_average(shape, k, s):
    xv = np.maximum(R.standard_normal(shape), 0).astype(np.float32)
    xv[0, 0] = 0            # windows of zeros give 0
    x = sn.input("x", shape)
    (y,), _ = apply("Pooling", x, name="sp", phase="TEST", pool="STOCHASTIC",
                    kernel_h=k[0], kernel_w=k[1], stride_h=s[0], stride_w=s[1])
    ref, _ = caffe_sto(xv, k, s)
    assert y.shape == ref.shape
    assert not ref[0, 0].any()
    for b in BACKENDS:
        got = sn.function([x], [y], backend=b)(xv)[0]
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-7, err_msg=b)
    # its gradient: d/dx_e of S2 / S1 = (2 x_e S1 - S2) / S1^2 per window containing e
    sn.gradcheck(lambda t: apply("Pooling", t, name="sp", phase="TEST", pool="STOCHASTIC",
                                 kernel_h=k[0], kernel_w=k[1], stride_h=s[0],
                                 stride_w=s[1])[0][0], [xv.astype(np.float64) + 0.5])


@pytest.mark.parametrize("shape,k,s", STO_CASES)
def test_stochastic_train_draw_and_gradient_match_caffes_kernels(shape, k, s):
    xv = np.maximum(R.standard_normal(shape), 0).astype(np.float32)
    xv[0, 0, 0] = 0
    x = sn.input("x", shape)
    (y,), _ = apply("Pooling", x, name="sto", phase="TRAIN", pool="STOCHASTIC",
                    kernel_h=k[0], kernel_w=k[1], stride_h=s[0], stride_w=s[1])
    u = 1 - philox_uniform(int(np.prod(y.shape)), layer_seed("sto")).reshape(y.shape)
    ref, idx = caffe_sto(xv, k, s, u)
    gy = sn.input("gy", y.shape)
    (gx,) = sn.grad(sn.sum(y * gy), [x])
    gyv = R.standard_normal(y.shape).astype(np.float32)
    ref_gx = np.zeros(shape, np.float32).reshape(shape[0], shape[1], -1)
    for n in range(shape[0]):
        for c in range(shape[1]):
            np.add.at(ref_gx[n, c], idx[n, c].ravel(), gyv[n, c].ravel())
    for b in BACKENDS:
        fy, fgx = sn.function([x, gy], [y, gx], backend=b)(xv, gyv)
        np.testing.assert_array_equal(fy, ref, err_msg=b)
        np.testing.assert_allclose(fgx, ref_gx.reshape(shape), rtol=1e-6, atol=1e-6,
                                   err_msg=b)


def test_stochastic_draw_frequencies_follow_the_activations():
    # 20000 disjoint 2x2 windows holding 0, 1, 2, 5: probabilities 0, 1/8, 1/4, 5/8.
    # A window's draw is counted from the gradient of sum(y): 1 on the drawn element.
    n = 20000
    win = np.array([[0, 1], [2, 5]], np.float32)
    xv = np.tile(win, (1, n))[None, None]                    # (1, 1, 2, 2n)
    x = sn.input("x", xv.shape)
    it = sn.input("it", ())
    (y,), _ = apply("Pooling", x, name="freq", phase="TRAIN", pool="STOCHASTIC",
                    kernel_size=2, stride=2, counter=it)
    (gx,) = sn.grad(sn.sum(y), [x])
    f = sn.function([x, it], [y, gx], backend="cpu")
    p = win.ravel() / win.sum()
    draws = []
    for i in (0.0, 1.0):
        yv, gxv = f(xv, np.float32(i))
        counts = gxv[0, 0].reshape(2, n, 2).transpose(1, 0, 2).reshape(n, 4).sum(axis=0)
        assert counts.sum() == n and set(np.unique(yv)) <= {1.0, 2.0, 5.0}
        assert counts[0] == 0                                # probability 0: never
        # each frequency within 5 standard deviations of its probability (about
        # 0.012 for 5/8 with 20000 draws); a uniform draw would be off by 0.375
        sd = np.sqrt(p * (1 - p) / n)
        assert np.all(np.abs(counts / n - p) <= 5 * sd + 1e-12), (counts / n, p)
        draws.append(yv)
    # the iteration selects a fresh stream
    assert (draws[0] != draws[1]).mean() > 0.3


NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 2 dim: 6 dim: 6 } } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "r" }
layer { name: "pm" type: "Pooling" bottom: "r" top: "pm" top: "mask"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ps" type: "Pooling" bottom: "r" top: "ps"
        pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }
layer { name: "lm" type: "EuclideanLoss" bottom: "pm" bottom: "pm2" top: "lm" }
layer { name: "ls" type: "EuclideanLoss" bottom: "ps" bottom: "ps2" top: "ls" }
"""
INPUTS = """
layer { name: "in2" type: "Input" top: "pm2" top: "ps2"
        input_param { shape { dim: 2 dim: 2 dim: 3 dim: 3 } shape { dim: 2 dim: 2 dim: 3 dim: 3 } } }
"""


@pytest.mark.parametrize("phase", [sn.TRAIN, sn.TEST])
def test_prototxt_net_with_mask_top_and_stochastic_pooling(phase):
    xv = R.standard_normal((2, 2, 6, 6)).astype(np.float32)
    t1 = R.standard_normal((2, 2, 3, 3)).astype(np.float32)
    t2 = R.standard_normal((2, 2, 3, 3)).astype(np.float32)
    text = NET.replace('top: "x" input_param', 'top: "x" input_param', 1)
    text = text.split('layer { name: "lm"')[0] + INPUTS + 'layer { name: "lm"' + \
        text.split('layer { name: "lm"')[1]
    r = np.maximum(xv, 0)
    ry, rm = caffe_max_mask(r, (3, 3), (2, 2), (0, 0))
    results = {}
    for b in ("numpy", "cpu", "cuda-emu"):
        net = sn.Net(text, phase, backend=b)
        net.blobs["x"].data[...] = xv
        net.blobs["pm2"].data[...] = t1
        net.blobs["ps2"].data[...] = t2
        net.forward()
        net.backward()
        np.testing.assert_array_equal(net.blobs["mask"].data, rm, err_msg=b)
        np.testing.assert_array_equal(net.blobs["pm"].data, ry, err_msg=b)
        if phase == sn.TEST:
            np.testing.assert_allclose(net.blobs["ps"].data, caffe_sto(r, (2, 2), (2, 2))[0],
                                       rtol=2e-6, atol=1e-7, err_msg=b)
        results[b] = (net.blobs["ps"].data.copy(), net.blobs["x"].diff.copy())
    if phase == sn.TRAIN:
        u = 1 - philox_uniform(18 * 2, layer_seed("ps")).reshape(2, 2, 3, 3)
        # the Net's first forward runs iteration 0 (the stream of counter 0)
        want, _ = caffe_sto(r, (2, 2), (2, 2), u)
        np.testing.assert_array_equal(results["numpy"][0], want)
    for b in ("cpu", "cuda-emu"):
        for a, e in zip(results[b], results["numpy"]):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6, err_msg=b)
