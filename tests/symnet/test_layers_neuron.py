"""Caffe's elementwise layers (symnet/layers/neuron.py): ELU, Sigmoid, TanH, AbsVal,
BNLL, Power, Exp, Log, Threshold, Clip, Swish and Eltwise.

Forward against NumPy closed forms and backward against Caffe's hand-written
backward formulas (restated here in NumPy, including the side Caffe takes at
kinks), on every backend with all layers in one compiled function; gradients also
by finite differences (sn.gradcheck on the float64 reference)."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_cases
from symnet.layers import LayerError, apply

R = np.random.default_rng(11)
SHAPE = (2, 3, 4, 5)


def _x():
    x = R.standard_normal(SHAPE)
    # exact kinks: 0 (ELU, AbsVal), Clip's bounds, Threshold's threshold
    x.flat[:4] = 0.0
    x.flat[4], x.flat[5], x.flat[6] = -0.5, 0.75, 0.25
    return x.astype(np.float32)


X = _x()
POS = (np.abs(R.standard_normal(SHAPE)) + 0.5).astype(np.float32)       # Log, powers
BIG = (R.standard_normal(SHAPE) * 60).astype(np.float32)               # BNLL overflow
BIG.flat[:2] = [200.0, -200.0]


def sigm(x):
    return 1.0 / (1.0 + np.exp(-x))


def bnll_caffe(x):
    with np.errstate(over="ignore"):
        return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))),
                        np.log1p(np.exp(np.minimum(x, 0))))


# (id, type, params, input, forward(x), Caffe's backward(x, y, dy))
CASES = [
    ("elu", "ELU", {}, X,
     lambda x: np.where(x > 0, x, np.exp(np.minimum(x, 0)) - 1),
     lambda x, y, g: g * np.where(x > 0, 1.0, 1.0 + y)),
    ("elu_alpha", "ELU", {"alpha": 0.7}, X,
     lambda x: np.where(x > 0, x, 0.7 * (np.exp(np.minimum(x, 0)) - 1)),
     lambda x, y, g: g * np.where(x > 0, 1.0, 0.7 + y)),       # alpha at x == 0
    ("sigmoid", "Sigmoid", {}, X, sigm, lambda x, y, g: g * y * (1 - y)),
    ("tanh", "TanH", {}, X, np.tanh, lambda x, y, g: g * (1 - y * y)),
    ("absval", "AbsVal", {}, X, np.abs, lambda x, y, g: g * np.sign(x)),   # 0 at 0
    ("bnll", "BNLL", {}, BIG, bnll_caffe,
     lambda x, y, g: g * np.exp(np.minimum(x, 50)) / (np.exp(np.minimum(x, 50)) + 1)),
    ("power_sq", "Power", {"power": 2.0, "scale": 0.5, "shift": 1.0}, X,
     lambda x: (1 + 0.5 * x) ** 2, lambda x, y, g: g * 2 * 0.5 * (1 + 0.5 * x)),
    ("power_cube_neg", "Power", {"power": 3.0, "scale": -1.0}, X,
     lambda x: (-x) ** 3, lambda x, y, g: g * -3 * x ** 2),
    ("power_frac", "Power", {"power": -1.5, "scale": 2.0, "shift": 0.25}, POS,
     lambda x: (0.25 + 2 * x) ** -1.5, lambda x, y, g: g * -1.5 * 2 * y / (0.25 + 2 * x)),
    ("power_zero", "Power", {"power": 0.0, "scale": 3.0}, X,
     lambda x: np.ones_like(x), lambda x, y, g: np.zeros_like(x)),
    ("power_noscale", "Power", {"power": 3.0, "scale": 0.0, "shift": 2.0}, X,
     lambda x: np.full_like(x, 8.0), lambda x, y, g: np.zeros_like(x)),
    ("power_default", "Power", {}, X, lambda x: x, lambda x, y, g: g),
    ("exp", "Exp", {}, X, np.exp, lambda x, y, g: g * y),
    ("exp_base", "Exp", {"base": 2.0, "scale": 0.5, "shift": 1.0}, X,
     lambda x: 2.0 ** (1 + 0.5 * x), lambda x, y, g: g * y * np.log(2) * 0.5),
    ("log", "Log", {}, POS, np.log, lambda x, y, g: g / x),
    ("log_base", "Log", {"base": 10.0, "scale": 2.0, "shift": 0.5}, POS,
     lambda x: np.log10(0.5 + 2 * x), lambda x, y, g: g * 2 / np.log(10) / (0.5 + 2 * x)),
    ("threshold", "Threshold", {"threshold": 0.25}, X,
     lambda x: (x > 0.25).astype(np.float64), lambda x, y, g: np.zeros_like(x)),
    ("clip", "Clip", {"min": -0.5, "max": 0.75}, X,
     lambda x: np.maximum(-0.5, np.minimum(x, 0.75)),
     lambda x, y, g: g * ((x >= -0.5) & (x <= 0.75))),            # bounds included
    ("swish", "Swish", {}, X, lambda x: x * sigm(x),
     lambda x, y, g: g * (y + sigm(x) * (1 - y))),
    ("swish_beta", "Swish", {"beta": 1.5}, X, lambda x: x * sigm(1.5 * x),
     lambda x, y, g: g * (1.5 * y + sigm(1.5 * x) * (1 - 1.5 * y))),
]
IDS = [c[0] for c in CASES]


# Eltwise: 3 bottoms with ties (bottom 0 == bottom 1, and bottom 2 == the max)
E0 = R.standard_normal(SHAPE).astype(np.float32)
E1 = R.standard_normal(SHAPE).astype(np.float32)
E2 = R.standard_normal(SHAPE).astype(np.float32)
E1.flat[:10] = E0.flat[:10]                       # tie 0-1: Caffe picks bottom 1
E2.flat[5:15] = np.maximum(E0.flat[5:15], E1.flat[5:15])   # tie with 2: earlier keeps it
E2.flat[15:20] = np.maximum(E0.flat[15:20], E1.flat[15:20]) + 1.0


def eltwise_max_caffe(bottoms):
    """Caffe's EltwiseLayer MAX forward: the max and the mask of the winning bottom."""
    a, b = bottoms[0], bottoms[1]
    top = np.where(a > b, a, b)
    mask = np.where(a > b, 0, 1)
    for k, c in enumerate(bottoms[2:], 2):
        upd = c > top
        top = np.where(upd, c, top)
        mask = np.where(upd, k, mask)
    return top, mask


