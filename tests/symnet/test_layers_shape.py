"""Caffe's shape layers (symnet/layers/shape.py): Concat, Slice, Split, Flatten,
Reshape, Crop, Tile, Reduction, ArgMax and Silence.

Forward against NumPy restatements of Caffe's loops, and bottom diffs against
Caffe's backward (copies, sums, Reduction's per-op formulas), on every backend
with all cases in one compiled function; gradients also by finite differences
(sn.gradcheck on the float64 reference); parameters from prototxt through a Net."""
import numpy as np
import pytest

import symnet as sn
from snhelp import check_cases
from symnet.layers import LayerError, apply

R = np.random.default_rng(31)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


X = f32(2, 6, 3, 4)


# ------------------------------------------------------------- references
# ref(bottoms, g) -> (tops, bottom diffs); g is the list of top cotangents

def concat_ref(axis):
    def ref(b, g):
        sizes = np.cumsum([x.shape[axis] for x in b])[:-1]
        return [np.concatenate(b, axis)], np.split(g[0], sizes, axis)
    return ref


def slice_ref(axis, cut):
    """cut: a number of equal parts or the list of slice points."""
    def ref(b, g):
        return np.split(b[0], cut, axis), [np.concatenate(g, axis)]
    return ref


def split_ref(b, g):
    return [b[0]] * len(g), [sum(g)]


def reshape_ref(shape):
    """Flatten and Reshape: the same data under the expected shape."""
    def ref(b, g):
        return [b[0].reshape(shape)], [g[0].reshape(b[0].shape)]
    return ref


def crop_ref(index):
    def ref(b, g):
        dx = np.zeros_like(b[0])
        dx[index] = g[0]
        return [b[0][index]], [dx]
    return ref


def tile_ref(axis, tiles):
    """Caffe: each outer block (axes axis..end) copied ``tiles`` times in a row."""
    def ref(b, g):
        x = b[0]
        outer = int(np.prod(x.shape[:axis]))
        inner = int(np.prod(x.shape[axis:]))
        flat = x.reshape(outer, inner)
        top = np.stack([flat] * tiles, 1).reshape(x.shape[:axis] + (-1,) + x.shape[axis + 1:])
        gd = g[0].reshape(outer, tiles, inner).sum(1).reshape(x.shape)
        return [top], [gd]
    return ref


def reduction_ref(op, axis, coeff):
    """Caffe's Forward_cpu / Backward_cpu over (num, dim) rows."""
    def ref(b, g):
        x = b[0]
        num = int(np.prod(x.shape[:axis]))
        rows = x.reshape(num, -1)
        dim = rows.shape[1]
        c = coeff / dim if op == "MEAN" else coeff
        if op in ("SUM", "MEAN"):
            y, d = rows.sum(1), np.ones_like(rows)
        elif op == "ASUM":
            y, d = np.abs(rows).sum(1), np.sign(rows)
        else:
            y, d = (rows * rows).sum(1), 2 * rows
        top = (c * y).reshape(x.shape[:axis])
        dx = (d * c * g[0].reshape(num, 1)).reshape(x.shape)
        return [top], [dx]
    return ref


def caffe_topk(values, k):
    """Caffe's ArgMax: partial_sort of (value, index) pairs with std::greater."""
    pairs = sorted(((float(v), j) for j, v in enumerate(values)), reverse=True)
    return pairs[:k]


def argmax_ref(out_max_val=False, top_k=1, axis=None):
    def ref(b, g):
        x = b[0]
        dx = np.zeros_like(x)
        if axis is not None:
            ax = axis % x.ndim
            xm = np.moveaxis(x, ax, -1)
            shape = xm.shape[:-1] + (top_k,)
            top = np.zeros(shape)
            gm = np.moveaxis(g[0], ax, -1)
            dxm = np.moveaxis(dx, ax, -1)            # a view: writes reach dx
            for pos in np.ndindex(xm.shape[:-1]):
                for j, (v, i) in enumerate(caffe_topk(xm[pos], top_k)):
                    top[pos + (j,)] = v if out_max_val else i
                    if out_max_val:
                        dxm[pos + (i,)] += gm[pos + (j,)]
            return [np.moveaxis(top, -1, ax)], [dx]
        n = x.shape[0]
        flat = x.reshape(n, -1)
        dflat = dx.reshape(n, -1)
        top = np.zeros((n, 2 if out_max_val else 1, top_k))
        gg = g[0].reshape(top.shape)
        for i in range(n):
            for j, (v, idx) in enumerate(caffe_topk(flat[i], top_k)):
                top[i, 0, j] = idx
                if out_max_val:
                    top[i, 1, j] = v
                    dflat[i, idx] += gg[i, 1, j]
        return [top.reshape(top.shape + (1,) * (max(x.ndim, 3) - 3))], [dx]
    return ref


