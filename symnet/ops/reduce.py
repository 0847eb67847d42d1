"""Reductions: sum, max and min over a set of axes (mean is sum times 1/n)."""
from __future__ import annotations

import numpy as np

from .base import Op


class Reduce(Op):
    kind = "reduce"
    nargs = 1
    KINDS = ("sum", "max", "min")

    def __init__(self, how: str, axes, keepdims: bool):
        if how not in self.KINDS:
            raise ValueError(f"reduce: unknown kind '{how}', expected one of {self.KINDS}")
        self.how = how
        self.axes = tuple(sorted(axes))
        self.keepdims = bool(keepdims)
        self.label = how

    def attrs(self):
        return {"how": self.how, "axes": self.axes, "keepdims": self.keepdims}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (s,) = shapes
        if any(a < 0 or a >= len(s) for a in self.axes):
            raise self.shape_error(shapes, f"a tensor with axes {self.axes}")
        if self.how != "sum" and any(s[a] == 0 for a in self.axes):
            raise self.shape_error(shapes, f"non-empty axes {self.axes} for {self.how}")
        if self.keepdims:
            return tuple(1 if i in self.axes else d for i, d in enumerate(s))
        return tuple(d for i, d in enumerate(s) if i not in self.axes)

    def kept_shape(self, in_shape):
        return tuple(1 if i in self.axes else d for i, d in enumerate(in_shape))

    def vjp(self, args, out, g):
        from .. import functions as F
        (x,) = args
        kshape = self.kept_shape(x.shape)
        gk = F.reshape(g, kshape)
        if self.how == "sum":
            return [F.broadcast_to(gk, x.shape)]
        # max/min: the gradient is shared equally among the tied extreme elements
        mask = F.eq(x, F.reshape(out, kshape))
        count = F.sum(mask, self.axes, keepdims=True)
        # count >= 1 whenever x is finite; a NaN input leaves no element equal to the
        # result, and then no gradient (rather than 0/0) flows
        return [mask * gk / F.maximum(count, 1.0)]

    def reference(self, arrays, shape):
        (x,) = arrays
        fn = {"sum": np.sum, "max": np.max, "min": np.min}[self.how]
        return fn(x, axis=self.axes, keepdims=self.keepdims).reshape(shape)
