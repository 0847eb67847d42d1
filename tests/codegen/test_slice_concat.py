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


# ---------------------------------------------------------------- views and placement
# A contiguous slice that is a temporary is read where it lies (no copy), and a concat
# that is a temporary has its pieces computed in place in its memory.

def _plan(shapes, build, backend="cpu"):
    with sn.graph_scope():
        xs = [sn.input(f"x{i}", s) for i, s in enumerate(shapes)]
        ys = build(*xs)
        return lower.lower(xs[0].graph, [t.id for t in xs], [t.id for t in ys], backend)


def _copies(plan):
    return [s for s in plan.steps if s.kind == "kernel" and s.name.startswith("k_copy")]


VIEW_CASES = {
    # slices of an input and of a computed value, read by kernels and a GEMM
    "views": ([(5, 3, 4), (4, 6)],
              lambda x, w: [sn.exp(x[2]) + x[3], sn.matmul(sn.tanh(x)[4], w)]),
    # a view whose source's last direct reader comes early: GEMMs after it would take
    # the source's memory if the view did not keep it alive
    "view_outlives_source": ([(4, 4), (4, 4)], lambda x, w: [_late_view(x, w)]),
    # a concat read by a GEMM; a piece's producer reads another piece (both in the
    # concat's memory); a piece is read again after the concat
    "concat_in_place": ([(2, 4), (4, 3)], lambda x, w: _pieces(x, w)),
    # a value twice in one concat and in two concats: placed once, copied otherwise
    "shared_piece": ([(2, 4), (4, 3)], lambda x, w: _shared(x, w)),
    # a concat of a GEMM's output with its epilogue applied (bias, ReLU) on the cpu
    "epilogue_piece": ([(3, 4), (4, 5), (5,)], lambda x, w, b: [
        sn.matmul(sn.concat([sn.maximum(sn.matmul(x, w) + b, 0.0), sn.exp(sn.matmul(x, w))], 0),
                  sn.transpose(sn.concat([sn.reshape(b, (1, 5))] * 5, 0), (1, 0)))]),
    # slices of a concat placed in memory; concats of slices of one value, in order
    # and adjacent (the value itself) and not
    "concat_of_slices": ([(6, 3), (3, 2)], lambda x, w: [
        sn.matmul(sn.concat([x[3:6] * 2.0, x[0:3] + 1.0], 0)[1:5], w),
        sn.matmul(sn.concat([x[0:2], x[2:6]], 0), w) - sn.matmul(x, w),
        sn.matmul(sn.concat([x[2:6], x[0:2]], 0), w),
        sn.matmul(sn.concat([x[0:2], x[3:6]], 0), w)]),
}


def _late_view(x, w):
    t = sn.matmul(x, w)
    a = t[0:2]                  # a view of t
    m = sn.matmul(t, w)         # t's last direct reader
    for _ in range(4):
        m = sn.matmul(sn.tanh(m), w)
    return m[2:4] * a


def _pieces(x, w):
    p0 = sn.exp(x)
    c = sn.concat([p0, p0 * 2.0 + 1.0, sn.exp(p0 * 0.1)], 0)
    return [sn.matmul(c, w), p0 + 1.0]


def _shared(x, w):
    p = sn.exp(x)
    c1 = sn.concat([p, p * 3.0, p], 0)
    c2 = sn.concat([x, p], 0)
    return [sn.matmul(c1, w), sn.matmul(c2, w)]


@pytest.mark.parametrize("case", sorted(VIEW_CASES))
def test_views_against_reference(compiled_backend, case):
    shapes, build = VIEW_CASES[case]
    _run(compiled_backend, shapes, build)


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_views_copy_nothing(backend):
    for case in ("views", "view_outlives_source", "concat_in_place"):
        shapes, build = VIEW_CASES[case]
        copies = _copies(_plan(shapes, build, backend))
        assert not copies, (case, [s.ops for s in copies])
    # the first concat's pieces are computed in place and its slice is a view; the
    # second concat is x itself; the pieces of the third (out of order) and the fourth
    # (a gap) are views of x already, so they are copied
    shapes, build = VIEW_CASES["concat_of_slices"]
    assert len(_copies(_plan(shapes, build, backend))) == 4
    # the second use of p in c1 and its use in c2, and x (an input) in c2, are copies
    shapes, build = VIEW_CASES["shared_piece"]
    assert len(_copies(_plan(shapes, build, backend))) == 3


def test_outputs_keep_their_copies():
    """A slice or concat requested as an output has a buffer of its own (the caller's
    memory), so it is written by copies."""
    plan = _plan([(4, 3)], lambda x: [x[1:3], sn.concat([sn.exp(x), x], 0)])
    assert len(_copies(plan)) == 3


def test_view_keeps_its_source_alive(compiled_backend):
    """Forward only (a backward would read the source late anyway): the source's memory
    must stay untouched until the view's last reader, though the source's own last
    reader comes early and later GEMMs want memory of its size."""
    shapes, build = VIEW_CASES["view_outlives_source"]
    _run(compiled_backend, shapes, build, grad=False)


# A Caffe net: Slice and Concat layers, in-place layers on their tops, trained one step
# (forward and backward, every blob's data and diff against the numpy backend).
NET = """
layer { name: "in" type: "Input" top: "data" top: "target"
  input_param { shape { dim: 6 dim: 3 dim: 2 dim: 2 } shape { dim: 6 dim: 5 } } }
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"
  slice_param { axis: 0 slice_point: 1 slice_point: 4 } }
layer { name: "ra" type: "ReLU" bottom: "a" top: "a" }
layer { name: "sb" type: "Sigmoid" bottom: "b" top: "b" }
layer { name: "cat" type: "Concat" bottom: "c" bottom: "a" bottom: "b" top: "cat"
  concat_param { axis: 0 } }
layer { name: "tc" type: "TanH" bottom: "cat" top: "cat" }
layer { name: "cat2" type: "Concat" bottom: "cat" bottom: "data" top: "cat2"
  concat_param { axis: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "cat2" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_net_with_slice_concat_and_in_place_layers(backend):
    rng = rng_for("slice_concat_net")
    nets = [sn.Net(NET, sn.TRAIN, backend=b) for b in ("numpy", backend)]
    data = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    target = rng.standard_normal((6, 5)).astype(np.float32)
    w = rng.standard_normal((5, 24)).astype(np.float32) * 0.3
    for net in nets:
        net.blobs["data"].data[...] = data
        net.blobs["target"].data[...] = target
        net.params["ip"][0].data[...] = w
        net.forward()
        net.backward()
    ref, got = nets
    for name in ref.blobs:
        assert_close(got.blobs[name].data, ref.blobs[name].data, 1e-5, what=f"{name} data")
        assert_close(got.blobs[name].diff, ref.blobs[name].diff, 1e-5, what=f"{name} diff")
    assert_close(got.params["ip"][0].diff, ref.params["ip"][0].diff, 1e-5, what="ip diff")
