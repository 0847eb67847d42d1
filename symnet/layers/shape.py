"""Caffe's layers that move, cut, copy or reduce blobs: Concat, Slice, Split, Flatten,
Reshape, Crop, Tile, Reduction, ArgMax, Silence, BatchReindex and Filter; and
Parameter (a learnable blob as a top).

All of them are index arithmetic on symnet tensors (reshape, slice, concat,
broadcast, reduce, top-k); their backward is derived, and equals Caffe's
hand-written copies and sums.
"""
from __future__ import annotations

import math

import numpy as np

from .. import functions as F
from ..errors import ShapeError
from ._util import canonical_axis, is_int, require, show
from .registry import LayerError, context, layer, layer_param


def _legacy_axis(x, axis, legacy, legacy_name, param):
    """Caffe's ``axis`` (may be negative) or its deprecated uint32 spelling
    (``concat_dim``/``slice_dim``): not both; the legacy one may not be negative."""
    if axis is not None and legacy is not None:
        raise ValueError(f"{param}.{legacy_name} {show(legacy)}: either axis ({show(axis)}) "
                         f"or {legacy_name} should be specified; not both")
    if legacy is not None:
        # Caffe: CHECK_GE(slice_dim, 0), CHECK_LT(slice_dim, num_axes) "out of range"
        require(is_int(legacy) and 0 <= legacy < x.ndim, f"{param}.{legacy_name}", legacy,
                f"in [0, {x.ndim}) for a {x.ndim}-d bottom (out of range)", ShapeError)
        return int(legacy)
    return canonical_axis(1 if axis is None else axis, x.ndim, f"{param}.axis")


# ------------------------------------------------------------------- Concat