# ArgMax inputs with ties (small integers): Caffe puts the larger index first
TIES = R.integers(0, 4, size=(3, 5, 2, 2)).astype(np.float32)
TIES2 = np.array([[1, 3, 3, 2, 3, 0], [5, 5, 5, 5, 5, 5], [0, 1, 2, 3, 4, 5]], np.float32)
ZEROS = X.copy()
ZEROS.flat[::5] = 0.0                                     # ASUM: sign(0) = 0

# (id, type, params, bottoms, tops, ref)
CASES = [
    ("concat", "Concat", {}, [X, f32(2, 2, 3, 4), f32(2, 1, 3, 4)], 1, concat_ref(1)),
    ("concat_neg", "Concat", {"axis": -1}, [X, f32(2, 6, 3, 1)], 1, concat_ref(3)),
    ("concat_dim", "Concat", {"concat_dim": 0}, [X, f32(1, 6, 3, 4)], 1, concat_ref(0)),
    ("concat_one", "Concat", {}, [X], 1, concat_ref(1)),
    ("slice_equal", "Slice", {}, [X], 3, slice_ref(1, 3)),
    ("slice_points", "Slice", {"axis": -1, "slice_point": [1, 3]}, [X], 3,
     slice_ref(3, [1, 3])),
    ("slice_dim", "Slice", {"slice_dim": 0}, [X], 2, slice_ref(0, 2)),
    ("slice_one", "Slice", {"axis": 2}, [X], 1, slice_ref(2, 1)),
    ("split", "Split", {}, [X], 3, split_ref),
    ("flatten", "Flatten", {}, [X], 1, reshape_ref((2, 72))),
    ("flatten_mid", "Flatten", {"axis": 1, "end_axis": 2}, [X], 1, reshape_ref((2, 18, 4))),
    ("flatten_neg", "Flatten", {"axis": -3, "end_axis": -2}, [X], 1, reshape_ref((2, 18, 4))),
    ("flatten_2d", "Flatten", {"axis": 0}, [f32(3, 4)], 1, reshape_ref((12,))),
    ("reshape", "Reshape", {"shape": {"dim": [0, -1, 4]}}, [X], 1, reshape_ref((2, 18, 4))),
    ("reshape_mid", "Reshape", {"shape": {"dim": [2, 3]}, "axis": 1, "num_axes": 1}, [X], 1,
     reshape_ref((2, 2, 3, 3, 4))),
    ("reshape_end", "Reshape", {"shape": {"dim": [1]}, "axis": -1}, [X], 1,
     reshape_ref((2, 6, 3, 4, 1))),
    ("reshape_front", "Reshape", {"shape": {"dim": [1]}, "axis": 0, "num_axes": 0}, [X], 1,
     reshape_ref((1, 2, 6, 3, 4))),
    ("reshape_all", "Reshape", {"shape": {"dim": [-1]}}, [X], 1, reshape_ref((144,))),
    ("reshape_copy", "Reshape", {"shape": {"dim": [0, 0, -1]}, "axis": 1}, [X], 1,
     reshape_ref((2, 6, 3, 4))),
    ("reshape_tail", "Reshape", {"shape": {"dim": [-1, 2]}, "axis": -3, "num_axes": 2}, [X],
     1, reshape_ref((2, 6, 6, 2))),
    ("crop", "Crop", {}, [X, f32(1, 1, 2, 2)], 1, crop_ref(np.s_[:, :, 0:2, 0:2])),
    ("crop_offset", "Crop", {"offset": [1]}, [X, f32(2, 6, 2, 3)], 1,
     crop_ref(np.s_[:, :, 1:3, 1:4])),
    ("crop_axis1", "Crop", {"axis": 1, "offset": [2, 0, 1]}, [X, f32(9, 3, 2, 2)], 1,
     crop_ref(np.s_[:, 2:5, 0:2, 1:3])),
    ("crop_neg", "Crop", {"axis": -1, "offset": [2]}, [X, f32(9, 9, 9, 2)], 1,
     crop_ref(np.s_[:, :, :, 2:4])),
    ("tile", "Tile", {"tiles": 3}, [X], 1, tile_ref(1, 3)),
    ("tile_last", "Tile", {"axis": -1, "tiles": 2}, [X], 1, tile_ref(3, 2)),
    ("tile_first", "Tile", {"axis": 0, "tiles": 2}, [f32(2, 3)], 1, tile_ref(0, 2)),
    ("red_sum", "Reduction", {}, [X], 1, reduction_ref("SUM", 0, 1.0)),
    ("red_asum", "Reduction", {"operation": "ASUM", "axis": 1}, [ZEROS], 1,
     reduction_ref("ASUM", 1, 1.0)),
    ("red_sumsq", "Reduction", {"operation": "SUMSQ", "axis": -1, "coeff": 0.5}, [X], 1,
     reduction_ref("SUMSQ", 3, 0.5)),
    ("red_mean", "Reduction", {"operation": "MEAN", "axis": 2, "coeff": -2.0}, [X], 1,
     reduction_ref("MEAN", 2, -2.0)),
    ("argmax", "ArgMax", {}, [TIES], 1, argmax_ref()),
    ("argmax_k_val", "ArgMax", {"top_k": 3, "out_max_val": True}, [TIES2], 1,
     argmax_ref(True, 3)),
    ("argmax_k_4d", "ArgMax", {"top_k": 4, "out_max_val": True}, [TIES], 1,
     argmax_ref(True, 4)),
    ("argmax_axis", "ArgMax", {"axis": 1, "top_k": 2}, [TIES], 1, argmax_ref(False, 2, 1)),
    ("argmax_axis_val", "ArgMax", {"axis": -1, "top_k": 2, "out_max_val": True}, [TIES2], 1,
     argmax_ref(True, 2, -1)),
    ("argmax_axis0", "ArgMax", {"axis": 0}, [TIES], 1, argmax_ref(False, 1, 0)),
]
IDS = [c[0] for c in CASES]


