"""The cuBLAS call sequence of the CUDA backends, tested on the host.

- runtime/cublas_emu.py (cuBLAS's ``cublasSgemmStridedBatched`` argument list over
  OpenBLAS) against NumPy: every transpose pair, leading dimensions larger than the
  rows, batch strides (0 included), alpha and beta (beta = 0 ignores NaN in C), sizes
  1 and 0, and invalid arguments.
- The device lowering's GEMM steps for representative graphs (matmul with batch dims,
  broadcasting and transposed operands; convolutions with groups, stride, pad,
  dilation, 1x1; deconvolution; weight and input gradients): each step's attrs are a
  combination the shim test covers, run correctly through the shim, and write
  disjoint outputs per batch entry.
- ``replay``: a cuda-emu Plan run by the Executor on the emulated device (kernels through the
  emulator module, GEMM steps through the shim), compared with the NumPy reference.
"""
from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower
from symnet.runtime import cublas_emu
from symnet.runtime.executor import Executor
from symnet.runtime.cublas_emu import CublasArgumentError, sgemm_strided_batched

R = np.random.default_rng(12)


# ------------------------------------------------------------------ reference
def _stored(trans, rows, cols):
    """(rows, cols) of an operand as stored, for op(X) of shape rows x cols."""
    return (rows, cols) if trans == 0 else (cols, rows)


def _index(rows, cols, ld, offset):
    """Flat indices of a column-major rows x cols matrix with leading dimension ld."""
    return offset + np.arange(rows)[:, None] + ld * np.arange(cols)[None, :]


def reference(t, A, B, C):
    """What the call described by attrs t does to C (float64), from A, B, C."""
    out = C.astype(np.float64)
    ra, ca = _stored(t["transa"], t["m"], t["k"])
    rb, cb = _stored(t["transb"], t["k"], t["n"])
    for b in range(t["batch"]):
        a = A[_index(ra, ca, t["lda"], b * t["strideA"])].astype(np.float64)
        bb = B[_index(rb, cb, t["ldb"], b * t["strideB"])].astype(np.float64)
        ci = _index(t["m"], t["n"], t["ldc"], b * t["strideC"])
        prod = (a if t["transa"] == 0 else a.T) @ (bb if t["transb"] == 0 else bb.T)
        if t["alpha"] == 0.0 or t["k"] == 0:
            prod = np.zeros((t["m"], t["n"]))
        prev = t["beta"] * out[ci] if t["beta"] != 0.0 else 0.0
        out[ci] = t["alpha"] * prod + prev
    return out


def extent(t, which):
    """Elements a buffer needs for operand ``which`` of the call t."""
    if which == "C":
        rows, cols, ld, stride = t["m"], t["n"], t["ldc"], t["strideC"]
    elif which == "A":
        (rows, cols), ld, stride = _stored(t["transa"], t["m"], t["k"]), t["lda"], t["strideA"]
    else:
        (rows, cols), ld, stride = _stored(t["transb"], t["k"], t["n"]), t["ldb"], t["strideB"]
    if rows == 0 or cols == 0 or t["batch"] == 0:
        return 1
    return (t["batch"] - 1) * stride + (cols - 1) * ld + rows


def call(t, A, B, C):
    sgemm_strided_batched(t["transa"], t["transb"], t["m"], t["n"], t["k"], t["alpha"],
                          A.ctypes.data, t["lda"], t["strideA"], B.ctypes.data, t["ldb"],
                          t["strideB"], t["beta"], C.ctypes.data, t["ldc"], t["strideC"],
                          t["batch"])


def run_and_compare(t, c_fill=None, a_fill=None):
    A = R.standard_normal(extent(t, "A")).astype(np.float32)
    B = R.standard_normal(extent(t, "B")).astype(np.float32)
    C = R.standard_normal(extent(t, "C")).astype(np.float32)
    if a_fill is not None:
        A[:] = a_fill
    if c_fill is not None:
        C[:] = c_fill
    want = reference(t, A, B, C)
    call(t, A, B, C)
    scale = max(1.0, float(np.nanmax(np.abs(want))) if want.size else 1.0)
    np.testing.assert_allclose(C, want, rtol=1e-5, atol=1e-5 * scale)
    return C


def attrs(transa, transb, m, n, k, pad=(0, 0, 0), batch=1, zero=(), alpha=1.0, beta=0.0):
    """A call with leading dimensions the stored rows plus pad, and batch strides of
    whole matrices (0 for the operands named in zero)."""
    ra, ca = _stored(transa, m, k)
    rb, cb = _stored(transb, k, n)
    t = {"transa": transa, "transb": transb, "m": m, "n": n, "k": k, "alpha": alpha,
         "beta": beta, "lda": max(1, ra) + pad[0], "ldb": max(1, rb) + pad[1],
         "ldc": max(1, m) + pad[2], "batch": batch}
    t["strideA"] = 0 if "A" in zero else t["lda"] * ca + 2
    t["strideB"] = 0 if "B" in zero else t["ldb"] * cb + 1
    t["strideC"] = t["ldc"] * n + 3
    return t


