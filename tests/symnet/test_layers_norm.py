"""Caffe's normalization and parametric layers (symnet/layers/norm.py): PReLU,
BatchNorm, Scale, Bias, MVN, LRN and Embed.

Forward against NumPy closed forms and backward (bottoms and params) against
Caffe's backward formulas restated in NumPy, on every backend with all cases in
one compiled function; gradients also by finite differences (sn.gradcheck);
BatchNorm's running statistics; and a Net with Convolution, BatchNorm, Scale, ReLU
and Eltwise trained one step on numpy and cpu."""
import numpy as np
import pytest

import loops
import symnet as sn
from snhelp import check_cases
from symnet.layers import LayerError, apply

R = np.random.default_rng(21)


def f32(*shape, scale=1.0, low=None):
    a = R.standard_normal(shape) * scale
    if low is not None:
        a = np.abs(a) + low
    return a.astype(np.float32)


def bview(v, ndim, axis=1):
    """A per-channel vector broadcast along ``axis``."""
    return np.reshape(v, tuple(np.size(v) if i == axis else 1 for i in range(ndim)))


def red(a, keep_axis=1):
    return a.sum(axis=tuple(i for i in range(a.ndim) if i != keep_axis))


# ------------------------------------------------------------- closed forms

def prelu_ref(b, p, g):
    (x,), (a,) = b, p
    av = np.reshape(a, (1,) * x.ndim) if np.ndim(a) == 0 else bview(a, x.ndim)
    y = np.maximum(x, 0) + av * np.minimum(x, 0)
    if g is None:
        return y
    dx = g * ((x > 0) + av * (x <= 0))
    contrib = g * x * (x <= 0)
    da = contrib.sum() if np.ndim(a) == 0 else red(contrib)
    return y, [dx], [np.reshape(da, np.shape(a))]


def bn_batch(x, eps):
    axes = tuple(i for i in range(x.ndim) if i != 1)
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return mu, var, axes


def bn_train_ref(eps, maf):
    def ref(b, p, g):
        (x,) = b
        mu, var, axes = bn_batch(x, eps)
        y = (x - mu) / np.sqrt(var + eps)
        if g is None:
            return y
        # Caffe's backward: (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps)
        dx = (g - g.mean(axis=axes, keepdims=True)
              - (g * y).mean(axis=axes, keepdims=True) * y) / np.sqrt(var + eps)
        return y, [dx], None
    return ref


def bn_updates(x, p, maf):
    mean_sum, var_sum, factor = p
    mu, var, _ = bn_batch(x, 0.0)
    c = x.shape[1] if x.ndim > 1 else 1
    m = x.size // c
    return [factor * maf + 1, mean_sum * maf + mu.reshape(-1),
            var_sum * maf + var.reshape(-1) * m / (m - 1)]


def bn_global_ref(eps):
    def ref(b, p, g):
        (x,), (mean_sum, var_sum, factor) = b, p
        inv = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        sd = np.sqrt(bview(var_sum * inv, x.ndim) + eps)
        y = (x - bview(mean_sum * inv, x.ndim)) / sd
        return y if g is None else (y, [g / sd], None)
    return ref


def scale_ref(axis, n, bias=False, two=False):
    """y = x * s (+ b), s spanning x's axes axis .. axis + n - 1."""
    def ref(b, p, g):
        x = b[0]
        s = b[1] if two else p[0]
        ax = 0 if np.ndim(s) == 0 else axis % x.ndim
        shp = (1,) * ax + np.shape(s) + (1,) * (x.ndim - ax - n)
        y = x * np.reshape(s, shp)
        if bias:
            y = y + np.reshape(p[-1], shp)
        if g is None:
            return y
        other = tuple(i for i in range(x.ndim) if not ax <= i < ax + n)
        ds = (g * x).sum(axis=other).reshape(np.shape(s))
        db = g.sum(axis=other).reshape(np.shape(s))
        dx = g * np.reshape(s, shp)
        dparams = ([] if two else [ds]) + ([db] if bias else [])
        return y, ([dx, ds] if two else [dx]), dparams
    return ref