def _build_all():
    ins, feeds, outs, want = [], [], [], []
    g_rng = np.random.default_rng(4)
    for cid, typ, params, bottoms, ntop, ref in CASES:
        xs = [sn.input(f"{cid}_b{k}", b.shape) for k, b in enumerate(bottoms)]
        tops, _ = apply(typ, *xs, name=cid, ntop=ntop, **params)
        assert len(tops) == ntop, cid
        gs = [g_rng.standard_normal(t.shape).astype(np.float32) for t in tops]
        gis = [sn.input(f"{cid}_g{k}", t.shape) for k, t in enumerate(tops)]
        wrt = xs[:1]                         # Crop's second bottom only gives a shape
        grads = sn.vjp(tops, gis, wrt)
        exp_tops, exp_d = ref([b.astype(np.float64) for b in bottoms],
                              [g.astype(np.float64) for g in gs])
        ins += xs + gis
        feeds += list(bottoms) + gs
        outs += list(tops) + list(grads)
        want += [(cid, f"top{k}", t) for k, t in enumerate(exp_tops)]
        want += [(cid, "d_bottom0", exp_d[0])]
    return ins, feeds, outs, want


def test_shape_layers_forward_backward(backend):
    """Every case's tops and bottom diff on this backend equal Caffe's loops (one
    compiled function for all cases)."""
    check_cases(_build_all, backend, rtol=1e-5, atol=1e-5)


def test_crop_second_bottom_and_silence_get_no_diff():
    g = f32(2, 6, 2, 2)
    with sn.graph_scope():
        x, like = sn.input("x", X.shape), sn.input("l", (1, 1, 2, 2))
        gi = sn.input("g", g.shape)
        (y,), _ = apply("Crop", x, like, name="c")
        dx, dl = sn.vjp([y], [gi], [x, like])
        tops, _ = apply("Silence", x, like, name="s")
        assert tops == []
        rx, rl = sn.function([x, like, gi], [dx, dl], backend="numpy")(
            X, np.ones((1, 1, 2, 2), np.float32), g)
    assert not rl.any()
    np.testing.assert_allclose(rx[:, :, :2, :2], g)
    assert not rx[:, :, 2:, :].any() and not rx[:, :, :, 2:].any()


# ------------------------------------------------------------- gradcheck

