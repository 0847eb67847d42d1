"""Caffe's core layers: Convolution, Deconvolution, InnerProduct, Pooling (vision.py),
ReLU, Dropout (activation.py), Softmax, SoftmaxWithLoss and Accuracy (loss.py); and
whole nets: LeNet, a net with BatchNorm, Scale, Eltwise, Concat and Slice, and a
pycaffe-style script using ``import symnet.caffe as caffe``.

Layers: forward against direct loops (tests/symnet/loops.py, and the loops below for
the backward and FLOOR pooling) or NumPy closed forms, bottom and param diffs
against Caffe's backward restated as loops, on every backend with all cases in one
compiled function; gradients also by finite differences (sn.gradcheck). Nets: every
backend agrees with the numpy reference, blob by blob, data and diff."""
import math
from pathlib import Path

import numpy as np
import pytest

import loops
import symnet as sn
from snhelp import check_cases
from symnet.layers import LayerError, apply

R = np.random.default_rng(51)
FLT_MIN = np.finfo(np.float32).tiny
MNIST = Path(__file__).resolve().parents[1] / "data" / "models" / "bvlc_mnist"
LENET = str(MNIST / "lenet_train_test.prototxt")


def f32(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


# ------------------------------------------------------------- loop references

def conv_backward(x, w, g, stride=1, pad=0, dilation=1, group=1):
    """Caffe's convolution backward (col2im scatter and the weight GEMM), as loops:
    dx[n, c, iy, ix] += w[o, ci, i, j] g[n, o, oy, ox]; dw[o, ci, i, j] += x g."""
    (sh, sw), (ph, pw), (dh, dw_) = _pair(stride), _pair(pad), _pair(dilation)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // group
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for b in range(n):
        for oc in range(o):
            gi = oc // og
            for oy in range(g.shape[2]):
                for ox in range(g.shape[3]):
                    gv = g[b, oc, oy, ox]
                    for ci in range(cg):
                        for i in range(kh):
                            iy = oy * sh - ph + i * dh
                            if not 0 <= iy < h:
                                continue
                            for j in range(kw):
                                ix = ox * sw - pw + j * dw_
                                if 0 <= ix < wd:
                                    dx[b, gi * cg + ci, iy, ix] += w[oc, ci, i, j] * gv
                                    dw[oc, ci, i, j] += x[b, gi * cg + ci, iy, ix] * gv
    return dx, dw


def deconv_backward(x, w, g, stride=1, pad=0, dilation=1, group=1):
    """Deconvolution's backward: the adjoint of the scatter in loops.conv_transpose2d."""
    (sh, sw), (ph, pw), (dh, dw_) = _pair(stride), _pair(pad), _pair(dilation)
    n, c, h, wd = x.shape
    _, og, kh, kw = w.shape
    cg = c // group
    oh, ow = g.shape[2:]
    dx, dw = np.zeros_like(x), np.zeros_like(w)
    for b in range(n):
        for ci in range(c):
            gi = ci // cg
            for iy in range(h):
                for ix in range(wd):
                    for oc in range(og):
                        for i in range(kh):
                            oy = iy * sh - ph + i * dh
                            if not 0 <= oy < oh:
                                continue
                            for j in range(kw):
                                ox = ix * sw - pw + j * dw_
                                if 0 <= ox < ow:
                                    gv = g[b, gi * og + oc, oy, ox]
                                    dx[b, ci, iy, ix] += w[ci, oc, i, j] * gv
                                    dw[ci, oc, i, j] += x[b, ci, iy, ix] * gv
    return dx, dw


def pool_len(n, k, s, p, ceil):
    """Caffe's PoolingLayer::Reshape for one axis."""
    out = (math.ceil((n + 2 * p - k) / s) if ceil else (n + 2 * p - k) // s) + 1
    if p > 0 and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_caffe(x, kernel, stride, pad, method, ceil=True, g=None):
    """Caffe's Forward_cpu / Backward_cpu loops: MAX keeps the first maximum (strict
    >), AVE divides by the window clipped to the padded image."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(pad)
    n, c, h, wd = x.shape
    oh, ow = pool_len(h, kh, sh, ph, ceil), pool_len(wd, kw, sw, pw, ceil)
    y = np.zeros((n, c, oh, ow))
    dx = np.zeros_like(x)
    for b in range(n):
        for ch in range(c):
            for py in range(oh):
                for px in range(ow):
                    hs, ws = py * sh - ph, px * sw - pw
                    if method == "max":
                        he, we = min(hs + kh, h), min(ws + kw, wd)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -np.inf, None
                        for i in range(hs, he):
                            for j in range(ws, we):
                                if x[b, ch, i, j] > best:
                                    best, arg = x[b, ch, i, j], (i, j)
                        y[b, ch, py, px] = best
                        if g is not None:
                            dx[b, ch][arg] += g[b, ch, py, px]
                    else:
                        he, we = min(hs + kh, h + ph), min(ws + kw, wd + pw)
                        size = (he - hs) * (we - ws)
                        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, wd)
                        y[b, ch, py, px] = x[b, ch, hs:he, ws:we].sum() / size
                        if g is not None:
                            dx[b, ch, hs:he, ws:we] += g[b, ch, py, px] / size
    return y, dx


def bview(v, ndim):
    return np.reshape(v, (1, -1) + (1,) * (ndim - 2))


# ref(bottoms, params, g) -> (tops, bottom diffs, param diffs); g: list of cotangents

def conv_ref(stride=1, pad=0, dilation=1, group=1):
    def ref(b, p, g):
        (x,) = b
        w = p[0]
        y = loops.conv2d(x, w, stride, pad, dilation, group)
        if len(p) > 1:
            y = y + bview(p[1], 4)
        dx, dw = conv_backward(x, w, g[0], stride, pad, dilation, group)
        dp = [dw] + ([g[0].sum((0, 2, 3))] if len(p) > 1 else [])
        return [y], [dx], dp
    return ref


def deconv_ref(stride=1, pad=0, dilation=1, group=1):
    def ref(b, p, g):
        (x,) = b
        w = p[0]
        y = loops.conv_transpose2d(x, w, stride, pad, dilation, group)
        if len(p) > 1:
            y = y + bview(p[1], 4)
        dx, dw = deconv_backward(x, w, g[0], stride, pad, dilation, group)
        dp = [dw] + ([g[0].sum((0, 2, 3))] if len(p) > 1 else [])
        return [y], [dx], dp
    return ref


def ip_ref(axis, transpose=False):
    def ref(b, p, g):
        (x,) = b
        ax = axis % x.ndim
        m = int(np.prod(x.shape[:ax]))
        flat = x.reshape(m, -1)
        w = p[0] if transpose else p[0].T            # (K, N)
        y = flat @ w
        if len(p) > 1:
            y = y + p[1]
        gf = g[0].reshape(m, -1)
        dx = (gf @ w.T).reshape(x.shape)
        dwk = flat.T @ gf                              # (K, N)
        dp = [dwk if transpose else dwk.T] + ([gf.sum(0)] if len(p) > 1 else [])
        return [y.reshape(x.shape[:ax] + (-1,))], [dx], dp
    return ref


def pool_ref(kernel, stride, pad, method, ceil=True):
    def ref(b, p, g):
        y, dx = pool_caffe(b[0], kernel, stride, pad, method, ceil, g[0])
        return [y], [dx], []
    return ref


def global_pool_ref(method):
    def ref(b, p, g):
        x = b[0]
        return pool_ref(x.shape[2:], 1, 0, method)(b, p, g)
    return ref


def relu_ref(slope=0.0):
    def ref(b, p, g):
        (x,) = b
        # Caffe: top = max(x, 0) + slope * min(x, 0); diff (x > 0) + slope * (x <= 0)
        y = np.maximum(x, 0) + slope * np.minimum(x, 0)
        return [y], [g[0] * ((x > 0) + slope * (x <= 0))], []
    return ref


def softmax_ref(axis):
    def ref(b, p, g):
        (x,) = b
        e = np.exp(x - x.max(axis, keepdims=True))
        y = e / e.sum(axis, keepdims=True)
        return [y], [y * (g[0] - (g[0] * y).sum(axis, keepdims=True))], []
    return ref


def swl_ref(axis=1, mode="VALID", ignore=None):
    """Caffe's SoftmaxWithLoss: loss and (prob - onehot) / normalizer; top 1 = prob."""
    def ref(b, p, g):
        x, lab = b
        ax = axis % x.ndim
        outer, c = int(np.prod(x.shape[:ax])), x.shape[ax]
        inner = x.size // (outer * c)
        x3 = x.reshape(outer, c, inner)
        e = np.exp(x3 - x3.max(1, keepdims=True))
        prob = e / e.sum(1, keepdims=True)
        labs = np.trunc(lab.reshape(outer, inner)).astype(int)
        loss, count = 0.0, 0
        dx = prob.copy()
        for o in range(outer):
            for i in range(inner):
                lv = labs[o, i]
                if ignore is not None and lv == ignore:
                    dx[o, :, i] = 0
                    continue
                loss -= np.log(max(prob[o, lv, i], FLT_MIN))
                dx[o, lv, i] -= 1
                count += 1
        n = {"FULL": outer * inner, "VALID": count, "BATCH_SIZE": outer, "NONE": 1}[mode]
        norm = max(1.0, n)
        return [loss / norm, prob.reshape(x.shape)], [(dx * g[0] / norm).reshape(x.shape)], []
    return ref


def accuracy_ref(top_k=1, axis=1, ignore=None):
    """Caffe's AccuracyLayer loop: scores >= the true class's count as better."""
    def ref(b, p, g):
        x, lab = b
        ax = axis % x.ndim
        outer, c = int(np.prod(x.shape[:ax])), x.shape[ax]
        inner = x.size // (outer * c)
        x3 = x.reshape(outer, c, inner)
        labs = lab.reshape(outer, inner)
        acc, count = 0, 0
        per, nums = np.zeros(c), np.zeros(c)
        for o in range(outer):
            for i in range(inner):
                lv = int(labs[o, i])
                if ignore is not None and lv == ignore:
                    continue
                nums[lv] += 1
                better = -1
                for k in range(c):
                    better += x3[o, k, i] >= x3[o, lv, i]
                if better < top_k:
                    acc += 1
                    per[lv] += 1
                count += 1
        per = np.where(nums == 0, 0, per / np.maximum(nums, 1))
        return [acc / count if count else 0.0, per], [np.zeros_like(x)], []
    return ref


# ------------------------------------------------------------- cases

def gauss(std=1.0):
    return {"type": "gaussian", "std": std}


XC = f32(2, 3, 6, 5)
XG = f32(2, 4, 7, 7)
XD = f32(2, 4, 3, 3)
XP = f32(2, 2, 7, 6)
XP5 = f32(2, 2, 5, 5)
XTIE = R.integers(0, 3, size=(2, 2, 6, 6)).astype(np.float32)   # MAX ties: first wins
XR = f32(2, 3, 4, 5)
XR.flat[:4] = 0.0                                   # ReLU at exactly 0: slope side
XS = f32(2, 4, 3, 2, scale=2.0)
LS = R.integers(0, 4, size=(2, 3, 2)).astype(np.float32)
LSI = LS.copy()
LSI.flat[:3] = -1                                   # ignored
XBIG = f32(3, 4)
XBIG[1] = [0.0, 100.0, 0.0, 0.0]                    # prob of class 0 < FLT_MIN: clamped
LBIG = np.array([1, 0, 3], np.float32)
XA = R.integers(0, 3, size=(6, 4)).astype(np.float32)   # many ties
LA = np.array([0, 1, 2, 3, 0, 1], np.float32)
LAI = np.array([0, 1, 2, 3, 1, 1], np.float32)
XA4 = f32(2, 5, 2, 2)
LA4 = R.integers(0, 5, size=(2, 1, 2, 2)).astype(np.float32)

# (id, type, params, bottoms, param values, number of tops, ref)
CASES = [
    ("conv", "Convolution", {"num_output": 4, "kernel_size": [3], "pad": [1]}, [XC],
     [f32(4, 3, 3, 3), f32(4)], 1, conv_ref(1, 1)),
    ("conv_group_dil", "Convolution", {"num_output": 6, "kernel_size": [3], "stride": [2],
                                       "pad": [2, 1], "dilation": [2], "group": 2},
     [XG], [f32(6, 2, 3, 3), f32(6)], 1, conv_ref(2, (2, 1), 2, 2)),
    ("conv_hw", "Convolution", {"num_output": 2, "kernel_h": 3, "kernel_w": 2,
                                "stride_h": 2, "stride_w": 1, "pad_h": 1,
                                "bias_term": False},
     [XC], [f32(2, 3, 3, 2)], 1, conv_ref((2, 1), (1, 0))),
    ("conv_pairs", "Convolution", {"num_output": 3, "kernel_size": [2, 3], "stride": [1, 2],
                                   "pad": [0, 1], "dilation": [1, 2]},
     [XC], [f32(3, 3, 2, 3), f32(3)], 1, conv_ref((1, 2), (0, 1), (1, 2))),
    ("conv_depthwise", "Convolution", {"num_output": 3, "kernel_size": [1], "group": 3},
     [XC], [f32(3, 1, 1, 1), f32(3)], 1, conv_ref(1, 0, 1, 3)),
    ("deconv", "Deconvolution", {"num_output": 3, "kernel_size": [3], "stride": [2],
                                 "pad": [1]},
     [XD], [f32(4, 3, 3, 3), f32(3)], 1, deconv_ref(2, 1)),
    ("deconv_group", "Deconvolution", {"num_output": 4, "kernel_h": 2, "kernel_w": 3,
                                       "stride": [2, 1], "dilation": [2], "group": 2,
                                       "bias_term": False},
     [XD], [f32(4, 2, 2, 3)], 1, deconv_ref((2, 1), 0, 2, 2)),
    ("ip", "InnerProduct", {"num_output": 4}, [f32(3, 2, 2, 2)], [f32(4, 8), f32(4)], 1,
     ip_ref(1)),
    ("ip_axis_transpose", "InnerProduct", {"num_output": 5, "axis": 2, "transpose": True},
     [f32(2, 3, 4)], [f32(4, 5), f32(5)], 1, ip_ref(2, True)),
    ("ip_neg_nobias", "InnerProduct", {"num_output": 2, "axis": -1, "bias_term": False},
     [f32(2, 3, 4)], [f32(2, 4)], 1, ip_ref(-1)),
    ("pool_max", "Pooling", {"kernel_size": 3, "stride": 2}, [XP], [], 1,
     pool_ref(3, 2, 0, "max")),
    ("pool_max_clip", "Pooling", {"kernel_size": 2, "stride": 2, "pad": 1}, [XP5], [], 1,
     pool_ref(2, 2, 1, "max")),
    ("pool_max_ties", "Pooling", {"kernel_size": 3, "stride": 1, "pad": 1}, [XTIE], [], 1,
     pool_ref(3, 1, 1, "max")),
    ("pool_ave", "Pooling", {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}, [XP],
     [], 1, pool_ref(3, 2, 1, "ave")),
    ("pool_ave_clip", "Pooling", {"pool": "AVE", "kernel_size": 2, "stride": 2, "pad": 1},
     [XP5], [], 1, pool_ref(2, 2, 1, "ave")),
    ("pool_floor", "Pooling", {"kernel_size": 3, "stride": 2, "round_mode": "FLOOR"}, [XP],
     [], 1, pool_ref(3, 2, 0, "max", ceil=False)),
    ("pool_floor_ave", "Pooling", {"pool": "AVE", "kernel_size": 2, "stride": 2, "pad": 1,
                                   "round_mode": "FLOOR"}, [XP], [], 1,
     pool_ref(2, 2, 1, "ave", ceil=False)),
    ("pool_hw", "Pooling", {"kernel_h": 2, "kernel_w": 3, "stride_h": 1, "stride_w": 2,
                            "pad_h": 1, "pad_w": 1}, [XP], [], 1,
     pool_ref((2, 3), (1, 2), (1, 1), "max")),
    ("pool_global_max", "Pooling", {"global_pooling": True}, [XP], [], 1,
     global_pool_ref("max")),
    ("pool_global_ave", "Pooling", {"pool": "AVE", "global_pooling": True}, [XP], [], 1,
     global_pool_ref("ave")),
    ("relu", "ReLU", {}, [XR], [], 1, relu_ref()),
    ("relu_leaky", "ReLU", {"negative_slope": 0.1}, [XR], [], 1, relu_ref(0.1)),
    ("softmax", "Softmax", {}, [XR], [], 1, softmax_ref(1)),
    ("softmax_last", "Softmax", {"axis": -1}, [f32(2, 3, 4)], [], 1, softmax_ref(2)),
    ("softmax_first", "Softmax", {"axis": 0}, [f32(3, 4)], [], 1, softmax_ref(0)),
    ("swl", "SoftmaxWithLoss", {}, [XS, LS], [], 2, swl_ref()),
    ("swl_ignore", "SoftmaxWithLoss", {"ignore_label": -1}, [XS, LSI], [], 2,
     swl_ref(1, "VALID", -1)),
    ("swl_full", "SoftmaxWithLoss", {"ignore_label": -1, "normalization": "FULL"},
     [XS, LSI], [], 2, swl_ref(1, "FULL", -1)),
    ("swl_batch", "SoftmaxWithLoss", {"ignore_label": -1, "normalization": "BATCH_SIZE"},
     [XS, LSI.reshape(2, 1, 3, 2)], [], 2, swl_ref(1, "BATCH_SIZE", -1)),
    ("swl_none", "SoftmaxWithLoss", {"normalization": "NONE"}, [XS, LS], [], 2,
     swl_ref(1, "NONE")),
    ("swl_normalize_false", "SoftmaxWithLoss", {"normalize": False, "ignore_label": -1},
     [XS, LSI], [], 2, swl_ref(1, "BATCH_SIZE", -1)),
    ("swl_normalize_true", "SoftmaxWithLoss", {"normalize": True, "ignore_label": -1},
     [XS, LSI], [], 2, swl_ref(1, "VALID", -1)),
    # normalization wins over the deprecated normalize when both are set
    ("swl_both", "SoftmaxWithLoss", {"normalize": False, "normalization": "FULL"},
     [XS, LS], [], 2, swl_ref(1, "FULL")),
    ("swl_axis", "SoftmaxWithLoss", {"axis": -1}, [f32(2, 3, 4), LS[:, :, 0].copy()], [],
     2, swl_ref(-1)),
    ("swl_clamp", "SoftmaxWithLoss", {}, [XBIG, LBIG], [], 2, swl_ref()),
    ("accuracy", "Accuracy", {}, [XA, LA], [], 2, accuracy_ref()),
    ("accuracy_top2", "Accuracy", {"top_k": 2}, [XA, LA], [], 2, accuracy_ref(2)),
    ("accuracy_ignore", "Accuracy", {"ignore_label": 1}, [XA, LAI], [], 2,
     accuracy_ref(1, 1, 1)),
    ("accuracy_all_ignored", "Accuracy", {"ignore_label": 1}, [XA, np.ones(6, np.float32)],
     [], 2, accuracy_ref(1, 1, 1)),
    ("accuracy_4d", "Accuracy", {"top_k": 3}, [XA4, LA4], [], 2, accuracy_ref(3)),
    ("accuracy_axis", "Accuracy", {"axis": -1}, [f32(2, 3, 4), R.integers(
        0, 4, size=(2, 3)).astype(np.float32)], [], 2, accuracy_ref(1, -1)),
]
IDS = [c[0] for c in CASES]


def set_params(ctx, values):
    assert [d.tensor.shape for d in ctx.params] == [np.shape(v) for v in values]
    for d, v in zip(ctx.params, values):
        d.tensor.op.set_value(np.asarray(v, np.float32), d.tensor.shape)


def _build_all():
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(9)
    for cid, typ, params, bottoms, pvals, ntop, ref in CASES:
        xs = [sn.input(f"{cid}_b{k}", b.shape) for k, b in enumerate(bottoms)]
        tops, ctx = apply(typ, *xs, name=cid, ntop=ntop, **params)
        tops = tops[:ntop]
        set_params(ctx, pvals)
        g = g_rng.standard_normal(tops[0].shape).astype(np.float32)
        gi = sn.input(f"{cid}_g", tops[0].shape)
        grads = sn.vjp(tops[:1], [gi], xs[:1] + [d.tensor for d in ctx.params])
        exp_tops, exp_db, exp_dp = ref([b.astype(np.float64) for b in bottoms],
                                       [np.asarray(v, np.float64) for v in pvals],
                                       [g.astype(np.float64)])
        ins += xs + [gi]
        feeds += list(bottoms) + [g]
        outs += list(tops) + list(grads)
        want += [(cid, f"top{k}", t) for k, t in enumerate(exp_tops)]
        want += [(cid, "d_bottom0", exp_db[0])]
        want += [(cid, f"d_param{k}", d) for k, d in enumerate(exp_dp)]
    return ins, feeds, outs, want


def test_core_layers_forward_backward(backend):
    """Every case's tops, bottom diff and param diffs on this backend equal Caffe's
    loops (one compiled function for all cases)."""
    check_cases(_build_all, backend, rtol=1e-4, atol=1e-4)


def test_caffe_facts():
    """The surprises, spelled out on the references above."""
    # SoftmaxWithLoss: a probability below FLT_MIN is clamped in the loss
    # (-log FLT_MIN = 87.34), but the diff stays prob - 1
    (loss, _), (dx,), _ = swl_ref(1, "BATCH_SIZE")(
        [XBIG[1:2].astype(np.float64), np.zeros(1)], [], [1.0])
    assert loss == pytest.approx(-np.log(FLT_MIN), rel=1e-6)
    assert dx[0, 0] == pytest.approx(-1.0, abs=1e-12)
    # Accuracy: a tie with the true class counts against it at top_k 1
    (acc, _), _, _ = accuracy_ref()([np.array([[1.0, 1.0]]), np.array([0.0])], [], [])
    assert acc == 0.0
    # Pooling: Caffe's ceil rounding and the clip of a window starting in the padding
    assert pool_len(7, 3, 2, 0, True) == 3 and pool_len(7, 3, 2, 0, False) == 3
    assert pool_len(6, 3, 2, 0, True) == 3 and pool_len(6, 3, 2, 0, False) == 2
    assert pool_len(5, 2, 2, 1, True) == 3          # ceil gives 4, the 4th is clipped


# ------------------------------------------------------------- dropout

XDROP = (np.abs(f32(40, 50)) + 0.1).astype(np.float32)        # no zeros


def _dropout_fn(backend, params, phase="TRAIN", counter=False):
    with sn.graph_scope():
        x = sn.input("x", XDROP.shape)
        gi = sn.input("g", XDROP.shape)
        it = sn.input("it", ()) if counter else None
        (y,), _ = apply("Dropout", x, name="drop1", phase=phase, counter=it, **params)
        (dx,) = sn.vjp([y], [gi], [x])
        return sn.function([x, gi] + ([it] if counter else []), [y, dx], backend=backend)


def test_dropout_masks_differ_between_data_parallel_ranks():
    """Caffe seeds each solver of a multi-GPU run with random_seed + solver_rank, so
    ranks drop different units of their i-th images. Here a process training as rank r
    of N (the data world the solver sets) draws its own Philox stream; one process, or
    rank 0 of 1, keeps the stream it always had."""
    from symnet import data
    masks = {}
    for world in ((0, 1), (0, 2), (1, 2)):
        previous = data.set_world(*world)
        try:
            y, _ = _dropout_fn("numpy", {"dropout_ratio": 0.5})(XDROP, XDROP)
        finally:
            data.set_world(previous.rank, previous.size)
        masks[world] = y != 0
    assert not np.array_equal(masks[(0, 2)], masks[(1, 2)])
    assert not np.array_equal(masks[(0, 1)], masks[(0, 2)])
    y, _ = _dropout_fn("numpy", {"dropout_ratio": 0.5})(XDROP, XDROP)
    np.testing.assert_array_equal(y != 0, masks[(0, 1)])


@pytest.mark.parametrize("ratio, scale_train", [(0.5, True), (0.3, True), (0.2, False)])
def test_dropout_train(backend, ratio, scale_train):
    """TRAIN: y = x * mask * scale (scale 1 / (1 - ratio), or 1 without scale_train),
    mask ~ Bernoulli(1 - ratio); the diff goes through the same mask; the mask is the
    same on every backend (symnet's Philox stream, not Caffe's)."""
    params = {"dropout_ratio": ratio}
    if not scale_train:
        params["scale_train"] = False
    g = f32(*XDROP.shape)
    y, dx = _dropout_fn(backend, params)(XDROP, g)
    mask = y != 0
    scale = 1 / (1 - ratio) if scale_train else 1.0
    np.testing.assert_allclose(y, XDROP * mask * scale, rtol=1e-6)
    np.testing.assert_allclose(dx, g * mask * scale, rtol=1e-6)
    keep = mask.mean()
    sigma = math.sqrt(ratio * (1 - ratio) / mask.size)
    assert abs(keep - (1 - ratio)) < 5 * sigma, keep
    # rows and columns are not correlated: each row keeps about 1 - ratio too
    assert mask.mean(1).std() < 3 * math.sqrt(ratio * (1 - ratio) / mask.shape[1])
    if backend != "numpy":
        y_ref, _ = _dropout_fn("numpy", params)(XDROP, g)
        np.testing.assert_array_equal(mask, y_ref != 0)


def test_dropout_test_phase_and_iterations():
    g = f32(*XDROP.shape)
    y, dx = _dropout_fn("numpy", {"dropout_ratio": 0.4}, phase="TEST")(XDROP, g)
    np.testing.assert_array_equal(y, XDROP)                       # identity
    np.testing.assert_array_equal(dx, g)
    y, dx = _dropout_fn("numpy", {"dropout_ratio": 0.4, "scale_train": False},
                        phase="TEST")(XDROP, g)
    np.testing.assert_allclose(y, XDROP * 0.6, rtol=1e-6)
    np.testing.assert_allclose(dx, g * 0.6, rtol=1e-6)
    # a new mask each iteration (the Net's counter), the same one for the same counter
    fn = _dropout_fn("numpy", {}, counter=True)
    m0 = fn(XDROP, g, np.float32(0))[0] != 0
    m1 = fn(XDROP, g, np.float32(1))[0] != 0
    assert (m0 != m1).mean() > 0.3
    np.testing.assert_array_equal(m0, fn(XDROP, g, np.float32(0))[0] != 0)
    with sn.graph_scope():
        with pytest.raises(LayerError, match="dropout_ratio"):
            apply("Dropout", sn.input("x", (2,)), name="d", dropout_ratio=1.0)


# ------------------------------------------------------------- gradcheck

S = (2, 4, 5, 5)
GRAD_CASES = [
    ("conv", "Convolution", {"num_output": 4, "kernel_size": [3], "stride": [2], "pad": [1],
                             "group": 2, "dilation": [1, 2]}, [S], ["L_0", "L_1"]),
    ("conv_hw", "Convolution", {"num_output": 2, "kernel_h": 2, "kernel_w": 3,
                                "pad_w": 1}, [(1, 2, 4, 4)], ["L_0", "L_1"]),
    ("deconv", "Deconvolution", {"num_output": 2, "kernel_size": [3], "stride": [2],
                                 "pad": [1], "group": 2}, [(1, 4, 3, 3)], ["L_0", "L_1"]),
    ("ip", "InnerProduct", {"num_output": 3, "axis": 2, "transpose": True}, [(2, 3, 4)],
     ["L_0", "L_1"]),
    ("pool_max", "Pooling", {"kernel_size": 3, "stride": 2, "pad": 1}, [S], []),
    ("pool_ave", "Pooling", {"pool": "AVE", "kernel_size": 2, "stride": 2, "pad": 1}, [S],
     []),
    ("pool_floor", "Pooling", {"pool": "AVE", "kernel_size": 2, "stride": 2,
                               "round_mode": "FLOOR"}, [S], []),
    ("relu_leaky", "ReLU", {"negative_slope": 0.2}, [S], []),
    ("softmax", "Softmax", {"axis": 2}, [S], []),
    ("dropout", "Dropout", {"dropout_ratio": 0.3}, [S], []),
]


@pytest.mark.parametrize("cid, typ, params, shapes, pnames", GRAD_CASES,
                         ids=[c[0] for c in GRAD_CASES])
def test_core_gradcheck(cid, typ, params, shapes, pnames):
    params = dict(params)
    if pnames:
        params["weight_filler"] = {"type": "gaussian", "std": 0.5}
        params["bias_filler"] = {"type": "gaussian", "std": 0.5}
    arrays = [R.standard_normal(s) for s in shapes]
    phase = "TRAIN" if typ == "Dropout" else "TEST"
    res = sn.gradcheck(lambda *xs: apply(typ, *xs, name="L", phase=phase, **params)[0][0],
                       arrays, params=pnames, eps=1e-5)
    assert res.checked > 0


def test_softmax_loss_gradcheck():
    lab = LSI.copy()
    res = sn.gradcheck(lambda x: apply("SoftmaxWithLoss", x, sn.constant(lab), name="L",
                                       ignore_label=-1)[0][0],
                       [R.standard_normal(XS.shape)], eps=1e-5)
    assert res.checked > 0


# ------------------------------------------------------------- parameters and errors

def test_blob_shapes_and_spellings():
    with sn.graph_scope():
        x = sn.input("x", (2, 4, 9, 8))
        (y,), ctx = apply("Convolution", x, name="c", num_output=6, kernel_size=[3], group=2)
        assert [d.tensor.shape for d in ctx.params] == [(6, 2, 3, 3), (6,)]
        assert y.shape == (2, 6, 7, 6)
        (y,), ctx = apply("Deconvolution", x, name="d", num_output=6, kernel_size=[2],
                          stride=[2], group=2)
        assert [d.tensor.shape for d in ctx.params] == [(4, 3, 2, 2), (6,)]
        assert y.shape == (2, 6, 18, 16)
        (y,), ctx = apply("InnerProduct", x, name="i", num_output=5, transpose=True)
        assert [d.tensor.shape for d in ctx.params] == [(288, 5), (5,)]
        # pad_h alone is valid in Caffe (pad_w defaults to 0)
        (y,), _ = apply("Convolution", x, name="e", num_output=1, kernel_size=[3], pad_h=2)
        assert y.shape == (2, 1, 11, 6)
        (y,), _ = apply("Pooling", x, name="p", kernel_size=3, stride=2)
        assert y.shape == (2, 4, 4, 4)                   # ceil((9-3)/2)+1, ceil((8-3)/2)+1
        (y,), _ = apply("Pooling", x, name="q", kernel_size=3, stride=2, round_mode="FLOOR")
        assert y.shape == (2, 4, 4, 3)
        (y,), _ = apply("Pooling", x, name="r", kernel_h=3, kernel_w=2, pad_h=1, pad_w=1,
                        stride_h=2, stride_w=3)
        assert y.shape == (2, 4, 5, 3)       # width: ceil(8 / 3) + 1 = 4, the 4th clipped
        (y,), _ = apply("Pooling", x, name="s", global_pooling=True, pool="AVE")
        assert y.shape == (2, 4, 1, 1)


def test_errors():
    with sn.graph_scope():
        x = sn.input("x", (2, 4, 9, 8))
        with pytest.raises(LayerError, match="num_output"):
            apply("Convolution", x, name="L", kernel_size=[3])
        with pytest.raises(LayerError, match="divisible by group"):
            apply("Convolution", x, name="L", num_output=3, kernel_size=[3], group=2)
        with pytest.raises(LayerError, match="mutually exclusive"):
            apply("Convolution", x, name="L", num_output=3, kernel_size=[3], kernel_h=3,
                  kernel_w=3)
        with pytest.raises(LayerError, match="given together"):
            apply("Convolution", x, name="L", num_output=3, kernel_h=3)
        with pytest.raises(LayerError, match="kernel_size OR"):
            apply("Pooling", x, name="L", kernel_size=3, kernel_h=3, kernel_w=3)
        with pytest.raises(LayerError, match="pad is pad OR"):
            apply("Pooling", x, name="L", kernel_size=3, pad=1, pad_h=1, pad_w=1)
        with pytest.raises(LayerError, match="given together"):
            apply("Pooling", x, name="L", kernel_size=3, pad_h=1)
        with pytest.raises(LayerError, match="smaller than the kernel"):
            apply("Pooling", x, name="L", kernel_size=2, pad=2)
        with pytest.raises(LayerError, match="global_pooling"):
            apply("Pooling", x, name="L", global_pooling=True, kernel_size=2)
        with pytest.raises(LayerError, match="only pad = 0 and stride = 1"):
            apply("Pooling", x, name="L", global_pooling=True, stride=2)
        with pytest.raises(LayerError, match="STOCHASTIC"):
            apply("Pooling", x, name="L", kernel_size=2, pad=1, pool="STOCHASTIC")
        with pytest.raises(LayerError, match="top_k"):
            apply("Accuracy", x, sn.input("l", (2, 9, 8)), name="L", top_k=5)
        with pytest.raises(LayerError, match="one label per prediction"):
            apply("SoftmaxWithLoss", x, sn.input("m", (2, 9)), name="L")


PROTO_SPELLINGS = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 7 dim: 6 } } }
layer { name: "c1" type: "Convolution" bottom: "x" top: "c1"
        convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1
                            pad_h: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "c2" type: "Convolution" bottom: "x" top: "c2"
        convolution_param { num_output: 2 kernel_size: 3 kernel_size: 1 stride: 1 stride: 2
                            pad: 1 dilation: 2 group: 2 bias_term: false } }
