"""Helpers of the codegen and runtime tests: build a function of fresh inputs (and, for
the backward pass, cotangent inputs), compile it for a backend and compare it with the
NumPy reference with float32 tolerances relative to the values' magnitudes."""
from __future__ import annotations

import re
import zlib

import numpy as np

import symnet as sn


def rng_for(*key):
    """A generator seeded from a readable key, so every case draws its own numbers."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def assert_close(actual, expected, rtol=2e-5, scale=None, what=""):
    """|actual - expected| <= rtol * (|expected| + scale) elementwise, where ``scale``
    defaults to the largest finite |expected| (float32 error relative to magnitudes).
    NaN and +-Inf must sit at the same places with the same signs."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    assert a.dtype == np.float32, f"{what}: dtype {a.dtype}, expected float32"
    a, e = a.astype(np.float64), e.astype(np.float64)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert (nan_a == nan_e).all(), \
        f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()} differs from the reference"
    inf_e = np.isinf(e)
    np.testing.assert_array_equal(a[inf_e], e[inf_e], err_msg=f"{what}: infinities differ")
    fin = np.isfinite(e)
    if not fin.any():
        return
    if scale is None:
        scale = float(np.abs(e[fin]).max())
    scale = max(scale, 1e-30)
    err = np.abs(a[fin] - e[fin])
    allowed = rtol * (np.abs(e[fin]) + scale)
    bad = ~(err <= allowed)
    if bad.any():
        i = int(np.argmax(err - allowed))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {err.size} elements differ beyond rtol={rtol} "
            f"(scale {scale:.3g}); worst: got {a[fin][i]!r}, expected {e[fin][i]!r}, "
            f"|diff| {err[i]:.3g} > {allowed[i]:.3g}")


def compile_pair(backend, build, arrays, grad=True, wrt=None, cotangent_seed=0):
    """Build ``build(*inputs)`` (a Tensor or a list of them) over one input per array,
    plus, when ``grad``, the vjp of the outputs with cotangent inputs with respect to
    the inputs listed in ``wrt`` (indices; all by default). Returns (fn, ref_fn, feeds,
    n_forward): ``fn`` compiled for ``backend``, ``ref_fn`` for ``numpy``."""
    arrays = [np.asarray(a, dtype=np.float32, order="C") for a in arrays]
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", a.shape) for i, a in enumerate(arrays)]
        out = build(*xs)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        ins, feeds, allouts = list(xs), list(arrays), list(outs)
        if grad:
            rng = np.random.default_rng(cotangent_seed)
            cots = [sn.input(f"g{j}", o.shape) for j, o in enumerate(outs)]
            wrt_t = [xs[i] for i in (range(len(xs)) if wrt is None else wrt)]
            grads = sn.vjp(outs, cots, wrt_t)
            ins += cots
            feeds += [rng.standard_normal(o.shape).astype(np.float32) for o in outs]
            allouts += grads
        ref_fn = sn.function(ins, allouts, backend="numpy")
        fn = sn.function(ins, allouts, backend=backend)
    return fn, ref_fn, feeds, len(outs)


def check(backend, build, arrays, grad=True, wrt=None, rtol=2e-5, grad_rtol=None,
          exact=False, what=""):
    """Compile on ``backend`` and on the reference; compare every output (forward
    values, then gradients). Returns (results, reference results, fn)."""
    fn, ref_fn, feeds, nf = compile_pair(backend, build, arrays, grad, wrt)
    got = fn(*feeds)
    want = ref_fn(*feeds)
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        label = f"{what} on {backend}: " + (f"output {k}" if k < nf else f"gradient {k - nf}")
        if exact:
            assert g.dtype == np.float32 and g.shape == w.shape, label
            np.testing.assert_array_equal(g, w, err_msg=label)
        else:
            assert_close(g, w, rtol if k < nf else (grad_rtol or rtol), what=label)
    return got, want, fn


_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def strip_comments(source: str) -> str:
    return _COMMENT.sub(" ", source)


# C library functions whose double-precision names must not appear in kernel text
# (their float variants carry an f suffix: expf, logf...).
DOUBLE_FUNCTIONS = ["exp", "log", "pow", "tanh", "sqrt", "sin", "cos", "tan", "fabs", "fmax",
                    "fmin", "floor", "ceil", "erf", "erfc", "atan2", "atan", "asin", "acos",
                    "sinh", "cosh", "log1p", "expm1", "cbrt", "round", "trunc", "fmod"]
_DOUBLE_CALL = re.compile(r"(?<![\w.])(" + "|".join(DOUBLE_FUNCTIONS) + r")\s*\(")
# a floating literal without the f suffix: 1.5, .5, 2., 1e-3 (not part of an identifier)
_DOUBLE_LITERAL = re.compile(r"(?<![\w.])(\d+\.\d*|\.\d+|\d+[eE][-+]?\d+)([eE][-+]?\d+)?"
                             r"(?![\w.])")


def double_math(source: str) -> list:
    """Double-precision calls and literals in a module's code (comments ignored)."""
    code = strip_comments(source)
    found = [m.group(0) for m in _DOUBLE_CALL.finditer(code)]
    found += [m.group(0) for m in _DOUBLE_LITERAL.finditer(code)]
    return found


def kernel_definitions(source: str) -> list:
    """Names of the kernels defined in a module text."""
    return re.findall(r"SN_KERNEL\s+(\w+)\s*\(", strip_comments(source))
