"""Caffe's elementwise layers: the neuron layers (ELU, Sigmoid, TanH, AbsVal, BNLL,
Power, Exp, Log, Threshold, Clip, Swish) and Eltwise.

Each layer is its forward formula; backward is derived from it. Where Caffe's
hand-written backward takes a side at a kink, the formula is written so that the
derived gradient takes the same side (noted at each layer).
"""
from __future__ import annotations

import math

import sympy as sp

from .. import functions as F
from ..errors import ShapeError
from ._util import require
from .registry import layer


def _constant_like(x, value):
    """A tensor of x's shape filled with ``value`` that does not depend on x."""
    return F.ones(x.shape, x.graph) * float(value)


@layer("ELU")
def elu(x, alpha=1.0):
    """y = x for x > 0, alpha * (exp(x) - 1) otherwise.

    Caffe's gradient is 1 for x > 0 and alpha + y = alpha * exp(x) for x <= 0, so at
    x = 0 it is alpha; the x > 0 test below gives the same. exp is taken of
    min(x, 0), as Caffe does, so the unused branch cannot overflow."""
    neg = F.where(x > 0, 0.0, x)
    return F.where(x > 0, x, alpha * (F.exp(neg) - 1.0))


@layer("Sigmoid")
def sigmoid(x):
    """y = 1 / (1 + exp(-x))."""
    return F.sigmoid(x)


@layer("TanH", params="tanh_param")
def tanh(x):
    """y = tanh(x)."""
    return F.tanh(x)


@layer("AbsVal", params=())
def absval(x):
    """y = |x|; the gradient is sign(x), 0 at x = 0 (Caffe's caffe_cpu_sign)."""
    return F.abs(x)


@layer("BNLL", params=())
def bnll(x):
    """y = log(1 + exp(x)), evaluated without overflow (x + log(1 + exp(-x)) for
    x > 0, as Caffe); dy/dx = sigmoid(x)."""
    return F.softplus(x)


@layer("Power")
def power(x, power=1.0, scale=1.0, shift=0.0):
    """y = (shift + scale * x) ^ power.

    As in Caffe, when power * scale == 0 the input is ignored: y is 1 if power == 0,
    else shift ^ power, and the gradient is 0 (so 0 ^ 0 = 1 and no NaN appears)."""
    if power * scale == 0.0:
        value = 1.0 if power == 0.0 else _math_or_nan(math.pow, shift, power)
        # Caffe fills the top with pow(shift, power) whatever it is; an inf or NaN
        # there (0 to a negative power, a negative shift to a fractional one) is
        # refused instead of filling the net with it
        require(math.isfinite(value), "power_param.shift", shift,
                f"such that shift ^ power is finite (power {power}, scale {scale}: "
                "the top is that constant)")
        return _constant_like(x, value)
    z = x * scale + shift if (scale != 1.0 or shift != 0.0) else x
    if power == 1.0:
        return z
    if float(power).is_integer():
        power = int(power)       # exact integer powers: (-2)^2 = 4, not NaN
    return F.pow(z, power)


def _math_or_nan(fn, *args):
    """fn(*args) of Python's math module, inf on overflow and NaN on a domain error
    (as C's pow and exp give)."""
    try:
        return fn(*args)
    except OverflowError:
        return math.inf
    except ValueError:       # math domain error: 0 ** negative, negative ** fraction
        return math.nan


def _log_base(base, field):
    """Caffe's base convention: -1 means e; otherwise base must be > 0."""
    if base == -1.0:
        return 1.0
    # Caffe: CHECK_GT(base, 0) "base must be strictly positive"; then
    # CHECK(!isinf(log(base))) and, for Log, CHECK(!isinf(1 / log(base)))
    require(base > 0.0, field, base, "strictly positive (or -1 for e)")
    require(math.isfinite(base), field, base, "finite (log(base) is inf)")
    lb = math.log(base)
    require(lb != 0.0 or field != "log_param.base", field, base,
            "other than 1 (1 / log(base) is inf)")
    return lb


@layer("Exp")
def exp(x, base=-1.0, scale=1.0, shift=0.0):
    """y = base ^ (shift + scale * x) (base -1 means e), computed as Caffe does:
    base^shift * exp(log(base) * scale * x)."""
    inner = _log_base(base, "exp_param.base") * scale
    outer = 1.0 if shift == 0.0 else (_math_or_nan(math.exp, shift) if base == -1.0
                                      else _math_or_nan(math.pow, base, shift))
    # Caffe's outer scale base^shift would be inf: every top value inf or NaN
    require(math.isfinite(outer), "exp_param.shift", shift,
            f"small enough that base ^ shift is finite (base "
            f"{'e' if base == -1.0 else base})")
    y = F.exp(x * inner if inner != 1.0 else x)
    return y * outer if outer != 1.0 else y


