"""Reverse-mode autodiff that builds the backward pass as more graph.

Each op's ``vjp`` returns its arguments' cotangents as Tensors (or None for zero),
so the result can be compiled, fused and differentiated again like any graph.
Integer-valued ops (comparisons, argmax, gather indices, random) give zero gradients.
"""
from __future__ import annotations

import networkx as nx

from . import functions as F
from .errors import GradientError, GraphError
from .graph import Tensor
from .ops.contraction import MatMul
from .ops.layout import SliceGrad, Transpose


def grad(cost: Tensor, wrt, disconnected="zero"):
    """d cost / d wrt for a scalar ``cost``; ``wrt`` is a Tensor or a list of them.

    A Tensor that ``cost`` does not depend on gets zeros (``disconnected="zero"``) or
    raises (``"raise"``).
    """
    if not isinstance(cost, Tensor):
        raise GraphError(f"grad: cost must be a Tensor, got {type(cost).__name__}")
    if cost.shape != ():
        raise GradientError(f"grad: cost {cost.label()} has shape {cost.shape}, expected a "
                            "scalar (shape ()); reduce it with .sum() or use symnet.vjp")
    single = isinstance(wrt, Tensor)
    wrt_list = [wrt] if single else list(wrt)
    grads = vjp([cost], [F.ones((), cost.graph)], wrt_list, disconnected)
    return grads[0] if single else grads


def vjp(outputs, cotangents, wrt, disconnected="zero"):
    """Sum over outputs of cotangent . d output / d wrt, for each tensor in ``wrt``."""
    outputs, cotangents, wrt = list(outputs), list(cotangents), list(wrt)
    if len(outputs) != len(cotangents):
        raise GraphError(f"vjp: {len(outputs)} outputs but {len(cotangents)} cotangents")
    graph = outputs[0].graph
    for t in outputs + wrt + cotangents:
        if not isinstance(t, Tensor) or t.graph is not graph:
            raise GraphError(f"vjp: {t!r} is not a Tensor of the outputs' graph")
    for o, c in zip(outputs, cotangents):
        if o.shape != c.shape:
            raise GradientError(f"vjp: cotangent of {o.label()} has shape {c.shape}, "
                                f"expected {o.shape}")
    out_ids = [o.id for o in outputs]
    wrt_ids = {w.id for w in wrt}
    reach = set()
    for w in wrt_ids:
        reach |= nx.descendants(graph.nx, w) | {w}
    order = [n for n in graph.ancestors(out_ids) if n in reach]

    pending = {}
    for o, c in zip(outputs, cotangents):
        if o.id in reach:
            pending.setdefault(o.id, []).append(c)
    done, stacks = {}, {}
    for n in reversed(order):
        parts = pending.pop(n, None)
        if not parts:
            continue
        if len(parts) > 1:
            parts = _merge_products(graph, _merge_slice_grads(graph, parts), stacks)
        g = parts[0]
        for p in parts[1:]:
            g = F.add(g, p)
        done[n] = g
        op = graph.op(n)
        args = [graph.tensor(a) for a in graph.args(n)]
        if not args:
            continue
        saved, graph.layer_tag = graph.layer_tag, graph.nx.nodes[n].get("layer")
        try:
            arg_grads = op.vjp(args, graph.tensor(n), g)
        finally:
            graph.layer_tag = saved
        if len(arg_grads) != len(args):
            raise GradientError(f"{op.describe()}: vjp gave {len(arg_grads)} cotangents "
                                f"for {len(args)} arguments")
        for a, ga in zip(args, arg_grads):
            if ga is None or a.id not in reach:
                continue
            if ga.shape != a.shape:
                raise GradientError(f"{op.describe()}: vjp gave shape {ga.shape} for "
                                    f"argument of shape {a.shape}")
            pending.setdefault(a.id, []).append(ga)

    result = []
    for w in wrt:
        if w.id in done:
            result.append(done[w.id])
        elif disconnected == "raise":
            raise GradientError(f"grad: the cost does not depend on {w.label()}")
        else:
            result.append(F.zeros(w.shape, graph))
    return result