ELTWISE = [
    ("sum", {"operation": "SUM"}, lambda b: b[0] + b[1] + b[2],
     lambda b, g: [g, g, g]),
    ("sum_coeff", {"operation": "SUM", "coeff": [1.0, -2.0, 0.5]},
     lambda b: b[0] - 2 * b[1] + 0.5 * b[2], lambda b, g: [g, -2 * g, 0.5 * g]),
    ("prod", {"operation": "PROD"}, lambda b: b[0] * b[1] * b[2],
     lambda b, g: [g * b[1] * b[2], g * b[0] * b[2], g * b[0] * b[1]]),
    ("max", {"operation": "MAX"}, lambda b: eltwise_max_caffe(b)[0],
     lambda b, g: [g * (eltwise_max_caffe(b)[1] == k) for k in range(3)]),
]


def _build_all():
    """One graph with every case: inputs x_i, cotangents g_i; outputs y_i, dx_i."""
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(3)
    for i, (cid, typ, params, x, fwd, bwd) in enumerate(CASES):
        xi = sn.input(f"x_{cid}", x.shape)
        (y,), _ = apply(typ, xi, name=f"L_{cid}", **params)
        gi = sn.input(f"g_{cid}", y.shape)
        (dx,) = sn.vjp([y], [gi], [xi])
        g = g_rng.standard_normal(y.shape).astype(np.float32)
        x64 = x.astype(np.float64)
        y64 = fwd(x64)
        ins += [xi, gi]
        feeds += [x, g]
        outs += [y, dx]
        want += [(cid, "y", y64), (cid, "dx", bwd(x64, y64, g.astype(np.float64)))]
    bottoms = [E0, E1, E2]
    b64 = [b.astype(np.float64) for b in bottoms]
    for cid, params, fwd, bwd in ELTWISE:
        xs = [sn.input(f"e{k}_{cid}", SHAPE) for k in range(3)]
        (y,), _ = apply("Eltwise", *xs, name=f"E_{cid}", **params)
        gi = sn.input(f"g_{cid}", SHAPE)
        dxs = sn.vjp([y], [gi], xs)
        g = g_rng.standard_normal(SHAPE).astype(np.float32)
        ins += xs + [gi]
        feeds += bottoms + [g]
        outs += [y] + list(dxs)
        want += [(cid, "y", fwd(b64))] + [(cid, f"d{k}", d) for k, d in
                                          enumerate(bwd(b64, g.astype(np.float64)))]
    return ins, feeds, outs, want