def _all_tops(typ, ntop, params):
    """fn for gradcheck: every top flattened and joined (so each top's diff counts)."""
    def fn(*xs):
        tops, _ = apply(typ, *xs, name="L", ntop=ntop, **params)
        if len(tops) == 1:
            return tops[0]
        return sn.concat([sn.reshape(t, (t.size,)) for t in tops], 0)
    return fn


S = (2, 4, 3, 2)
GRAD_CASES = [
    ("concat", "Concat", {"axis": 2}, [S, (2, 4, 1, 2)], 1),
    ("slice", "Slice", {"slice_point": [1, 3]}, [S], 3),
    ("split", "Split", {}, [S], 2),
    ("flatten", "Flatten", {"axis": 2}, [S], 1),
    ("reshape", "Reshape", {"shape": {"dim": [0, -1]}}, [S], 1),
    ("tile", "Tile", {"axis": 2, "tiles": 3}, [S], 1),
    ("red_sum", "Reduction", {"axis": 1, "coeff": 1.5}, [S], 1),
    ("red_asum", "Reduction", {"operation": "ASUM", "axis": 2}, [S], 1),
    ("red_sumsq", "Reduction", {"operation": "SUMSQ"}, [S], 1),
    ("red_mean", "Reduction", {"operation": "MEAN", "axis": -1}, [S], 1),
    ("argmax_val", "ArgMax", {"axis": 1, "top_k": 2, "out_max_val": True}, [S], 1),
    ("argmax_flat_val", "ArgMax", {"top_k": 3, "out_max_val": True}, [S], 1),
]


@pytest.mark.parametrize("cid, typ, params, shapes, ntop", GRAD_CASES,
                         ids=[c[0] for c in GRAD_CASES])
def test_shape_gradcheck(cid, typ, params, shapes, ntop):
    arrays = [R.standard_normal(s) for s in shapes]
    res = sn.gradcheck(_all_tops(typ, ntop, params), arrays, eps=1e-5)
    assert res.checked > 0


def test_crop_gradcheck():
    like = np.zeros((1, 1, 2, 1))
    res = sn.gradcheck(lambda x: apply("Crop", x, sn.constant(like), name="L",
                                       offset=[1, 0])[0][0], [R.standard_normal(S)])
    assert res.checked > 0


# ------------------------------------------------------------- errors

def test_errors():
    with sn.graph_scope():
        x = sn.input("x", X.shape)
        with pytest.raises(LayerError, match="not both"):
            apply("Concat", x, x, name="L", axis=1, concat_dim=1)
        with pytest.raises(LayerError, match="same shape except"):
            apply("Concat", x, sn.input("y", (2, 6, 3, 5)), name="L")
        with pytest.raises(LayerError, match="same #axes"):
            apply("Concat", x, sn.input("z", (2, 6, 3)), name="L")
        with pytest.raises(LayerError, match="evenly divide"):
            apply("Slice", x, name="L", ntop=4)
        with pytest.raises(LayerError, match="one fewer point"):
            apply("Slice", x, name="L", ntop=2, slice_point=[1, 2])
        with pytest.raises(LayerError, match="strictly increasing"):
            apply("Slice", x, name="L", ntop=3, slice_point=[3, 2])
        with pytest.raises(LayerError, match="out of range"):
            apply("Slice", x, name="L", ntop=2, slice_dim=4)
        with pytest.raises(LayerError, match="multiple -1"):
            apply("Reshape", x, name="L", shape={"dim": [-1, -1]})
        with pytest.raises(LayerError, match="divisible"):
            apply("Reshape", x, name="L", shape={"dim": [5, -1]})
        with pytest.raises(LayerError, match="count must match"):
            apply("Reshape", x, name="L", shape={"dim": [2, 3]})
        with pytest.raises(LayerError, match="no axis 4 to copy"):
            apply("Reshape", x, name="L", shape={"dim": [0]}, axis=4)
        with pytest.raises(LayerError, match="out of bounds"):
            apply("Crop", x, sn.input("l", (2, 6, 3, 4)), name="L", offset=[1])
        with pytest.raises(LayerError, match="one per cropped axis"):
            apply("Crop", x, sn.input("m", (2, 6, 2, 2)), name="L", offset=[1, 1, 1])
        with pytest.raises(LayerError, match="tiles must be specified"):
            apply("Tile", x, name="L")
        with pytest.raises(LayerError, match="positive"):
            apply("Tile", x, name="L", tiles=0)
        with pytest.raises(LayerError, match="SUM, ASUM"):
            apply("Reduction", x, name="L", operation="MAX")
        with pytest.raises(LayerError, match="top_k 73"):
            apply("ArgMax", x, name="L", top_k=73)
        with pytest.raises(LayerError, match="top_k 7"):
            apply("ArgMax", x, name="L", top_k=7, axis=1)