@layer("Log")
def log(x, base=-1.0, scale=1.0, shift=0.0):
    """y = log_base(shift + scale * x) (base -1 means e), i.e.
    ln(shift + scale * x) / ln(base)."""
    base_scale = 1.0 / _log_base(base, "log_param.base")
    z = x * scale + shift if (scale != 1.0 or shift != 0.0) else x
    y = F.log(z)
    return y * base_scale if base_scale != 1.0 else y


@layer("Threshold")
def threshold(x, threshold=0.0):
    """y = 1 if x > threshold else 0.

    Caffe's ThresholdLayer has no backward (NOT_IMPLEMENTED: Caffe aborts if
    gradient must flow through it); here the gradient is that of a step function,
    0 everywhere."""
    return F.gt(x, float(threshold))


@layer("Clip")
def clip(x, min=None, max=None):   # noqa: A002 - Caffe's field names
    """y = max(min, min(x, max)).

    Caffe's gradient is passed where min <= x <= max, both ends included (it tests
    x >= min && x <= max), so at x == min or x == max the gradient is 1, not 0. The
    first branch below makes the derived gradient take that side; outside the
    interval y is the constant bound (and with min > max, Caffe's formula gives
    min everywhere, with zero gradient)."""
    # both are required fields of Caffe's ClipParameter
    for field, value in (("min", min), ("max", max)):
        require(value is not None, f"clip_param.{field}", value,
                "given (clip_param.min and clip_param.max are required)")
    lo, hi = float(min), float(max)

    def f(a):
        inside = sp.And(sp.GreaterThan(a, lo), sp.LessThan(a, hi))
        return sp.Piecewise((a, inside), (sp.Max(sp.Float(lo), sp.Min(a, sp.Float(hi))), True))
    return F.elementwise(f, x, label="clip")


@layer("Swish")
def swish(x, beta=1.0):
    """y = x * sigmoid(beta * x)."""
    return x * F.sigmoid(x * beta if beta != 1.0 else x)


@layer("Eltwise")
def eltwise(*xs, operation="SUM", coeff=(), stable_prod_grad=True):
    """PROD: y = x0 * x1 * ...; SUM: y = sum_i coeff_i * x_i (coeff default 1 each);
    MAX: y = max_i x_i.

    MAX gives the whole gradient to one bottom, as Caffe's mask does: between x0 and
    x1 a tie goes to x1 (Caffe tests x0 > x1), and a later bottom k >= 2 takes over
    only when strictly greater than the running max (ties stay with the earlier one).
    The chain of strict comparisons below routes the gradient the same way.
    ``stable_prod_grad`` only chooses how Caffe computes PROD's gradient; the
    derived gradient is the product of the other bottoms either way."""
    if len(xs) < 2:
        raise ValueError(f"Eltwise takes at least 2 bottoms, got {len(xs)}")
    for i, x in enumerate(xs[1:], 1):
        if x.shape != xs[0].shape:
            raise ShapeError(f"Eltwise: bottom 0 has shape {xs[0].shape} but bottom {i} "
                             f"has {x.shape}; all bottoms must have the same shape")
    coeff = [float(c) for c in coeff or ()]
    # Caffe: CHECK(coeff_size() == 0 || coeff_size() == bottom.size()) "Eltwise Layer
    # takes one coefficient per bottom blob."
    require(not coeff or len(coeff) == len(xs), "eltwise_param.coeff", coeff,
            f"{len(xs)} values, one coefficient per bottom ({len(coeff)} coeff for "
            f"{len(xs)} bottoms)")
    require(operation in ("PROD", "SUM", "MAX"), "eltwise_param.operation", operation,
            "PROD, SUM or MAX")
    if operation == "PROD":
        # Caffe: CHECK(!(operation == PROD && coeff_size())) "Eltwise layer only
        # takes coefficients for summation."
        require(not coeff, "eltwise_param.coeff", coeff,
                "empty for PROD (Eltwise only takes coefficients for summation (SUM))")
        y = xs[0] * xs[1]
        for x in xs[2:]:
            y = y * x
        return y
    if operation == "SUM":
        coeff = coeff or [1.0] * len(xs)
        terms = [x if c == 1.0 else x * c for x, c in zip(xs, coeff)]
        y = terms[0]
        for t in terms[1:]:
            y = y + t
        return y
    if operation == "MAX":
        # Caffe ignores coeff for MAX (it only rejects it for PROD)
        y = F.where(F.gt(xs[0], xs[1]), xs[0], xs[1])
        for x in xs[2:]:
            y = F.where(F.gt(x, y), x, y)
        return y
    raise AssertionError(operation)      # checked above