def test_neuron_layers_forward_backward(backend):
    """Every layer's top and bottom diff on this backend equal the closed forms."""
    check_cases(_build_all, backend, rtol=2e-5, atol=2e-5)


SMALL = (2, 3, 2, 2)


@pytest.mark.parametrize("cid, typ, params, src", [c[:4] for c in CASES], ids=IDS)
def test_neuron_gradcheck(cid, typ, params, src):
    x = src.reshape(-1)[:int(np.prod(SMALL))].reshape(SMALL).astype(np.float64)
    if typ == "Threshold":
        x = x + 0.01 * np.sign(x - 0.25)       # away from the step
    res = sn.gradcheck(lambda a: apply(typ, a, name="L", **params)[0][0], [x], eps=1e-5)
    assert res.checked > 0


@pytest.mark.parametrize("cid, params", [(c[0], c[1]) for c in ELTWISE],
                         ids=[c[0] for c in ELTWISE])
def test_eltwise_gradcheck(cid, params):
    bs = [R.standard_normal(SMALL) for _ in range(3)]
    res = sn.gradcheck(lambda a, b, c: apply("Eltwise", a, b, c, name="L", **params)[0][0], bs)
    assert res.checked > 0


def test_eltwise_two_bottoms_and_errors():
    with sn.graph_scope():
        a, b = sn.input("a", (2, 3)), sn.input("b", (2, 3))
        (y,), _ = apply("Eltwise", a, b, name="L")           # SUM by default
        av, bv = R.standard_normal((2, 3)), R.standard_normal((2, 3))
        np.testing.assert_allclose(sn.function([a, b], y, backend="numpy")(av, bv), av + bv,
                                   rtol=1e-6)
        with pytest.raises(LayerError, match="coefficients for summation"):
            apply("Eltwise", a, b, name="L", operation="PROD", coeff=[1.0, 2.0])
        with pytest.raises(LayerError, match="one coefficient per bottom"):
            apply("Eltwise", a, b, name="L", coeff=[1.0])
        with pytest.raises(LayerError, match="same shape"):
            apply("Eltwise", a, sn.input("c", (3, 2)), name="L")
        with pytest.raises(LayerError, match="at least 2"):
            apply("Eltwise", a, name="L")
        # Caffe ignores coeff for MAX
        (m,), _ = apply("Eltwise", a, b, name="L", operation="MAX", coeff=[2.0, 3.0])
        np.testing.assert_allclose(sn.function([a, b], m, backend="numpy")(av, bv),
                                   np.maximum(av, bv), rtol=1e-6)


def test_parameter_errors():
    with sn.graph_scope():
        x = sn.input("x", (2, 3))
        with pytest.raises(LayerError, match="strictly positive"):
            apply("Exp", x, name="L", base=-2.0)
        with pytest.raises(LayerError, match="strictly positive"):
            apply("Log", x, name="L", base=0.0)
        with pytest.raises(LayerError, match="min and clip_param.max are required"):
            apply("Clip", x, name="L", min=0.0)


def test_registered_and_documented():
    for typ in ["ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log",
                "Threshold", "Clip", "Swish", "Eltwise"]:
        spec = sn.layers.get(typ)
        assert spec.doc and spec.module.endswith("neuron"), typ


def test_prototxt_parameters_reach_the_layers():
    """Parameters arrive from prototxt through the Net (field names, enum names,
    repeated coeff), with Caffe's message names (tanh_param for TanH)."""
    proto = """
    layer { name: "in" type: "Input" top: "a" top: "b"
            input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e"
            eltwise_param { operation: SUM coeff: 2 coeff: -1 } }
    layer { name: "p" type: "Power" bottom: "e" top: "p"
            power_param { power: 2 scale: 0.5 shift: 1 } }
    layer { name: "c" type: "Clip" bottom: "p" top: "c" clip_param { min: 0 max: 3 } }
    layer { name: "t" type: "TanH" bottom: "c" top: "t" tanh_param { engine: CAFFE } }
    layer { name: "l" type: "ELU" bottom: "t" top: "l" elu_param { alpha: 0.5 } }
    """
    net = sn.Net(proto, sn.TEST, backend="numpy")
    a, b = R.standard_normal((2, 3)), R.standard_normal((2, 3))
    out = net.forward(a=a, b=b)["l"]
    t = np.tanh(np.clip((1 + 0.5 * (2 * a - b)) ** 2, 0, 3))
    np.testing.assert_allclose(out, np.where(t > 0, t, 0.5 * (np.exp(t) - 1)), rtol=1e-5,
                               atol=1e-6)
