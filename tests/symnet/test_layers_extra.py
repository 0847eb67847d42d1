"""Caffe's Parameter, SPP, Filter, BatchReindex and Im2col layers, and the list of
layer types against BVLC Caffe's registry.

What Caffe does (BVLC caffe master, src/caffe/layers/ and include/caffe/layers/):
- Parameter (parameter_layer.hpp): no bottom, one top; one blob of
  parameter_param.shape, created empty (Caffe's memory starts zeroed: no filler);
  Forward shares the top's data and diff with the blob, so the top's diff is the
  blob's diff.
- SPP (spp_layer.cpp): pyramid_height levels; level l has 2**l bins per side, and
  GetPoolingParam gives kernel = ceil(H / bins), pad = (kernel * bins - H + 1) / 2,
  stride = kernel (likewise for W) to a PoolingLayer (its ceil rounding, its
  CHECK_LT(pad, kernel)); each level's top flattened and all concatenated along axis
  1 in level order. With pyramid_height 1 the pooling layer writes the top directly
  (4-d). Reshape redoes the geometry when the bottom's size changes.
- Filter (filter_layer.cpp): bottoms to filter, then a selector whose axes after the
  first are 1; tops = rows whose selector is nonzero, in order; Backward copies each
  top row's diff to its row and zeroes the others, and LOG(FATAL)s if asked to
  propagate to the selector.
- BatchReindex (batch_reindex_layer.cpp): top = bottom[0][int(bottom[1][i])]; bottom[1]
  must be 1-d; Forward CHECKs every index in [0, N); Backward adds each top row's diff
  into its source row; "Cannot backprop to index".
- Im2col (im2col_layer.cpp, util/im2col.cpp): convolution_param kernel, stride, pad,
  dilation, axis; top (N, C * prod(kernel), out...) with
  out = (in + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1 (C division); column
  channel c * prod(kernel) + kernel offset (row-major) holds, at each output
  position, the bottom pixel at position * stride - pad + offset * dilation, or 0
  outside the bottom. Backward is col2im: every column entry added to its pixel.
"""
import itertools
import math

import numpy as np
import pytest

import symnet as sn
import symnet.caffe
from snhelp import check_cases
from symnet.layers import LayerError, apply
from symnet.layers.shape import SelectedCountError

R = np.random.default_rng(16)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------- references

def caffe_out(size, k, s, p, d=1):
    num = size + 2 * p - (d * (k - 1) + 1)
    return int(num / s) + 1             # C's integer division truncates toward zero


