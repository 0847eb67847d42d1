"""The float32 C printer, the modules it feeds, and IEEE semantics (NaN, +-Inf, signed
zeros) and Caffe's conventions at kinks on the compiled backends."""
from __future__ import annotations

import re

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from symnet import scalar
from symnet.codegen import cprinter, lower, prelude
from symnet.codegen.cprinter import ccode
from cghelp import check, double_math, strip_comments

a, b, c = scalar.arg_symbols(3)


# ------------------------------------------------------------------- table
def test_every_supported_function_has_a_c_rule():
    cprinter.check_table()
    assert set(scalar.SUPPORTED) <= set(cprinter.C_FUNCTIONS)


@pytest.mark.parametrize("func", list(scalar.SUPPORTED), ids=lambda f: scalar.SUPPORTED[f])
def test_supported_function_prints_float_call(func):
    args = (a, b) if func in (sp.atan2, sp.Max, sp.Min) else (a,)
    expr = func(*args)
    text = ccode(expr)
    assert not double_math(text), text
    name = cprinter.C_FUNCTIONS[func]
    assert name in text, (expr, text)


def test_table_names_are_float_or_prelude_functions():
    for func, name in cprinter.C_FUNCTIONS.items():
        assert name.endswith("f") or name.startswith("sn_"), (func, name)
        if name.startswith("sn_"):
            for pre in (prelude.C_PRELUDE, prelude.CUDA_PRELUDE):
                assert re.search(rf"\b{name}\s*\(", pre), f"{name} missing from a prelude"


# ------------------------------------------------------------------- literals and powers
@pytest.mark.parametrize("expr, expected", [
    (sp.Float(0.5) * a, "0.5f*a0"),
    (a + 2, "a0 + 2.0f"),
    (a * sp.Float(1e-8), "1e-08f*a0"),
    (a ** 2, "(a0*a0)"),
    (a ** 3, "(a0*a0*a0)"),
    (a ** 4, "(a0*a0*a0*a0)"),
    (a ** -2, "(1.0f/(a0*a0))"),
    (a ** -1, "(1.0f/(a0))"),
    ((a + b) ** 2, "((a0 + a1)*(a0 + a1))"),
])
def test_literal_and_power_text(expr, expected):
    assert ccode(expr).replace(" ", "") == expected.replace(" ", "")


def test_rational_is_a_float_division():
    assert "1.0f/3.0f" in ccode(sp.Rational(1, 3) * a).replace(" ", "")


def test_powers():
    assert ccode(a ** sp.Rational(1, 2)) == "sqrtf(a0)"
    assert "rsqrt" in ccode(a ** sp.Rational(-1, 2))
    assert ccode(a ** 2.5).startswith("powf(") and "2.5f" in ccode(a ** 2.5)
    assert ccode(a ** 7).startswith("powf(") and "7.0f" in ccode(a ** 7)
    assert ccode(a ** b) == "powf(a0, a1)"
    for e in (a ** 2, a ** 5, a ** 0.5, a ** -3, a ** sp.Rational(2, 3), a ** b):
        assert not double_math(ccode(e)), ccode(e)


def test_constants_are_float_literals():
    for e, value in ((sp.pi * a, np.pi), (sp.E * a, np.e), (sp.EulerGamma * a, 0.5772156649)):
        text = ccode(e)
        m = re.search(r"([0-9.e+-]+)f\*a0", text)
        assert m, text
        assert abs(float(m.group(1)) - value) < 1e-7
    assert ccode(sp.oo * a) .count("INFINITY") == 1
    assert "NAN" in ccode(sp.Piecewise((sp.nan, a > 0), (a, True)))


def test_piecewise_prints_as_ternary():
    text = ccode(sp.Piecewise((a, a > 0), (b * 2, a < -1), (c, True)))
    assert text.count("?") == 2 and text.count(":") == 2
    assert "a0 > 0" in text.replace(".0f", "") and "if" not in text
    assert not double_math(text)


def test_relations_and_booleans():
    text = ccode(sp.Piecewise((1, sp.And(a > 0, sp.Ne(b, 0))), (0, True)))
    assert "&&" in text and "!=" in text and "?" in text


def test_piecewise_without_default_is_an_error():
    with pytest.raises(sn.UnsupportedFunctionError):
        ccode(sp.Piecewise((a, a > 0)))


# ------------------------------------------------------------------- unsupported
UNSUPPORTED = [sp.gamma, sp.loggamma, sp.besselj, sp.Function("mystery")]
UNSUPPORTED_IDS = ["gamma", "loggamma", "besselj", "undefined"]


def _apply(func, t):
    return func(0, t) if func is sp.besselj else func(t)


