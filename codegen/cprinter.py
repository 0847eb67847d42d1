"""The float32 C printer: sympy expressions to C text shared by CUDA and the CPU.

One table, ``C_FUNCTIONS``, maps every function in ``symnet.scalar.SUPPORTED`` to a
C function: the C library's float variants (``expf``, ``tanhf``...) or a helper of
the module prelude (``sn_max``, ``sn_sigmoid``...) that defines a backend-specific or
Caffe-specific behaviour. Literals carry the ``f`` suffix, small integer powers
become products and Piecewise becomes nested ternaries, so no double-precision math
slips in. A function without an entry is an error naming it and this table.
"""
from __future__ import annotations

import sympy as sp
from sympy.printing.c import C99CodePrinter

from symnet import scalar
from symnet.errors import UnsupportedFunctionError

C_FUNCTIONS = {
    sp.exp: "expf", sp.log: "logf", sp.tanh: "tanhf", sp.sinh: "sinhf", sp.cosh: "coshf",
    sp.atan: "atanf", sp.asin: "asinf",
    sp.acos: "acosf", sp.atan2: "atan2f", sp.erf: "erff", sp.erfc: "erfcf",
    sp.Abs: "fabsf", sp.floor: "floorf", sp.ceiling: "ceilf",
    # prelude helpers: NaN-propagating max/min (as NumPy and Caffe's std::max), sign
    # and Heaviside that pass NaN through, and overflow-free logistic functions
    sp.sign: "sn_sign", sp.Max: "sn_max", sp.Min: "sn_min", sp.Heaviside: "sn_heaviside",
    scalar.sigmoid: "sn_sigmoid", scalar.softplus: "sn_softplus", scalar.rsqrt: "sn_rsqrt",
    # sinf/cosf/tanf on the CPU (vectorised by libmvec); on CUDA float-only versions,
    # since CUDA's own convert huge arguments through double
    sp.sin: "sn_sin", sp.cos: "sn_cos", sp.tan: "sn_tan",
}

MAX_PRODUCT_POWER = 4     # x**n for |n| <= this prints as a product


class FloatCPrinter(C99CodePrinter):
    """C99 printer whose real type is float and whose functions come from C_FUNCTIONS."""

    def __init__(self):
        from sympy.codegen.ast import float32, real
        super().__init__(settings={"type_aliases": {real: float32}})

    def _print_Function(self, expr):
        name = C_FUNCTIONS.get(expr.func)
        if name is None:
            raise UnsupportedFunctionError(
                f"sympy function '{expr.func.__name__}' has no C printing rule; add it to "
                "C_FUNCTIONS in symnet/codegen/cprinter.py (and symnet.scalar.SUPPORTED)")
        args = [self._print(a) for a in expr.args]
        if expr.func in (sp.Max, sp.Min) and len(args) > 2:
            out = args[0]
            for a in args[1:]:
                out = f"{name}({out}, {a})"
            return out
        if expr.func is sp.Heaviside and len(args) == 1:
            args.append("0.5f")
        return f"{name}({', '.join(args)})"

    # sympy dispatches these classes to dedicated methods before _print_Function
    _print_Max = _print_Min = _print_Abs = _print_sign = _print_Function
    _print_Heaviside = _print_exp = _print_log = _print_floor = _print_ceiling = _print_Function
    _print_erf = _print_erfc = _print_tanh = _print_sin = _print_cos = _print_Function
    _print_atan2 = _print_Function

    def _print(self, expr, **kwargs):
        # every function goes through C_FUNCTIONS, none through sympy's own C names
        if isinstance(expr, sp.core.function.Application) and not isinstance(
                expr, (sp.Piecewise, sp.logic.boolalg.BooleanFunction)):
            return self._print_Function(expr)
        return super()._print(expr, **kwargs)

    def _print_Pow(self, expr):
        base, e = expr.base, expr.exp
        b = self.parenthesize(base, sp.printing.precedence.PRECEDENCE["Mul"] + 1)
        if e.is_Integer and 0 < abs(int(e)) <= MAX_PRODUCT_POWER:
            prod = "*".join([b] * abs(int(e)))
            return f"({prod})" if int(e) > 0 else f"(1.0f/({prod}))"
        if e == sp.Rational(1, 2):
            return f"sqrtf({self._print(base)})"
        if e == -sp.Rational(1, 2):
            return f"sn_rsqrt({self._print(base)})"
        if e == sp.Rational(1, 3):
            return f"cbrtf({self._print(base)})"
        return f"powf({self._print(base)}, {self._print_float(e)})"

    def _print_float(self, e):
        if e.is_Number:
            return self._print(sp.Float(e))
        return self._print(e)

    def _print_Integer(self, expr):
        return f"{int(expr)}.0f"

    def _print_Rational(self, expr):
        return f"({int(expr.p)}.0f/{int(expr.q)}.0f)"

    def _print_Float(self, expr):
        text = repr(float(expr))
        if "e" not in text and "." not in text and "inf" not in text and "nan" not in text:
            text += ".0"
        if text in ("inf", "-inf"):
            return "INFINITY" if text == "inf" else "(-INFINITY)"
        if text == "nan":
            return "NAN"
        return text + "f"

    def _print_NumberSymbol(self, expr):
        return self._print_Float(sp.Float(expr.evalf(20)))

    _print_Pi = _print_Exp1 = _print_EulerGamma = _print_NumberSymbol

    def _print_Infinity(self, expr):
        return "INFINITY"

    def _print_NegativeInfinity(self, expr):
        return "(-INFINITY)"

    def _print_NaN(self, expr):
        return "NAN"

    def _print_Piecewise(self, expr):
        if expr.args[-1].cond != True:  # noqa: E712 - sympy's true
            raise UnsupportedFunctionError(f"Piecewise {expr} has no default branch")
        out = self._print(expr.args[-1].expr)
        for e, c in reversed(expr.args[:-1]):
            out = f"(({self._print(c)}) ? ({self._print(e)}) : ({out}))"
        return out

    def _print_Relational(self, expr):
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        return f"({self._print(expr.lhs)} {op} {self._print(expr.rhs)})"

    def _print_BooleanTrue(self, expr):
        return "1"

    def _print_BooleanFalse(self, expr):
        return "0"


_printer = None


def printer() -> FloatCPrinter:
    global _printer
    if _printer is None:
        _printer = FloatCPrinter()
    return _printer


def ccode(expr) -> str:
    """C text of one float32 expression."""
    return printer().doprint(expr)


def check_table():
    """Every function symnet.scalar supports has a C rule (a test calls this)."""
    missing = [f.__name__ for f in scalar.SUPPORTED if f not in C_FUNCTIONS]
    if missing:
        raise UnsupportedFunctionError(f"no C rule for {missing} in C_FUNCTIONS")