def signature(t):
    """The features of a call the shim test enumerates."""
    ra = _stored(t["transa"], t["m"], t["k"])[0]
    rb = _stored(t["transb"], t["k"], t["n"])[0]
    many = t["batch"] > 1
    return (t["transa"], t["transb"], t["lda"] > max(1, ra), t["ldb"] > max(1, rb),
            t["ldc"] > max(1, t["m"]), many, many and t["strideA"] == 0,
            many and t["strideB"] == 0, t["alpha"] == 1.0, t["beta"] == 0.0)


# every transpose pair x leading dimensions tight or padded x batch (1; >1 with whole
# strides; >1 with A or B shared through stride 0)
BATCHES = [(1, ()), (3, ()), (3, ("A",)), (2, ("B",))]
COMBOS = [(ta, tb, pad, nb, zero) for ta, tb in itertools.product((0, 1), repeat=2)
          for pad in itertools.product((0, 3), repeat=3) for nb, zero in BATCHES]
COVERED = {signature(attrs(ta, tb, 5, 4, 3, pad, nb, zero))
           for ta, tb, pad, nb, zero in COMBOS}


@pytest.mark.parametrize("ta, tb, pad, nb, zero", COMBOS)
def test_shim_matches_numpy(ta, tb, pad, nb, zero):
    run_and_compare(attrs(ta, tb, 5, 4, 3, pad, nb, zero))
    run_and_compare(attrs(ta, tb, 7, 9, 13, pad, nb, zero))


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 6, 4), (6, 1, 4), (4, 5, 1), (1, 1, 9),
                                     (9, 8, 1)])
@pytest.mark.parametrize("ta, tb", list(itertools.product((0, 1), repeat=2)))
def test_shim_sizes_one(m, n, k, ta, tb):
    run_and_compare(attrs(ta, tb, m, n, k))
    run_and_compare(attrs(ta, tb, m, n, k, pad=(2, 1, 3), batch=3))


@pytest.mark.parametrize("alpha, beta", [(0.5, 2.0), (2.0, 1.0), (-1.0, -0.5), (1.0, 1.0)])
@pytest.mark.parametrize("ta, tb", list(itertools.product((0, 1), repeat=2)))
def test_shim_alpha_beta(alpha, beta, ta, tb):
    run_and_compare(attrs(ta, tb, 6, 5, 4, (1, 0, 2), 2, alpha=alpha, beta=beta))


@pytest.mark.parametrize("ta, tb", list(itertools.product((0, 1), repeat=2)))
def test_shim_beta_zero_ignores_nan_in_c(ta, tb):
    t = attrs(ta, tb, 6, 5, 4, (0, 2, 1), 2)
    C = run_and_compare(t, c_fill=np.nan)
    assert np.all(np.isfinite(C[_index(6, 5, t["ldc"], 0)]))
    assert np.all(np.isfinite(C[_index(6, 5, t["ldc"], t["strideC"])]))
    assert np.isnan(C[6])            # padding rows between columns are not written


def test_shim_k_zero_and_alpha_zero_scale_c():
    t = attrs(0, 0, 4, 3, 0, (0, 0, 2), batch=2, beta=0.5)
    run_and_compare(t)
    C = run_and_compare(dict(t, beta=0.0), c_fill=np.nan)     # C = 0, NaN not read
    assert np.all(C[_index(4, 3, t["ldc"], 0)] == 0.0)
    # alpha = 0: A is not read (a NaN there does not propagate), C = beta C
    run_and_compare(attrs(1, 0, 4, 3, 5, beta=2.0, alpha=0.0), a_fill=np.nan)


@pytest.mark.parametrize("zero", ["m", "n", "batch"])
def test_shim_empty_calls_touch_nothing(zero):
    t = attrs(0, 1, 4, 3, 2, batch=2)
    t[zero] = 0
    A, B = np.ones(64, np.float32), np.ones(64, np.float32)
    C = np.full(64, np.nan, np.float32)
    call(t, A, B, C)
    assert np.all(np.isnan(C))


BAD = [("transa", 3, "transa=3"), ("transb", -1, "transb=-1"), ("m", -1, "m=-1"),
       ("n", -2, "n=-2"), ("k", -1, "k=-1"), ("lda", 4, "lda=4"), ("ldb", 2, "ldb=2"),
       ("ldc", 4, "ldc=4"), ("batch", -1, "batch=-1"), ("m", 2 ** 31, "m=2147483648"),
       ("lda", 1.5, "lda=1.5"), ("A", "x", "A='x'"), ("alpha", None, "alpha=None")]