@pytest.mark.parametrize("func", UNSUPPORTED, ids=UNSUPPORTED_IDS)
def test_unsupported_function_rejected_by_front_end(func):
    with sn.graph_scope():
        x = sn.input("x", (3,))
        with pytest.raises(sn.UnsupportedFunctionError, match=func.__name__):
            sn.elementwise(lambda t: _apply(func, t), x)


@pytest.mark.parametrize("func", UNSUPPORTED, ids=UNSUPPORTED_IDS)
def test_printer_rejects_function_without_rule(func):
    with pytest.raises(sn.UnsupportedFunctionError, match=func.__name__):
        ccode(_apply(func, a))


# ------------------------------------------------------------------- emitted modules
def every_function_graph():
    """A graph using every supported function, forward and backward."""
    x = sn.input("x", (4, 6))
    y = sn.input("y", (4, 6))
    outs = []
    for func in scalar.SUPPORTED:
        if func in (sp.atan2, sp.Max, sp.Min):
            outs.append(sn.elementwise(func, x, y))
        else:
            outs.append(sn.elementwise(func, x))
    outs.append(sn.elementwise(lambda p, q: p ** q + p ** 2.5 + p ** -3 + sp.pi * p, x, y))
    outs.append(sn.where(x > y, sn.sqrt(x), sn.rsqrt(y)))
    total = outs[0].sum()
    for o in outs[1:]:
        total = total + o.sum()
    total = total + sn.softplus(x).max() + sn.sigmoid(y).min(0).mean()
    grads = sn.grad(total, [x, y])
    return [x, y], outs + grads


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_no_double_math_in_modules(backend):
    with sn.graph_scope() as g:
        ins, outs = every_function_graph()
        plan = lower.lower(g, [t.id for t in ins], [t.id for t in outs], backend)
    found = double_math(plan.sources[backend])
    assert not found, found[:20]


def test_no_double_math_in_preludes():
    for pre in (prelude.C_PRELUDE, prelude.CUDA_PRELUDE):
        assert not double_math(pre), double_math(pre)


def test_no_double_math_in_any_module_emitted_so_far(emitted_modules):
    """Every module lowered by the tests that ran before this one (any backend)."""
    bad = {}
    for be, mods in emitted_modules.items():
        for key, src in mods.items():
            found = double_math(src)
            if found:
                bad[(be, key[:12])] = found[:5]
    assert not bad, bad


def test_strip_comments_keeps_code():
    # the comments of kernels quote sympy text (exp(a0), 2.0*a0), which is not code
    src = "/* fuses exp(a0) 2.0*a0 */\nout0[i] = expf(x0); // pow(x, 2.0)\n"
    assert double_math(src) == []
    assert "expf" in strip_comments(src)


# ------------------------------------------------------------------- IEEE semantics
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], np.float32)
FINITE = np.array([1.0, -1.0, 0.5, -2.5, 30.0, -30.0, 1e-3, 88.0, -87.0, 1e30, -1e30],
                  np.float32)
VALUES = np.concatenate([SPECIAL, FINITE])

HEAVISIDE_NAN = pytest.mark.xfail(strict=True, reason=(
    "BUG: the gradient of maximum/minimum at NaN is Heaviside(NaN) * g: NaN in the C "
    "prelude (sn_heaviside passes NaN) but g in the NumPy reference (lambdify select())"))

IEEE = [
    ("relu", lambda x: sn.maximum(x, 0.0)),
    ("relu_left", lambda x: sn.maximum(0.0, x)),
    ("min0", lambda x: sn.minimum(x, 0.0)),
    ("sigmoid", sn.sigmoid),
    ("tanh", sn.tanh),
    ("exp", sn.exp),
    ("log", sn.log),
    ("abs", sn.abs),
    ("sign", sn.sign),
    ("where", lambda x: sn.where(x > 0, x, x * 0.1)),
    ("where_cond", lambda x: sn.where(x, 1.0, 2.0)),
    ("softplus", sn.softplus),
    ("sqrt", sn.sqrt),
    ("rsqrt", sn.rsqrt),
    pytest.param("heaviside", lambda x: sn.elementwise(sp.Heaviside, x), marks=pytest.mark.xfail(
        strict=True, reason="BUG: Heaviside(NaN) is NaN in the C prelude (sn_heaviside) but 1 "
        "in the NumPy reference (sympy's lambdify select(), no NUMPY_FUNCTIONS entry)")),
    ("clip", lambda x: sn.clip(x, -1.0, 1.0)),
    ("compare", lambda x: sn.gt(x, 0.0) + 2 * sn.ge(x, 1.0) + 4 * sn.ne(x, 0.0)),
    ("floor", lambda x: sn.elementwise(sp.floor, x)),
]


