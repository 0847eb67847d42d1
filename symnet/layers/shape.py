"""Caffe's layers that move, cut, copy or reduce blobs: Concat, Slice, Split, Flatten,
Reshape, Crop, Tile, Reduction, ArgMax and Silence.

All of them are index arithmetic on symnet tensors (reshape, slice, concat,
broadcast, reduce, top-k); their backward is derived, and equals Caffe's
hand-written copies and sums.
"""
from __future__ import annotations

import math

from .. import functions as F
from ..errors import ShapeError
from ._util import canonical_axis
from .registry import context, layer


def _legacy_axis(x, axis, legacy, legacy_name, what):
    """Caffe's ``axis`` (may be negative) or its deprecated uint32 spelling
    (``concat_dim``/``slice_dim``): not both; the legacy one may not be negative."""
    if axis is not None and legacy is not None:
        raise ValueError(f"either axis or {legacy_name} should be specified; not both")
    if legacy is not None:
        legacy = int(legacy)
        if not 0 <= legacy < x.ndim:
            raise ShapeError(f"{what}: {legacy_name} {legacy} out of range for a "
                             f"{x.ndim}-d blob (0 <= {legacy_name} < {x.ndim})")
        return legacy
    return canonical_axis(1 if axis is None else int(axis), x.ndim, what)


# ------------------------------------------------------------------- Concat

@layer("Concat")
def concat(*xs, axis=None, concat_dim=None):
    """y = [x0, x1, ...] joined along ``axis`` (default 1; ``concat_dim`` is the
    deprecated spelling). The bottoms agree on every other axis."""
    if not xs:
        raise ValueError("Concat takes at least one bottom")
    ax = _legacy_axis(xs[0], axis, concat_dim, "concat_dim", "Concat")
    for i, x in enumerate(xs[1:], 1):
        if x.ndim != xs[0].ndim:
            raise ShapeError(f"Concat: bottom {i} has {x.ndim} axes {x.shape}, bottom 0 has "
                             f"{xs[0].ndim} {xs[0].shape}; all inputs must have the same #axes")
        if any(a != b for j, (a, b) in enumerate(zip(x.shape, xs[0].shape)) if j != ax):
            raise ShapeError(f"Concat: bottom {i} has shape {x.shape}, bottom 0 has "
                             f"{xs[0].shape}; all inputs must have the same shape except "
                             f"at concat axis {ax}")
    return F.concat(list(xs), ax)


# -------------------------------------------------------------------- Slice