layer { name: "p1" type: "Pooling" bottom: "x" top: "p1"
        pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 2
                        pad_h: 1 pad_w: 1 } }
layer { name: "p2" type: "Pooling" bottom: "x" top: "p2"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }
layer { name: "r" type: "ReLU" bottom: "c1" top: "c1" relu_param { negative_slope: 0.5 } }
"""


def test_prototxt_spellings_reach_the_layers():
    net = sn.Net(PROTO_SPELLINGS, sn.TEST, backend="numpy")
    x = f32(1, 2, 7, 6)
    net.forward(x=x)
    x64 = x.astype(np.float64)
    w1, b1 = (b.data.astype(np.float64) for b in net.params["c1"])
    c1 = loops.conv2d(x64, w1, (2, 1), (1, 0)) + bview(b1, 4)
    np.testing.assert_allclose(net.blobs["c1"].data, np.where(c1 > 0, c1, 0.5 * c1),
                               rtol=1e-5, atol=1e-5)
    (w2,) = (b.data.astype(np.float64) for b in net.params["c2"])
    assert w2.shape == (2, 1, 3, 1)
    np.testing.assert_allclose(net.blobs["c2"].data, loops.conv2d(x64, w2, (1, 2), 1, 2, 2),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.blobs["p1"].data,
                               pool_caffe(x64, (3, 2), 2, 1, "ave")[0], rtol=1e-5)
    np.testing.assert_allclose(net.blobs["p2"].data,
                               pool_caffe(x64, 3, 2, 0, "max", ceil=False)[0], rtol=1e-6)


# ------------------------------------------------------------- nets

def _compare_nets(ref, other, what, rtol=1e-4, atol=1e-5):
    for name in ref.blobs:
        np.testing.assert_allclose(other.blobs[name].data, ref.blobs[name].data, rtol=rtol,
                                   atol=atol, err_msg=f"{what}: blob {name} data")
        np.testing.assert_allclose(other.blobs[name].diff, ref.blobs[name].diff, rtol=rtol,
                                   atol=atol, err_msg=f"{what}: blob {name} diff")
    for lname, blobs in ref.params.items():
        for i, b in enumerate(blobs):
            np.testing.assert_allclose(other.params[lname][i].data, b.data, rtol=1e-6,
                                       atol=1e-7, err_msg=f"{what}: {lname}[{i}] data")
            np.testing.assert_allclose(other.params[lname][i].diff, b.diff, rtol=rtol,
                                       atol=atol, err_msg=f"{what}: {lname}[{i}] diff")


def _lenet(backend, phase, data, label):
    sn.fillers.set_random_seed(0)    # the same weights on every backend: one seeded stream
    net = sn.Net(LENET, phase, backend=backend,
                 input_shapes={"data": (8, 1, 28, 28), "label": (8,)})
    net.forward(data=data, label=label)
    net.backward()
    return net


@pytest.fixture(scope="module")
def lenet_input():
    rng = np.random.default_rng(3)
    return rng.random((8, 1, 28, 28)).astype(np.float32), \
        rng.integers(0, 10, 8).astype(np.float32)


@pytest.fixture(scope="module")
def lenet_ref(lenet_input):
    return _lenet("numpy", sn.TRAIN, *lenet_input)


def test_lenet_reference(lenet_ref, lenet_input):
    """The numpy LeNet against loops and closed forms, layer by layer."""
    net = lenet_ref
    data, label = (a.astype(np.float64) for a in lenet_input)
    p = {k: [b.data.astype(np.float64) for b in v] for k, v in net.params.items()}
    assert [b.shape for b in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert [b.shape for b in net.params["ip1"]] == [(500, 800), (500,)]
    assert net.layer_dict["conv1"].lr_mult == [1.0, 2.0]
    conv1 = loops.conv2d(data, p["conv1"][0]) + bview(p["conv1"][1], 4)
    np.testing.assert_allclose(net.blobs["conv1"].data, conv1, rtol=1e-4, atol=1e-5)
    pool1 = pool_caffe(net.blobs["conv1"].data.astype(np.float64), 2, 2, 0, "max")[0]
    np.testing.assert_allclose(net.blobs["pool1"].data, pool1, rtol=1e-6)
    pool2 = net.blobs["pool2"].data.astype(np.float64)
    ip1 = np.maximum(pool2.reshape(8, -1) @ p["ip1"][0].T + p["ip1"][1], 0)
    np.testing.assert_allclose(net.blobs["ip1"].data, ip1, rtol=1e-4, atol=1e-5)
    ip2 = ip1 @ p["ip2"][0].T + p["ip2"][1]
    np.testing.assert_allclose(net.blobs["ip2"].data, ip2, rtol=1e-4, atol=1e-5)
    (loss, _), (dip2,), _ = swl_ref()([ip2, label], [], [1.0])
    np.testing.assert_allclose(net.blobs["loss"].data, loss, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["ip2"].diff, dip2, rtol=1e-4, atol=1e-6)
    # ip2's param diffs: Caffe's GEMMs
    np.testing.assert_allclose(net.params["ip2"][0].diff, dip2.T @ ip1, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(net.params["ip2"][1].diff, dip2.sum(0), rtol=1e-4, atol=1e-6)
    assert net.params["conv1"][0].diff.any()
    assert not net.blobs["data"].diff.any()          # Caffe: data needs no backward


@pytest.mark.parametrize("backend_name", ["cpu", "cuda-emu"])
def test_lenet_backends_agree(backend_name, lenet_ref, lenet_input):
    net = _lenet(backend_name, sn.TRAIN, *lenet_input)
    _compare_nets(lenet_ref, net, f"LeNet TRAIN on {backend_name}")


def test_lenet_test_phase_accuracy(lenet_input):
    data, label = lenet_input
    net = sn.Net(LENET, sn.TEST, backend="cpu",
                 input_shapes={"data": (8, 1, 28, 28), "label": (8,)})
    out = net.forward(data=data, label=label)
    assert set(out) == {"accuracy", "loss"}
    ip2 = net.blobs["ip2"].data.astype(np.float64)
    (acc, _), _, _ = accuracy_ref()([ip2, label.astype(np.float64)], [], [])
    assert out["accuracy"] == pytest.approx(acc)


BN_NET = """
name: "mixed"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 6 dim: 6 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
                      bias_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "cat" type: "Concat" bottom: "conv1" bottom: "conv2" top: "cat" }