def im2col_ref(x, k, s, p, d, axis=1):
    """Caffe's im2col_nd over the items (axes before ``axis``) as loops."""
    outer, c, size = math.prod(x.shape[:axis]), x.shape[axis], x.shape[axis + 1:]
    xs = x.reshape((outer, c) + size)
    out = [caffe_out(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip(size, k, s, p, d)]
    taps = list(itertools.product(*[range(kk) for kk in k]))
    cols = np.zeros((outer, c * len(taps)) + tuple(out), x.dtype)
    for b in range(outer):
        for ci in range(c):
            for t, off in enumerate(taps):
                for pos in itertools.product(*[range(o) for o in out]):
                    src = [q * ss - pp + o * dd for q, ss, pp, o, dd in zip(pos, s, p, off, d)]
                    if all(0 <= v < n for v, n in zip(src, size)):
                        cols[(b, ci * len(taps) + t) + pos] = xs[(b, ci) + tuple(src)]
    return cols.reshape(x.shape[:axis] + (c * len(taps),) + tuple(out))


def col2im_ref(g, x_shape, k, s, p, d, axis=1):
    """Caffe's col2im_nd: each column entry added to the pixel it was copied from."""
    outer, c, size = math.prod(x_shape[:axis]), x_shape[axis], x_shape[axis + 1:]
    taps = list(itertools.product(*[range(kk) for kk in k]))
    out = g.shape[axis + 1:]
    gs = g.reshape((outer, c * len(taps)) + out)
    dx = np.zeros((outer, c) + tuple(size), g.dtype)
    for b in range(outer):
        for ci in range(c):
            for t, off in enumerate(taps):
                for pos in itertools.product(*[range(o) for o in out]):
                    src = [q * ss - pp + o * dd for q, ss, pp, o, dd in zip(pos, s, p, off, d)]
                    if all(0 <= v < n for v, n in zip(src, size)):
                        dx[(b, ci) + tuple(src)] += gs[(b, ci * len(taps) + t) + pos]
    return dx.reshape(x_shape)


def pool_ref(x, k, s, p, method, g=None):
    """Caffe's PoolingLayer (CAFFE engine) forward and backward as its loops: ceil
    rounding, a last window starting in the padding dropped, AVE dividing by the
    window clipped to the padded bottom, MAX's diff to the first maximum."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * p[0] - k[0]) / s[0])) + 1
    ow = int(math.ceil((w + 2 * p[1] - k[1]) / s[1])) + 1
    if p[0] or p[1]:
        if (oh - 1) * s[0] >= h + p[0]:
            oh -= 1
        if (ow - 1) * s[1] >= w + p[1]:
            ow -= 1
    y = np.zeros((n, c, oh, ow))
    dx = np.zeros(x.shape)
    for ph in range(oh):
        for pw in range(ow):
            hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            if method == "MAX":
                y[:, :, ph, pw] = win.max(-1)
                first = win.argmax(-1)       # Caffe: strict >, so the first maximum
                for a in range(n):
                    for b in range(c):
                        i, j = divmod(first[a, b], we - ws)
                        if g is not None:
                            dx[a, b, hs + i, ws + j] += g[a, b, ph, pw]
            else:
                y[:, :, ph, pw] = win.sum(-1) / size
                if g is not None:
                    dx[:, :, hs:he, ws:we] += (g[:, :, ph, pw] / size)[:, :, None, None]
    return y, dx


def spp_ref(x, height, method, g=None):
    """SPPLayer: split, one pooling per level with GetPoolingParam's geometry, flatten,
    concat; the bottom's diff is the sum of the levels' pooling diffs."""
    n, _, h, w = x.shape
    tops, dx, start = [], np.zeros(x.shape), 0
    for level in range(height):
        bins = 2 ** level
        kh, kw = -(-h // bins), -(-w // bins)
        k = (kh, kw)
        p = ((kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2)
        y, _ = pool_ref(x, k, k, p, method)
        if g is not None:
            gl = g if height == 1 else g[:, start:start + y[0].size].reshape(y.shape)
            dx += pool_ref(x, k, k, p, method, gl)[1]
        start += y[0].size
        tops.append(y)
    top = tops[0] if height == 1 else np.concatenate([t.reshape(n, -1) for t in tops], 1)
    return top, dx


def reindex_ref(x, idx, g=None):
    rows = idx.astype(np.int64)         # static_cast<int>: truncation toward zero
    dx = np.zeros(x.shape)
    if g is not None:
        for i, r in enumerate(rows):    # Backward: bot_diff[in_n] += top_diff
            dx[r] += g[i]
    return x[rows], dx


def filter_ref(x, sel, g=None):
    picked = [i for i in range(sel.shape[0]) if sel.reshape(-1)[i] != 0]
    dx = np.zeros(x.shape)
    if g is not None:
        for j, i in enumerate(picked):  # forwarded rows get their diff, others zero
            dx[i] = g[j]
    return x[picked], dx


# ------------------------------------------------------------- cases
# (id, type, params, bottoms, ntop, reference(bottoms, top cotangents) -> (tops, d_bottom0))

X = f32(2, 3, 7, 6)
MAXX = R.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6).astype(np.float32) / 10  # no ties
IDX = np.array([2.0, 0.0, 2.7, 1.0, 0.0], np.float32)      # repeats; 2.7 truncates to 2
SEL = np.array([[0.0], [3.0], [0.0], [-1.0]], np.float32)
ROWS = f32(4, 2, 3)


def im2col_case(k, s, p, d, axis=1):
    def ref(b, g):
        return [im2col_ref(b[0], k, s, p, d, axis)], [col2im_ref(g[0], b[0].shape, k, s, p, d,
                                                                 axis)]
    return ref


def spp_case(height, method):
    def ref(b, g):
        top, dx = spp_ref(b[0], height, method, g[0])
        return [top], [dx]
    return ref


def reindex_case(b, g):
    top, dx = reindex_ref(b[0], b[1], g[0])
    return [top], [dx]


def filter_case(b, g):
    tops, dxs = [], []
    for x, gt in zip(b[:-1], g):
        t, dx = filter_ref(x, b[-1], gt)
        tops.append(t)
        dxs.append(dx)
    return tops, dxs[:1]


CASES = [
    ("im2col_3x3_s2_p1", "Im2col", {"kernel_size": [3], "stride": [2], "pad": [1]}, [X], 1,
     im2col_case((3, 3), (2, 2), (1, 1), (1, 1))),
    ("im2col_2x3_dil", "Im2col", {"kernel_h": 2, "kernel_w": 3, "dilation": [2],
                                  "pad_w": 1, "pad_h": 0}, [X], 1,
     im2col_case((2, 3), (1, 1), (0, 1), (2, 2))),
    # C's truncation: (6 - 7) / 2 + 1 = 1 column position reaching past the bottom
    ("im2col_past_edge", "Im2col", {"kernel_size": [7], "stride": [2]}, [X], 1,
     im2col_case((7, 7), (2, 2), (0, 0), (1, 1))),
    ("im2col_1d_axis2", "Im2col", {"kernel_size": [3], "stride": [2], "axis": 2},
     [f32(2, 3, 4, 5)], 1, im2col_case((3,), (2,), (0,), (1,), axis=2)),
    ("im2col_3d", "Im2col", {"kernel_size": [2, 1, 2], "pad": [1, 0, 0]},
     [f32(1, 2, 3, 2, 3)], 1, im2col_case((2, 1, 2), (1, 1, 1), (1, 0, 0), (1, 1, 1))),
    ("spp_max_3", "SPP", {"pyramid_height": 3}, [MAXX], 1, spp_case(3, "MAX")),
    ("spp_ave_3", "SPP", {"pyramid_height": 3, "pool": "AVE"}, [X], 1, spp_case(3, "AVE")),
    ("spp_ave_1", "SPP", {"pyramid_height": 1, "pool": "AVE"}, [X], 1, spp_case(1, "AVE")),
    ("spp_max_2_odd", "SPP", {"pyramid_height": 2}, [MAXX[:, :, :5, :3]], 1,
     spp_case(2, "MAX")),
    ("reindex", "BatchReindex", {}, [ROWS[:3], IDX], 1, reindex_case),
    ("filter", "Filter", {"count": 2}, [ROWS, f32(4, 5), SEL], 2, filter_case),
]


def _build_all():
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(5)
    for cid, typ, params, bottoms, ntop, ref in CASES:
        xs = [sn.input(f"{cid}_b{k}", b.shape) for k, b in enumerate(bottoms)]
        tops, _ = apply(typ, *xs, name=cid, ntop=ntop, **params)
        assert len(tops) == ntop, cid
        gs = [g_rng.standard_normal(t.shape).astype(np.float32) for t in tops]
        gis = [sn.input(f"{cid}_g{k}", t.shape) for k, t in enumerate(tops)]
        grads = sn.vjp(tops, gis, xs[:1])
        exp_tops, exp_d = ref([b.astype(np.float64) for b in bottoms],
                              [g.astype(np.float64) for g in gs])
        ins += xs + gis
        feeds += list(bottoms) + gs
        outs += list(tops) + list(grads)
        want += [(cid, f"top{k}", t) for k, t in enumerate(exp_tops)]
        want += [(cid, "d_bottom0", exp_d[0])]
    return ins, feeds, outs, want


def test_forward_backward_against_caffe_loops(backend):
    """Every case's tops and bottom-0 diff on this backend equal the NumPy restatement
    of Caffe's loops (one compiled function for all cases)."""
    check_cases(_build_all, backend, rtol=1e-5, atol=1e-5)


def test_spp_geometry_is_caffes():
    """GetPoolingParam for a 7x6 bottom: level 2 (4 bins) has kernel (2, 2), pad
    ((8 - 7 + 1) / 2, (8 - 6 + 1) / 2) = (1, 1)."""
    from symnet.layers.spatial import spp_geometry
    assert spp_geometry(0, 7, 6) == ((7, 6), (7, 6), (0, 0))
    assert spp_geometry(1, 7, 6) == ((4, 3), (4, 3), (1, 0))
    assert spp_geometry(2, 7, 6) == ((2, 2), (2, 2), (1, 1))


# ------------------------------------------------------------- gradcheck

def _joined(tops):
    return tops[0] if len(tops) == 1 else sn.concat([sn.reshape(t, (t.size,)) for t in tops], 0)


@pytest.mark.parametrize("typ, params, shape", [
    ("Im2col", {"kernel_size": [3], "stride": [2], "pad": [1], "dilation": [1]}, (1, 2, 5, 4)),
    ("Im2col", {"kernel_size": [2], "axis": 2}, (2, 2, 3, 4)),
    ("SPP", {"pyramid_height": 3, "pool": "AVE"}, (1, 2, 7, 6)),
    ("SPP", {"pyramid_height": 2}, (1, 2, 3, 4)),
], ids=["im2col", "im2col_axis2", "spp_ave", "spp_max"])
def test_gradcheck(typ, params, shape):
    x = R.permutation(math.prod(shape)).reshape(shape) / 7.0      # distinct: no MAX ties
    res = sn.gradcheck(lambda t: apply(typ, t, name="L", **params)[0][0], [x], eps=1e-5)
    assert res.checked > 0


def test_gradcheck_reindex_and_filter():
    idx = np.array([1.0, 1.0, 0.0, 2.0])
    res = sn.gradcheck(lambda t: apply("BatchReindex", t, sn.constant(idx), name="L")[0][0],
                       [R.standard_normal((3, 2, 2))])
    assert res.checked > 0
    sel = np.array([[1.0], [0.0], [2.0]])
    res = sn.gradcheck(lambda a, b: _joined(apply("Filter", a, b, sn.constant(sel), name="L",
                                                  ntop=2, count=2)[0]),
                       [R.standard_normal((3, 4)), R.standard_normal((3, 1, 2))])
    assert res.checked > 0


def test_index_bottoms_get_no_gradient():
    """Caffe back-propagates to neither the selector nor the indices."""
    with sn.graph_scope():
        x, i, s = sn.input("x", (3, 2)), sn.input("i", (2,)), sn.input("s", (3, 1))
        (y,), _ = apply("BatchReindex", x, i, name="r")
        (z,), _ = apply("Filter", x, s, name="f", count=3)
        gi, gs = sn.grad(sn.sum(y) + sn.sum(z), [i, s])
        ri, rs = sn.function([x, i, s], [gi, gs], backend="numpy")(
            f32(3, 2), np.array([0, 2], np.float32), np.ones((3, 1), np.float32))
    assert not ri.any() and not rs.any()


# ------------------------------------------------------------- errors

def test_errors_at_build():
    with sn.graph_scope():
        x = sn.input("x", (4, 3, 6, 6))
        with pytest.raises(LayerError, match=r"\(BatchReindex\).*bottom 1 .* has 2 axes"):
            apply("BatchReindex", x, sn.input("i2", (2, 1)), name="L")
        with pytest.raises(LayerError, match=r"\(Filter\).*must be singletons"):
            apply("Filter", x, sn.input("s2", (4, 2)), name="L")
        with pytest.raises(LayerError, match=r"same 0th dimension as the selector \(3\)"):
            apply("Filter", x, sn.input("s3", (3, 1)), name="L")
        with pytest.raises(LayerError, match="selector bottom"):
            apply("Filter", x, name="L")
        with pytest.raises(LayerError, match=r"top 2: must be 1"):
            apply("Filter", x, sn.input("s4", (4, 1)), name="L", ntop=2)
        with pytest.raises(LayerError, match=r"\(SPP\).*must have 4 axes"):
            apply("SPP", sn.input("v", (4, 3, 6)), name="L", pyramid_height=1)
        with pytest.raises(LayerError, match=r"spp_param.pyramid_height \(not set\)"):
            apply("SPP", x, name="L")
        with pytest.raises(LayerError, match=r"spp_param.pool 'MIN'"):
            apply("SPP", x, name="L", pyramid_height=2, pool="MIN")
        with pytest.raises(LayerError, match=r"\(Parameter\).*takes no bottom"):
            apply("Parameter", x, name="L", shape={"dim": [2]})
        with pytest.raises(LayerError, match=r"convolution_param.kernel_h 3"):
            apply("Im2col", sn.input("w", (2, 3, 5)), name="L", kernel_h=3, kernel_w=3)


def test_index_bottom_depending_on_learnable_blobs_is_refused_in_train():
    """Caffe's Backward LOG(FATAL)s when asked to propagate to the selector or the
    indices; symnet refuses such a layer when it is built for training, and builds it
    with propagate_down: false (the bottom behind a stop_gradient)."""
    with sn.graph_scope():
        x = sn.input("x", (3, 2))
        w = sn.param("w", (3, 1), value=np.ones((3, 1), np.float32))
        with pytest.raises(LayerError, match="cannot back-propagate to filter index"):
            apply("Filter", x, w, name="L", phase="TRAIN")
        with pytest.raises(LayerError, match="Cannot backprop to index"):
            apply("BatchReindex", x, sn.reshape(w, (3,)), name="L", phase="TRAIN")
        apply("Filter", x, sn.stop_gradient(w), name="L", phase="TRAIN")
        apply("Filter", x, w, name="L", phase="TEST")


def test_run_time_index_errors(backend):
    """BatchReindex CHECKs each index in [0, N) at forward; Filter's selector must have
    the count the layer was built for (symnet fixes it at build)."""
    with sn.graph_scope():
        x, i, s = sn.input("x", (3, 2)), sn.input("i", (2,)), sn.input("s", (3, 1))
        (y,), _ = apply("BatchReindex", x, i, name="reindex")
        (z,), _ = apply("Filter", x, s, name="filt", count=2)
        fn = sn.function([x, i, s], [y, z], backend=backend)
        xv, good_s = f32(3, 2), np.array([[1], [0], [1]], np.float32)
        y0, z0 = fn(xv, np.array([2, 0], np.float32), good_s)
        np.testing.assert_array_equal(y0, xv[[2, 0]])
        np.testing.assert_array_equal(z0, xv[[0, 2]])
        with pytest.raises(LayerError, match=r"'reindex' \(BatchReindex\): bottom 1 "
                                             r"index\[1\] = 3: must be in \[0, 3\)"):
            fn(xv, np.array([0, 3], np.float32), good_s)
        with pytest.raises(LayerError, match=r"index\[0\] = -1"):
            fn(xv, np.array([-1, 0], np.float32), good_s)
        with pytest.raises(LayerError, match=r"'filt' \(Filter\): the selector has 3 nonzero "
                                             r"entries, the layer was built for 2"):
            fn(xv, np.array([0, 0], np.float32), np.ones((3, 1), np.float32))


# ------------------------------------------------------------- through a Net

NET = """
name: "extra"
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "i" top: "s" top: "t"
        input_param { shape { dim: 3 dim: 2 dim: 7 dim: 6 } shape { dim: 4 }
                      shape { dim: 3 dim: 1 } shape { dim: 2 dim: 3 } } }
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "ploss" type: "EuclideanLoss" bottom: "p" bottom: "t" top: "ploss" }
layer { name: "spp" type: "SPP" bottom: "x" top: "spp" spp_param { pyramid_height: 3 } }
layer { name: "col" type: "Im2col" bottom: "x" top: "col"
        convolution_param { kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "br" type: "BatchReindex" bottom: "x" bottom: "i" top: "br" }
layer { name: "f" type: "Python" bottom: "x" bottom: "s" top: "f"
        python_param { module: "symnet.layers.shape" layer: "filter_" param_str: "count: 2" } }
"""


@pytest.mark.parametrize("net_backend", ["cpu", "cuda-emu"])
def test_through_a_prototxt_net(net_backend):
    net = sn.Net(NET, sn.TRAIN, backend=net_backend)
    x = (R.permutation(3 * 2 * 7 * 6).reshape(3, 2, 7, 6) / 10).astype(np.float32)
    i = np.array([2, 0, 0, 1], np.float32)
    s = np.array([[0], [1], [1]], np.float32)
    t = f32(2, 3)
    # Parameter: Caffe's blob starts zeroed
    assert net.params["p"][0].data.shape == (2, 3) and not net.params["p"][0].data.any()
    net.params["p"][0].data[...] = [[1, 2, 3], [4, 5, 6]]
    out = net.forward(x=x, i=i, s=s, t=t)
    np.testing.assert_allclose(out["spp"], spp_ref(x, 3, "MAX")[0], rtol=1e-6)
    np.testing.assert_allclose(out["col"], im2col_ref(x, (3, 3), (2, 2), (1, 1), (1, 1)))
    np.testing.assert_array_equal(out["br"], x[[2, 0, 0, 1]])
    np.testing.assert_array_equal(out["f"], x[[1, 2]])
    np.testing.assert_array_equal(net.blobs["p"].data, [[1, 2, 3], [4, 5, 6]])
    g = {b: f32(*net.blobs[b].shape) for b in ("spp", "col", "br", "f")}
    net.clear_param_diffs()
    diffs = net.backward(**g)
    want = spp_ref(x, 3, "MAX", g["spp"])[1] + \
        col2im_ref(g["col"], x.shape, (3, 3), (2, 2), (1, 1), (1, 1)) + \
        reindex_ref(x, i, g["br"])[1] + filter_ref(x, s, g["f"])[1]
    np.testing.assert_allclose(diffs["x"], want, rtol=1e-5, atol=1e-5)
    # the top's diff goes to the blob: EuclideanLoss's (p - t) / num
    p = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    np.testing.assert_allclose(net.params["p"][0].diff, (p - t) / 2, rtol=1e-5)
    assert not diffs["i"].any() and not diffs["s"].any()


def test_spp_follows_a_reshaped_bottom():
    """SPPLayer::Reshape recomputes every level's geometry for a new bottom size."""
    net = sn.Net(NET, sn.TEST, backend="numpy")
    net.blobs["x"].reshape(3, 2, 9, 7)
    x = f32(3, 2, 9, 7)
    out = net.forward(x=x, i=np.zeros(4, np.float32), s=np.array([[1], [1], [0]], np.float32),
                      t=f32(2, 3))
    np.testing.assert_allclose(out["spp"], spp_ref(x, 3, "MAX")[0], rtol=1e-6)
    assert out["col"].shape == (3, 18, 5, 4)


FILTER_NET = """
layer { name: "in" type: "Input" top: "x" top: "s"
        input_param { shape { dim: 3 dim: 2 } shape { dim: 3 } } }
layer { name: "f" type: "Filter" bottom: "x" bottom: "s" top: "f" }
"""


def test_filter_count_change_in_a_layer_names_it():
    """Compiled on its own (sn.function), a Filter is built for a count: another count
    is an error naming the layer, the count found and the count built."""
    with sn.graph_scope():
        x, s = sn.input("x", (3, 2)), sn.input("s", (3,))
        (z,), _ = apply("Filter", x, s, name="f", count=3)
        f = sn.function([x, s], [z], backend="cpu")
    with pytest.raises(LayerError, match=r"the selector has 1 nonzero entries, the layer "
                                         r"was built for 3") as info:
        f(f32(3, 2), np.array([0, 0, 5], np.float32))
    assert isinstance(info.value, SelectedCountError)
    assert (info.value.layer, info.value.count, info.value.built) == ("f", 1, 3)


@pytest.mark.parametrize("backend", ["cpu", "cuda-emu"])
def test_filter_net_resizes_with_the_selector(backend):
    """Caffe's Filter re-shapes its tops at every forward to the selector's count of
    nonzero entries; the net re-sizes (rebuilt with the new count, modules from the
    cache) and the forward runs on the blobs as they are."""
    net = sn.Net(FILTER_NET, sn.TEST, backend=backend)
    x = f32(3, 2)
    np.testing.assert_array_equal(net.forward(x=x, s=np.array([1, -2, 3], np.float32))["f"], x)
    out = net.forward(x=x, s=np.array([0, 0, 5], np.float32))
    np.testing.assert_array_equal(out["f"], x[2:3])
    assert net.blobs["f"].data.shape == (1, 2)
    out = net.forward(x=x + 1, s=np.array([1, 0, 1], np.float32))
    np.testing.assert_array_equal(out["f"], (x + 1)[[0, 2]])
    # no row selected: Caffe's top would be empty; symnet has no empty blobs
    with pytest.raises(LayerError, match=r"count"):
        net.forward(x=x, s=np.zeros(3, np.float32))
    # the symbolic Filter of a Python layer (param_str count) re-sizes the same way
    net = sn.Net(NET, sn.TEST, backend="numpy")
    x = f32(3, 2, 7, 6)
    out = net.forward(x=x, i=np.zeros(4, np.float32), s=np.array([[1], [1], [5]], np.float32),
                      t=f32(2, 3))
    np.testing.assert_array_equal(net.blobs["f"].data, x)


FILTER_TRAIN = """
force_backward: true
layer { name: "in" type: "Input" top: "x" top: "s" top: "t"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } shape { dim: 4 dim: 5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "f" type: "Filter" bottom: "y" bottom: "t" bottom: "s" top: "fy" top: "ft"
        propagate_down: true propagate_down: false propagate_down: false }
layer { name: "loss" type: "EuclideanLoss" bottom: "fy" bottom: "ft" top: "loss" }
"""


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_filter_resize_in_forward_backward_adds_each_gradient_once(backend):
    """A solver's forward_backward re-sized by a Filter mid-run: the param diffs hold
    exactly one gradient (the plan's partial additions are undone before the rerun)."""
    net = sn.Net(FILTER_TRAIN, sn.TRAIN, backend=backend)
    x, t = f32(4, 3), f32(4, 5)
    net.params["ip"][0].diff[...] = 0
    net.params["ip"][1].diff[...] = 0
    sel = np.array([0, 1, 0, 1], np.float32)
    net.forward_backward(x=x, s=sel, t=t)
    assert net.blobs["fy"].data.shape == (2, 5)
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    y = x @ w.T + b
    g = (y[[1, 3]] - t[[1, 3]]) / 2                  # EuclideanLoss: 1/(2N) sum of squares
    np.testing.assert_allclose(net.params["ip"][0].diff, g.T @ x[[1, 3]], rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(net.params["ip"][1].diff, g.sum(0), rtol=1e-4, atol=1e-5)
    gx = np.zeros_like(x)
    gx[[1, 3]] = g @ w
    np.testing.assert_allclose(net.blobs["x"].diff, gx, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------- the catalogue

# BVLC Caffe master's registered layer types: every REGISTER_LAYER_CREATOR
# (layer_factory.cpp: Convolution, Deconvolution, Pooling, LRN, ReLU, Sigmoid,
# Softmax, TanH, Python) and REGISTER_LAYER_CLASS (one per src/caffe/layers/*.cpp).
CAFFE_LAYER_TYPES = [
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip",
    "Concat", "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout",
    "DummyData", "ELU", "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten",
    "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss",
    "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN",
    "Reduction", "ReLU", "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss",
    "Silence", "Slice", "Softmax", "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold",
    "Tile", "WindowData",
]
EXPECTED_MISSING = set()


def test_layer_type_list_covers_caffes_registry():
    listed = symnet.caffe.layer_type_list()
    assert listed == sorted(listed)
    missing = sorted(set(CAFFE_LAYER_TYPES) - set(listed))
    assert set(missing) <= EXPECTED_MISSING, missing
    for typ in ("Parameter", "SPP", "Filter", "BatchReindex", "Im2col"):
        assert typ in listed
        assert sn.layers.get(typ).doc, typ


def test_im2col_copies_exactly(backend):
    """Caffe's im2col copies values (no arithmetic): an inf or NaN in the bottom shows
    up only in the columns it is copied to, and every entry is bit-equal."""
    x = f32(1, 2, 5, 5)
    x[0, 0, 2, 2], x[0, 1, 0, 4] = np.inf, np.nan
    with sn.graph_scope():
        xi = sn.input("x", x.shape)
        (y,), _ = apply("Im2col", xi, name="c", kernel_size=[3], pad=[1], stride=[2])
        got = sn.function([xi], [y], backend=backend)(x)[0]
    np.testing.assert_array_equal(got, im2col_ref(x, (3, 3), (2, 2), (1, 1), (1, 1)))


# ------------------------------------------------------------- Im2col and Col2im ops
# The Im2col layer's 1-D and 2-D bottoms run as symnet.ops.Im2col (a copy kernel) with
# symnet.ops.Col2im as its gradient. Caffe's col2im_cpu zeroes the image, then adds the
# columns row by row, (c, ki, kj) ascending: each pixel sums its taps in (ki, kj) order,
# the order Col2im documents and every backend uses.

# (x shape, kernel, stride, pad, dilation)
GEOMETRIES = {
    "3x3_p1": ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    "3x3_s2_p1": ((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1)),
    "2x3_dil2_pw1": ((1, 2, 7, 6), (2, 3), (1, 1), (0, 1), (2, 2)),
    "past_edge": ((2, 3, 7, 6), (7, 7), (2, 2), (0, 0), (1, 1)),    # (6 - 7) / 2 + 1 = 1
    "disjoint_2x2_s3_p1": ((2, 2, 8, 7), (2, 2), (3, 3), (1, 1), (1, 1)),
    "1x1": ((1, 4, 3, 5), (1, 1), (1, 1), (0, 0), (1, 1)),
}


def _op_pair(x_shape, k, s, p, d):
    """(x input, columns input, im2col of x, col2im of the columns) in a new graph."""
    xi = sn.input("x", x_shape)
    y = xi.graph.add(sn.ops.Im2col(k, s, p, d), [xi])
    ci = sn.input("c", y.shape)
    z = xi.graph.add(sn.ops.Col2im(k, s, p, d, image_hw=x_shape[2:]), [ci])
    return xi, ci, y, z


@pytest.mark.parametrize("geo", sorted(GEOMETRIES))
def test_im2col_col2im_ops_against_caffe_loops(backend, geo):
    """Im2col's columns are Caffe's im2col bit for bit (inf and NaN copied where they
    land); Col2im equals Caffe's col2im loops (float64) within float32 rounding, bit for
    bit the NumPy reference (the same order of sums) on every backend, and exactly the
    loops where no two windows overlap (one term per pixel)."""
    shape, k, s, p, d = GEOMETRIES[geo]
    x = f32(*shape)
    x[0, 0, 1, 1], x[-1, -1, -1, 0] = np.inf, np.nan
    with sn.graph_scope():
        xi, ci, y, z = _op_pair(shape, k, s, p, d)
        assert y.shape == (shape[0], shape[1] * k[0] * k[1]) + tuple(
            caffe_out(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip(shape[2:], k, s, p, d))
        cols = f32(*y.shape)
        args = ([xi, ci], [y, z])
        got_y, got_z = sn.function(*args, backend=backend)(x, cols)
        ref_y, ref_z = sn.function(*args, backend="numpy")(x, cols)
    np.testing.assert_array_equal(got_y, im2col_ref(x, k, s, p, d))
    loops = col2im_ref(cols.astype(np.float64), shape, k, s, p, d)
    np.testing.assert_allclose(got_z, loops, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got_z, ref_z)
    if all(kk * dd <= ss for kk, ss, dd in zip(k, s, d)):      # windows do not overlap
        np.testing.assert_array_equal(got_z, loops.astype(np.float32))


def test_col2im_sums_inf_and_nan_as_caffe(backend):
    """Col2im adds: an inf column entry makes its pixel inf, inf and -inf on one pixel
    make NaN, a NaN stays NaN; pixels the entries do not reach stay finite."""
    shape, k, s, p, d = GEOMETRIES["3x3_p1"]
    with sn.graph_scope():
        _, ci, _, z = _op_pair(shape, k, s, p, d)
        cols = f32(*ci.shape)
        # tap (0, 0) of channel 0 at output (2, 2) reads pixel (1, 1); tap (1, 1) at
        # (1, 1) reads it too; tap (2, 2) at (0, 0) reads pixel (1, 1) as well
        cols[0, 0, 2, 2], cols[0, 4, 1, 1] = np.inf, -np.inf
        cols[1, 2 * 9 + 8, 4, 3] = np.nan                        # channel 2, pixel (5, 4)
        got = sn.function([ci], [z], backend=backend)(cols)[0]
    want = col2im_ref(cols.astype(np.float64), shape, k, s, p, d)
    assert np.isnan(got[0, 0, 1, 1]) and np.isnan(got[1, 2, 5, 4])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert np.isfinite(np.delete(got.ravel(), [np.ravel_multi_index(i, shape) for i in
                                               ((0, 0, 1, 1), (1, 2, 5, 4))])).all()


def test_im2col_col2im_closed_under_vjp():
    """Im2col's vjp is Col2im with its geometry and the image size; Col2im's is Im2col."""
    k, s, p, d = (2, 3), (2, 1), (1, 0), (1, 2)
    with sn.graph_scope():
        xi, ci, y, z = _op_pair((2, 3, 6, 7), k, s, p, d)
        gy = sn.input("gy", y.shape)
        (dx,) = sn.vjp([y], [gy], [xi])
        (dc,) = sn.vjp([z], [sn.input("gz", z.shape)], [ci])
        (ddx,) = sn.vjp([dx], [sn.input("gdx", dx.shape)], [gy])      # second order
    assert isinstance(dx.op, sn.ops.Col2im) and dx.op.attrs() == z.op.attrs()
    assert dx.shape == (2, 3, 6, 7)
    assert isinstance(dc.op, sn.ops.Im2col) and dc.op.attrs() == y.op.attrs()
    assert isinstance(ddx.op, sn.ops.Im2col)


@pytest.mark.parametrize("geo", ["3x3_s2_p1", "2x3_dil2_pw1", "past_edge"])
def test_im2col_col2im_ops_gradcheck(geo):
    """Finite differences of both ops (float64 NumPy reference)."""
    shape, k, s, p, d = GEOMETRIES[geo]
    x = R.standard_normal(shape)
    res = sn.gradcheck(lambda t: t.graph.add(sn.ops.Im2col(k, s, p, d), [t]), [x], eps=1e-5)
    assert res.checked > 0
    cshape = (shape[0], shape[1] * k[0] * k[1]) + tuple(
        caffe_out(n, kk, ss, pp, dd) for n, kk, ss, pp, dd in zip(shape[2:], k, s, p, d))
    res = sn.gradcheck(lambda t: t.graph.add(sn.ops.Col2im(k, s, p, d, image_hw=shape[2:]),
                                             [t]), [R.standard_normal(cshape)], eps=1e-5)
    assert res.checked > 0


def test_im2col_col2im_op_shape_errors():
    with sn.graph_scope():
        x = sn.input("x", (1, 2, 4, 4))
        with pytest.raises(sn.ShapeError, match="dilated kernel"):
            x.graph.add(sn.ops.Im2col((3, 3), 1, 0, 2), [x])      # 5 > 4
        with pytest.raises(sn.ShapeError, match="columns"):
            x.graph.add(sn.ops.Col2im((3, 3), image_hw=(4, 4)), [sn.input("c", (1, 17, 2, 2))])
        with pytest.raises(sn.ShapeError, match="columns"):
            x.graph.add(sn.ops.Col2im((3, 3), image_hw=(4, 4)), [sn.input("c2", (1, 18, 3, 2))])
    with pytest.raises(ValueError, match="image_hw"):
        sn.ops.Col2im((3, 3))


@pytest.mark.parametrize("geo", ["3x3_s2_p1", "3x3_p1", "disjoint_2x2_s3_p1"])
def test_im2col_layer_op_against_composition(geo):
    """The 2-D layer (the ops) against the 3-D layer on a depth-1 bottom with a depth-1
    kernel (pad, strided slices and concat, backward derived), on cpu: the columns
    bit-equal; the bottom diff within float32 rounding where windows overlap (the
    derived backward may sum in another order) and bit-equal where they do not."""
    shape, k, s, p, d = GEOMETRIES[geo]
    x = f32(*shape)
    x5 = x.reshape(shape[:2] + (1,) + shape[2:])
    with sn.graph_scope():
        xi, xi5 = sn.input("x", shape), sn.input("x5", x5.shape)
        (y,), _ = apply("Im2col", xi, name="a", kernel_size=list(k), stride=list(s),
                        pad=list(p), dilation=list(d))
        (y5,), _ = apply("Im2col", xi5, name="b", kernel_size=[1] + list(k),
                         stride=[1] + list(s), pad=[0] + list(p), dilation=[1] + list(d))
        kinds = {type(y.graph.op(n)).__name__ for n in y.graph.ancestors([y.id])}
        kinds5 = {type(y.graph.op(n)).__name__ for n in y.graph.ancestors([y5.id])}
        assert "Im2col" in kinds and "Concat" not in kinds
        assert "Im2col" not in kinds5 and "Concat" in kinds5
        gi = sn.input("g", y.shape)
        gi5 = sn.input("g5", y5.shape)
        (dx,) = sn.vjp([y], [gi], [xi])
        (dx5,) = sn.vjp([y5], [gi5], [xi5])
        g = f32(*y.shape)
        got = sn.function([xi, xi5, gi, gi5], [y, y5, dx, dx5], backend="cpu")(
            x, x5, g, g.reshape(y5.shape))
    np.testing.assert_array_equal(got[0], got[1].reshape(y.shape))
    composed = got[3].reshape(shape)
    np.testing.assert_allclose(got[2], composed, rtol=1e-6, atol=1e-6)
    if all(kk * dd <= ss for kk, ss, dd in zip(k, s, d)):
        np.testing.assert_array_equal(got[2], composed)
