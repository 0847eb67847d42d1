"""Scalar math for elementwise ops: symbols, symnet's own sympy functions, the
supported-function table, Caffe's conventions at kinks and NumPy evaluation.

An elementwise op holds one sympy expression over the symbols ``a0, a1, ...`` (one
per argument). Every function that may appear in it is listed in ``SUPPORTED``; the
C printer in ``symnet.codegen.cprinter`` has one rule per entry, and the NumPy
reference evaluates it through ``lambdify`` with ``NUMPY_FUNCTIONS``.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import sympy as sp

from .errors import UnsupportedFunctionError


@functools.lru_cache(maxsize=None)
def arg_symbol(i: int) -> sp.Symbol:
    """The scalar symbol standing for argument ``i`` of an elementwise op."""
    return sp.Symbol(f"a{i}", real=True)


def arg_symbols(n: int) -> list:
    return [arg_symbol(i) for i in range(n)]


class sigmoid(sp.Function):
    """Logistic function 1 / (1 + exp(-x)); d/dx = s (1 - s)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):
    """log(1 + exp(x)), evaluated without overflow; d/dx = sigmoid(x)."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return sp.log(1 + sp.exp(x))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])


class rsqrt(sp.Function):
    """1 / sqrt(x); d/dx = -rsqrt(x)^3 / 2."""

    @classmethod
    def eval(cls, x):
        if x.is_Number:
            return 1 / sp.sqrt(x)

    def fdiff(self, argindex=1):
        return -rsqrt(self.args[0]) ** 3 / 2


# Function classes an elementwise expression may contain. Pow, Add, Mul, numbers,
# relations and Piecewise are handled structurally by every printer.
SUPPORTED = {
    sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.sinh: "sinh", sp.cosh: "cosh",
    sp.sin: "sin", sp.cos: "cos", sp.tan: "tan", sp.atan: "atan", sp.asin: "asin",
    sp.acos: "acos", sp.atan2: "atan2", sp.erf: "erf", sp.erfc: "erfc", sp.Abs: "abs",
    sp.sign: "sign", sp.Max: "max", sp.Min: "min", sp.Heaviside: "heaviside",
    sp.floor: "floor", sp.ceiling: "ceil", sigmoid: "sigmoid", softplus: "softplus",
    rsqrt: "rsqrt",
}

_STRUCTURAL = (sp.Add, sp.Mul, sp.Pow, sp.Piecewise, sp.Symbol, sp.Number,
               sp.NumberSymbol, sp.core.relational.Relational, sp.logic.boolalg.BooleanFunction,
               sp.logic.boolalg.BooleanAtom, sp.functions.elementary.piecewise.ExprCondPair,
               sp.Tuple)


def check_expression(expr, nargs: int, where: str):
    """Raise UnsupportedFunctionError for a function without rule or a stray symbol."""
    allowed = set(arg_symbols(nargs))
    for sub in sp.preorder_traversal(expr):
        if isinstance(sub, sp.Symbol):
            if sub not in allowed:
                raise UnsupportedFunctionError(
                    f"{where}: expression {expr} uses symbol '{sub}', expected only the "
                    f"argument symbols {sorted(map(str, allowed))}")
        elif isinstance(sub, _STRUCTURAL):
            continue
        elif isinstance(sub, sp.core.function.Application):
            if sub.func not in SUPPORTED:
                known = ", ".join(sorted(SUPPORTED.values()))
                raise UnsupportedFunctionError(
                    f"{where}: sympy function '{sub.func.__name__}' has no rule in "
                    f"symnet.scalar.SUPPORTED (and the C printer's table); supported: {known}")
        else:
            raise UnsupportedFunctionError(
                f"{where}: sympy object '{type(sub).__name__}' ({sub}) cannot be evaluated "
                "elementwise in float32")


def apply_kink_conventions(expr):
    """Caffe's conventions at kinks, applied to every derived expression.

    sympy's Heaviside(0) is 1/2 and its derivative of sign() is a DiracDelta. Caffe
    takes one side at a kink: ReLU's gradient at 0 is its negative slope (so
    d max(x, 0)/dx at 0 is 0) and AbsVal's gradient at 0 is sign(0) = 0. So here
    Heaviside(0) is overridden to 0 and DiracDelta to 0.

    One exception: a Heaviside whose argument involves two or more arguments comes
    from a tie between tensors (``maximum(x, y)`` at x == y). With 0 there neither
    side would get the gradient (``maximum(x, x)`` would have gradient 0), so such
    ties share it, Heaviside(0) = 1/2, as the max/min reductions do.
    """
    def heaviside(x, *h):
        tie = len(x.free_symbols) >= 2
        return sp.Heaviside(x, sp.Rational(1, 2) if tie else sp.S.Zero)

    expr = expr.replace(sp.Heaviside, heaviside)
    expr = expr.replace(sp.DiracDelta, lambda *args: sp.S.Zero)
    # floor and ceiling are piecewise constant; sympy leaves their derivatives
    # unevaluated (inside a Subs when differentiated through the chain rule)
    expr = expr.replace(
        lambda e: isinstance(e, sp.Derivative) and isinstance(e.expr, (sp.floor, sp.ceiling)),
        lambda e: sp.S.Zero)
    expr = expr.replace(lambda e: isinstance(e, sp.Subs) and e.expr == 0, lambda e: sp.S.Zero)
    return expr


def _np_sigmoid(x):
    x = np.asarray(x)
    with np.errstate(over="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))),
                        np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _np_softplus(x):
    return np.logaddexp(np.zeros((), dtype=np.asarray(x).dtype), x)


def _np_rsqrt(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1 / np.sqrt(x)


_erf = np.vectorize(math.erf, otypes=[np.float64])
_erfc = np.vectorize(math.erfc, otypes=[np.float64])

NUMPY_FUNCTIONS = {
    "sigmoid": _np_sigmoid, "softplus": _np_softplus, "rsqrt": _np_rsqrt,
    "erf": _erf, "erfc": _erfc,
}


@functools.lru_cache(maxsize=4096)
def numpy_function(expr, nargs: int):
    """A NumPy callable evaluating ``expr`` over ``nargs`` argument arrays."""
    return sp.lambdify(arg_symbols(nargs), expr, modules=[NUMPY_FUNCTIONS, "numpy"])
