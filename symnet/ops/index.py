"""Index ops: gather along an axis (and its scatter-add adjoint), arg-top-k, and a
seeded counter-based uniform random generator.

Indices are float32 tensors holding integers, as Caffe's label and ArgMax blobs do
(exact up to 2**24). An index outside ``[0, n)`` gathers 0 and scatters nothing, which
is how ignored labels (Caffe's ``ignore_label``) drop out.
"""
from __future__ import annotations

import numpy as np

from .base import Op


class Gather(Op):
    """out[..., j, ...] = x[..., idx[..., j, ...], ...] along ``axis`` (torch.gather)."""
    kind = "gather"
    nargs = 2

    def __init__(self, axis):
        self.axis = int(axis)

    def attrs(self):
        return {"axis": self.axis}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        x, idx = shapes
        ok = len(x) == len(idx) and 0 <= self.axis < len(x) and all(
            a == b for i, (a, b) in enumerate(zip(x, idx)) if i != self.axis)
        if not ok:
            raise self.shape_error(shapes, f"x and indices of one rank, equal on every axis "
                                   f"but {self.axis}")
        return tuple(idx)

    def vjp(self, args, out, g):
        from .. import functions as F
        x, idx = args
        return [F.graph_of(g).add(GatherGrad(self.axis, x.shape), [idx, g]), None]

    def reference(self, arrays, shape):
        x, idx = arrays
        n = x.shape[self.axis]
        i = np.asarray(idx).astype(np.int64)
        valid = (i >= 0) & (i < n)
        picked = np.take_along_axis(x, np.where(valid, i, 0), axis=self.axis)
        return np.where(valid, picked, 0).astype(x.dtype)


class GatherGrad(Op):
    """Scatter-add of g into zeros of x's shape at the gathered positions."""
    kind = "gather_grad"
    nargs = 2

    def __init__(self, axis, x_shape):
        self.axis = int(axis)
        self.x_shape = tuple(x_shape)

    def attrs(self):
        return {"axis": self.axis, "x_shape": self.x_shape}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        idx, g = shapes
        if tuple(idx) != tuple(g) or len(idx) != len(self.x_shape):
            raise self.shape_error(shapes, "indices and cotangent of one shape")
        return self.x_shape

    def vjp(self, args, out, g):
        from .. import functions as F
        idx, _ = args
        return [None, F.graph_of(g).add(Gather(self.axis), [g, idx])]

    def reference(self, arrays, shape):
        idx, g = arrays
        out = np.zeros(shape, dtype=g.dtype)
        n = shape[self.axis]
        i = np.asarray(idx).astype(np.int64)
        valid = (i >= 0) & (i < n)
        grids = list(np.indices(i.shape, sparse=True))
        grids[self.axis] = np.where(valid, i, 0)
        np.add.at(out, tuple(grids), np.where(valid, g, 0))
        return out


class ArgTopK(Op):
    """Indices of the k largest values along ``axis``, largest first; ties go to the
    lower index. Integer-valued: its gradient is zero."""
    kind = "argtopk"
    nargs = 1

    def __init__(self, axis, k):
        self.axis, self.k = int(axis), int(k)

    def attrs(self):
        return {"axis": self.axis, "k": self.k}

    def infer_shape(self, shapes):
        self.check_arity(shapes)
        (x,) = shapes
        if not 0 <= self.axis < len(x) or not 1 <= self.k <= x[self.axis]:
            raise self.shape_error(shapes, f"an axis {self.axis} with at least k={self.k} "
                                   "elements")
        return tuple(self.k if i == self.axis else d for i, d in enumerate(x))

    def vjp(self, args, out, g):
        return [None]

    def reference(self, arrays, shape):
        (x,) = arrays
        order = np.argsort(-x, axis=self.axis, kind="stable")
        return np.take(order, range(self.k), axis=self.axis).astype(x.dtype)


# Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def philox4x32(counter, key, rounds=10):
    """Vectorised Philox4x32: counter is 4 uint64 arrays of 32-bit words, key 2 ints."""
    mask = np.uint64(0xFFFFFFFF)
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & mask for c in counter)
    k0, k1 = np.uint64(key[0] & 0xFFFFFFFF), np.uint64(key[1] & 0xFFFFFFFF)
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    for r in range(rounds):
        if r:
            k0 = (k0 + np.uint64(PHILOX_W[0])) & mask
            k1 = (k1 + np.uint64(PHILOX_W[1])) & mask
        p0 = m0 * c0
        p1 = m1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & mask
        hi1, lo1 = p1 >> np.uint64(32), p1 & mask
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def philox_uniform(size, seed, offset=0):
    """size floats in [0, 1): element i is Philox(counter=(i, i>>32, offset, 0),
    key=(seed, seed>>32)) word 0, top 24 bits, times 2**-24."""
    i = np.arange(size, dtype=np.uint64)
    zeros = np.zeros_like(i)
    w0, _, _, _ = philox4x32((i, i >> np.uint64(32), zeros + np.uint64(offset), zeros),
                             (seed, seed >> 32))
    return ((w0 >> np.uint64(8)).astype(np.float64) * 2.0 ** -24).astype(np.float32)


class RandomUniform(Op):
    """Uniform [0, 1) numbers of a shape from a seed. With one scalar argument, that
    value (an iteration counter) selects a fresh stream per call."""
    kind = "random_uniform"

    def __init__(self, shape, seed):
        self.shape = tuple(int(d) for d in shape)
        self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF

    def arity(self, given):
        return min(given, 1)

    def attrs(self):
        return {"shape": self.shape, "seed": self.seed}

    def infer_shape(self, shapes):
        if len(shapes) > 1 or (shapes and tuple(shapes[0]) != ()):
            raise self.shape_error(shapes, "no argument or one scalar counter")
        return self.shape

    def vjp(self, args, out, g):
        return [None] * len(args)

    def reference(self, arrays, shape):
        offset = int(arrays[0]) if arrays else 0
        return philox_uniform(int(np.prod(shape)), self.seed, offset).reshape(shape)
