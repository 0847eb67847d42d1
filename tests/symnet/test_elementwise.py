"""Elementwise ops: forward against closed-form NumPy, broadcasting, mixing in Python
scalars and NumPy arrays, user sympy functions, and every op's gradient."""
import math

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from snhelp import check_grad, close, run

R = np.random.default_rng(0)
X = R.standard_normal((3, 4))
Y = R.standard_normal((3, 4))
POS = R.uniform(0.5, 2.0, (3, 4))
erf = np.vectorize(math.erf)

# (symnet function, numpy closed form, argument arrays)
UNARY = [
    ("neg", sn.neg, lambda a: -a, X),
    ("exp", sn.exp, np.exp, X),
    ("log", sn.log, np.log, POS),
    ("sqrt", sn.sqrt, np.sqrt, POS),
    ("rsqrt", sn.rsqrt, lambda a: 1 / np.sqrt(a), POS),
    ("abs", sn.abs, np.abs, X),
    ("tanh", sn.tanh, np.tanh, X),
    ("sigmoid", sn.sigmoid, lambda a: 1 / (1 + np.exp(-a)), X),
    ("softplus", sn.softplus, lambda a: np.log1p(np.exp(a)), X),
    ("erf", sn.erf, erf, X),
    ("sin", sn.sin, np.sin, X),
    ("cos", sn.cos, np.cos, X),
    ("sign", sn.sign, np.sign, np.array([-2.0, -0.5, 0.0, 0.5, 3.0])),
]

BINARY = [
    ("add", lambda a, b: a + b, np.add, X, Y),
    ("sub", lambda a, b: a - b, np.subtract, X, Y),
    ("mul", lambda a, b: a * b, np.multiply, X, Y),
    ("div", lambda a, b: a / b, np.divide, X, POS),
    ("pow", lambda a, b: a ** b, np.power, POS, Y),
    ("maximum", sn.maximum, np.maximum, X, Y),
    ("minimum", sn.minimum, np.minimum, X, Y),
]

TIES = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
TIES_B = np.array([[1.0, 1.0, 1.0]])
COMPARE = [
    ("gt", lambda a, b: a > b, np.greater),
    ("ge", lambda a, b: a >= b, np.greater_equal),
    ("lt", lambda a, b: a < b, np.less),
    ("le", lambda a, b: a <= b, np.less_equal),
    ("eq", sn.eq, np.equal),
    ("ne", sn.ne, np.not_equal),
]


@pytest.mark.parametrize("name, fn, ref, a", UNARY, ids=[u[0] for u in UNARY])
def test_unary_forward(name, fn, ref, a):
    close(run(fn, a), ref(a.astype(np.float32).astype(np.float64)))


@pytest.mark.parametrize("name, fn, ref, a, b", BINARY, ids=[u[0] for u in BINARY])
def test_binary_forward(name, fn, ref, a, b):
    close(run(fn, a, b), ref(a, b), rtol=2e-5)


@pytest.mark.parametrize("name, fn, ref", COMPARE, ids=[c[0] for c in COMPARE])
def test_comparisons_give_zero_one(name, fn, ref):
    out = run(fn, TIES, TIES_B)
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, ref(TIES, TIES_B).astype(np.float32))
    assert set(np.unique(out)) <= {0.0, 1.0}


def test_where_and_clip():
    c = (X > 0.3).astype(np.float64) * 2.0     # any non-zero counts as true
    close(run(sn.where, c, X, Y), np.where(c != 0, X, Y))
    close(run(lambda x: sn.where(x > 0, x, 0.1 * x), X), np.where(X > 0, X, 0.1 * X))
    close(run(lambda x: sn.clip(x, -0.5, 0.5), X), np.clip(X, -0.5, 0.5))
    lo, hi = -np.abs(Y), np.abs(Y)
    close(run(sn.clip, X, lo, hi), np.clip(X, lo, hi))


def test_stable_at_large_arguments():
    a = np.array([-100.0, -30.0, 0.0, 30.0, 100.0])
    s = run(sn.sigmoid, a)
    assert np.all(np.isfinite(s))
    close(s, 1 / (1 + np.exp(-a)), atol=1e-7)
    sp_ = run(sn.softplus, a)
    assert np.all(np.isfinite(sp_))
    close(sp_, np.logaddexp(0, a), rtol=1e-6)


def test_broadcasting_shapes():
    a, b = R.standard_normal((3, 1)), R.standard_normal((1, 4))
    close(run(lambda x, y: x * y + y, a, b), a * b + b)
    c, d = R.standard_normal((2, 3, 4)), R.standard_normal((4,))
    close(run(lambda x, y: x - y, c, d), c - d)
    e = R.standard_normal((5, 1, 1, 1))
    close(run(sn.maximum, e, c), np.maximum(e, c))
    s = R.standard_normal((1,))
    close(run(lambda x, y: x / (1 + y.reshape(()) * y), c, s), c / (1 + s * s))


def test_python_scalars_mix_in():
    close(run(lambda x: 2 - x, X), 2 - X)
    close(run(lambda x: x / 4, X), X / 4)
    close(run(lambda x: 1.5 / (x * x + 1), X), 1.5 / (X * X + 1))
    close(run(lambda x: x ** 2, X), X ** 2)
    close(run(lambda x: 2 ** x, X), 2 ** X)
    close(run(lambda x: -x + 3 * x, X), 2 * X)
    close(run(lambda x: np.float32(2.5) * x, X), 2.5 * X)
    close(run(lambda x: x + np.float64(0.25), X), X + 0.25)
    close(run(lambda x: (x > 0) * 1, X), (X > 0).astype(float))


