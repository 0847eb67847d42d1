"""The user-facing functions that build graph: tensors, elementwise math, reductions,
layout, contractions, windows and indexing.

Python numbers mix into elementwise math as constants inside the expression; NumPy
arrays become Constant nodes.
"""
from __future__ import annotations

import builtins
import math
import numbers

import numpy as np
import sympy as sp

from . import fillers as _fillers
from . import ops, scalar
from .errors import GraphError, ShapeError
from .graph import Tensor, default_graph

_rng = np.random.default_rng(0)


def set_seed(seed: int):
    """Seed the generator that fillers draw from when a param is created."""
    global _rng
    _rng = np.random.default_rng(seed)


def graph_of(*values):
    for v in values:
        if isinstance(v, Tensor):
            return v.graph
    return default_graph()


# ---------------------------------------------------------------- leaves

def _shape(shape, what):
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise ShapeError(f"{what}: shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ShapeError(f"{what}: negative size in shape {shape}")
    return shape


def input(name: str, shape) -> Tensor:   # noqa: A001 - the public name is Theano's
    """A value fed when a compiled function is called."""
    shape = _shape(shape, f"input '{name}'")
    return default_graph().add(ops.Input(name, shape), [], name=name)


def param(name: str, shape, filler=None, value=None) -> Tensor:
    """A learnable tensor, initialised by a Caffe filler (constant 0 by default)."""
    shape = _shape(shape, f"param '{name}'")
    filler = _fillers.get(filler)
    if value is None:
        value = filler(shape, _rng)
    return default_graph().add(ops.Param(name, shape, value, filler), [], name=name)


def constant(array, name=None) -> Tensor:
    return default_graph().add(ops.Constant(array), [], name=name)


def as_tensor(value, graph=None) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (numbers.Number, np.ndarray, list, tuple, np.generic)):
        g = graph or default_graph()
        return g.add(ops.Constant(value), [])
    raise GraphError(f"cannot make a tensor of {type(value).__name__} {value!r}")


# ---------------------------------------------------------------- elementwise

def elementwise_expr(expr, args, label=None, shape=None) -> Tensor:
    """Add an Elementwise node for ``expr`` over symbols a0.. standing for ``args``.

    Arguments whose symbol does not occur are dropped and the rest renumbered, so a
    node only reads what its expression uses.
    """
    expr = sp.sympify(expr)
    g = graph_of(*args)
    free = expr.free_symbols
    keep = [i for i in range(len(args)) if scalar.arg_symbol(i) in free]
    if len(keep) != len(args):
        mapping = {scalar.arg_symbol(i): scalar.arg_symbol(j) for j, i in enumerate(keep)}
        expr = expr.xreplace(mapping)
        if shape is None:
            shape = ops.elementwise.broadcast_shapes(
                [a.shape for a in args], lambda: f"elementwise '{label or 'ew'}' [{expr}]")
        args = [args[i] for i in keep]
    if not args and shape is None:
        shape = ()
    return g.add(ops.Elementwise(expr, len(args), label, shape), args)


def elementwise(fn, *values, label=None) -> Tensor:
    """Apply ``fn`` to one sympy symbol per Tensor argument; Python numbers are passed
    through as sympy numbers and arrays become constants. ``fn`` returns any sympy
    expression over its arguments."""
    g = graph_of(*values)
    tensors, syms = [], []
    for v in values:
        if isinstance(v, Tensor):
            syms.append(scalar.arg_symbol(len(tensors)))
            tensors.append(v)
        elif isinstance(v, (bool, np.bool_)):
            syms.append(sp.Integer(int(v)))
        elif isinstance(v, numbers.Integral):
            syms.append(sp.Integer(int(v)))
        elif isinstance(v, numbers.Real):
            syms.append(sp.Float(float(v)))
        elif isinstance(v, (np.ndarray, list, tuple)):
            syms.append(scalar.arg_symbol(len(tensors)))
            tensors.append(as_tensor(v, g))
        else:
            raise GraphError(f"elementwise '{label or getattr(fn, '__name__', 'fn')}': "
                             f"argument {v!r} of type {type(v).__name__} is not a Tensor, "
                             "number or array")
    expr = fn(*syms)
    if not isinstance(expr, sp.Basic):
        expr = sp.sympify(expr)
    label = label or getattr(fn, "__name__", "ew")
    if label == "<lambda>":
        label = "ew"
    return elementwise_expr(expr, tensors, label)


def _cmp(rel):
    return lambda a, b: sp.Piecewise((sp.Integer(1), rel(a, b)), (sp.Integer(0), True))