@layer("Concat")
def concat(*xs, axis=None, concat_dim=None):
    """y = [x0, x1, ...] joined along ``axis`` (default 1; ``concat_dim`` is the
    deprecated spelling). The bottoms agree on every other axis."""
    if not xs:
        raise ValueError("Concat takes at least one bottom")
    ax = _legacy_axis(xs[0], axis, concat_dim, "concat_dim", "concat_param")
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
    ax = _legacy_axis(x, axis, slice_dim, "slice_dim", "slice_param")
    n = x.shape[ax]
    points = list(slice_point or ())
    field = "slice_param.slice_point"
    if points:
        require(all(is_int(p) for p in points), field, points, "integers")
        points = [int(p) for p in points]
        # Caffe: CHECK_EQ(slice_point_.size(), top.size() - 1)
        require(len(points) == ntop - 1, field, points,
                f"{ntop - 1} values for {ntop} tops (give one fewer point than tops)")
        # Caffe: CHECK_LE(top.size(), bottom_slice_axis)
        require(ntop <= n, field, points,
                f"for at most {n} tops: axis {ax} of the bottom {x.shape} has size {n}",
                ShapeError)
        # Caffe: CHECK_GT(slice_point_[i], prev), prev starting at 0
        require(all(b > a for a, b in zip([0] + points, points)), field, points,
                "strictly increasing and positive")
        # Caffe would make an empty (or negative) last top here
        require(points[-1] < n, field, points,
                f"below the size {n} of axis {ax} (the last top would get no element)",
                ShapeError)
        sizes = [b - a for a, b in zip([0] + points, points + [n])]
    else:
        if ntop < 1 or n % ntop:
            raise ShapeError(f"Slice: {ntop} tops should evenly divide axis {ax} of size "
                             f"{n} (shape {x.shape}); or give slice_param.slice_point")
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
    start = canonical_axis(axis, x.ndim, "flatten_param.axis")
    end = canonical_axis(end_axis, x.ndim, "flatten_param.end_axis")
    # Caffe: Blob::count(start, end + 1) checks CHECK_LE(start, end)
    require(end >= start, "flatten_param.end_axis", end_axis,
            f"at or after axis {axis} for a {x.ndim}-d blob (it comes before)", ShapeError)
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
    P = "reshape_param"
    require(all(is_int(d) for d in dims), f"{P}.shape.dim", dims, "integers")
    dims = [int(d) for d in dims]
    require(is_int(axis), f"{P}.axis", axis, "an integer")
    require(is_int(num_axes), f"{P}.num_axes", num_axes, "an integer")
    axis, num_axes = int(axis), int(num_axes)
    start = axis if axis >= 0 else x.ndim + axis + 1
    # Caffe: CHECK_GE(start_axis, 0), CHECK_LE(start_axis, num_axes) "out of range"
    require(0 <= start <= x.ndim, f"{P}.axis", axis,
            f"in [{-x.ndim - 1}, {x.ndim}] for a {x.ndim}-d bottom (out of range)", ShapeError)
    # Caffe: CHECK_GE(num_axes, -1) "num_axes must be >= 0, or -1 for all"
    require(num_axes >= -1, f"{P}.num_axes", num_axes, ">= 0, or -1 for all")
    end = x.ndim if num_axes == -1 else start + num_axes
    # Caffe: CHECK_LE(end_axis, num_axes) "end_axis = axis + num_axes is out of range"
    require(end <= x.ndim, f"{P}.num_axes", num_axes,
            f"at most {x.ndim - start} from axis {axis} of a {x.ndim}-d bottom (axis + "
            "num_axes is out of range)", ShapeError)
    # Caffe: CHECK_EQ(inferred_axis_, -1) "new shape contains multiple -1 dims"
    require(dims.count(-1) <= 1, f"{P}.shape.dim", dims,
            "free of multiple -1 dims; at most one -1 may be given")
    # Caffe multiplies a dim < -1 into the count and then refuses the negative shape
    require(all(d >= -1 for d in dims), f"{P}.shape.dim", dims,
            "positive, 0 (copy) or -1 (infer)")
    top = list(x.shape[:start]) + dims + list(x.shape[end:])
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= x.ndim:
                raise ShapeError(f"{P}.shape.dim {dims}: has a 0 at position {i} but the "
                                 f"bottom {x.shape} has no axis {start + i} to copy")
            top[start + i] = x.shape[start + i]
    if -1 in dims:
        i = start + dims.index(-1)
        known = math.prod(d for j, d in enumerate(top) if j != i)
        if known == 0 or x.size % known:
            raise ShapeError(f"{P}.shape.dim {dims}: bottom count {x.size} {x.shape} must "
                             f"be divisible by the product of the specified dimensions "
                             f"({known})")
        top[i] = x.size // known
    if math.prod(top) != x.size:
        raise ShapeError(f"{P}.shape.dim {dims}: top shape {tuple(top)} has "
                         f"{math.prod(top)} elements, bottom {x.shape} has {x.size}; output "
                         "count must match input count")
    return F.reshape(x, tuple(top))


# --------------------------------------------------------------------- Crop

@layer("Crop")
def crop(x, like, axis=2, offset=()):
    """y = x[..., o_a : o_a + like.shape[a], ...] for every axis a >= ``axis``: the
    second bottom only gives the shape (it gets no diff). ``offset``: none (all 0),
    one value for every cropped axis, or one per axis from ``axis`` to the end."""
    start = canonical_axis(axis, x.ndim, "crop_param.axis")
    if like.ndim != x.ndim:
        raise ShapeError(f"Crop: bottom 1 has {like.ndim} axes {like.shape}, bottom 0 has "
                         f"{x.ndim} {x.shape}")
    offset = list(offset or ())
    # offset is a uint32 in Caffe; a negative one (possible from Python) would crop
    # from the end, silently
    require(all(is_int(o) and o >= 0 for o in offset), "crop_param.offset", offset,
            "integers >= 0")
    offset = [int(o) for o in offset]
    # Caffe: CHECK_EQ(start_axis + offset_size, num_axes) when more than one offset
    require(len(offset) <= 1 or start + len(offset) == x.ndim, "crop_param.offset", offset,
            f"one value, or one per cropped axis ({x.ndim - start} axes from axis {start})")
    index = []
    for i in range(x.ndim):
        if i < start:
            index.append(slice(None))
            continue
        o = offset[0] if len(offset) == 1 else (offset[i - start] if offset else 0)
        # Caffe: CHECK_GE(bottom[0]->shape(i) - crop_offset, bottom[1]->shape(i))
        require(x.shape[i] - o >= like.shape[i], "crop_param.offset", o,
                f"at most {x.shape[i] - like.shape[i]} on axis {i}: the crop of size "
                f"{like.shape[i]} from {x.shape[i]} is out of bounds", ShapeError)
        index.append(slice(o, o + like.shape[i]))
    return x[tuple(index)]