layer { name: "slice" type: "Slice" bottom: "cat" top: "s0" top: "s1"
        slice_param { axis: 1 slice_point: 3 } }
layer { name: "pool" type: "Pooling" bottom: "s1" top: "pool"
        pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "pool0" type: "Pooling" bottom: "s0" top: "pool0"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "pool0" bottom: "pool" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "pool0" bottom: "pool0" top: "max"
        eltwise_param { operation: MAX } }
layer { name: "rows" type: "Slice" bottom: "max" top: "r0" top: "r1" top: "r2"
        slice_param { axis: 2 } }
layer { name: "prod" type: "Eltwise" bottom: "r0" bottom: "r2" top: "prod"
        eltwise_param { operation: PROD } }
layer { name: "ip" type: "InnerProduct" bottom: "prod" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


@pytest.fixture(scope="module")
def bn_input():
    rng = np.random.default_rng(5)
    return rng.standard_normal((4, 2, 6, 6)).astype(np.float32), \
        np.array([0, 2, 1, 2], np.float32)


def _bn_net(backend, data, label):
    sn.fillers.set_random_seed(0)    # the same weights on every backend: one seeded stream
    net = sn.Net(BN_NET, sn.TRAIN, backend=backend)
    net.forward(data=data, label=label)
    net.backward()
    return net


def test_bn_concat_slice_net_backends_agree(compiled_backend, bn_input):
    """BatchNorm (batch statistics and their update), Scale, in-place ReLU, Concat,
    Slice, Pooling, Eltwise SUM and MAX (with a repeated bottom), InnerProduct and
    SoftmaxWithLoss: forward and backward on a compiled backend equal the numpy run."""
    ref = _bn_net("numpy", *bn_input)
    net = _bn_net(compiled_backend, *bn_input)
    _compare_nets(ref, net, f"mixed net on {compiled_backend}")
    # the concat / slice plumbing itself, on the numpy run
    cat = ref.blobs["cat"].data
    np.testing.assert_array_equal(cat[:, :4], ref.blobs["conv1"].data)
    np.testing.assert_array_equal(ref.blobs["s0"].data, cat[:, :3])
    np.testing.assert_array_equal(ref.blobs["s1"].data, cat[:, 3:])
    dcat = ref.blobs["cat"].diff
    np.testing.assert_array_equal(dcat[:, :3], ref.blobs["s0"].diff)
    np.testing.assert_array_equal(dcat[:, 3:], ref.blobs["s1"].diff)
    assert ref.params["bn1"][2].data[0] == pytest.approx(1.0)   # one statistics update


# ------------------------------------------------------------- a pycaffe script

def test_pycaffe_script(tmp_path):
    """A pycaffe-style script, unchanged but for ``import symnet.caffe as caffe``."""
    import symnet.caffe as caffe

    # a mean file written as Caffe's tools do (a BlobProto), for the script to read
    mean = np.random.default_rng(7).random((1, 1, 28, 28)).astype(np.float32)
    with open(tmp_path / "mean.binaryproto", "wb") as f:
        f.write(caffe.io.array_to_blobproto(mean).SerializeToString())
    deploy = str(MNIST / "lenet.prototxt")
    weights = str(tmp_path / "surgery.caffemodel")

    # ---- the script
    caffe.set_mode_cpu()
    net = caffe.Net(deploy, caffe.TEST)
    blob = caffe.proto.caffe_pb2.BlobProto()
    data = open(tmp_path / "mean.binaryproto", "rb").read()
    blob.ParseFromString(data)
    mu = np.array(caffe.io.blobproto_to_array(blob))[0]
    net.blobs["data"].reshape(2, 1, 28, 28)
    net.reshape()
    image = np.random.default_rng(8).random((2, 1, 28, 28)).astype(np.float32)
    net.blobs["data"].data[...] = image - mu
    out = net.forward()
    probs = out["prob"].copy()      # forward returns the blobs' arrays, as pycaffe
    # net surgery: a known first filter bank
    w = net.params["conv1"][0].data
    net.params["conv1"][0].data[...] = np.ones_like(w) / 25.0
    net.params["conv1"][1].data[...] = 0.5
    out2 = net.forward()
    conv1 = net.blobs["conv1"].data.copy()
    net.save(weights)
    net2 = caffe.Net(deploy, weights, caffe.TEST)
    net2.blobs["data"].reshape(2, 1, 28, 28)
    net2.reshape()
    net2.blobs["data"].data[...] = image - mu
    out3 = net2.forward()
    # ---- checks
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    x = (image - mu).astype(np.float64)
    box = loops.conv2d(x, np.ones((1, 1, 5, 5)) / 25.0) + 0.5
    np.testing.assert_allclose(conv1, np.repeat(box, 20, axis=1), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out2["prob"], probs)
    for name in net.params:
        for a, b in zip(net.params[name], net2.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_allclose(out3["prob"], out2["prob"], rtol=1e-6)
    np.testing.assert_allclose(mu, mean[0], rtol=0)