def add(a, b): return elementwise(lambda x, y: x + y, a, b, label="add")
def sub(a, b): return elementwise(lambda x, y: x - y, a, b, label="sub")
def mul(a, b): return elementwise(lambda x, y: x * y, a, b, label="mul")
def div(a, b): return elementwise(lambda x, y: x / y, a, b, label="div")
def pow(a, b): return elementwise(lambda x, y: x ** y, a, b, label="pow")   # noqa: A001
def neg(a): return elementwise(lambda x: -x, a, label="neg")
def gt(a, b): return elementwise(_cmp(sp.StrictGreaterThan), a, b, label="gt")
def ge(a, b): return elementwise(_cmp(sp.GreaterThan), a, b, label="ge")
def lt(a, b): return elementwise(_cmp(sp.StrictLessThan), a, b, label="lt")
def le(a, b): return elementwise(_cmp(sp.LessThan), a, b, label="le")
def eq(a, b): return elementwise(_cmp(sp.Eq), a, b, label="eq")
def ne(a, b): return elementwise(_cmp(sp.Ne), a, b, label="ne")
def exp(a): return elementwise(sp.exp, a, label="exp")
def log(a): return elementwise(sp.log, a, label="log")
def sqrt(a): return elementwise(sp.sqrt, a, label="sqrt")
def rsqrt(a): return elementwise(scalar.rsqrt, a, label="rsqrt")
def abs(a): return elementwise(sp.Abs, a, label="abs")   # noqa: A001
def tanh(a): return elementwise(sp.tanh, a, label="tanh")
def sigmoid(a): return elementwise(scalar.sigmoid, a, label="sigmoid")
def softplus(a): return elementwise(scalar.softplus, a, label="softplus")
def erf(a): return elementwise(sp.erf, a, label="erf")
def sin(a): return elementwise(sp.sin, a, label="sin")
def cos(a): return elementwise(sp.cos, a, label="cos")
def sign(a): return elementwise(sp.sign, a, label="sign")
def maximum(a, b): return elementwise(sp.Max, a, b, label="maximum")
def minimum(a, b): return elementwise(sp.Min, a, b, label="minimum")


def where(cond, a, b):
    """a where cond is non-zero, else b."""
    return elementwise(lambda c, x, y: sp.Piecewise((x, sp.Ne(c, 0)), (y, True)),
                       cond, a, b, label="where")


def clip(a, lo, hi):
    return elementwise(lambda x, l, h: sp.Min(sp.Max(x, l), h), a, lo, hi, label="clip")


def broadcast_to(a, shape) -> Tensor:
    shape = _shape(shape, "broadcast_to")
    if tuple(a.shape) == shape:
        return a
    return elementwise_expr(scalar.arg_symbol(0), [a], label="broadcast", shape=shape)


def zeros(shape, graph=None) -> Tensor:
    g = graph or default_graph()
    return g.add(ops.Elementwise(sp.Integer(0), 0, "zeros", _shape(shape, "zeros")), [])


def ones(shape, graph=None) -> Tensor:
    g = graph or default_graph()
    return g.add(ops.Elementwise(sp.Integer(1), 0, "ones", _shape(shape, "ones")), [])


def sum_to_shape(t: Tensor, shape) -> Tensor:
    """Sum ``t`` over the axes along which ``shape`` was broadcast to t's shape."""
    shape = tuple(shape)
    if t.shape == shape:
        return t
    lead = t.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and t.shape[lead + i] != 1)
    r = sum(t, axes, keepdims=True) if axes else t
    return reshape(r, shape)


# ---------------------------------------------------------------- reductions

def _axes(axis, ndim, what):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"{what}: axis {a} out of range for a {ndim}-d tensor")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"{what}: repeated axis in {axes}")
    return tuple(sorted(out))


def _reduce(how, x, axis, keepdims):
    x = as_tensor(x)
    axes = _axes(axis, x.ndim, how)
    return x.graph.add(ops.Reduce(how, axes, keepdims), [x])


def sum(x, axis=None, keepdims=False): return _reduce("sum", x, axis, keepdims)   # noqa: A001
def max(x, axis=None, keepdims=False): return _reduce("max", x, axis, keepdims)   # noqa: A001
def min(x, axis=None, keepdims=False): return _reduce("min", x, axis, keepdims)   # noqa: A001


def mean(x, axis=None, keepdims=False):
    x = as_tensor(x)
    axes = _axes(axis, x.ndim, "mean")
    n = math.prod(x.shape[a] for a in axes)
    if n == 0:
        raise ShapeError(f"mean of {x.label()}: axes {axes} of shape {x.shape} hold no "
                         "elements")
    return sum(x, axes, keepdims) * (1.0 / n)


# ---------------------------------------------------------------- layout

def reshape(x, *shape) -> Tensor:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    shape = [int(d) for d in shape]
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape of {x.label()}: more than one -1 in {tuple(shape)}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or x.size % known:
            raise ShapeError(f"reshape of {x.label()}: cannot infer -1 in {tuple(shape)} "
                             f"from {x.size} elements (shape {x.shape})")
        shape[shape.index(-1)] = x.size // known
    if tuple(shape) == x.shape:
        return x
    return x.graph.add(ops.Reshape(shape), [x])


