"""Layout ops: reshape, transpose, slice (and its scatter-back), concat, pad."""
from __future__ import annotations

import math

import numpy as np

from .base import Op


class Reshape(Op):
    kind = "reshape"
    nargs = 1

    def __init__(self, shape):
        self.shape = tuple(int(d) for d in shape)

    def attrs(self):
        return {"shape": self.shape}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        if math.prod(shapes[0]) != math.prod(self.shape):
            raise self.shape_error(shapes, f"{math.prod(self.shape)} elements to make "
                                   f"shape {self.shape}")
        return self.shape

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.reshape(g, args[0].shape)]

    def reference(self, arrays, shape):
        return arrays[0].reshape(shape)


class Transpose(Op):
    kind = "transpose"
    nargs = 1

    def __init__(self, perm):
        self.perm = tuple(int(p) for p in perm)

    def attrs(self):
        return {"perm": self.perm}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (s,) = shapes
        if sorted(self.perm) != list(range(len(s))):
            raise self.shape_error(shapes, f"a {len(self.perm)}-d tensor for permutation "
                                   f"{self.perm}")
        return tuple(s[p] for p in self.perm)

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.transpose(g, tuple(int(i) for i in np.argsort(self.perm)))]

    def reference(self, arrays, shape):
        return np.ascontiguousarray(np.transpose(arrays[0], self.perm))


def _slice_range(s, n) -> range:
    """The indices a (start, stop, step) triple selects on an axis of size ``n``.

    Triples have ``range`` semantics (what ``slice.indices`` returns): indices are
    explicit and never wrap, so a negative step may end at stop = -1 (x[::-1] on 5
    elements is (4, -1, -1)). Every selected index must lie in [0, n).
    """
    start, stop, step = (int(v) for v in s)
    if step == 0:
        raise ValueError(f"slice {tuple(s)}: step must not be zero")
    r = range(start, stop, step)
    if len(r) and not (0 <= r[0] < n and 0 <= r[-1] < n):
        raise ValueError(f"slice {tuple(s)} selects indices outside [0, {n})")
    return r


def _slice_len(s, n):
    return len(_slice_range(s, n))


def _np_slices(slices):
    """NumPy basic-indexing slices for range-semantics triples (stop -1 means None)."""
    return tuple(slice(a, b if b >= 0 else None, c) for a, b, c in slices)


def _slice_shape(op, shapes, slices, in_shape):
    if len(slices) != len(in_shape):
        raise op.shape_error(shapes, f"a {len(slices)}-d tensor for slices {slices}")
    try:
        return tuple(_slice_len(sl, n) for sl, n in zip(slices, in_shape))
    except ValueError as e:
        raise op.shape_error(shapes, f"slices inside the tensor ({e})") from None


class Slice(Op):
    """x[start:stop:step, ...] with one (start, stop, step) triple per axis, read with
    ``range`` semantics (see ``_slice_range``)."""
    kind = "slice"
    nargs = 1

    def __init__(self, slices):
        self.slices = tuple(tuple(s) for s in slices)

    def attrs(self):
        return {"slices": self.slices}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        return _slice_shape(self, shapes, self.slices, shapes[0])

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.graph_of(g).add(SliceGrad(self.slices, args[0].shape), [g])]

    def reference(self, arrays, shape):
        return arrays[0][_np_slices(self.slices)]


class SliceGrad(Op):
    """Scatter of a slice's cotangent back into zeros of the sliced tensor's shape."""
    kind = "slice_grad"
    nargs = 1

    def __init__(self, slices, in_shape):
        self.slices = tuple(tuple(s) for s in slices)
        self.in_shape = tuple(in_shape)

    def attrs(self):
        return {"slices": self.slices, "in_shape": self.in_shape}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        expected = _slice_shape(self, shapes, self.slices, self.in_shape)
        if tuple(shapes[0]) != expected:
            raise self.shape_error(shapes, f"[{expected}]")
        return self.in_shape

    def vjp(self, args, out, g):
        from .. import functions as F
        return [F.graph_of(g).add(Slice(self.slices), [g])]

    def reference(self, arrays, shape):
        out = np.zeros(shape, dtype=arrays[0].dtype)
        out[_np_slices(self.slices)] = arrays[0]
        return out


class Concat(Op):
    kind = "concat"

    def __init__(self, axis):
        self.axis = int(axis)

    def attrs(self):
        return {"axis": self.axis}

    def infer_shape(self, shapes):
        if not shapes:
            raise self.shape_error(shapes, "at least one argument")
        first = shapes[0]
        if not 0 <= self.axis < len(first):
            raise self.shape_error(shapes, f"tensors with an axis {self.axis}")
        for s in shapes:
            if len(s) != len(first) or any(a != b for i, (a, b) in enumerate(zip(s, first))
                                           if i != self.axis):
                raise self.shape_error(shapes, f"equal sizes on every axis but {self.axis}")
        return tuple(sum(s[self.axis] for s in shapes) if i == self.axis else d
                     for i, d in enumerate(first))

    def vjp(self, args, out, g):
        from .. import functions as F
        grads, start = [], 0
        for a in args:
            n = a.shape[self.axis]
            sl = [(0, d, 1) for d in out.shape]
            sl[self.axis] = (start, start + n, 1)
            grads.append(F.graph_of(g).add(Slice(sl), [g]))
            start += n
        return grads

    def reference(self, arrays, shape):
        return np.concatenate(arrays, axis=self.axis)


class Pad(Op):
    """Constant padding: ``pads`` holds one (before, after) pair per axis."""
    kind = "pad"
    nargs = 1

    def __init__(self, pads, value=0.0):
        self.pads = tuple((int(a), int(b)) for a, b in pads)
        self.value = float(value)

    def attrs(self):
        return {"pads": self.pads, "value": self.value}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (s,) = shapes
        if len(self.pads) != len(s) or any(a < 0 or b < 0 for a, b in self.pads):
            raise self.shape_error(shapes, f"a {len(self.pads)}-d tensor and non-negative "
                                   f"pads, got pads {self.pads}")
        return tuple(d + a + b for d, (a, b) in zip(s, self.pads))

    def vjp(self, args, out, g):
        from .. import functions as F
        sl = [(a, a + d, 1) for d, (a, _) in zip(args[0].shape, self.pads)]
        return [F.graph_of(g).add(Slice(sl), [g])]

    def reference(self, arrays, shape):
        return np.pad(arrays[0], self.pads, constant_values=self.value)


class StopGradient(Op):
    """Identity whose gradient is zero (Caffe's propagate_down: false)."""
    kind = "stop_gradient"
    nargs = 1

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        return tuple(shapes[0])

    def vjp(self, args, out, g):
        return [None]

    def reference(self, arrays, shape):
        return arrays[0]
