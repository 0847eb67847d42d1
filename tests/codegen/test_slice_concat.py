"""Slices, slice gradients and concats against the NumPy reference, and the property
that keeps an unrolled loop's compile time linear: the constant part of a copy's offset
(a slice's start, a concat piece's position) is a pointer offset, not kernel text, so
the T steps' copies share one kernel text."""
from __future__ import annotations

import re

import numpy as np
import pytest

import symnet as sn
from symnet.codegen import lower

from .cghelp import assert_close, rng_for


def _run(backend, shapes, build, grad=True):
    rng = rng_for("slice_concat", tuple(shapes), backend)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        ys = build(*xs)
        ins, feeds, outs = list(xs), list(arrays), list(ys)
        if grad:
            cots = [sn.input(f"g{j}", y.shape) for j, y in enumerate(ys)]
            ins += cots
            feeds += [rng.standard_normal(y.shape).astype(np.float32) for y in ys]
            outs += sn.vjp(ys, cots, xs)
        want = sn.function(ins, outs, backend="numpy")(*feeds)
        got = sn.function(ins, outs, backend=backend)(*feeds)
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, 1e-6, what=f"output {k}")
    return arrays, got


CASES = {
    # contiguous blocks: single leading indices, a unit-step range, whole inner axes
    "leading_index": ([(5, 3, 4)], lambda x: [x[2], x[4] * 2.0]),
    "leading_range": ([(6, 3, 4)], lambda x: [x[1:4], x[5:6] + 1.0]),
    "inner_block": ([(3, 4, 5)], lambda x: [x[1, 2:4], x[0, 3]]),
    # not contiguous: strides, negative steps, a range on an inner axis
    "strided": ([(7, 6)], lambda x: [x[1:7:2, ::3], x[::-1, 4:1:-2]]),
    "inner_axis": ([(4, 12)], lambda x: [x[:, 0:3], x[:, 3:6] * x[:, 9:12]]),
    "overlapping": ([(8, 5)], lambda x: [x[0:5] + x[3:8], x[2:6] * x[2:6]]),
    # concats: along the leading axis (contiguous pieces) and an inner axis
    "concat_leading": ([(2, 3), (4, 3), (1, 3)],
                       lambda a, b, c: [sn.concat([a, b * 2.0, c, a], 0)]),
    "concat_inner": ([(3, 2, 4), (3, 5, 4)],
                     lambda a, b: [sn.concat([b, a + 1.0, b], 1)]),
    "concat_last": ([(3, 2), (3, 1)], lambda a, b: [sn.concat([a, b, a * b], 1)]),
    # the pieces of a concat read back through slices of it, and a piece that is also
    # an operand of a later piece's producer
    "concat_then_slices": ([(4, 3)],
                           lambda x: [sn.concat([x, x * 3.0], 0)[2:6],
                                      sn.concat([x[0:1], sn.exp(x[0:1]) + x[1:2]], 0)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_against_reference(compiled_backend, case):
    shapes, build = CASES[case]
    _run(compiled_backend, shapes, build)


def test_slice_values_exact(compiled_backend):
    """A copy moves values bit for bit, wherever the slice starts."""
    x = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    with sn.graph_scope():
        t = sn.input("x", x.shape)
        outs = [t[i] for i in range(5)] + [t[1:4, 1], t[::-2, :, 1:3]]
        got = sn.function([t], outs, backend=compiled_backend)(x)
    want = [x[i] for i in range(5)] + [x[1:4, 1], x[::-2, :, 1:3]]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def _sources(shapes, build, backend):
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        ys = build(*xs)
        cots = [sn.input(f"g{j}", y.shape) for j, y in enumerate(ys)]
        outs = list(ys) + sn.vjp(ys, cots, xs)
        g = xs[0].graph
        plan = lower.lower(g, [t.id for t in xs + cots], [t.id for t in outs], backend)
    return plan.sources[backend]


def _unrolled(T):
    """x[t] per step, a recurrence, the steps' results concatenated (an RNN's shape)."""
    def build(x, w):
        h, outs = None, []
        for t in range(T):
            u = sn.reshape(x[t], (2, 3))
            h = sn.tanh(u if h is None else u + h * w)
            outs.append(sn.reshape(h, (1, 2, 3)))
        return [sn.concat(outs, 0)]
    return [(T, 2, 3), (2, 3)], build


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_copy_texts_do_not_grow_with_steps(backend):
    """The copies of x[t], of the concat's pieces and of the slices of the output's
    gradient are launches of a few shared kernels, however many steps there are."""
    counts = []
    for T in (4, 12):
        source = _sources(*_unrolled(T), backend)
        counts.append(len(re.findall(r"SN_KERNEL k_copy\w*\(", source)))
    assert counts[0] == counts[1] and counts[0] <= 4, counts


@pytest.mark.parametrize("T", [1, 5])
def test_unrolled_against_reference(compiled_backend, T):
    shapes, build = _unrolled(T)
    _run(compiled_backend, shapes, build)