# --------------------------------------------------------------------- Tile

@layer("Tile")
def tile(x, axis=1, tiles=None):
    """y = x repeated ``tiles`` times along ``axis`` as whole blocks (numpy.tile on that
    axis: [a, b] -> [a, b, a, b]); the diff sums the copies."""
    # Caffe: CHECK(has_tiles()) "Number of tiles must be specified"; CHECK_GT(tiles_, 0)
    require(tiles is not None, "tile_param.tiles", tiles,
            "given (the number of tiles must be specified)")
    require(is_int(tiles) and tiles > 0, "tile_param.tiles", tiles,
            "a positive integer (the number of tiles)")
    ax = canonical_axis(axis, x.ndim, "tile_param.axis")
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
    ax = canonical_axis(axis, x.ndim, "reduction_param.axis") if x.ndim else 0
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
        require(False, "reduction_param.operation", operation, "SUM, ASUM, SUMSQ or MEAN")
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
    # Caffe: CHECK_GE(top_k_, 1) "top k must not be less than 1."
    require(is_int(top_k) and top_k >= 1, "argmax_param.top_k", top_k, "an integer >= 1")
    top_k = int(top_k)
    if axis is not None:
        ax = canonical_axis(axis, x.ndim, "argmax_param.axis")
        n = x.shape[ax]
        # Caffe: CHECK_GE(bottom[0]->shape(axis_), top_k_)
        require(top_k <= n, "argmax_param.top_k", top_k,
                f"less than or equal to the dimension {n} of axis {ax}")
        outer, inner = math.prod(x.shape[:ax]), math.prod(x.shape[ax + 1:])
        vals, idx = _topk_caffe(F.reshape(x, (outer, n, inner)), top_k)
        shape = x.shape[:ax] + (top_k,) + x.shape[ax + 1:]
        return F.reshape(vals if out_max_val else idx, shape)
    num = x.shape[0] if x.ndim else 1
    dim = x.size // max(num, 1)
    # Caffe: CHECK_GE(bottom[0]->count(1), top_k_)
    require(top_k <= dim, "argmax_param.top_k", top_k, "less than or equal to the "
            f"dimension of the flattened bottom blob per instance ({dim})")
    vals, idx = _topk_caffe(F.reshape(x, (num, dim, 1)), top_k)
    idx = F.reshape(idx, (num, 1, top_k))
    if out_max_val:
        idx = F.concat([idx, F.reshape(vals, (num, 1, top_k))], 1)
    ndim = max(x.ndim, 3)
    return F.reshape(idx, idx.shape + (1,) * (ndim - 3))


# ---------------------------------------------------------------- Parameter

@layer("Parameter")
def parameter(*bottoms, shape=None):
    """One learnable blob of ``parameter_param.shape``; the top is that blob (Caffe
    shares the top's data and diff with it, so the top's diff accumulates into the
    blob's diff). Caffe gives the blob no filler: a new blob holds zeros."""
    # Caffe: ExactNumBottomBlobs() == 0, ExactNumTopBlobs() == 1
    if bottoms:
        raise ValueError(f"Parameter takes no bottom, got {len(bottoms)}")
    require(context().ntop == 1, "top", context().ntop, "exactly 1 top for Parameter")
    dims = shape.get("dim", []) if isinstance(shape, dict) else list(shape or ())
    # BlobShape dims are int64; Blob::Reshape refuses a negative one
    require(all(is_int(d) and d >= 0 for d in dims), "parameter_param.shape.dim", dims,
            "integers >= 0")
    return layer_param(tuple(int(d) for d in dims), {"type": "constant", "value": 0.0})


