"""Grouped convolutions with few channels per group (depthwise among them) run as direct
kernels on the cpu and cuda-emu backends: forward, input gradient and weight gradient
against the NumPy reference, for strides, pads, dilations, kernel sizes, odd sizes,
channel multipliers and batches; the MobileNet deploy nets against the reference. The
CUDA backends take the direct kernels for groups of up to lower.DIRECT_GROUP_CHANNELS (8)
channels (tests/test_zz_nvcc.py compiles the modules emitted)."""
import pathlib

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower

R = np.random.default_rng(15)
BACKENDS = ["cpu", "cuda-emu"]


def test_device_threshold_covers_the_cases():
    assert lower.DIRECT_GROUP_CHANNELS == 8

# (N, C, H, W), group, outputs, kernel, stride, pad, dilation
CASES = [
    ((1, 4, 9, 9), 4, 4, 3, 1, 1, 1),          # depthwise 3x3, MobileNet's stride 1
    ((3, 5, 11, 10), 5, 5, 3, 2, 1, 1),        # MobileNet's stride 2, odd sizes
    ((1, 3, 8, 13), 3, 6, 3, 1, 0, 1),         # channel multiplier 2, no pad
    ((3, 4, 12, 9), 4, 8, 5, 2, 2, 1),         # 5x5, multiplier 2
    ((1, 6, 13, 11), 6, 6, (3, 5), (1, 2), (2, 1), 2),   # dilation 2, mixed geometry
    ((3, 3, 7, 7), 3, 3, 5, 1, 2, 2),          # dilated 5x5 wider than the interior
    ((1, 8, 10, 9), 4, 8, 3, 1, 1, 1),         # 2 channels per group
    ((3, 12, 9, 11), 3, 12, 3, 2, 1, 1),       # 4 in and 4 out per group
    ((1, 8, 7, 6), 2, 4, 3, 1, 1, 2),          # 4 in and 2 out per group, dilated
    ((1, 2, 3, 4), 2, 2, 3, 1, 2, 1),          # pad wider than the image
    ((2, 3, 6, 1), 3, 3, 5, 1, 2, 1),          # one column, padding on both sides
    ((1, 2, 5, 3), 2, 4, 3, 1, 3, 1),          # pad beyond the kernel's reach
    ((1, 2, 24, 160), 2, 2, 11, 1, 5, 2),      # rows of partial sums too long to keep
]
IDS = [f"x{c[0]}g{c[1]}o{c[2]}k{c[3]}s{c[4]}p{c[5]}d{c[6]}" for c in CASES]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _build(xs, group, out, k, s, p, d):
    kh, kw = _pair(k)
    x = sn.input("x", xs)
    w = sn.input("w", (out, xs[1] // group, kh, kw))
    y = sn.conv2d(x, w, stride=s, pad=p, dilation=d, group=group)
    gy = sn.input("gy", y.shape)
    dx, dw = sn.vjp([y], [gy], [x, w])
    return [x, w, gy], [y, dx, dw]


def _feeds(ins):
    return [R.standard_normal(t.shape).astype(np.float32) for t in ins]


def _names(plan):
    return {st.name.rstrip("_0123456789") for st in plan.steps}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("xs, group, out, k, s, p, d", CASES, ids=IDS)
def test_direct_conv_matches_reference(backend, xs, group, out, k, s, p, d):
    with sn.graph_scope():
        ins, outs = _build(xs, group, out, k, s, p, d)
        feeds = _feeds(ins)
        want = sn.function(ins, outs, backend="numpy")(*feeds)
        fn = sn.function(ins, outs, backend=backend)
        got = fn(*feeds)
        names = _names(fn.plan)
    # the direct kernels ran, not columns and GEMMs
    assert {"sn_conv_direct", "sn_conv_transpose_direct",
            "sn_conv_weight_grad_direct"} <= names, names
    assert not names & {"sn_im2col", "sn_im2col_cols", "sn_gemm_blas", "sgemm",
                        "sn_conv_images"}, names
    for what, a, b in zip(("y", "dx", "dw"), got, want):
        assert a.shape == b.shape
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale,
                                   err_msg=f"{what} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_direct_conv_transpose_with_output_padding(backend):
    """A grouped Deconvolution (the transposed kernel as a layer) whose output has rows
    and columns no input reaches."""
    x = R.standard_normal((2, 4, 3, 4)).astype(np.float32)
    w = R.standard_normal((4, 1, 3, 3)).astype(np.float32)
    with sn.graph_scope():
        a, b = sn.input("a", x.shape), sn.input("b", w.shape)
        y = sn.conv_transpose2d(a, b, stride=2, pad=1, group=4, output_padding=1)
        want = sn.function([a, b], y, backend="numpy")(x, w)
        fn = sn.function([a, b], y, backend=backend)
        got = fn(x, w)
        assert "sn_conv_transpose_direct" in _names(fn.plan)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_wide_groups_keep_gemm():
    """Groups of many channels stay on columns and GEMMs."""
    with sn.graph_scope():
        ins, outs = _build((1, 64, 6, 6), 2, 64, 3, 1, 1, 1)
        fn = sn.function(ins, outs, backend="cpu")
        fn(*_feeds(ins))
        assert not _names(fn.plan) & {"sn_conv_direct", "sn_conv_transpose_direct",
                                      "sn_conv_weight_grad_direct"}


MODELS = pathlib.Path(__file__).parent.parent / "data" / "models" / "mobilenet"


@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda-emu", marks=pytest.mark.slow)])
@pytest.mark.parametrize("proto", ["mobilenet_deploy.prototxt", "mobilenet_v2_deploy.prototxt"])
def test_mobilenet_matches_reference(backend, proto):
    """The MobileNet deploy nets (depthwise 3x3, stride 1 and 2) with seeded random
    weights: every output of the direct kernels' backend against the numpy backend."""
    path = str(MODELS / proto)
    sources = []
    lower.module_listeners.append(lambda be, src: sources.append(src))
    try:
        ref = sn.Net(path, sn.TEST, backend="numpy")
        net = sn.Net(path, sn.TEST, backend=backend)
        for name, blobs in ref.params.items():
            for a, b in zip(blobs, net.params[name]):
                if a.data.ndim == 1:    # biases, BatchNorm statistics, scales: positive
                    a.data[...] = R.uniform(0.5, 1.5, a.data.shape).astype(np.float32)
                else:                   # He-scaled filters
                    a.data[...] = R.standard_normal(a.data.shape).astype(np.float32) * \
                        np.float32(np.sqrt(2.0 / a.data[0].size))
                b.data[...] = a.data
        data = R.standard_normal(ref.blobs["data"].data.shape).astype(np.float32)
        ref.blobs["data"].data[...] = data
        net.blobs["data"].data[...] = data
        want, got = ref.forward(), net.forward()
    finally:
        lower.module_listeners.pop()
    assert any("sn_conv_direct(" in src for src in sources)
    assert set(want) == set(got)
    for k in want:
        assert np.isfinite(want[k]).all(), k
        scale = max(1.0, float(np.abs(want[k]).max()))
        np.testing.assert_allclose(got[k], want[k], rtol=1e-3, atol=1e-5 * scale, err_msg=k)


def test_very_wide_images_keep_gemm_on_cpu():
    """Rows wider than the CPU's direct kernels keep on a thread's stack go through
    columns and GEMMs, with the same results."""
    with sn.graph_scope():
        ins, outs = _build((1, 2, 3, 20000), 2, 2, 3, 1, 1, 1)
        feeds = _feeds(ins)
        want = sn.function(ins, outs, backend="numpy")(*feeds)
        fn = sn.function(ins, outs, backend="cpu")
        got = fn(*feeds)
        assert not _names(fn.plan) & {"sn_conv_direct", "sn_conv_transpose_direct",
                                      "sn_conv_weight_grad_direct"}
    for a, b in zip(got, want):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