def bias_ref(axis, n, two=False):
    def ref(b, p, g):
        x = b[0]
        t = b[1] if two else p[0]
        ax = 0 if np.ndim(t) == 0 else axis % x.ndim
        shp = (1,) * ax + np.shape(t) + (1,) * (x.ndim - ax - n)
        y = x + np.reshape(t, shp)
        if g is None:
            return y
        other = tuple(i for i in range(x.ndim) if not ax <= i < ax + n)
        dt = g.sum(axis=other).reshape(np.shape(t))
        return y, ([g, dt] if two else [g]), ([] if two else [dt])
    return ref


def mvn_ref(normalize_variance=True, across_channels=False, eps=1e-9, exact=False):
    """Caffe's MVN forward; backward is Caffe's formula (exact=False), which leaves
    eps out of the derivative of the standard deviation, or the exact derivative."""
    def ref(b, p, g):
        (x,) = b
        x = x.reshape(x.shape + (1,) * (4 - x.ndim))
        axes = (1, 2, 3) if across_channels else (2, 3)
        z = x - x.mean(axis=axes, keepdims=True)
        if not normalize_variance:
            return z if g is None else (z, [(g - g.mean(axis=axes, keepdims=True))
                                            .reshape(b[0].shape)], None)
        sd = np.sqrt((z * z).mean(axis=axes, keepdims=True))
        y = z / (sd + eps)
        if g is None:
            return y
        g = g.reshape(x.shape)
        factor = np.where(sd > 0, (sd + eps) / np.where(sd > 0, sd, 1), 0) if exact else 1.0
        dx = (g - g.mean(axis=axes, keepdims=True)
              - (g * y).mean(axis=axes, keepdims=True) * y * factor) / (sd + eps)
        return y, [dx.reshape(b[0].shape)], None
    return ref


def chan_window(a, half):
    """Sum over channels c - half .. c + half (zeros beyond the edges)."""
    c = a.shape[1]
    pad = np.pad(a, ((0, 0), (half, half), (0, 0), (0, 0)))
    return sum(pad[:, i:i + c] for i in range(2 * half + 1))


def plane_window(a, half):
    h, w = a.shape[2:]
    pad = np.pad(a, ((0, 0), (0, 0), (half, half), (half, half)))
    return sum(pad[:, :, i:i + h, j:j + w] for i in range(2 * half + 1)
               for j in range(2 * half + 1))