def _slab(op):
    """(axis, start, stop) when SliceGrad ``op`` scatters into a unit-step range of one
    axis and whole other axes; else None."""
    axis = None
    for d, ((start, stop, step), n) in enumerate(zip(op.slices, op.in_shape)):
        if (start, stop, step) == (0, n, 1):
            continue
        if axis is not None or step != 1 or not 0 <= start < stop <= n:
            return None
        axis = d
    return None if axis is None else (axis, op.slices[axis][0], op.slices[axis][1])


def _merge_slice_grads(graph, parts):
    """Cotangents of slices of one tensor, disjoint ranges of one axis (the steps of an
    unrolled loop reading x[t], the gates of an LSTM step), summed: one concat of the
    slices' cotangents (those of one range added first) and zeros for the gaps, instead
    of a zero-filled tensor of the whole shape per slice added together. Other parts
    are returned after it in their order."""
    slabs, others = {}, []
    for p in parts:
        op = graph.op(p.id)
        found = _slab(op) if isinstance(op, SliceGrad) else None
        if found is None:
            others.append(p)
        else:
            slabs.setdefault(found[0], []).append((found[1], found[2], p))
    merged = []
    for axis, pieces in slabs.items():
        pieces.sort(key=lambda s: s[0])
        # ranges in order of their starts (a stable sort: equal ranges keep the order
        # of their terms); disjoint or equal, never partly overlapping
        if len(pieces) < 2 or any(a[1] > b[0] and a[:2] != b[:2]
                                  for a, b in zip(pieces, pieces[1:])):
            others.extend(p for _, _, p in pieces)
            continue
        shape = list(pieces[0][2].shape)
        items, at = [], 0
        for start, stop, p in pieces:
            if start > at:
                items.append(F.zeros(shape[:axis] + [start - at] + shape[axis + 1:], graph))
            cot = graph.tensor(graph.args(p.id)[0])
            if start < at:          # the same range again (a slice taken twice)
                items[-1] = F.add(items[-1], cot)
            else:
                items.append(cot)
            at = stop
        if at < shape[axis]:
            items.append(F.zeros(shape[:axis] + [shape[axis] - at] + shape[axis + 1:], graph))
        merged.append(F.concat(items, axis))
    if not merged:
        return parts
    kept = {id(p) for p in others}
    return merged + [p for p in parts if id(p) in kept]


def _merge_products(graph, parts, stacks):
    """Products a_i^T g_i of 2-D matrices (a weight's gradient from each use of the
    weight: the steps of an unrolled loop, shared weights), summed: one product of the
    a_i and of the g_i stacked along their rows, concat(a)^T concat(g), instead of a
    product per use and the sums of the results. Other parts are returned after it in
    their order. The uses are stacked in the order their a_i were made (a loop's steps
    in order), and ``stacks`` keeps each stack made, so weights used together (an
    LSTM's input and recurrent weights, the g_i their common cotangents) share one."""
    found, others = [], []
    for p in parts:
        op = graph.op(p.id)
        if isinstance(op, MatMul) and len(p.shape) == 2:
            ta, g = graph.args(p.id)
            top = graph.op(ta)
            if isinstance(top, Transpose) and top.perm == (1, 0):
                found.append((graph.tensor(graph.args(ta)[0]), graph.tensor(g)))
                continue
        others.append(p)
    if len(found) < 2:
        return parts
    found.sort(key=lambda ag: ag[0].id)

    def stack(ts):
        key = tuple(t.id for t in ts)
        if key not in stacks:
            stacks[key] = F.concat(ts, 0)
        return stacks[key]
    a = stack([a for a, _ in found])
    g = stack([g for _, g in found])
    return [F.matmul(F.swap_last(a), g)] + others