def test_registered_and_documented():
    for typ in ["Concat", "Slice", "Split", "Flatten", "Reshape", "Crop", "Tile",
                "Reduction", "ArgMax", "Silence"]:
        spec = sn.layers.get(typ)
        assert spec.doc and spec.module.endswith("shape"), typ


# ------------------------------------------------------------- through a Net

NET = """
name: "shapes"
force_backward: true
layer { name: "in" type: "Input" top: "a" top: "b"
        input_param { shape { dim: 2 dim: 3 dim: 4 } shape { dim: 2 dim: 2 dim: 4 } } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat"
        concat_param { concat_dim: 1 } }
layer { name: "sl" type: "Slice" bottom: "cat" top: "s0" top: "s1" top: "s2"
        slice_param { axis: -1 slice_point: 1 slice_point: 3 } }
layer { name: "sp" type: "Split" bottom: "s1" top: "t0" top: "t1" }
layer { name: "fl" type: "Flatten" bottom: "t0" top: "fl" }
layer { name: "rs" type: "Reshape" bottom: "t1" top: "rs"
        reshape_param { shape { dim: 0 dim: -1 dim: 1 } } }
layer { name: "tile" type: "Tile" bottom: "rs" top: "tile" tile_param { axis: 2 tiles: 3 } }
layer { name: "red" type: "Reduction" bottom: "tile" top: "red"
        reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 } }
layer { name: "am" type: "ArgMax" bottom: "fl" top: "am"
        argmax_param { top_k: 2 out_max_val: true } }
layer { name: "sil" type: "Silence" bottom: "s0" bottom: "am" }
layer { name: "in2" type: "Input" top: "s2b" input_param { shape { dim: 2 dim: 5 dim: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "s2" bottom: "s2b" top: "loss" }
"""


def test_prototxt_parameters_reach_the_layers():
    """Field names, enums, the legacy concat_dim, repeated slice_point, a BlobShape,
    Split's and Slice's several tops and Silence's none, through a Net."""
    net = sn.Net(NET, sn.TRAIN, backend="numpy")
    a, b = f32(2, 3, 4), f32(2, 2, 4)
    s2b = f32(2, 5, 1)
    net.forward(a=a, b=b, s2b=s2b)
    cat = np.concatenate([a, b], 1)
    s0, s1, s2 = cat[..., :1], cat[..., 1:3], cat[..., 3:]
    np.testing.assert_allclose(net.blobs["s0"].data, s0, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["fl"].data, s1.reshape(2, 10), rtol=1e-6)
    rs = s1.reshape(2, 10, 1)
    np.testing.assert_allclose(net.blobs["rs"].data, rs, rtol=1e-6)
    tile = np.concatenate([rs] * 3, 2)
    np.testing.assert_allclose(net.blobs["tile"].data, tile, rtol=1e-6)
    np.testing.assert_allclose(net.blobs["red"].data, 0.5 * (tile ** 2).sum((1, 2)),
                               rtol=1e-5)
    am = argmax_ref(True, 2)([s1.reshape(2, 10).astype(np.float64)],
                             [np.zeros((2, 2, 2))])[0][0]
    np.testing.assert_allclose(net.blobs["am"].data, am, rtol=1e-6)
    assert net.blobs["am"].shape == (2, 2, 2)
    loss = ((s2 - s2b) ** 2).sum() / 2 / 2
    np.testing.assert_allclose(net.blobs["loss"].data, loss, rtol=1e-5)
    # Silence consumed s0 and am: they are not outputs
    assert "s0" not in net.outputs and "am" not in net.outputs
    assert set(net.outputs) >= {"loss", "red"}
    net.backward()
    # the loss reaches a and b through Slice and Concat only via s2 (the last column)
    da = np.zeros_like(a)
    db = np.zeros_like(b)
    ds2 = (s2 - s2b) / 2
    da[..., 3:] = ds2[:, :3]
    db[..., 3:] = ds2[:, 3:]
    np.testing.assert_allclose(net.blobs["a"].diff, da, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["b"].diff, db, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(net.blobs["s2b"].diff, -ds2, rtol=1e-5, atol=1e-7)