@pytest.mark.parametrize("name, value, text", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_shim_rejects_invalid_arguments(name, value, text):
    t = attrs(0, 0, 5, 4, 3)          # lda >= 5 (m), ldb >= 3 (k), ldc >= 5 (m)
    buf = np.zeros(256, np.float32)
    args = dict(t, A=buf.ctypes.data, B=buf.ctypes.data, C=buf.ctypes.data)
    args[name] = value
    with pytest.raises(CublasArgumentError, match=r"\b" + re.escape(text)):
        sgemm_strided_batched(*(args[a] for a in cublas_emu.ARGS))


def test_shim_leading_dimension_rule_follows_transpose():
    """lda is checked against k when A is transposed (stored k x m), as cuBLAS does."""
    buf = np.zeros(256, np.float32)
    p = buf.ctypes.data
    sgemm_strided_batched(1, 0, 5, 4, 3, 1.0, p, 3, 0, p, 3, 0, 0.0, p, 5, 0, 1)
    with pytest.raises(CublasArgumentError, match="lda=2: must be >= max\\(1, k=3\\)"):
        sgemm_strided_batched(1, 0, 5, 4, 3, 1.0, p, 2, 0, p, 3, 0, 0.0, p, 5, 0, 1)
    with pytest.raises(CublasArgumentError, match="ldb=3: must be >= max\\(1, n=4\\)"):
        sgemm_strided_batched(0, 1, 5, 4, 3, 1.0, p, 5, 0, p, 3, 0, 0.0, p, 5, 0, 1)


# ------------------------------------------------------------------ the lowering's calls
def graphs():
    """(name, builder) pairs: builder() returns (inputs, outputs) in the current graph."""
    def matmul_batched():
        a, b = sn.input("a", (2, 3, 5, 4)), sn.input("b", (3, 4, 6))
        c, d = sn.input("c", (3, 6, 4)), sn.input("d", (2, 1, 5, 4))
        e, v, u = sn.input("e", (4, 7)), sn.input("v", (1, 4)), sn.input("u", (4, 1))
        y1 = sn.matmul(a, b)                                   # broadcast batch dims
        y2 = sn.matmul(a, sn.transpose(c, (0, 2, 1)))          # transposed B
        y3 = sn.matmul(sn.transpose(d, (0, 1, 3, 2)), a)       # transposed A
        y4 = sn.matmul(v, e)                                   # M = 1
        y5 = sn.matmul(e.T, u)                                 # N = 1
        loss = (y1 * y1).sum() + (y2 * y2).sum() + (y3 * y3).sum() + (y4 * y4).sum() + \
            (y5 * y5).sum()
        ins = [a, b, c, d, e, v, u]
        return ins, [y1, y2, y3, y4, y5] + sn.grad(loss, ins)

    def conv(xs, ws, s, p, d, g):
        def build():
            x, w = sn.input("x", xs), sn.input("w", ws)
            y = sn.conv2d(x, w, stride=s, pad=p, dilation=d, group=g)
            return [x, w], [y] + sn.grad((y * y).sum(), [x, w])
        return build

    def deconv(xs, ws, s, p, d, g, op):
        def build():
            x, w = sn.input("x", xs), sn.input("w", ws)
            y = sn.conv_transpose2d(x, w, s, p, d, g, output_padding=op)
            return [x, w], [y] + sn.grad((y * y).sum(), [x, w])
        return build

    return [
        ("matmul", matmul_batched),
        ("conv", conv((2, 3, 6, 5), (4, 3, 3, 2), 1, 1, 1, 1)),
        # groups of more than lower.DIRECT_GROUP_CHANNELS channels: cuBLAS per group
        ("conv_group_stride", conv((3, 18, 7, 7), (20, 9, 3, 3), 2, 1, 1, 2)),
        ("conv_dilation", conv((2, 2, 7, 8), (2, 2, 3, 2), 1, (2, 1), (2, 3), 1)),
        ("conv_depthwise", conv((1, 6, 6, 6), (6, 1, 3, 3), 2, 1, 1, 6)),
        ("conv_1x1", conv((3, 4, 4, 5), (5, 4, 1, 1), 1, 0, 1, 1)),
        ("conv_1x1_group", conv((2, 18, 3, 3), (20, 9, 1, 1), 1, 0, 1, 2)),
        ("conv_1x1_single", conv((1, 3, 4, 4), (2, 3, 1, 1), 1, 0, 1, 1)),
        ("conv_1x1_stride", conv((2, 3, 5, 5), (2, 3, 1, 1), 2, 0, 1, 1)),
        ("deconv", deconv((2, 2, 3, 4), (2, 3, 3, 3), 2, 0, 1, 1, 0)),
        ("deconv_group", deconv((2, 18, 2, 3), (18, 10, 2, 3), (1, 2), (0, 1), (2, 2), 2,
                                (0, 1))),
        ("deconv_1x1", deconv((2, 18, 3, 3), (18, 5, 1, 1), 1, 0, 1, 2, 0)),
    ]


def lowered(build, backend="cuda-emu"):
    with sn.graph_scope() as g:
        ins, outs = build()
        plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
    return plan


def nvcc_graphs():
    """The representative graphs tests/test_zz_nvcc.py lowers for cuda."""
    path = Path(__file__).resolve().parents[1] / "test_zz_nvcc.py"
    spec = importlib.util.spec_from_file_location("_sn_nvcc_graphs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return [(f"nvcc_{name}", build) for name, build in module.representative_graphs()]


GRAPHS = graphs() + nvcc_graphs()


@pytest.mark.parametrize("name, build", GRAPHS, ids=[n for n, _ in GRAPHS])
def test_lowered_gemm_steps_are_covered_by_the_shim_test(name, build):
    plan = lowered(build)
    gemms = [s for s in plan.steps if s.kind == "gemm"]
    if name == "conv_depthwise":            # a direct kernel, no GEMM at all
        assert not gemms and "sn_conv_direct" in [s.name for s in plan.steps]
        return
    assert gemms or name in ("nvcc_layout", "nvcc_elementwise"), \
        "the device lowering emits GEMMs as library steps"
    assert not any(s.kind == "kernel" and "gemm" in s.name for s in plan.steps)
    for s in gemms:
        t = s.attrs
        assert s.name == "sgemm" and len(s.args) == 3
        assert all(a[0] == "buf" for a in s.args)
        assert t["flops"] == 2 * t["m"] * t["n"] * t["k"] * t["batch"]
        assert signature(t) in COVERED, (name, t)
        run_and_compare(t)                     # the shim computes exactly this call
        if t["batch"] > 1:                     # batch entries write disjoint C
            written = [set(_index(t["m"], t["n"], t["ldc"], b * t["strideC"]).ravel())
                       for b in range(t["batch"])]
            assert sum(map(len, written)) == len(set().union(*written)), (name, t)
        for a, which in zip(s.args, "ABC"):    # inside its buffer
            assert a[2] + extent(t, which) <= plan.buffers[a[1]].size, (name, which, t)


def test_convolution_gemms_are_batched_not_per_image():
    """A grouped convolution with more images than groups: one call per group, each
    batched over the images; the weight gradient is one call (batch = groups, K
    folding the images)."""
    xs, ws = (8, 18, 6, 6), (20, 9, 3, 3)
    with sn.graph_scope() as g:
        x, w = sn.input("x", xs), sn.input("w", ws)
        y = sn.conv2d(x, w, pad=1, group=2)
        gw = sn.grad((y * y).sum(), [w])[0]
        fwd = lower.lower(g, [x.id, w.id], [y.id], "cuda-emu")
        both = lower.lower(g, [x.id, w.id], [y.id, gw.id], "cuda-emu")
    calls = [s.attrs for s in fwd.steps if s.kind == "gemm"]
    assert [(c["batch"], c["m"], c["n"], c["k"]) for c in calls] == [(8, 36, 10, 81)] * 2
    wgrad = [s.attrs for s in both.steps if s.kind == "gemm"][-1]
    assert (wgrad["batch"], wgrad["k"]) == (2, 8 * 36)
    names = [s.name for s in both.steps if s.kind == "kernel"]
    assert names.count("sn_im2col_cols") == 1          # the columns are shared
    assert "sn_batch_to_cols" in names


# ------------------------------------------------------------------ replay
def replay(plan, inputs):
    """Run a cuda-emu Plan on the emulated device (kernels through the emulator module,
    GEMM steps through the cuBLAS shim). Returns the outputs."""
    assert not plan.params
    return Executor(plan).run(inputs, [])


# nvcc's cnn graph reads an input ('wt') that its builder does not list, which
# sn.function refuses; its convolutions are among the graphs above
REPLAYED = [(n, b) for n, b in GRAPHS if n != "nvcc_cnn"]


@pytest.mark.parametrize("name, build", REPLAYED, ids=[n for n, _ in REPLAYED])
def test_replayed_device_plan_matches_numpy(name, build):
    with sn.graph_scope() as g:
        ins, outs = build()
        plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], "cuda-emu")
        feeds = [R.standard_normal(t.shape).astype(np.float32) for t in ins]
        want = sn.function(ins, outs, backend="numpy")(*feeds)
    got = replay(plan, feeds)
    for k, (a, b) in enumerate(zip(got, want)):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale,
                                   err_msg=f"{name}: output {k}")