def transpose(x, *perm) -> Tensor:
    if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
        perm = tuple(perm[0])
    if not perm:
        perm = tuple(reversed(range(x.ndim)))
    perm = tuple(int(p) % builtins.max(x.ndim, 1) for p in perm)
    if perm == tuple(range(x.ndim)):
        return x
    op = x.op
    if isinstance(op, ops.Transpose):             # a transpose of a transpose is one
        return transpose(x.args[0], tuple(op.perm[p] for p in perm))
    swap = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    if isinstance(op, ops.MatMul) and perm == swap and \
            not x.graph.nx.out_degree(x.id):
        # (A B)^T = B^T A^T for a product nothing else reads yet (a weight gradient):
        # the GEMM reads its operands through strides and no transposing copy is made
        a, b = x.args
        return matmul(swap_last(b), swap_last(a))
    return x.graph.add(ops.Transpose(perm), [x])


def swap_last(x) -> Tensor:
    perm = list(range(x.ndim))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return transpose(x, perm)


def flatten(x, axis=1) -> Tensor:
    """Caffe's Flatten: keep axes before ``axis``, merge the rest into one."""
    axis = axis % builtins.max(x.ndim, 1)
    return reshape(x, x.shape[:axis] + (math.prod(x.shape[axis:]),))


def getitem(x, index) -> Tensor:
    """Basic indexing: ints, slices (any step), Ellipsis and None."""
    if not isinstance(index, tuple):
        index = (index,)
    n_real = builtins.sum(1 for i in index if i is not None and i is not Ellipsis)
    if builtins.sum(1 for i in index if i is Ellipsis) > 1:
        raise GraphError(f"indexing {x.label()}: more than one Ellipsis in {index}")
    expanded = []
    for i in index:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
        else:
            expanded.append(i)
    if builtins.sum(1 for i in expanded if i is not None) < x.ndim:
        expanded.extend([slice(None)] * (x.ndim - builtins.sum(1 for i in expanded
                                                               if i is not None)))
    if builtins.sum(1 for i in expanded if i is not None) > x.ndim:
        raise ShapeError(f"indexing {x.label()} of shape {x.shape}: too many indices {index}")
    slices, out_shape, axis = [], [], 0
    for i in expanded:
        if i is None:
            out_shape.append(1)
            continue
        n = x.shape[axis]
        if isinstance(i, (bool, np.bool_)):
            raise GraphError(f"indexing {x.label()}: boolean index {i!r} is not supported")
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            slices.append((start, stop, step))
            out_shape.append(len(range(start, stop, step)))
        elif isinstance(i, numbers.Integral):
            j = int(i)
            if not -n <= j < n:
                raise ShapeError(f"indexing {x.label()}: index {j} out of range for axis "
                                 f"{axis} of size {n}")
            j %= n
            slices.append((j, j + 1, 1))
        else:
            raise GraphError(f"indexing {x.label()}: unsupported index {i!r}; use "
                             "symnet.gather for index tensors")
        axis += 1
    y = x
    if any(s != (0, n, 1) for s, n in zip(slices, x.shape)):
        y = x.graph.add(ops.Slice(slices), [x])
    return reshape(y, tuple(out_shape))


