"""Winograd convolutions on the cpu backend (codegen/winograd.py): F(2x2, 3x3) and
F(4x4, 3x3), forced on through SYMNET_WINOGRAD, against the NumPy reference for odd
sizes, pads 0 and 1, channel counts that fill no tile or vector evenly, batches 1 and
3, with a bias; and their float32 error against a float64 convolution within the bound
derived in codegen/winograd.py.

Observed on the error test's data (x ~ N(0, 1), w ~ N(0, 1/(9C)), 16 outputs of
12 x 12, pad 1), as max |y - y64| / (u * sum |w| |x|) over the outputs, u = 2^-24
(OpenCV 4 dnn on the same prototxt and weights, 1 thread):

    C     im2col  F(2x2)  F(4x4)  OpenCV default (its Winograd)  OpenCV Winograd off
    8      2.79    2.38    49.5        80.8                          3.06
    64     1.73    1.40    20.8        47.2                          2.33
    256    0.93    1.43    27.4        44.8                          1.04
    512    0.59    1.33    26.9        50.0                          0.46

F(4x4) with Lavin's points (0, +-1, +-2) measured 40.6, 20.5, 18.5, 30.2 here: no
clear difference from the points used. The rigorous bound asserted below is loose: the
errors are 1e-4 to 1e-2 of it. Run with -s for a run's figures.
"""
import numpy as np
import pytest

import symnet as sn
from symnet.codegen import winograd as WG

U32 = 2.0 ** -24


def _conv_fn(xs, ws, pad, backend, bias=False):
    with sn.graph_scope():
        x = sn.input("x", xs)
        w = sn.input("w", ws)
        ins = [x, w]
        y = sn.conv2d(x, w, stride=1, pad=pad)
        if bias:
            b = sn.input("b", (1, ws[0], 1, 1))
            ins.append(b)
            y = y + b
        return sn.function(ins, y, backend=backend)


def _kernels(f):
    return [st.name for st in f._impl.plan.steps]


def _run(xs, ws, pad, mode, monkeypatch, arrays, bias=False):
    monkeypatch.setenv("SYMNET_WINOGRAD", mode)
    f = _conv_fn(xs, ws, pad, "cpu", bias)
    names = _kernels(f)
    if mode in ("2", "4"):
        assert f"sn_conv_winograd{mode}" in names, names
    else:
        assert not any("winograd" in n for n in names), names
    return f(*arrays)


# (input shape, output channels, pad)
SHAPES = [
    ((1, 1, 3, 3), 1, 0),           # one output
    ((1, 3, 7, 9), 5, 1),
    ((3, 4, 11, 6), 2, 0),
    ((1, 17, 13, 13), 19, 1),
    ((3, 5, 9, 10), 7, 1),
    ((1, 2, 4, 4), 3, 1),
    ((3, 33, 6, 17), 65, 0),
    ((1, 6, 5, 30), 4, 1),          # a row of tiles wider than one vector
    ((2, 3, 6, 7), 4, (2, 0)),      # pads of their own per axis
    ((1, 2, 9, 5), 3, (0, 2)),
    ((3, 4, 26, 26), 5, 1),         # several chunks of tile rows, across images
]
# the smallest chunks lowering makes (CHUNK_MIN_TILES), so the batches above take
# several, one of them spanning two images and the last one short
SIDS = [f"x{s[0]}k{s[1]}p{s[2]}".replace(" ", "") for s in SHAPES]


def _abs_conv(x, w, pad):
    """sum |w| |x| for every output, in float64."""
    return _conv64(np.abs(x), np.abs(w), pad)


def _pads(pad):
    return (pad, pad) if np.isscalar(pad) else tuple(pad)