# ------------------------------------------------------ host index steps

class _HostIndices:
    """A host step that turns a selector or index blob into gather indices, checking
    its values as Caffe's Forward/Reshape does (run as a ``PythonTop`` op: a fusion
    boundary and one host call per forward). It has no gradient: Caffe does not
    back-propagate to these bottoms."""

    def __init__(self, name, in_shape, out_shape, compute):
        self.name = name
        self.bottom_shapes = [tuple(in_shape)]
        self.top_shapes = [tuple(out_shape)]
        self.params = []
        self.top_tensors = []
        self._compute = compute

    @property
    def n_args(self):
        return 1

    def check_arg_shapes(self, shapes):
        if [tuple(s) for s in shapes] != self.bottom_shapes:
            raise ShapeError(f"{self.name}: built for a bottom of shape "
                             f"{self.bottom_shapes[0]}, got {tuple(shapes[0])}")

    def differentiable(self, i):
        return False

    def forward_into(self, bottom_arrays, top_arrays):
        top_arrays[0][...] = self._compute(np.asarray(bottom_arrays[0]).reshape(-1))

    def forward_arrays(self, arrays):
        out = np.zeros(self.top_shapes[0], dtype=np.asarray(arrays[0]).dtype)
        self.forward_into(arrays, [out])
        return [out]


def _host_indices(name, x, out_shape, compute):
    from ..ops.python import PythonTop
    runner = _HostIndices(name, x.shape, out_shape, compute)
    t = F.graph_of(x).add(PythonTop(runner, 0), [x])
    runner.top_tensors = [t]
    return t


def _rows(x, idx):
    """x[idx] along axis 0 (idx: (k,) float indices); the gradient scatter-adds."""
    rest = x.shape[1:]
    x2 = F.reshape(x, (x.shape[0], math.prod(rest)))
    i2 = F.broadcast_to(F.reshape(idx, (idx.shape[0], 1)), (idx.shape[0], x2.shape[1]))
    return F.reshape(F.gather(x2, i2, 0), (idx.shape[0],) + rest)


def _needs_gradient(t):
    """Whether t depends on a learnable blob other than through a stop_gradient."""
    g = F.graph_of(t).nx
    seen, todo = set(), [t.id]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        kind = g.nodes[n]["op"].kind
        if kind == "param":
            return True
        if kind != "stop_gradient":
            todo.extend(g.predecessors(n))
    return False


# ------------------------------------------------------------ BatchReindex

@layer("BatchReindex", params=())
def batch_reindex(x, index):
    """y[i] = x[int(index[i])]: rows of x picked (and repeated) by a 1-d blob of
    indices (floats, truncated toward zero as Caffe's static_cast<int>); every index
    must lie in [0, N) (checked at each forward, as Caffe). The gradient scatter-adds
    the top's diff into x's rows; the index blob gets none (Caffe: "Cannot backprop
    to index")."""
    # Caffe: CHECK_EQ(1, bottom[1]->num_axes())
    if index.ndim != 1:
        raise ShapeError(f"BatchReindex: bottom 1 (the indices) has {index.ndim} axes "
                         f"{index.shape}; it must have 1")
    if x.ndim < 1:
        raise ShapeError("BatchReindex: bottom 0 must have at least one axis")
    n = x.shape[0]
    where = context().where or f"layer '{context().name}' (BatchReindex)"

    def check(values):
        # Caffe: CHECK_GE(ridx, 0) "Index specified for reindex layer was negative."
        # CHECK_LT(ridx, initial_num) "... was greater than batch size."
        bad = np.flatnonzero(~((values >= 0) & (values < n)))
        if bad.size:
            i = int(bad[0])
            raise LayerError(f"{where}: bottom 1 index[{i}] = {values[i]:g}: must be in "
                             f"[0, {n}) (the batch size of bottom 0)")
        return np.trunc(values)

    if _needs_gradient(index) and context().phase == "TRAIN":
        raise ValueError("bottom 1 (the indices) depends on learnable blobs: BatchReindex "
                         "cannot back-propagate to the indices (Caffe: 'Cannot backprop to "
                         "index'); set propagate_down: false for it")
    idx = _host_indices(f"{context().name}_indices", index, index.shape, check)
    return _rows(x, idx)