def lrn_across_ref(size=5, alpha=1.0, beta=0.75, k=1.0):
    def ref(b, p, g):
        (x,) = b
        scale = k + alpha / size * chan_window(x * x, (size - 1) // 2)
        y = x * scale ** -beta
        if g is None:
            return y
        # Caffe's CrossChannelBackward
        dx = g * scale ** -beta - 2 * alpha * beta / size * x * \
            chan_window(g * y / scale, (size - 1) // 2)
        return y, [dx], None
    return ref


def lrn_within_ref(size=5, alpha=1.0, beta=0.75):
    """Caffe's WITHIN_CHANNEL: split, square, AVE pool (pad (size-1)/2, divisor
    size^2), power (shift 1, scale alpha, power -beta), product. k is unused."""
    def ref(b, p, g):
        (x,) = b
        half = (size - 1) // 2
        base = 1 + alpha * plane_window(x * x, half) / size ** 2
        y = x * base ** -beta
        if g is None:
            return y
        dbase = g * x * -beta * base ** (-beta - 1)
        dx = g * base ** -beta + 2 * x * plane_window(dbase, half) * alpha / size ** 2
        return y, [dx], None
    return ref


def embed_ref(bias=True):
    def ref(b, p, g):
        (idx,) = b
        w = p[0]
        rows = np.trunc(idx).astype(np.int64)
        y = w[rows]
        if bias:
            y = y + p[1]
        if g is None:
            return y
        dw = np.zeros_like(w)
        np.add.at(dw, rows.reshape(-1), g.reshape(-1, w.shape[1]))
        dparams = [dw] + ([g.reshape(-1, w.shape[1]).sum(0)] if bias else [])
        return y, [None], dparams
    return ref


X4 = f32(2, 3, 4, 5)
X4.flat[:3] = 0.0                                   # PReLU's kink
C7 = f32(2, 7, 3, 4)                                # LRN: windows clipped at both ends
IDX = np.array([[0, 4, 2.7], [1, 1, 3]], np.float32)   # 2.7 truncates to 2
BN_P = [f32(3), f32(3, low=0.5), np.array([1.5], np.float32)]
BN_P0 = [f32(3), f32(3, low=0.5), np.array([0.0], np.float32)]

# (id, type, params, phase, bottoms, differentiable bottoms, param values, ref,
#  BatchNorm moving_average_fraction if the layer updates statistics)
CASES = [
    ("prelu", "PReLU", {}, "TEST", [X4], [True], [np.array([0.1, -0.3, 0.6], np.float32)],
     prelu_ref, None),
    ("prelu_shared", "PReLU", {"channel_shared": True}, "TEST", [X4], [True],
     [np.array(0.35, np.float32)], prelu_ref, None),
    ("prelu_2d", "PReLU", {}, "TEST", [f32(4, 3)], [True], [f32(3)], prelu_ref, None),
    ("bn_train", "BatchNorm", {}, "TRAIN", [X4 * 2 + 1], [True], BN_P,
     bn_train_ref(1e-5, 0.999), 0.999),
    ("bn_train_opts", "BatchNorm", {"moving_average_fraction": 0.9, "eps": 1e-2}, "TRAIN",
     [f32(2, 3, 5)], [True], BN_P, bn_train_ref(1e-2, 0.9), 0.9),
    ("bn_train_2d", "BatchNorm", {}, "TRAIN", [f32(6, 3)], [True], BN_P,
     bn_train_ref(1e-5, 0.999), 0.999),
    ("bn_test_batch", "BatchNorm", {"use_global_stats": False}, "TEST", [X4], [True], BN_P,
     bn_train_ref(1e-5, 0.999), 0.999),
    ("bn_global", "BatchNorm", {}, "TEST", [X4], [True], BN_P, bn_global_ref(1e-5), None),
    ("bn_global_train", "BatchNorm", {"use_global_stats": True}, "TRAIN", [X4], [True], BN_P,
     bn_global_ref(1e-5), None),
    ("bn_global_zero", "BatchNorm", {}, "TEST", [X4], [True], BN_P0, bn_global_ref(1e-5),
     None),
    ("scale", "Scale", {}, "TEST", [X4], [True], [f32(3)], scale_ref(1, 1), None),
    ("scale_bias", "Scale", {"bias_term": True}, "TEST", [X4], [True], [f32(3), f32(3)],
     scale_ref(1, 1, bias=True), None),
    ("scale_to_end", "Scale", {"num_axes": -1}, "TEST", [X4], [True], [f32(3, 4, 5)],
     scale_ref(1, 3), None),
    ("scale_scalar", "Scale", {"num_axes": 0, "axis": 2}, "TEST", [X4], [True],
     [np.array(1.7, np.float32)], scale_ref(0, 0), None),
    ("scale_neg_axis", "Scale", {"axis": -2, "num_axes": 2}, "TEST", [X4], [True],
     [f32(4, 5)], scale_ref(2, 2), None),
    ("scale_two", "Scale", {"axis": 0}, "TEST", [X4, f32(2, 3)], [True, True], [],
     scale_ref(0, 2, two=True), None),
    ("scale_two_bias", "Scale", {"bias_term": True}, "TEST", [X4, f32(3, 4)],
     [True, True], [f32(3, 4)], scale_ref(1, 2, bias=True, two=True), None),
    ("bias", "Bias", {}, "TEST", [X4], [True], [f32(3)], bias_ref(1, 1), None),
    ("bias_axis0", "Bias", {"axis": 0, "num_axes": -1}, "TEST", [f32(2, 3)], [True],
     [f32(2, 3)], bias_ref(0, 2), None),
    ("bias_two", "Bias", {"axis": 2}, "TEST", [X4, f32(4, 5)], [True, True], [],
     bias_ref(2, 2, two=True), None),
    ("mvn", "MVN", {}, "TEST", [X4 * 3 + 1], [True], [], mvn_ref(), None),
    ("mvn_across", "MVN", {"across_channels": True}, "TEST", [X4], [True], [],
     mvn_ref(across_channels=True), None),
    ("mvn_mean_only", "MVN", {"normalize_variance": False}, "TEST", [X4], [True], [],
     mvn_ref(normalize_variance=False), None),
    ("mvn_big_eps", "MVN", {"eps": 0.1}, "TEST", [X4], [True], [],
     mvn_ref(eps=0.1, exact=True), None),
    ("mvn_2d", "MVN", {}, "TEST", [f32(4, 3)], [True], [], mvn_ref(), None),
    ("lrn", "LRN", {}, "TEST", [C7], [True], [], lrn_across_ref(), None),
    ("lrn_opts", "LRN", {"local_size": 3, "alpha": 2.0, "beta": 0.5, "k": 1.5}, "TEST",
     [C7], [True], [], lrn_across_ref(3, 2.0, 0.5, 1.5), None),
    ("lrn_within", "LRN", {"norm_region": "WITHIN_CHANNEL", "local_size": 3,
                           "alpha": 0.5, "k": 2.0}, "TEST",
     [X4], [True], [], lrn_within_ref(3, 0.5), None),
    ("lrn_within_5", "LRN", {"norm_region": "WITHIN_CHANNEL", "beta": 0.6}, "TEST",
     [X4], [True], [], lrn_within_ref(5, 1.0, 0.6), None),
    ("embed", "Embed", {"num_output": 4, "input_dim": 5}, "TEST", [IDX], [False],
     [f32(5, 4), f32(4)], embed_ref(), None),
    ("embed_nobias", "Embed", {"num_output": 3, "input_dim": 6, "bias_term": False}, "TEST",
     [IDX], [False], [f32(6, 3)], embed_ref(bias=False), None),
]
IDS = [c[0] for c in CASES]


def set_params(ctx, values):
    assert [d.tensor.shape for d in ctx.params] == [np.shape(v) for v in values]
    for d, v in zip(ctx.params, values):
        d.tensor.op.set_value(np.asarray(v, np.float32), d.tensor.shape)


def _build_all():
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(8)
    for cid, typ, params, phase, bottoms, diff, pvals, ref, maf in CASES:
        xs = [sn.input(f"{cid}_b{k}", b.shape) for k, b in enumerate(bottoms)]
        (y,), ctx = apply(typ, *xs, name=cid, phase=phase, **params)
        set_params(ctx, pvals)
        g = g_rng.standard_normal(y.shape).astype(np.float32)
        gi = sn.input(f"{cid}_g", y.shape)
        wrt = [x for x, d in zip(xs, diff) if d]
        learn = [d.tensor for d in ctx.params] if typ != "BatchNorm" else []
        grads = sn.vjp([y], [gi], wrt + learn)
        b64 = [b.astype(np.float64) for b in bottoms]
        p64 = [np.asarray(v, np.float64) for v in pvals]
        y64, dbs, dps = ref(b64, p64, g.astype(np.float64))
        ins += xs + [gi]
        feeds += list(bottoms) + [g]
        outs += [y] + list(grads)
        want += [(cid, "top", y64)]
        want += [(cid, f"d_bottom{k}", d) for k, d in enumerate(dbs) if d is not None]
        want += [(cid, f"d_param{k}", d) for k, d in enumerate(dps or [])]
        if maf is not None:
            upd = dict((id(p), v) for p, v in ctx.updates)
            assert len(ctx.updates) == 3
            # the order of ctx.updates is the layer's; compare blob by blob
            by_blob = [upd[id(d.tensor)] for d in ctx.params]
            exp_factor, exp_mean, exp_var = bn_updates(b64[0], p64, maf)
            outs += by_blob
            want += [(cid, "mean_sum", exp_mean), (cid, "var_sum", exp_var),
                     (cid, "scale_factor", exp_factor)]
        else:
            assert not ctx.updates, cid
    return ins, feeds, outs, want


def test_norm_layers_forward_backward(backend):
    """Every case's top, bottom diffs, param diffs and BatchNorm statistics updates on
    this backend equal the closed forms (one compiled function for all cases)."""
    check_cases(_build_all, backend, rtol=1e-4, atol=1e-4)


# gradcheck on small blobs: bottoms and learnable params (float64 reference)
S4 = (2, 3, 2, 3)
GRAD_CASES = [
    ("prelu", "PReLU", {}, "TEST", [S4], [np.array([0.1, -0.3, 0.6])]),
    ("prelu_shared", "PReLU", {"channel_shared": True}, "TEST", [S4], [np.array(0.35)]),
    ("bn_train", "BatchNorm", {}, "TRAIN", [S4], None),
    ("bn_train_2d", "BatchNorm", {"eps": 1e-3}, "TRAIN", [(5, 3)], None),
    ("bn_global", "BatchNorm", {}, "TEST", [S4],
     [np.array([0.2, -0.1, 0.4]), np.array([1.0, 0.5, 2.0]), np.array([1.5])]),
    ("scale_bias", "Scale", {"bias_term": True}, "TEST", [S4], [f32(3), f32(3)]),
    ("scale_scalar", "Scale", {"num_axes": 0}, "TEST", [S4], [np.array(1.3)]),
    ("scale_two", "Scale", {"axis": 0, "bias_term": True}, "TEST", [S4, (2, 3)], [f32(2, 3)]),
    ("bias", "Bias", {"num_axes": -1}, "TEST", [S4], [f32(3, 2, 3)]),
    ("bias_two", "Bias", {}, "TEST", [S4, (3, 2)], []),
    ("mvn", "MVN", {}, "TEST", [S4], []),
    ("mvn_across_eps", "MVN", {"across_channels": True, "eps": 0.1}, "TEST", [S4], []),
    ("mvn_mean_only", "MVN", {"normalize_variance": False}, "TEST", [S4], []),
    ("lrn", "LRN", {"local_size": 3, "alpha": 2.0, "k": 1.5}, "TEST", [(1, 4, 2, 2)], []),
    ("lrn_within", "LRN", {"norm_region": "WITHIN_CHANNEL", "local_size": 3, "alpha": 3.0},
     "TEST", [(1, 2, 3, 3)], []),
]


@pytest.mark.parametrize("cid, typ, params, phase, shapes, pvals", GRAD_CASES,
                         ids=[c[0] for c in GRAD_CASES])
def test_norm_gradcheck(cid, typ, params, phase, shapes, pvals):
    arrays = [R.standard_normal(s) for s in shapes]
    names = []

    def fn(*xs):
        (y,), ctx = apply(typ, *xs, name="L", phase=phase, **params)
        if pvals is not None:
            set_params(ctx, pvals)
            names[:] = [d.tensor.op.name for d in ctx.params]
        return y
    # a first build to learn the param names
    with sn.graph_scope():
        fn(*[sn.input(f"x{i}", s) for i, s in enumerate(shapes)])
    res = sn.gradcheck(fn, arrays, params=names, eps=1e-5)
    assert res.checked > 0


def test_embed_gradcheck_weights():
    """Embed: gradient to the weight and bias rows (the indices are constants)."""
    w0, b0 = R.standard_normal((5, 3)), R.standard_normal(3)

    def fn(g):
        (y,), ctx = apply("Embed", sn.constant(IDX), name="L", num_output=3, input_dim=5)
        set_params(ctx, [w0, b0])
        return y * g
    res = sn.gradcheck(fn, [np.ones(IDX.shape + (3,))], params=["L_0", "L_1"])
    assert res.checked > 0


# ------------------------------------------------------------- blobs and errors

def test_blob_shapes_fillers_and_lr_mult():
    with sn.graph_scope():
        x = sn.input("x", (2, 3, 4, 5))
        _, ctx = apply("PReLU", x, name="p")
        assert ctx.params[0].tensor.shape == (3,)
        np.testing.assert_array_equal(ctx.params[0].tensor.op.get_value(), 0.25)
        _, ctx = apply("PReLU", x, name="q", channel_shared=True,
                       filler={"type": "constant", "value": 0.5})
        assert ctx.params[0].tensor.shape == ()           # Caffe: vector<int>(0)
        np.testing.assert_array_equal(ctx.params[0].tensor.op.get_value(), 0.5)
        _, ctx = apply("BatchNorm", x, name="bn")
        assert [d.tensor.shape for d in ctx.params] == [(3,), (3,), (1,)]
        assert [d.lr_mult for d in ctx.params] == [0.0, 0.0, 0.0]
        assert all(not d.tensor.op.get_value().any() for d in ctx.params)
        _, ctx = apply("BatchNorm", x, name="bn2", param_specs=[{"lr_mult": 0.0}])
        assert [d.lr_mult for d in ctx.params] == [0.0, 0.0, 0.0]
        with pytest.raises(LayerError, match="batch normalization statistics"):
            apply("BatchNorm", x, name="bn3", param_specs=[{"lr_mult": 1.0}])
        _, ctx = apply("Scale", x, name="s", bias_term=True)
        assert [d.tensor.shape for d in ctx.params] == [(3,), (3,)]
        np.testing.assert_array_equal(ctx.params[0].tensor.op.get_value(), 1.0)
        np.testing.assert_array_equal(ctx.params[1].tensor.op.get_value(), 0.0)
        _, ctx = apply("Scale", x, sn.input("s", (3, 4)), name="s2", bias_term=True,
                       bias_filler={"type": "constant", "value": 2.0})
        assert [d.tensor.shape for d in ctx.params] == [(3, 4)]
        np.testing.assert_array_equal(ctx.params[0].tensor.op.get_value(), 2.0)
        _, ctx = apply("Bias", x, name="b", axis=-1, num_axes=1)
        assert ctx.params[0].tensor.shape == (5,)
        (y,), ctx = apply("Embed", sn.input("i", (2, 3)), name="e", num_output=4,
                          input_dim=7)
        assert y.shape == (2, 3, 4)
        assert [d.tensor.shape for d in ctx.params] == [(7, 4), (4,)]
        (y,), _ = apply("MVN", sn.input("m", (4, 3)), name="m")
        assert y.shape == (4, 3, 1, 1)                    # Caffe's legacy 4-d top


def test_errors():
    with sn.graph_scope():
        x = sn.input("x", (2, 3, 4, 5))
        with pytest.raises(LayerError, match="odd"):
            apply("LRN", x, name="L", local_size=4)
        with pytest.raises(LayerError, match="expected 4"):
            apply("LRN", sn.input("y", (2, 3)), name="L")
        with pytest.raises(LayerError, match="at least 2"):
            apply("PReLU", sn.input("z", (5,)), name="L")
        with pytest.raises(LayerError, match="extends past"):
            apply("Scale", x, name="L", axis=2, num_axes=3)
        with pytest.raises(LayerError, match="num_axes"):
            apply("Bias", x, name="L", num_axes=-2)
        with pytest.raises(LayerError, match="does not match"):
            apply("Scale", x, sn.input("s", (4, 4)), name="L")
        with pytest.raises(LayerError, match="num_output"):
            apply("Embed", x, name="L", input_dim=3)
        with pytest.raises(LayerError, match="at most 4"):
            apply("MVN", sn.input("w", (1, 2, 3, 4, 5)), name="L")


def test_registered_and_documented():
    for typ in ["PReLU", "BatchNorm", "Scale", "Bias", "MVN", "LRN", "Embed"]:
        spec = sn.layers.get(typ)
        assert spec.doc and spec.module.endswith("norm"), typ


# ---------------------------------------------------------------------- a Net

NET = """
name: "bnnet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 2 dim: 5 dim: 5 } shape { dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1
                            weight_filler { type: "gaussian" std: 0.3 }
                            bias_filler { type: "constant" value: 0.2 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "bn1" }
layer { name: "sc1" type: "Scale" bottom: "bn1" top: "bn1"
        scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" }
layer { name: "proj" type: "Convolution" bottom: "data" top: "proj"
        convolution_param { num_output: 3 kernel_size: 1
                            weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sum" type: "Eltwise" bottom: "bn1" bottom: "proj" top: "sum"
        eltwise_param { operation: SUM coeff: 1 coeff: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _run_net(backend, data, label):
    sn.fillers.set_random_seed(0)    # the same weights on every backend: one seeded stream
    net = sn.Net(NET, sn.TRAIN, backend=backend)
    net.forward(data=data, label=label)
    net.backward()
    return net


def test_net_batchnorm_scale_eltwise_train():
    data = R.standard_normal((4, 2, 5, 5)).astype(np.float32)
    label = np.array([0, 2, 1, 2], np.float32)
    nets = {be: _run_net(be, data, label) for be in ("numpy", "cpu")}
    ref, cpu = nets["numpy"], nets["cpu"]
    for name in ref.blobs:
        np.testing.assert_allclose(cpu.blobs[name].data, ref.blobs[name].data, rtol=1e-4,
                                   atol=1e-5, err_msg=f"blob {name} data")
        np.testing.assert_allclose(cpu.blobs[name].diff, ref.blobs[name].diff, rtol=1e-4,
                                   atol=1e-5, err_msg=f"blob {name} diff")
    for lname, blobs in ref.params.items():
        for i, b in enumerate(blobs):
            np.testing.assert_allclose(cpu.params[lname][i].data, b.data, rtol=1e-5,
                                       atol=1e-6, err_msg=f"{lname}[{i}] data")
            np.testing.assert_allclose(cpu.params[lname][i].diff, b.diff, rtol=1e-4,
                                       atol=1e-5, err_msg=f"{lname}[{i}] diff")
    for net in (ref, cpu):
        bn = net.layer_dict["bn1"]
        assert bn.lr_mult == [0.0, 0.0, 0.0]
        assert [b.shape for b in net.params["bn1"]] == [(3,), (3,), (1,)]
        assert [b.shape for b in net.params["sc1"]] == [(3,), (3,)]
        # conv1 by loops, then BatchNorm's statistics after one TRAIN forward
        w, bias = (b.data.astype(np.float64) for b in net.params["conv1"])
        conv = loops.conv2d(data.astype(np.float64), w, 1, 1) + bview(bias, 4)
        np.testing.assert_allclose(net.blobs["conv1"].data, conv, rtol=1e-4, atol=1e-5)
        mu = conv.mean(axis=(0, 2, 3))
        var = conv.var(axis=(0, 2, 3))
        m = conv.size // 3
        mean_sum, var_sum, factor = (b.data for b in net.params["bn1"])
        np.testing.assert_allclose(factor, [1.0], rtol=1e-6)
        np.testing.assert_allclose(mean_sum, mu, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var_sum, var * m / (m - 1), rtol=1e-4, atol=1e-5)
        # the forward used the batch statistics; Scale, ReLU in place, Eltwise SUM
        s, sb = (b.data for b in net.params["sc1"])
        bn = (conv - bview(mu, 4)) / np.sqrt(bview(var, 4) + 1e-5)
        act = np.maximum(bn * bview(s, 4) + bview(sb, 4), 0)
        np.testing.assert_allclose(net.blobs["bn1"].data, act, rtol=1e-4, atol=1e-4)
        proj = loops.conv2d(data.astype(np.float64),
                            net.params["proj"][0].data.astype(np.float64)) + \
            bview(net.params["proj"][1].data, 4)
        np.testing.assert_allclose(net.blobs["sum"].data, act + 0.5 * proj, rtol=1e-4,
                                   atol=1e-4)
        # the statistics blobs are not learned: no diffs
        assert not any(b.diff.any() for b in net.params["bn1"])
        assert net.params["sc1"][0].diff.any() and net.params["conv1"][0].diff.any()
    # a second TRAIN forward accumulates: sum * 0.999 + new batch statistics
    ref.forward(data=data, label=label)
    mean_sum, var_sum, factor = (b.data for b in ref.params["bn1"])
    np.testing.assert_allclose(factor, [0.999 + 1], rtol=1e-6)
    np.testing.assert_allclose(mean_sum, mu * 1.999, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var_sum, var * m / (m - 1) * 1.999, rtol=1e-4, atol=1e-5)