def _conv64(x, w, pad):
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    N, C, H, W = x.shape
    ph, pw = _pads(pad)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = H + 2 * ph - 2, W + 2 * pw - 2
    out = np.zeros((N, w.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,kc->nkhw", xp[:, :, i:i + oh, j:j + ow], w[:, :, i, j])
    return out


@pytest.mark.parametrize("m", ["2", "4"])
@pytest.mark.parametrize("xs, K, pad", SHAPES, ids=SIDS)
def test_matches_reference(xs, K, pad, m, monkeypatch):
    monkeypatch.setenv("SYMNET_WINOGRAD_BYTES", "1")
    rng = np.random.default_rng(7)
    ws = (K, xs[1], 3, 3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal((1, K, 1, 1)).astype(np.float32)
    got = _run(xs, ws, pad, m, monkeypatch, [x, w, b], bias=True)
    want = _conv_fn(xs, ws, pad, "numpy", bias=True)(x, w, b)
    assert got.shape == want.shape
    # within the Winograd bound (see the error test) plus the float32 reference's own
    # (a dot product of 9C terms), and the roundings of the bias add
    d, dr = WG.error_depth(int(m), xs[1]), 9 * xs[1] + 2
    scale = _abs_conv(x, w, pad) + np.abs(b)
    tol = d * U32 / (1 - d * U32) * _winograd_bound(x, w, pad, int(m)) + \
        dr * U32 / (1 - dr * U32) * scale + 2 * U32 * scale
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol), float(np.max(err / tol))


@pytest.mark.parametrize("chunk_bytes", ["1", ""], ids=["chunks_per_thread", "one_chunk"])
@pytest.mark.parametrize("m", ["2", "4"])
def test_two_threads(m, chunk_bytes, monkeypatch):
    """Two threads: with several chunks each thread takes whole chunks (PRIV), with one
    the team splits every phase of it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("SYMNET_WINOGRAD_BYTES", chunk_bytes)
    rng = np.random.default_rng(9)
    xs, ws = (3, 20, 26, 23), (20, 20, 3, 3)      # output channel blocks 8, 8, 4
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    got = _run(xs, ws, 1, m, monkeypatch, [x, w]).astype(np.float64)
    d = WG.error_depth(int(m), xs[1])
    tol = d * U32 / (1 - d * U32) * _winograd_bound(x, w, 1, int(m))
    assert np.all(np.abs(got - _conv64(x, w, 1)) <= tol)


def test_im2col_path_unchanged_when_off(monkeypatch):
    rng = np.random.default_rng(3)
    xs, ws = (2, 8, 10, 10), (8, 8, 3, 3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    got = _run(xs, ws, 1, "0", monkeypatch, [x, w])
    np.testing.assert_allclose(got, _conv64(x, w, 1), rtol=1e-5, atol=1e-5)


def test_not_used_where_not_applicable(monkeypatch):
    """Stride 2, dilation 2, groups, a 5x5 kernel: the im2col path, even when forced."""
    monkeypatch.setenv("SYMNET_WINOGRAD", "4")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    for w_shape, kw in (((4, 4, 3, 3), dict(stride=2)), ((4, 4, 3, 3), dict(dilation=2)),
                        ((4, 2, 3, 3), dict(group=2)), ((4, 4, 5, 5), {})):
        w = rng.standard_normal(w_shape).astype(np.float32)
        with sn.graph_scope():
            a, b = sn.input("x", x.shape), sn.input("w", w_shape)
            y = sn.conv2d(a, b, pad=1, **kw)
            f = sn.function([a, b], y, backend="cpu")
            ref = sn.function([a, b], y, backend="numpy")
        assert not any("winograd" in n for n in _kernels(f)), (w_shape, kw)
        np.testing.assert_allclose(f(x, w), ref(x, w), rtol=1e-4, atol=1e-4)


def test_transform_matrices_compute_correlation():
    """A^T [(G g) (.) (B^T d)] is the correlation of d with g, exactly (rationals)."""
    from fractions import Fraction
    rng = np.random.default_rng(0)
    for m in (2, 4):
        at, g, bt = WG.matrices(m)
        n = m + 2
        gg = [Fraction(int(v)) for v in rng.integers(-9, 9, 3)]
        dd = [Fraction(int(v)) for v in rng.integers(-9, 9, n)]
        u = [sum(g[j][k] * gg[k] for k in range(3)) for j in range(n)]
        v = [sum(bt[j][l] * dd[l] for l in range(n)) for j in range(n)]
        y = [sum(at[i][j] * u[j] * v[j] for j in range(n)) for i in range(m)]
        assert y == [sum(gg[k] * dd[i + k] for k in range(3)) for i in range(m)]


# ---------------------------------------------------------------- error bound
def _winograd_bound(x, w, pad, m):
    """Per output: |A^T| [sum_c (|G||g||G|^T) (.) (|B^T||d||B|)] |A|, tile by tile, in
    float64 (the quantity the bound of codegen/winograd.py multiplies by gamma_D)."""
    at, g, bt = (np.abs(np.array(mat, dtype=np.float64)) for mat in WG.matrices(m))
    N, C, H, W = x.shape
    K = w.shape[0]
    n = m + 2
    ph, pw = _pads(pad)
    oh, ow = H + 2 * ph - 2, W + 2 * pw - 2
    nty, ntx = -(-oh // m), -(-ow // m)
    xp = np.zeros((N, C, max(nty * m + 2, H + ph), max(ntx * m + 2, W + pw)))
    xp[:, :, ph:ph + H, pw:pw + W] = np.abs(x)
    gw = np.einsum("ia,kcab,jb->kcij", g, np.abs(w.astype(np.float64)), g)
    out = np.zeros((N, K, nty * m, ntx * m))
    for ty in range(nty):
        for tx in range(ntx):
            d = xp[:, :, ty * m:ty * m + n, tx * m:tx * m + n]
            dv = np.einsum("ia,ncab,jb->ncij", bt, d, bt)
            s = np.einsum("kcij,ncij->nkij", gw, dv)
            out[:, :, ty * m:(ty + 1) * m, tx * m:(tx + 1) * m] = \
                np.einsum("pi,nkij,qj->nkpq", at, s, at)
    return out[:, :, :oh, :ow]


def _opencv_errors(x, w, pad, want, scale, tmp_path):
    """OpenCV dnn's error ratios on the same data, Winograd on (its default) and off;
    None without an OpenCV that reads Caffe files."""
    try:
        import cv2
    except ImportError:
        return None
    if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
        return None
    N, C, H, W = x.shape
    K = w.shape[0]
    proto = tmp_path / "conv.prototxt"
    proto.write_text(
        f'name: "c"\nlayer {{ name: "data" type: "Input" top: "data"\n'
        f'  input_param {{ shape {{ dim: {N} dim: {C} dim: {H} dim: {W} }} }} }}\n'
        f'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        f'  convolution_param {{ num_output: {K} kernel_size: 3 pad: {pad} '
        f'bias_term: false }} }}\n')
    net = sn.Net(str(proto), sn.TEST, backend="cpu")
    net.params["conv"][0].data[...] = w
    model = tmp_path / "conv.caffemodel"
    net.save(str(model))
    res = {}
    for on in (True, False):
        cv = cv2.dnn.readNetFromCaffe(str(proto), str(model))
        cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        if hasattr(cv, "enableWinograd"):
            cv.enableWinograd(on)
        cv.setInput(x)
        out = cv.forward()
        res["opencv winograd" if on else "opencv plain"] = \
            float(np.max(np.abs(out - want) / scale) / U32)
    return res


@pytest.mark.parametrize("C", [8, 64, 256, 512])
def test_error_against_float64(C, monkeypatch, tmp_path):
    """max |y - y64| <= gamma_D * bound (codegen/winograd.py) for F(2x2) and F(4x4),
    and the im2col path within gamma_(9C) sum |w| |x| (a dot product's bound)."""
    rng = np.random.default_rng(C)
    K, pad = 16, 1
    xs, ws = (1, C, 12, 12), (K, C, 3, 3)      # OpenCV takes Winograd for 12 x 12
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / np.sqrt(9 * C)).astype(np.float32)
    want = _conv64(x, w, pad)
    scale = _abs_conv(x, w, pad)
    ratios = {}
    for mode in ("0", "2", "4"):
        got = _run(xs, ws, pad, mode, monkeypatch, [x, w]).astype(np.float64)
        err = np.abs(got - want)
        ratios["im2col" if mode == "0" else f"F({mode}x{mode})"] = \
            float(np.max(err / scale) / U32)
        if mode == "0":
            d = 9 * C
        else:
            d = WG.error_depth(int(mode), C)
            bound = d * U32 / (1 - d * U32) * _winograd_bound(x, w, pad, int(mode))
            assert np.all(err <= bound), float(np.max(err / bound))
            ratios[f"F({mode}x{mode}) of its bound"] = float(np.max(err / bound))
            d = None
        if d:
            assert np.all(err <= d * U32 / (1 - d * U32) * scale)
    ratios.update(_opencv_errors(x, w, pad, want, scale, tmp_path) or {})
    print(f"\nC={C}: max |y - y64| / (u sum|w||x|): " +
          ", ".join(f"{k} {v:.3g}" for k, v in ratios.items()))


def test_chosen_by_shape_and_gradients_keep_im2col(monkeypatch):
    """Without SYMNET_WINOGRAD: a 28 x 28 layer of 16 channels takes F(4x4) with one
    thread and a 7 x 7 one im2col; in one function with the gradients (which keep
    their im2col path), output and gradients match the NumPy reference."""
    monkeypatch.delenv("SYMNET_WINOGRAD", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert WG.choose(1, 16, 16, 28, 28, 28, 28, 1) == 4
    assert WG.choose(1, 16, 16, 28, 28, 28, 28, 2) is None     # 49 tiles for 2 threads
    assert WG.choose(1, 16, 16, 56, 56, 56, 56, 2) == 4
    assert WG.choose(1, 512, 512, 7, 7, 7, 7, 2) is None
    assert WG.choose(1, 3, 64, 224, 224, 224, 224, 2) is None
    rng = np.random.default_rng(11)
    xs, ws = (1, 16, 28, 28), (16, 16, 3, 3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = (rng.standard_normal(ws) / 12).astype(np.float32)
    r = rng.standard_normal((1, 16, 28, 28)).astype(np.float32)
    outs = {}
    for backend in ("cpu", "numpy"):
        with sn.graph_scope():
            a, b, c = sn.input("x", xs), sn.input("w", ws), sn.input("r", r.shape)
            y = sn.conv2d(a, b, pad=1)
            cost = (sn.tanh(y) * c).sum()
            gx, gw = sn.grad(cost, [a, b])
            f = sn.function([a, b, c], [y, gx, gw], backend=backend)
            if backend == "cpu":
                assert "sn_conv_winograd4" in _kernels(f)
            outs[backend] = f(x, w, r)
    for got, want in zip(outs["cpu"], outs["numpy"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