# ------------------------------------------------------------------ Filter

class SelectedCountError(LayerError):
    """A Filter's selector has another count of nonzero entries than the layer was
    built for. ``layer`` names the layer, ``count`` is the count found and ``built``
    the one the graph has: a Net that re-sizes on it rebuilds the layer with
    ``count`` and runs the forward again."""

    def __init__(self, message, layer=None, count=None, built=None):
        super().__init__(message)
        self.layer, self.count, self.built = layer, count, built


@layer("Filter", params=())
def filter_(*bottoms, count=None):
    """Tops = the rows of bottoms[:-1] whose selector (the last bottom) is nonzero, in
    order. The selector has shape (N, 1, ...) (every axis after the first of size 1);
    every other bottom has N rows; one top per filtered bottom. The gradient copies
    each top row's diff back to its row and zeroes the rest; the selector gets none
    (Caffe: "Layer cannot backpropagate to filter index inputs").

    The tops' first axis is the number of nonzero selector entries, a value known only
    when the net runs. Caffe re-sizes the tops at every forward; symnet's graph has
    static shapes, so the count is fixed when the layer is built: ``count`` (a
    symbolic-layer option, e.g. ``param_str: "count: 3"``), or the selector's N as
    Caffe's first Reshape. Each forward checks the selector's count on the host and
    raises a LayerError naming the count found when it differs."""
    ctx = context()
    # Caffe: CHECK_EQ(top.size(), bottom.size() - 1)
    if len(bottoms) < 2:
        raise ValueError(f"Filter takes the bottoms to filter and a selector bottom (last), "
                         f"got {len(bottoms)} bottom(s)")
    *xs, sel = bottoms
    require(ctx.ntop == len(xs), "top", ctx.ntop,
            f"{len(xs)}, one per filtered bottom (bottoms minus the selector)")
    if sel.ndim < 1:
        raise ShapeError("Filter: the selector (last bottom) must have at least one axis")
    # Caffe: CHECK_EQ(selector->shape(i), 1) for i >= 1
    if any(d != 1 for d in sel.shape[1:]):
        raise ShapeError(f"Filter: the selector (last bottom) has shape {sel.shape}; its "
                         "dimensions must be singletons (1), except the first")
    n = sel.shape[0]
    for i, x in enumerate(xs):
        # Caffe: CHECK_EQ(selector->shape(0), bottom[i]->shape(0))
        if x.ndim < 1 or x.shape[0] != n:
            raise ShapeError(f"Filter: bottom {i} has shape {x.shape}; each bottom should "
                             f"have the same 0th dimension as the selector ({n})")
    k = n if count is None else count
    require(is_int(k) and 0 < int(k) <= n, "count", k,
            f"an integer in [1, {n}] (the selector's rows)")
    k = int(k)
    if _needs_gradient(sel) and ctx.phase == "TRAIN":
        raise ValueError("the selector (last bottom) depends on learnable blobs: Filter "
                         "cannot back-propagate to filter index inputs (as Caffe); set "
                         "propagate_down: false for it")
    where = ctx.where or f"layer '{ctx.name}' (Filter)"

    def select(values):
        picked = np.flatnonzero(values != 0)
        if picked.size != k:
            raise SelectedCountError(
                f"{where}: the selector has {picked.size} nonzero entries, the layer was "
                f"built for {k}: the tops' first axis follows the selector's values, which "
                "symnet fixes when the net is built (Caffe re-sizes at every forward); "
                f"build it with count {picked.size or 'of at least 1'} (param_str "
                "'count: K' of a symbolic Filter layer)", ctx.name, int(picked.size), k)
        return picked

    idx = _host_indices(f"{ctx.name}_selected", F.reshape(sel, (n,)), (k,), select)
    return [_rows(x, idx) for x in xs]