def test_numpy_arrays_mix_in():
    v = np.arange(4, dtype=np.float32)
    close(run(lambda x: x + v, X), X + v)
    close(run(lambda x: v * x, X), v * X)            # ndarray on the left
    close(run(lambda x: x - v[:, None][:3], X), X - v[:3, None])
    close(run(lambda x: sn.maximum(x, v), X), np.maximum(X, v))
    close(run(lambda x: sn.where(v > 1, x, -x), X), np.where(v > 1, X, -X))


def test_user_sympy_function():
    close(run(lambda x: sn.elementwise(sp.atan, x), X), np.arctan(X))
    pw = lambda a: sp.Piecewise((a * a, a > 0.5), (-a, a < -0.5), (sp.Integer(0), True))
    close(run(lambda x: sn.elementwise(pw, x), X),
          np.where(X > 0.5, X * X, np.where(X < -0.5, -X, 0)))
    close(run(lambda x, y: sn.elementwise(lambda a, b: sp.atan2(a, b) * 2, x, y), X, Y),
          2 * np.arctan2(X, Y))
    # Python numbers and arrays in between tensors
    v = np.linspace(-1, 1, 4)
    close(run(lambda x: sn.elementwise(lambda a, k, b: a * k + sp.sin(b), x, 3.0, v), X),
          X * 3 + np.sin(v))


def test_integer_and_float_literals_are_exact():
    close(run(lambda x: x * (1.0 / 3.0) * 3, POS), POS, rtol=1e-6)


# ------------------------------------------------------------------ gradients

@pytest.mark.parametrize("name, fn, ref, a", UNARY, ids=[u[0] for u in UNARY])
def test_unary_grad(name, fn, ref, a):
    if name in ("abs", "sign"):
        a = X    # away from the kink at 0
    check_grad(fn, a)


@pytest.mark.parametrize("name, fn, ref, a, b", BINARY, ids=[u[0] for u in BINARY])
def test_binary_grad(name, fn, ref, a, b):
    check_grad(fn, a, b)


def test_where_clip_grad():
    check_grad(lambda c, x, y: sn.where(c, x, y), (X > 0).astype(float), X, Y)
    check_grad(lambda x: sn.clip(x, -0.5, 0.5) * x, X)
    check_grad(lambda x, lo: sn.clip(x, lo, 2.0), X, -np.abs(Y))


def test_user_function_grad():
    check_grad(lambda x: sn.elementwise(sp.atan, x), X)
    pw = lambda a: sp.Piecewise((a * a, a > 0.5), (-a, a < -0.5), (sp.sin(a), True))
    check_grad(lambda x: sn.elementwise(pw, x), X)
    check_grad(lambda x, y: sn.elementwise(lambda a, b: sp.atan2(a, b), x, y), X, POS)


@pytest.mark.parametrize("name, fn, ref", COMPARE, ids=[c[0] for c in COMPARE])
def test_comparison_grad_is_zero(name, fn, ref):
    with sn.graph_scope():
        x, y = sn.input("x", (2, 3)), sn.input("y", (1, 3))
        gx, gy = sn.grad(fn(x, y).sum(), [x, y])
        out = sn.function([x, y], [gx, gy], backend="numpy")(TIES, TIES_B)
    for g in out:
        np.testing.assert_array_equal(g, 0)


def test_piecewise_constant_functions_have_zero_gradient():
    a = np.array([0.3, 1.1, -0.7])
    fn = lambda x: sn.elementwise(lambda t: sp.floor(2 * t) * t + sp.ceiling(sp.sin(t)), x)
    close(run(fn, a), np.floor(2 * a) * a + np.ceil(np.sin(a)))
    check_grad(fn, a)


def test_constant_expression_stays_in_its_graph():
    with sn.graph_scope() as g:
        x = sn.input("x", (2, 3))
    c = sn.elementwise(lambda t: sp.Integer(3), x)      # built outside the scope
    assert c.graph is g and c.shape == (2, 3) and c.args == []
    close(sn.function([x], c + x, backend="numpy")(np.ones((2, 3))), 4)


SYMPY_FUNCS = [  # every unary entry of symnet.scalar.SUPPORTED, through sn.elementwise
    (sp.sinh, np.sinh), (sp.cosh, np.cosh), (sp.tan, np.tan), (sp.atan, np.arctan),
    (sp.asin, np.arcsin), (sp.acos, np.arccos), (sp.erfc, lambda a: 1 - erf(a)),
    (sp.exp, np.exp), (sp.log, np.log), (sp.tanh, np.tanh), (sp.sin, np.sin),
    (sp.cos, np.cos), (sp.erf, erf), (sp.Abs, np.abs), (sp.sign, np.sign),
    (lambda a: sp.Heaviside(a, 0), lambda a: np.heaviside(a, 0)),
    (sp.floor, np.floor), (sp.ceiling, np.ceil),
]


@pytest.mark.parametrize("fn, ref", SYMPY_FUNCS, ids=[getattr(f, "__name__", "heaviside")
                                                      for f, _ in SYMPY_FUNCS])
def test_supported_sympy_functions(fn, ref):
    a = np.array([0.15, 0.4, 0.7, 0.95, 0.55])
    close(run(lambda x: sn.elementwise(fn, x), a), ref(a.astype(np.float32).astype(float)))
    check_grad(lambda x: sn.elementwise(fn, x), a)
