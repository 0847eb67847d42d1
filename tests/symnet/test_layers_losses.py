"""Caffe's loss layers in symnet/layers/losses.py: SigmoidCrossEntropyLoss,
EuclideanLoss, HingeLoss, ContrastiveLoss, InfogainLoss and MultinomialLogisticLoss.

Forward against NumPy restatements of Caffe's Forward_cpu and bottom diffs against
its Backward_cpu (including where that is not the exact derivative: clamps before
a log, ContrastiveLoss's d + 1e-4), on every backend with all cases in one compiled
function; gradients also by finite differences (sn.gradcheck on the float64
reference) away from the clamps; and the layers inside a Net (loss weights,
prototxt parameters, an infogain matrix read from a .binaryproto file)."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_cases
from symnet.formats import prototxt
from symnet.layers import LayerError, apply

R = np.random.default_rng(41)
FLT_THRESHOLD = 1e-20                    # Caffe's kLOG_THRESHOLD


def f32(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def normalizer(mode, outer, inner, valid):
    n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return max(1.0, float(n))


# ------------------------------------------------------------- references
# ref(bottoms, g) -> (tops, bottom diffs for the differentiated bottoms); g: top cotangents

def sce_ref(mode, ignore=None):
    """Caffe's SigmoidCrossEntropyLoss: the stable loss, diff (sigmoid - t) / norm."""
    def ref(b, g):
        x, t = b
        t = t.reshape(x.shape)
        valid = np.ones(x.shape, bool) if ignore is None else (np.trunc(t) != ignore)
        loss = -(x * (t - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
        n = x.shape[0]
        norm = normalizer(mode, n, x.size // n, valid.sum())
        dx = (sigmoid(x) - t) * valid * g[0] / norm
        return [(loss * valid).sum() / norm], [dx]
    return ref


def euclid_ref(b, g):
    a, c = b
    d = a - c.reshape(a.shape)
    n = a.shape[0]
    return [(d * d).sum() / n / 2], [g[0] * d / n, (-g[0] * d / n).reshape(c.shape)]


def hinge_ref(norm):
    def ref(b, g):
        x, lab = b
        n = x.shape[0]
        x2 = x.reshape(n, -1)
        s = np.ones_like(x2)
        s[np.arange(n), np.trunc(lab.reshape(-1)).astype(int)] = -1
        t = np.maximum(0, 1 + s * x2)
        if norm == "L1":
            loss, dx = t.sum() / n, np.sign(t * s) / n
        else:
            loss, dx = (t * t).sum() / n, 2 * t * s / n
        return [loss], [(g[0] * dx).reshape(x.shape)]
    return ref


def contrastive_ref(margin=1.0, legacy=False):
    """Caffe's ContrastiveLoss loops (forward and backward)."""
    def ref(b, g):
        a, c, y = b
        n = a.shape[0]
        a2, c2 = a.reshape(n, -1), c.reshape(n, -1)
        diff = a2 - c2
        dsq = (diff * diff).sum(1)
        loss = 0.0
        da = np.zeros_like(a2)
        alpha = g[0] / n
        for i in range(n):
            if int(y.reshape(-1)[i]):
                loss += dsq[i]
                da[i] = alpha * diff[i]
            elif legacy:
                loss += max(margin - dsq[i], 0.0)
                if margin - dsq[i] > 0:
                    da[i] = -alpha * diff[i]
            else:
                dist = np.sqrt(dsq[i])
                loss += max(margin - dist, 0.0) ** 2
                if margin - dist > 0:
                    da[i] = -alpha * (margin - dist) / (dist + 1e-4) * diff[i]
        return [loss / n / 2], [da.reshape(a.shape), (-da).reshape(c.shape)]
    return ref


def infogain_ref(axis=1, mode="VALID", ignore=None):
    """Caffe (master) InfogainLoss: softmax inside, H[label] rows, kLOG_THRESHOLD."""
    def ref(b, g):
        x, lab, h = b
        ax = axis % x.ndim
        outer, c = int(np.prod(x.shape[:ax])), x.shape[ax]
        inner = x.size // (outer * c)
        h = h.reshape(c, c)
        x3 = x.reshape(outer, c, inner)
        e = np.exp(x3 - x3.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        labs = lab.reshape(outer, inner)
        loss, count = 0.0, 0
        dx = np.zeros_like(x3)
        for o in range(outer):
            for i in range(inner):
                lv = int(labs[o, i])
                if ignore is not None and lv == ignore:
                    continue
                loss -= sum(h[lv, k] * np.log(max(p[o, k, i], FLT_THRESHOLD))
                            for k in range(c))
                dx[o, :, i] = p[o, :, i] * h[lv].sum() - h[lv]
                count += 1
        norm = normalizer(mode, outer, inner, count)
        return [loss / norm, p.reshape(x.shape)], [(dx * g[0] / norm).reshape(x.shape)]
    return ref


def mll_ref(b, g):
    p, lab = b
    n = p.shape[0]
    p2 = p.reshape(n, -1)
    loss = 0.0
    dp = np.zeros_like(p2)
    for i in range(n):
        lv = int(lab.reshape(-1)[i])
        pr = max(p2[i, lv], FLT_THRESHOLD)
        loss -= np.log(pr)
        dp[i, lv] = -g[0] / n / pr
    return [loss / n], [dp.reshape(p.shape)]


# ------------------------------------------------------------- cases

XS = f32(3, 2, 2, 2, scale=2.0)
XS.flat[:3] = [80.0, -80.0, 0.0]                        # the stable formula at extremes
TS = R.random((3, 2, 2, 2)).astype(np.float32)          # fractional targets
TI = TS.copy()
TI.flat[3:6] = [-1.0, -1.5, -0.5]                       # int(): ignored, ignored, 0
ALL_IGNORED = np.full((3, 2, 2, 2), -1.0, np.float32)

HX = f32(4, 5)
HLAB = np.array([0, 4, 2, 2.7], np.float32)             # 2.7 reads as 2
HX[0, 1], HX[1, 4] = -1.0, 1.0                          # margins exactly 0 (L1's kink)
HX4 = f32(3, 2, 2, 1)
HLAB4 = np.array([3, 0, 1], np.float32)

CA, CB = f32(6, 3), f32(6, 3)
CY = np.array([1, 0, 0.5, 2, 0, 0], np.float32)         # 0.5 reads as 0: dissimilar
CB[4] = CA[4]                                           # dissimilar pair at distance 0
CB[5] = CA[5] + 3.0                                     # dissimilar beyond the margin

IX = f32(4, 3)
IX[3] = [0.0, 60.0, 0.5]                                # p < 1e-20: the clamp is active
ILAB = np.array([0, 2, 1, 0], np.float32)
IH = np.abs(f32(3, 3)) + 0.1
IX3 = f32(2, 3, 4)
ILAB3 = np.array([[0, 1, 2, 5], [2, 5, 1, 0]], np.float32)   # 5: ignored
IXL = f32(2, 4, 3)
ILABL = np.array([[0, 1, 2, 2], [1, 1, 0, 2]], np.float32)

MP = sigmoid(f32(4, 3)) + 0.05
MLAB = np.array([0, 2, 1, 1], np.float32)
MP[2, 1] = 0.0                                          # clamped at 1e-20
MP4 = (np.abs(f32(4, 3, 1, 1)) + 0.1)
MLAB4 = np.array([2, 0, 1, 2], np.float32).reshape(4, 1, 1, 1)

# (id, type, params, bottoms, differentiated bottoms, ref)
CASES = [
    ("sce_default", "SigmoidCrossEntropyLoss", {}, [XS, TS], [0], sce_ref("BATCH_SIZE")),
    ("sce_valid", "SigmoidCrossEntropyLoss", {"normalization": "VALID", "ignore_label": -1},
     [XS, TI], [0], sce_ref("VALID", -1)),
    ("sce_full", "SigmoidCrossEntropyLoss", {"normalization": "FULL", "ignore_label": -1},
     [XS, TI], [0], sce_ref("FULL", -1)),
    ("sce_none", "SigmoidCrossEntropyLoss", {"normalization": "NONE"}, [XS, TS], [0],
     sce_ref("NONE")),
    ("sce_normalize", "SigmoidCrossEntropyLoss", {"normalize": True, "ignore_label": -1},
     [XS, TI], [0], sce_ref("VALID", -1)),
    ("sce_normalize_false", "SigmoidCrossEntropyLoss", {"normalize": False}, [XS, TS], [0],
     sce_ref("BATCH_SIZE")),
    ("sce_both", "SigmoidCrossEntropyLoss", {"normalize": True, "normalization": "NONE"},
     [XS, TS], [0], sce_ref("NONE")),
    ("sce_all_ignored", "SigmoidCrossEntropyLoss", {"normalization": "VALID",
                                                    "ignore_label": -1},
     [XS, ALL_IGNORED], [0], sce_ref("VALID", -1)),
    ("sce_flat_target", "SigmoidCrossEntropyLoss", {}, [XS, TS.reshape(3, 8)], [0],
     sce_ref("BATCH_SIZE")),
    ("euclid", "EuclideanLoss", {}, [f32(4, 3), f32(4, 3)], [0, 1], euclid_ref),
    ("euclid_4d", "EuclideanLoss", {}, [f32(4, 3), f32(4, 3, 1, 1)], [0, 1], euclid_ref),
    ("hinge_l1", "HingeLoss", {}, [HX, HLAB], [0], hinge_ref("L1")),
    ("hinge_l2", "HingeLoss", {"norm": "L2"}, [HX, HLAB], [0], hinge_ref("L2")),
    ("hinge_4d", "HingeLoss", {}, [HX4, HLAB4], [0], hinge_ref("L1")),
    ("contrastive", "ContrastiveLoss", {}, [CA, CB, CY], [0, 1], contrastive_ref()),
    ("contrastive_margin", "ContrastiveLoss", {"margin": 2.5},
     [CA.reshape(6, 3, 1, 1), CB.reshape(6, 3, 1, 1), CY.reshape(6, 1, 1, 1)], [0, 1],
     contrastive_ref(2.5)),
    ("contrastive_legacy", "ContrastiveLoss", {"legacy_version": True, "margin": 3.0},
     [CA, CB, CY], [0, 1], contrastive_ref(3.0, legacy=True)),
    ("infogain", "InfogainLoss", {}, [IX, ILAB, IH], [0], infogain_ref()),
    ("infogain_eye", "InfogainLoss", {}, [IX, ILAB, np.eye(3, dtype=np.float32)], [0],
     infogain_ref()),
    ("infogain_ignore", "InfogainLoss", {"ignore_label": 5}, [IX3, ILAB3, IH], [0],
     infogain_ref(1, "VALID", 5)),
    ("infogain_full", "InfogainLoss", {"ignore_label": 5, "normalization": "FULL"},
     [IX3, ILAB3, IH], [0], infogain_ref(1, "FULL", 5)),
    ("infogain_batch", "InfogainLoss", {"normalization": "BATCH_SIZE", "axis": -1},
     [IXL, ILABL, IH.reshape(1, 1, 3, 3)], [0], infogain_ref(-1, "BATCH_SIZE")),
    ("infogain_none", "InfogainLoss", {"normalization": "NONE", "axis": 2},
     [IXL, ILABL, IH], [0], infogain_ref(2, "NONE")),
    ("mll", "MultinomialLogisticLoss", {}, [MP, MLAB], [0], mll_ref),
    ("mll_4d", "MultinomialLogisticLoss", {}, [MP4, MLAB4], [0], mll_ref),
]
IDS = [c[0] for c in CASES]


def _build_all():
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(6)
    for cid, typ, params, bottoms, diff, ref in CASES:
        xs = [sn.input(f"{cid}_b{k}", b.shape) for k, b in enumerate(bottoms)]
        ntop = 2 if typ == "InfogainLoss" else 1
        tops, _ = apply(typ, *xs, name=cid, ntop=ntop, **params)
        tops = tops[:ntop]
        assert tops[0].shape == (), cid                 # Caffe: a 0-d loss
        gs = [g_rng.uniform(0.5, 2.0, t.shape).astype(np.float32) for t in tops[:1]]
        gis = [sn.input(f"{cid}_g", ())]
        grads = sn.vjp(tops[:1], gis, [xs[k] for k in diff])
        exp_tops, exp_d = ref([b.astype(np.float64) for b in bottoms],
                              [g.astype(np.float64) for g in gs])
        ins += xs + gis
        feeds += list(bottoms) + gs
        outs += list(tops) + list(grads)
        want += [(cid, f"top{k}", t) for k, t in enumerate(exp_tops)]
        want += [(cid, f"d_bottom{k}", d) for k, d in zip(diff, exp_d)]
    return ins, feeds, outs, want


def test_loss_layers_forward_backward(backend):
    """Every case's loss (and InfogainLoss's softmax top) and bottom diffs on this
    backend equal Caffe's loops (one compiled function for all cases)."""
    check_cases(_build_all, backend, rtol=2e-5, atol=2e-6, finite=True)


def test_caffe_facts():
    """The surprising values, spelled out."""
    # MultinomialLogisticLoss: the gradient at a clamped probability is -1 / (N 1e-20)
    _, (d,) = mll_ref([MP.astype(np.float64), MLAB.astype(np.float64)], [1.0])
    assert d[2, 1] == pytest.approx(-1 / 4 / 1e-20)
    # ContrastiveLoss: a dissimilar pair at distance 0 gets a zero (finite) diff
    _, (da, _) = contrastive_ref()([CA.astype(np.float64), CB.astype(np.float64), CY], [1.0])
    assert not da[4].any()
    # SigmoidCrossEntropyLoss: the default normalization is BATCH_SIZE (N = 3 here)
    with sn.graph_scope():
        x, t = sn.input("x", XS.shape), sn.input("t", TS.shape)
        (loss,), _ = apply("SigmoidCrossEntropyLoss", x, t, name="L")
        got = sn.function([x, t], loss, backend="numpy")(XS, TS)
    per = np.logaddexp(0, XS.astype(np.float64)) - XS * TS.astype(np.float64)
    assert got == pytest.approx(per.sum() / 3, rel=1e-5)


# ------------------------------------------------------------- gradcheck

def _with_consts(typ, params, consts, n_var):
    """fn of the first n_var bottoms; the others (labels, H) are constants."""
    def fn(*xs):
        bottoms = list(xs) + [sn.constant(c) for c in consts]
        return apply(typ, *bottoms, name="L", **params)[0][0]
    return fn


GRAD_CASES = [
    ("sce", "SigmoidCrossEntropyLoss", {"ignore_label": -1, "normalization": "VALID"},
     [XS[:2].astype(np.float64) / 10], [TI[:2]], 1e-4),
    ("euclid", "EuclideanLoss", {}, [R.standard_normal((3, 4)), R.standard_normal((3, 4))],
     [], 1e-4),
    ("hinge_l1", "HingeLoss", {}, [R.standard_normal((4, 5))], [HLAB], 1e-4),
    ("hinge_l2", "HingeLoss", {"norm": "L2"}, [R.standard_normal((4, 5))], [HLAB], 1e-4),
    # Caffe's (and so symnet's) gradient divides by d + 1e-4, the finite differences
    # by d: a relative difference of 1e-4 / d
    ("contrastive", "ContrastiveLoss", {"margin": 3.0},
     [CA[:4].astype(np.float64), CB[:4].astype(np.float64)], [CY[:4]], 1e-3),
    ("contrastive_legacy", "ContrastiveLoss", {"legacy_version": True, "margin": 6.0},
     [CA[:4].astype(np.float64), CB[:4].astype(np.float64)], [CY[:4]], 1e-4),
    ("infogain", "InfogainLoss", {"ignore_label": 5}, [IX3.astype(np.float64)],
     [ILAB3, IH], 1e-4),
    ("infogain_axis", "InfogainLoss", {"axis": -1, "normalization": "FULL"},
     [IXL.astype(np.float64)], [ILABL, IH], 1e-4),
    ("mll", "MultinomialLogisticLoss", {}, [np.abs(R.standard_normal((4, 3))) + 0.2],
     [MLAB], 1e-4),
]


@pytest.mark.parametrize("cid, typ, params, variables, consts, rtol", GRAD_CASES,
                         ids=[c[0] for c in GRAD_CASES])
def test_loss_gradcheck(cid, typ, params, variables, consts, rtol):
    res = sn.gradcheck(_with_consts(typ, params, consts, len(variables)), variables,
                       eps=1e-5, rtol=rtol)
    assert res.checked > 0


def test_labels_get_no_gradient():
    """Caffe refuses to back-propagate to labels, targets and H: zero diffs here."""
    with sn.graph_scope():
        x, t = sn.input("x", XS.shape), sn.input("t", TS.shape)
        (l1,), _ = apply("SigmoidCrossEntropyLoss", x, t, name="a")
        s, lab, h = sn.input("s", IX.shape), sn.input("l", ILAB.shape), sn.input("h", (3, 3))
        tops, _ = apply("InfogainLoss", s, lab, h, name="b")
        p, ml = sn.input("p", MP.shape), sn.input("m", MLAB.shape)
        (l3,), _ = apply("MultinomialLogisticLoss", p, ml, name="c")
        hx, hl = sn.input("hx", HX.shape), sn.input("hl", HLAB.shape)
        (l4,), _ = apply("HingeLoss", hx, hl, name="d")
        total = l1 + tops[0] + l3 + l4
        grads = sn.grad(total, [t, lab, h, ml, hl])
        got = sn.function([x, t, s, lab, h, p, ml, hx, hl], grads, backend="numpy")(
            XS, TS, IX, ILAB, IH, MP + 0.1, MLAB, HX, HLAB)
    for gval in got:
        assert not np.any(gval)


# ------------------------------------------------------------- errors

def test_errors():
    with sn.graph_scope():
        x = sn.input("x", (4, 3))
        with pytest.raises(LayerError, match="same count"):
            apply("SigmoidCrossEntropyLoss", x, sn.input("t", (4, 2)), name="L")
        with pytest.raises(LayerError, match="same first dimension"):
            apply("EuclideanLoss", x, sn.input("e", (3, 4)), name="L")
        with pytest.raises(LayerError, match="same dimension"):
            apply("EuclideanLoss", x, sn.input("f", (4, 2)), name="L")
        with pytest.raises(LayerError, match="L1 or L2"):
            apply("HingeLoss", x, sn.input("l", (4,)), name="L", norm="L3")
        with pytest.raises(LayerError, match=r"\(N, C, 1, 1\)"):
            apply("ContrastiveLoss", sn.input("a", (4, 3, 2, 1)), sn.input("b", (4, 3, 2, 1)),
                  sn.input("y", (4,)), name="L")
        with pytest.raises(LayerError, match="normalize is deprecated"):
            apply("InfogainLoss", x, sn.input("m", (4,)), sn.input("h", (3, 3)), name="L",
                  normalize=True)
        with pytest.raises(LayerError, match="3 x 3"):
            apply("InfogainLoss", x, sn.input("n", (4,)), sn.input("h2", (2, 2)), name="L")
        with pytest.raises(LayerError, match="source"):
            apply("InfogainLoss", x, sn.input("o", (4,)), name="L")
        with pytest.raises(LayerError, match="one label per item"):
            apply("MultinomialLogisticLoss", x, sn.input("q", (4, 2)), name="L")


def test_registered_and_documented():
    for typ in ["SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss", "ContrastiveLoss",
                "InfogainLoss", "MultinomialLogisticLoss"]:
        spec = sn.layers.get(typ)
        assert spec.doc and spec.module.endswith("losses") and spec.loss, typ


# ------------------------------------------------------------- through a Net

NET = """
name: "losses"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "t" top: "lab" top: "y"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 3 } shape { dim: 4 }
                      shape { dim: 4 } } }
layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "sce"
        loss_param { ignore_label: -1 normalization: VALID } }
layer { name: "hinge" type: "HingeLoss" bottom: "x" bottom: "lab" top: "hinge"
        loss_weight: 0.5 hinge_loss_param { norm: L2 } }
layer { name: "info" type: "InfogainLoss" bottom: "x" bottom: "lab" top: "info"
        infogain_loss_param { source: "%(source)s" } }
layer { name: "prob" type: "Softmax" bottom: "x" top: "prob" }
layer { name: "mll" type: "MultinomialLogisticLoss" bottom: "prob" bottom: "lab" top: "mll"
        loss_weight: 2 }
layer { name: "con" type: "ContrastiveLoss" bottom: "x" bottom: "t" bottom: "y" top: "con"
        contrastive_loss_param { margin: 2 legacy_version: true } }
"""


def test_net_losses_weights_and_infogain_file(tmp_path):
    """Loss layers default to loss_weight 1, parameters and enums come from the
    prototxt, H is read from a .binaryproto, and backward sums the weighted Caffe
    diffs into the shared bottom."""
    h = (np.abs(f32(1, 1, 3, 3)) + 0.2).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    prototxt.write_blobproto(h, str(path))
    net = sn.Net(NET % {"source": path}, sn.TRAIN, backend="numpy")
    x = f32(4, 3)
    t = R.random((4, 3)).astype(np.float32)
    t[0, 0] = -1.0
    lab = np.array([0, 2, 1, 1], np.float32)
    y = np.array([1, 0, 0, 1], np.float32)
    net.forward(x=x, t=t, lab=lab, y=y)
    weights = {name: net.layer_dict[name].loss_weights[0]
               for name in ["sce", "hinge", "info", "mll", "con"]}
    assert weights == {"sce": 1.0, "hinge": 0.5, "info": 1.0, "mll": 2.0, "con": 1.0}
    assert net.layer_dict["prob"].loss_weights == [0.0]
    b = [a.astype(np.float64) for a in (x, t, lab, y)]
    x64, t64, lab64, y64 = b
    e = np.exp(x64 - x64.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    refs = {"sce": sce_ref("VALID", -1)([x64, t64], [1.0]),
            "hinge": hinge_ref("L2")([x64, lab64], [0.5]),
            "info": infogain_ref()([x64, lab64, h.astype(np.float64)], [1.0]),
            "mll": mll_ref([prob, lab64], [2.0]),
            "con": contrastive_ref(2.0, legacy=True)([x64, t64, y64], [1.0])}
    for name, (tops, _) in refs.items():
        np.testing.assert_allclose(net.blobs[name].data, tops[0], rtol=1e-5,
                                   err_msg=name)
    net.backward()
    # Softmax's backward for the MultinomialLogisticLoss part: J^T dp
    dprob = refs["mll"][1][0]
    dx_mll = prob * (dprob - (dprob * prob).sum(1, keepdims=True))
    dx = refs["sce"][1][0] + refs["hinge"][1][0] + refs["info"][1][0] + dx_mll + \
        refs["con"][1][0]
    np.testing.assert_allclose(net.blobs["x"].diff, dx, rtol=1e-4, atol=1e-6)
    # labels, targets and H get no diff (Caffe refuses to back-propagate to them)
    assert not net.blobs["lab"].diff.any() and not net.blobs["y"].diff.any()
    np.testing.assert_allclose(net.blobs["t"].diff, refs["con"][1][1], rtol=1e-5, atol=1e-7)