@layer("Slice")
def slice_(x, axis=None, slice_point=(), slice_dim=None):
    """Cut x along ``axis`` (default 1; ``slice_dim`` is the deprecated spelling) into
    one top per piece: at the ascending ``slice_point`` indices (one fewer than the
    tops), or into equal parts when no points are given."""
    ntop = context().ntop
    ax = _legacy_axis(x, axis, slice_dim, "slice_dim", "Slice")
    n = x.shape[ax]
    points = [int(p) for p in slice_point or ()]
    if points:
        if len(points) != ntop - 1:
            raise ValueError(f"{len(points)} slice_point values for {ntop} tops; give one "
                             "fewer point than tops")
        if ntop > n:
            raise ShapeError(f"Slice: {ntop} tops from axis {ax} of size {n} (shape "
                             f"{x.shape})")
        prev, sizes = 0, []
        for p in points:
            if p <= prev:
                raise ValueError(f"slice_point {points} must be strictly increasing and "
                                 "positive")
            sizes.append(p - prev)
            prev = p
        if prev >= n:
            # Caffe would make an empty (or negative) last top here
            raise ShapeError(f"Slice: slice_point {prev} leaves no element of axis {ax} of "
                             f"size {n} for the last top")
        sizes.append(n - prev)
    else:
        if ntop < 1 or n % ntop:
            raise ShapeError(f"Slice: {ntop} tops should evenly divide axis {ax} of size "
                             f"{n} (shape {x.shape})")
        sizes = [n // ntop] * ntop
    if len(sizes) == 1:
        return x
    return F.split(x, sizes, ax)


# -------------------------------------------------------------------- Split

@layer("Split", params=())
def split(x):
    """Every top is x (Caffe's Split; the bottom's diff is the sum of the tops')."""
    return [x] * context().ntop


# ------------------------------------------------------------------ Silence

@layer("Silence", params=())
def silence(*xs):
    """No tops: the bottoms are consumed and get zero diff."""
    return []


# ------------------------------------------------------------------ Flatten

@layer("Flatten")
def flatten(x, axis=1, end_axis=-1):
    """y = x with axes ``axis`` .. ``end_axis`` (inclusive, negative counts from the
    end) merged into one: (N, C, H, W) -> (N, C*H*W) by default."""
    start = canonical_axis(axis, x.ndim, "Flatten")
    end = canonical_axis(end_axis, x.ndim, "Flatten")
    if end < start:
        raise ShapeError(f"Flatten: end_axis {end_axis} comes before axis {axis} for a "
                         f"{x.ndim}-d blob")
    shape = x.shape[:start] + (math.prod(x.shape[start:end + 1]),) + x.shape[end + 1:]
    return F.reshape(x, shape)


# ------------------------------------------------------------------ Reshape

@layer("Reshape")
def reshape(x, shape=None, axis=0, num_axes=-1):
    """y = x viewed with a new shape: axes [axis, axis + num_axes) of x (num_axes -1:
    to the end) are replaced by ``shape.dim``, where 0 copies the bottom's axis at
    the same position and one -1 is inferred from the count.

    A negative ``axis`` counts from the end so that -1 means "after the last axis"
    (Caffe: start = ndim + axis + 1), unlike Caffe's usual axis convention."""
    dims = shape.get("dim", []) if isinstance(shape, dict) else list(shape or ())
    dims = [int(d) for d in dims]
    start = axis if axis >= 0 else x.ndim + axis + 1
    if not 0 <= start <= x.ndim:
        raise ShapeError(f"Reshape: axis {axis} out of range for a {x.ndim}-d blob")
    if num_axes < -1:
        raise ValueError(f"num_axes {num_axes} must be >= 0, or -1 for all")
    end = x.ndim if num_axes == -1 else start + num_axes
    if end > x.ndim:
        raise ShapeError(f"Reshape: axis {axis} + num_axes {num_axes} is out of range for "
                         f"a {x.ndim}-d blob")
    if dims.count(-1) > 1:
        raise ValueError(f"shape {dims} contains multiple -1 dims; at most one may be given")
    if any(d < -1 for d in dims):
        raise ValueError(f"shape {dims}: dims must be positive, 0 (copy) or -1 (infer)")
    top = list(x.shape[:start]) + dims + list(x.shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= x.ndim:
                raise ShapeError(f"Reshape: shape {dims} has a 0 at position {i} but the "
                                 f"bottom {x.shape} has no axis {start + i} to copy")
            top[start + i] = x.shape[start + i]
    if -1 in dims:
        i = start + dims.index(-1)
        known = math.prod(d for j, d in enumerate(top) if j != i)
        if known == 0 or x.size % known:
            raise ShapeError(f"Reshape: bottom count {x.size} {x.shape} must be divisible "
                             f"by the product of the specified dimensions ({known})")
        top[i] = x.size // known
    if math.prod(top) != x.size:
        raise ShapeError(f"Reshape: top shape {tuple(top)} has {math.prod(top)} elements, "
                         f"bottom {x.shape} has {x.size}; output count must match input count")
    return F.reshape(x, tuple(top))


# --------------------------------------------------------------------- Crop

@layer("Crop")
def crop(x, like, axis=2, offset=()):
    """y = x[..., o_a : o_a + like.shape[a], ...] for every axis a >= ``axis``: the
    second bottom only gives the shape (it gets no diff). ``offset``: none (all 0),
    one value for every cropped axis, or one per axis from ``axis`` to the end."""
    start = canonical_axis(axis, x.ndim, "Crop")
    if like.ndim != x.ndim:
        raise ShapeError(f"Crop: bottom 1 has {like.ndim} axes {like.shape}, bottom 0 has "
                         f"{x.ndim} {x.shape}")
    offset = [int(o) for o in offset or ()]
    if len(offset) > 1 and start + len(offset) != x.ndim:
        raise ValueError(f"{len(offset)} offset values for the {x.ndim - start} axes from "
                         f"axis {start}: give one value, or one per cropped axis")
    index = []
    for i in range(x.ndim):
        if i < start:
            index.append(slice(None))
            continue
        o = offset[0] if len(offset) == 1 else (offset[i - start] if offset else 0)
        if x.shape[i] - o < like.shape[i]:
            raise ShapeError(f"Crop: the crop for axis {i} is out of bounds: size "
                             f"{like.shape[i]} at offset {o} in {x.shape[i]}")
        index.append(slice(o, o + like.shape[i]))
    return x[tuple(index)]


# --------------------------------------------------------------------- Tile

@layer("Tile")
def tile(x, axis=1, tiles=None):
    """y = x repeated ``tiles`` times along ``axis`` as whole blocks (numpy.tile on that
    axis: [a, b] -> [a, b, a, b]); the diff sums the copies."""
    if tiles is None:
        raise ValueError("tile_param.tiles must be specified")
    if tiles <= 0:
        raise ValueError(f"tiles {tiles}: the number of tiles must be positive")
    ax = canonical_axis(axis, x.ndim, "Tile")
    outer, inner = math.prod(x.shape[:ax]), math.prod(x.shape[ax:])
    y = F.broadcast_to(F.reshape(x, (outer, 1, inner)), (outer, int(tiles), inner))
    return F.reshape(y, x.shape[:ax] + (x.shape[ax] * int(tiles),) + x.shape[ax + 1:])


# ---------------------------------------------------------------- Reduction

@layer("Reduction")
def reduction(x, operation="SUM", axis=0, coeff=1.0):
    """y[i] = coeff * op over all axes from ``axis`` on (Caffe reduces the whole tail,
    not one axis); the top keeps x.shape[:axis] (axis 0: a 0-d blob).
    SUM: sum x; ASUM: sum |x| (gradient sign(x), 0 at 0); SUMSQ: sum x^2;
    MEAN: sum x / count."""
    ax = canonical_axis(axis, x.ndim, "Reduction") if x.ndim else 0
    tail = tuple(range(ax, x.ndim))
    if operation == "SUM":
        y = F.sum(x, tail)
    elif operation == "ASUM":
        y = F.sum(F.abs(x), tail)
    elif operation == "SUMSQ":
        y = F.sum(x * x, tail)
    elif operation == "MEAN":
        y = F.mean(x, tail)
    else:
        raise ValueError(f"operation {operation!r}: expected SUM, ASUM, SUMSQ or MEAN")
    return y * float(coeff) if coeff != 1.0 else y


# ------------------------------------------------------------------- ArgMax

def _topk_caffe(x3, k):
    """(values, indices) of the k largest along axis 1 of a 3-d tensor, ordered as
    Caffe's ArgMax: it partial_sorts (value, index) pairs with std::greater, so
    equal values are ordered by *descending* index (the later element wins a tie).
    symnet's top-k puts the lower index first on ties, so it runs on the axis
    reversed and the indices are mapped back."""
    n = x3.shape[1]
    rev = x3[:, ::-1, :]
    idx_rev = F.topk(rev, k, 1)[1]
    vals = F.gather(rev, idx_rev, 1)
    return vals, (n - 1.0) - idx_rev


@layer("ArgMax", params="argmax_param")
def argmax(x, out_max_val=False, top_k=1, axis=None):
    """Indices (as floats) of the top_k largest values, largest first; ties go to the
    larger index (Caffe's ordering of (value, index) pairs).

    With ``axis``: along that axis; the top is x's shape with that axis = top_k,
    holding the indices, or the values when out_max_val.
    Without ``axis``: over each item's flattened x[n] (count(1) values); the top is
    (N, 1, top_k) padded with 1s to x's number of axes (at least 3), and with
    out_max_val (N, 2, top_k, ...): channel 0 the indices, channel 1 the values.
    Caffe has no backward here; the derived gradient flows into the chosen values
    (out_max_val) and is zero for indices."""
    if top_k < 1:
        raise ValueError(f"top_k {top_k} must not be less than 1")
    if axis is not None:
        ax = canonical_axis(axis, x.ndim, "ArgMax")
        n = x.shape[ax]
        if top_k > n:
            raise ValueError(f"top_k {top_k} must be less than or equal to the dimension "
                             f"{n} of axis {ax}")
        outer, inner = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1:])
        vals, idx = _topk_caffe(F.reshape(x, (outer, n, inner)), top_k)
        shape = x.shape[:ax] + (top_k,) + x.shape[ax + 1:]
        return F.reshape(vals if out_max_val else idx, shape)
    num = x.shape[0] if x.ndim else 1
    dim = x.size // max(num, 1)
    if top_k > dim:
        raise ValueError(f"top_k {top_k} must be less than or equal to the dimension of "
                         f"the flattened bottom blob per instance ({dim})")
    vals, idx = _topk_caffe(F.reshape(x, (num, dim, 1)), top_k)
    idx = F.reshape(idx, (num, 1, top_k))
    if out_max_val:
        idx = F.concat([idx, F.reshape(vals, (num, 1, top_k))], 1)
    ndim = max(x.ndim, 3)
    return F.reshape(idx, idx.shape + (1,) * (ndim - 3))