def _ids(cases):
    return [c.values[0] if hasattr(c, "values") else c[0] for c in cases]


@pytest.mark.parametrize("name, f", IEEE, ids=_ids(IEEE))
def test_nan_inf_forward(compiled_backend, name, f):
    """NaN and +-Inf in give what the reference gives: bit for bit at the special inputs
    (NaN where NaN), within float32 rounding elsewhere."""
    got, want, _ = check(compiled_backend, f, [VALUES], grad=False, rtol=2e-6,
                         what=f"{name} with NaN/Inf")
    n = len(SPECIAL)
    np.testing.assert_array_equal(got[0][:n], want[0][:n],
                                  err_msg=f"{name} at {SPECIAL} on {compiled_backend}")


BACKWARD = [pytest.param(*c, marks=HEAVISIDE_NAN) if c[0] in ("relu", "relu_left", "min0")
            else c for c in IEEE[:8]]


@pytest.mark.parametrize("name, f", BACKWARD, ids=_ids(BACKWARD))
def test_nan_inf_backward(compiled_backend, name, f):
    """Gradients at NaN/Inf: NaN where the reference has NaN, equal infinities."""
    x = np.concatenate([SPECIAL, FINITE[:4]])
    got, want, _ = check(compiled_backend, f, [x], rtol=2e-6, what=f"d {name} with NaN/Inf")
    np.testing.assert_array_equal(got[1][:5], want[1][:5])


SAME_ARG = [("sub", lambda x: x - x), ("div", lambda x: x / x), ("eq", lambda x: sn.eq(x, x)),
            ("ne", lambda x: sn.ne(x, x)), ("mul_sub", lambda x: x * 2.0 - (x + x))]


@pytest.mark.xfail(strict=True, reason=(
    "BUG codegen/kernels.py _compose: substituting one load into several argument symbols "
    "with xreplace lets sympy fold x - x to 0, x / x to 1 and Eq(x, x) to True, so fused "
    "kernels give 0 / 1 where the reference gives NaN for NaN and +-Inf inputs"))
@pytest.mark.parametrize("name, f", SAME_ARG, ids=[c[0] for c in SAME_ARG])
def test_same_tensor_in_two_arguments_keeps_ieee(compiled_backend, name, f):
    got, want, _ = check(compiled_backend, f, [VALUES], grad=False, rtol=2e-6,
                         what=f"{name} of one tensor with itself")
    np.testing.assert_array_equal(got[0][:len(SPECIAL)], want[0][:len(SPECIAL)])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("how", ["max", "min", "sum"])
def test_nan_in_reductions(compiled_backend, how):
    x = np.array([[1, np.nan, 3], [np.inf, 2, -1], [-np.inf, 0, 5], [1, 2, 3],
                  [np.nan, np.nan, np.nan]], np.float32)
    got, want, _ = check(compiled_backend, lambda t: [getattr(t, how)(1), getattr(t, how)(0)],
                         [x], grad=False, exact=True, what=f"{how} with NaN")


def test_nan_in_max_pool(compiled_backend):
    x = np.array([[[[1, np.nan, 3, 4], [5, 6, 7, 8], [np.inf, 0, -np.inf, -1],
                    [2, 2, np.nan, 9]]]], np.float32)
    check(compiled_backend, lambda t: sn.max_pool2d(t, 2), [x], grad=False, exact=True,
          what="max pool with NaN")


# ------------------------------------------------------------------- kinks (Caffe)
def test_kink_gradients(compiled_backend):
    """ReLU's and AbsVal's gradients at 0 are 0; maximum(x, x) shares the gradient;
    max reductions share it among ties."""
    x = np.array([0.0, -0.0, 1.0, -1.0], np.float32)

    def f(t):
        return [sn.maximum(t, 0.0), sn.abs(t), sn.maximum(t, t * 1.0), sn.max(t),
                sn.elementwise(sp.Heaviside, t) * t]

    with sn.graph_scope():
        ti = sn.input("x", (4,))
        outs = f(ti)
        grads = [sn.grad(o.sum(), ti) for o in outs]
        fn = sn.function([ti], grads, backend=compiled_backend)
        ref = sn.function([ti], grads, backend="numpy")
        got, want = fn(x), ref(x)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got[0], [0, 0, 1, 0])
    np.testing.assert_array_equal(got[1], [0, 0, 1, -1])
    np.testing.assert_array_equal(got[2], [1, 1, 1, 1])
    xt = np.array([2.0, 1.0, 2.0, 0.0], np.float32)
    with sn.graph_scope():
        ti = sn.input("x", (4,))
        fn = sn.function([ti], sn.grad(sn.max(ti), ti), backend=compiled_backend)
    np.testing.assert_array_equal(fn(xt), [0.5, 0, 0.5, 0])