def concat(tensors, axis=0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise GraphError("concat: no tensors given")
    g = graph_of(*tensors)
    tensors = [as_tensor(t, g) for t in tensors]
    ndim = tensors[0].ndim
    axis = _axes(axis, ndim, "concat")[0]
    if len(tensors) == 1:
        return tensors[0]
    return g.add(ops.Concat(axis), tensors)


def split(x, sections, axis=0) -> list:
    """Split into pieces: ``sections`` is a count of equal parts or a list of sizes."""
    axis = _axes(axis, x.ndim, "split")[0]
    n = x.shape[axis]
    if isinstance(sections, numbers.Integral):
        if sections < 1 or n % sections:
            raise ShapeError(f"split of {x.label()}: axis {axis} of size {n} is not "
                             f"divisible into {sections} parts")
        sizes = [n // sections] * sections
    else:
        sizes = [int(s) for s in sections]
        if builtins.sum(sizes) != n or any(s < 0 for s in sizes):
            raise ShapeError(f"split of {x.label()}: sizes {sizes} do not add up to axis "
                             f"{axis} of size {n}")
    out, start = [], 0
    for size in sizes:
        sl = [(0, d, 1) for d in x.shape]
        sl[axis] = (start, start + size, 1)
        out.append(x.graph.add(ops.Slice(sl), [x]))
        start += size
    return out


def pad(x, pads, value=0.0) -> Tensor:
    """Constant padding; ``pads`` is one (before, after) pair per axis."""
    pads = [tuple(p) for p in pads]
    if len(pads) != x.ndim:
        raise ShapeError(f"pad of {x.label()}: {len(pads)} pairs for a {x.ndim}-d tensor")
    return x.graph.add(ops.Pad(pads, value), [x])


# ---------------------------------------------------------------- contractions

def matmul(a, b) -> Tensor:
    a, b = as_tensor(a, graph_of(a, b)), as_tensor(b, graph_of(a, b))
    return a.graph.add(ops.MatMul(), [a, b])


def conv2d(x, w, stride=1, pad=0, dilation=1, group=1) -> Tensor:
    """2-D convolution (cross-correlation, as Caffe), NCHW; w is (out, in/group, kh, kw)."""
    w = as_tensor(w, x.graph)
    return x.graph.add(ops.Conv2d(ops.ConvParams(stride, pad, dilation, group)), [x, w])


def conv_transpose2d(x, w, stride=1, pad=0, dilation=1, group=1, output_padding=0,
                     output_size=None) -> Tensor:
    """Transposed convolution (Caffe's Deconvolution); w is (in, out/group, kh, kw).
    Output size (h-1)*s - 2p + d(k-1) + 1 + output_padding, or ``output_size``."""
    p = ops.ConvParams(stride, pad, dilation, group)
    w = as_tensor(w, x.graph)
    if x.ndim != 4 or w.ndim != 4:
        raise ShapeError(f"conv_transpose2d: got shapes {x.shape} and {w.shape}, expected "
                         "4-d input (N, C, H, W) and weights (in, out/group, kh, kw)")
    if output_size is None:
        op_ = ops.contraction._pair(output_padding, "output_padding")
        if any(not 0 <= o < st for o, st in zip(op_, p.stride)):
            raise ShapeError(f"conv_transpose2d of {x.label()}: output_padding {op_} must "
                             f"be >= 0 and smaller than the stride {p.stride}")
        output_size = tuple((n - 1) * s - 2 * pp + d * (k - 1) + 1 + o for n, s, pp, d, k, o in
                            zip(x.shape[2:], p.stride, p.pad, p.dilation, w.shape[2:], op_))
    return x.graph.add(ops.ConvTranspose2d(p, output_size), [x, w])


def pool2d(x, kernel, stride=None, pad=0, method="max", ceil_mode=True) -> Tensor:
    """Max or average pooling with Caffe's output size and padding rules."""
    stride = kernel if stride is None else stride
    return x.graph.add(ops.Pool2d(method, ops.PoolParams(kernel, stride, pad, ceil_mode)), [x])


def max_pool2d(x, kernel, stride=None, pad=0, ceil_mode=True):
    return pool2d(x, kernel, stride, pad, "max", ceil_mode)


def avg_pool2d(x, kernel, stride=None, pad=0, ceil_mode=True):
    return pool2d(x, kernel, stride, pad, "ave", ceil_mode)


def window_sum(x, axis, before, after) -> Tensor:
    """Sum over the window [c - before, c + after] along ``axis`` (zeros outside)."""
    axis = _axes(axis, x.ndim, "window_sum")[0]
    return x.graph.add(ops.WindowSum(axis, before, after), [x])


# ---------------------------------------------------------------- indexing, random

def gather(x, indices, axis) -> Tensor:
    """out[..., j, ...] = x[..., indices[..., j, ...], ...]; out-of-range indices give 0."""
    indices = as_tensor(indices, x.graph)
    axis = _axes(axis, x.ndim, "gather")[0]
    return x.graph.add(ops.Gather(axis), [x, indices])


def argmax(x, axis=-1, keepdims=False) -> Tensor:
    axis = _axes(axis, x.ndim, "argmax")[0]
    idx = x.graph.add(ops.ArgTopK(axis, 1), [x])
    return idx if keepdims else reshape(idx, x.shape[:axis] + x.shape[axis + 1:])


def topk(x, k, axis=-1):
    """(values, indices) of the k largest along ``axis``, largest first."""
    axis = _axes(axis, x.ndim, "topk")[0]
    idx = x.graph.add(ops.ArgTopK(axis, k), [x])
    return gather(x, idx, axis), idx


def uniform(shape, seed=0, counter=None) -> Tensor:
    """Uniform [0, 1) numbers from a counter-based generator (Philox4x32-10): the same
    seed (and counter) gives the same numbers on every backend."""
    shape = _shape(shape, "uniform")
    args = [] if counter is None else [as_tensor(counter)]
    return graph_of(*args).add(ops.RandomUniform(shape, seed), args)


def stop_gradient(x) -> Tensor:
    """x, with no gradient flowing back through this use of it."""
    return x.graph.add(ops.StopGradient(), [x])
