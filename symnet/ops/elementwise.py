"""Elementwise: one op kind for all pointwise math, holding a sympy expression.

The expression is over the symbols ``a0 .. a{n-1}``, one per argument; arguments
broadcast by NumPy's rules (optionally to an explicit target ``shape``, which is how
``broadcast_to`` is expressed). The vjp of argument i is ``diff(expr, a_i) * g``,
itself an Elementwise op, summed back over the axes that argument was broadcast along.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from .. import scalar
from .base import Op


def broadcast_shapes(shapes, describe):
    """NumPy's broadcast of ``shapes``; ``describe`` (a string, or a callable giving
    one only when needed) names the op in the error."""
    try:
        return tuple(np.broadcast_shapes(*shapes)) if shapes else ()
    except ValueError:
        from ..errors import ShapeError
        what = describe() if callable(describe) else describe
        raise ShapeError(f"{what}: argument shapes {list(shapes)} do not broadcast "
                         "together (NumPy rules: trailing axes equal or 1)") from None


class Elementwise(Op):
    kind = "elementwise"

    def __init__(self, expr, nargs: int, label: str = None, shape=None):
        self.expr = sp.sympify(expr)
        self.n = int(nargs)
        self.nargs = self.n
        self.label = label or "ew"
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        scalar.check_expression(self.expr, self.n, f"elementwise '{self.label}'")

    def attrs(self):
        a = {"expr": str(self.expr)}
        if self.shape is not None:
            a["shape"] = self.shape
        return a

    def describe(self):
        return f"elementwise '{self.label}' [{self.expr}]"

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        extra = [self.shape] if self.shape is not None else []
        out = broadcast_shapes(list(shapes) + extra, self.describe)
        if self.shape is not None and out != self.shape:
            raise self.shape_error(shapes, f"shapes that broadcast to {self.shape}")
        return out

    def vjp(self, args, out, g):
        from .. import functions as F
        grads = []
        for i, a in enumerate(args):
            d = scalar.apply_kink_conventions(sp.diff(self.expr, scalar.arg_symbol(i)))
            if d == 0:
                grads.append(None)
                continue
            if d == 1 and g.shape == out.shape:
                t = g                   # an identity: no node, nothing to store twice
            else:
                gsym = scalar.arg_symbol(len(args))
                t = F.elementwise_expr(d * gsym, list(args) + [g], label=f"d_{self.label}",
                                       shape=out.shape)
            grads.append(F.sum_to_shape(t, a.shape))
        return grads

    def reference(self, arrays, shape):
        fn = scalar.numpy_function(self.expr, self.n)
        dtype = arrays[0].dtype if arrays else np.float32
        with np.errstate(all="ignore"):
            result = fn(*arrays)
        return np.broadcast_to(np.asarray(result, dtype=dtype), shape)
