"""Convolutions image by image on the cpu backend with the panel GEMMs
(templates.CONV_PANEL_CPU, CONV_T_PANEL_CPU, CONV_WGRAD_PANEL_CPU): forward, input
gradient and weight gradient against the NumPy reference for strides, pads,
dilations, groups, odd sizes, output channels that are not a multiple of the 8-row
tile or the 32-column panel, batch 1 and more images than threads, with 1 and 3
threads; the plan takes the panel kernels (and BLAS's sgemm with lower.CONV_PANELS
off); finite differences through the cpu backend for a few shapes."""
import numpy as np
import pytest

import loops
import symnet as sn
from symnet.codegen import lower

R = np.random.default_rng(21)

# (N, C, H, W), outputs, kernel, stride, pad, dilation, group
CASES = [
    ((4, 3, 12, 12), 32, 5, 1, 2, 1, 1),       # CIFAR10-quick's conv1, smaller
    ((5, 32, 12, 12), 32, 5, 1, 2, 1, 1),      # conv2 / conv3 geometry
    ((3, 1, 13, 11), 20, 5, 1, 0, 1, 1),       # LeNet: 20 outputs (a partial row tile)
    ((4, 20, 7, 9), 50, 5, 1, 0, 1, 1),        # LeNet's conv2, odd sizes
    ((3, 5, 11, 10), 9, 3, 2, 1, 1, 1),        # stride 2: the input gradient via col2im
    ((2, 4, 9, 9), 7, 3, 1, 4, 1, 1),          # pad beyond the kernel's reach
    ((3, 6, 10, 9), 12, (3, 5), 1, (1, 2), (2, 1), 1),   # dilation, mixed geometry
    ((3, 12, 7, 7), 24, 3, 1, 1, 1, 2),        # groups of 6 in, 12 out
    ((1, 8, 9, 7), 40, 3, 1, 1, 1, 1),         # batch 1, 40 outputs (two panels)
    ((3, 16, 9, 7), 8, 3, 1, 1, 1, 2),         # input gradient: 8 channels per group
    ((7, 3, 6, 5), 33, (2, 3), (1, 2), (0, 1), 1, 1),   # 33 outputs, 2x3 kernel
    ((3, 16, 6, 7), 40, 3, 1, 1, 1, 1),        # 40 outputs: a partial second panel
    # output rows a multiple of 16 wide at stride 1: read from padded planes directly
    ((3, 3, 16, 16), 32, 5, 1, 2, 1, 1),       # CIFAR10-quick's conv2 geometry
    ((2, 8, 15, 16), 20, 3, 1, 1, 1, 1),       # 15 rows: a last tile of 16 positions
    ((3, 16, 9, 18), 24, 3, 1, 1, (1, 2), 2),  # dilated, grouped, 16 wide out of 18
    ((2, 16, 16, 32), 16, 3, 1, 1, 1, 1),      # input gradient 32 wide: direct too
    ((2, 4, 20, 20), 8, 5, 1, 0, 1, 1),        # no padding: 16 of 20
    ((1, 9, 6, 16), 13, (1, 3), 1, (0, 1), 1, 1),   # batch 1, 1x3 kernel
    # rows a multiple of 8 wide: two stretches of 8 per vector
    ((3, 32, 8, 8), 64, 5, 1, 2, 1, 1),        # CIFAR10-quick's conv3
    ((2, 8, 5, 24), 16, 3, 1, 1, 1, 1),        # 24 wide: a vector across two rows
    ((2, 16, 3, 8), 8, 3, 1, 1, 1, 1),         # 24 positions: a partial tile
]
IDS = [f"x{c[0]}o{c[1]}k{c[2]}s{c[3]}p{c[4]}d{c[5]}g{c[6]}" for c in CASES]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _build(xs, out, k, s, p, d, g):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = sn.input("x", xs)
    w = sn.input("w", (out, xs[1] // g, kh, kw))
    y = sn.conv2d(x, w, stride=s, pad=p, dilation=d, group=g)
    gy = sn.input("gy", y.shape)
    dx, dw = sn.vjp([y], [gy], [x, w])
    return [x, w, gy], [y, dx, dw]


def _run(case, backend):
    with sn.graph_scope():
        ins, outs = _build(*case)
        feeds = [R.standard_normal(t.shape).astype(np.float32) for t in ins]
        fn = sn.function(ins, outs, backend="numpy")
        want = fn(*feeds)
        fc = sn.function(ins, outs, backend=backend)
        got = fc(*feeds)
        return want, got, fc


@pytest.fixture(params=[1, 3], ids=["t1", "t3"])
def threads(request, monkeypatch):
    """1 or 3 threads, and the panel kernels for every shape (no size thresholds)."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", str(request.param))
    monkeypatch.setattr(lower, "PANEL_MIN_TAPS", 1)
    monkeypatch.setattr(lower, "PANEL_MIN_OUTPUTS", 1)
    return request.param


def _names(fn):
    return {st.name.rstrip("_0123456789") for st in fn._impl.plan.steps}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_panels_match_reference(threads, case):
    want, got, fn = _run(case, "cpu")
    for what, a, b in zip(("y", "dx", "dw"), got, want):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale, err_msg=what)
    names = _names(fn)
    if case[0][0] >= threads:          # image by image
        xs, out, k, st, pad, dil, g = case
        (kh, kw), (ph, pw), (dh, dw) = (_pair(v) for v in (k, pad, dil))
        oh = xs[2] + 2 * ph - (kh - 1) * dh if st == 1 else None
        ow = xs[3] + 2 * pw - (kw - 1) * dw if st == 1 else None
        assert "sn_conv_weight_grad_panels" in names, names
        # the forward at stride 1 with output rows a multiple of 8 wide (3x3 ones may
        # take Winograd's kernel instead)
        direct = st == 1 and ow % 8 == 0
        assert ("sn_conv_panels" in names) == direct or "sn_conv_winograd" in names, names
        # the input gradient by panels: also its own size (a "same" padding), rows a
        # multiple of 8 wide and at least 8 input channels per group
        flipped = direct and (oh, ow) == xs[2:] and xs[3] % 8 == 0 and xs[1] // g >= 8
        assert ("sn_conv_transpose_panels" in names) == flipped, names


def test_cifar_geometry_takes_panels(monkeypatch):
    """With the default thresholds, CIFAR10-quick's convolutions (32 channels, 5x5, pad
    2) run all three products by panels; LeNet's first (1 channel) calls sgemm."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    for case, panels in ((((2, 32, 16, 16), 32, 5, 1, 2, 1, 1), True), (CASES[2], False)):
        want, got, fn = _run(case, "cpu")
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
        names = _names(fn)
        assert ({"sn_conv_panels", "sn_conv_transpose_panels",
                 "sn_conv_weight_grad_panels"} <= names) == panels, names


def test_panels_off_calls_sgemm(monkeypatch):
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    monkeypatch.setattr(lower, "CONV_PANELS", False)
    want, got, fn = _run(CASES[1], "cpu")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    names = _names(fn)
    assert "sn_conv_images" in names and not any("panels" in n for n in names), names


@pytest.mark.parametrize("case", [CASES[0], CASES[3], CASES[6], CASES[7]],
                         ids=[IDS[0], IDS[3], IDS[6], IDS[7]])
def test_panels_finite_differences(monkeypatch, case):
    """The cpu backend's gradients of L = sum(tanh(conv(x, w))^2) along random
    directions against central differences of L computed in float64 by direct loops."""
    monkeypatch.setenv("SYMNET_NUM_THREADS", "2")
    monkeypatch.setattr(lower, "PANEL_MIN_TAPS", 1)
    monkeypatch.setattr(lower, "PANEL_MIN_OUTPUTS", 1)
    xs, out, k, s, p, d, g = case
    kh, kw = (k, k) if isinstance(k, int) else k
    x = R.standard_normal(xs) * 0.5
    w = R.standard_normal((out, xs[1] // g, kh, kw)) * 0.2
    with sn.graph_scope():
        xt, wt = sn.input("x", x.shape), sn.input("w", w.shape)
        loss = (sn.tanh(sn.conv2d(xt, wt, s, p, d, g)) ** 2).sum()
        fn = sn.function([xt, wt], list(sn.grad(loss, [xt, wt])), backend="cpu")
        dx, dw = fn(x.astype(np.float32), w.astype(np.float32))
    assert "sn_conv_weight_grad_panels" in _names(fn)

    def f(a, b):
        return float(np.sum(np.tanh(loops.conv2d(a, b, s, p, d, g)) ** 2))
    eps = 1e-5
    for grad, which in ((dx, 0), (dw, 1)):
        v = R.standard_normal(grad.shape)
        args = [x, w]
        plus, minus = list(args), list(args)
        plus[which] = args[which] + eps * v
        minus[which] = args[which] - eps * v
        fd = (f(*plus) - f(*minus)) / (2 * eps)
        np.testing.assert_allclose(float(np.vdot(grad.astype(np.float64), v)), fd, rtol=2e-4,
                                   atol=1e-4)
