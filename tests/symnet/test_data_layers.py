"""Caffe's data layers as sources, transform_param, ExternalData (Python and C), the data
tools, and a Net fed by a Data layer. Every file is made here, in tmp_path."""
from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from symnet import data
from symnet.formats import prototxt
from symnet.formats.proto import caffe_pb2
from symnet.data import formats, tools
from symnet.data.external import header_path, include_dir
from symnet.data.transform import Transformer
from symnet.runtime.prefetch import DataSourceError, Prefetcher

h5py = pytest.importorskip("h5py")
pytest.importorskip("lmdb")
Image = pytest.importorskip("PIL.Image")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("symnet-prefetch")]


def layer(text):
    return prototxt.parse_net(textwrap.dedent(text)).layer[0]


def source(text, base_dir, phase="TRAIN", seed=None):
    return data.create(layer(text), phase, str(base_dir), seed=seed)


def images_uint8(n, c=3, h=6, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8)


def write_raw_lmdb(path, images, labels):
    with formats.LMDBWriter(path) as db:
        for i, (im, lab) in enumerate(zip(images, labels)):
            db.put(f"{i:08d}", formats.array_to_datum(im, lab).SerializeToString())


def data_layer(db, batch, extra="", backend="backend: LMDB"):
    return f"""layer {{ name: "d" type: "Data" top: "data" top: "label" {extra}
                 data_param {{ source: "{db}" batch_size: {batch} {backend} }} }}"""


# ----------------------------------------------------------------------------- Data (LMDB)

def test_data_raw_lmdb_order_labels_and_wrap(tmp_path):
    ims, labels = images_uint8(5), np.arange(5) * 3
    write_raw_lmdb(tmp_path / "db", ims, labels)
    src = source(data_layer("db", 2), tmp_path)
    assert src.top_shapes() == [(2, 3, 6, 5), (2,)]
    seen = [src.next_batch() for _ in range(3)]
    order = [0, 1, 2, 3, 4, 0]                       # wraps around after 5 records
    for k, (x, y) in enumerate(seen):
        assert x.dtype == np.float32 and y.dtype == np.float32
        np.testing.assert_array_equal(x, ims[order[2 * k:2 * k + 2]].astype(np.float32))
        np.testing.assert_array_equal(y, labels[order[2 * k:2 * k + 2]])
    st = src.state()
    assert st["epoch"] == 1 and st["index"] == 1
    src.close()


def test_data_float_datum_and_one_top(tmp_path):
    arr = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    write_raw_lmdb(tmp_path / "db", arr, [0, 1, 2])
    src = source("""layer { name: "d" type: "Data" top: "data"
                    data_param { source: "db" batch_size: 3 backend: LMDB } }""", tmp_path)
    assert src.top_shapes() == [(3, 2, 4, 4)]
    (x,) = src.next_batch()
    np.testing.assert_array_equal(x, arr)
    src.close()


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_data_encoded_lmdb_decodes_bgr(tmp_path, fmt):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30        # R, G, B
    buf = tmp_path / f"im.{fmt}"
    if fmt == "png":
        rgb[1, 2] = (10, 240, 60)                # lossless: one odd pixel survives
        Image.fromarray(rgb).save(buf)
    else:
        Image.fromarray(rgb).save(buf, quality=100)
    with formats.LMDBWriter(tmp_path / "db") as db:
        for i in range(2):
            db.put(f"{i:08d}", formats.array_to_datum(None, 7 + i,
                                                       encoded=buf.read_bytes())
                   .SerializeToString())
    src = source(data_layer("db", 2), tmp_path)
    assert src.top_shapes() == [(2, 3, 4, 5), (2,)]
    x, y = src.next_batch()
    bgr = rgb[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    tol = 0 if fmt == "png" else 3
    assert np.abs(x[0] - bgr).max() <= tol
    np.testing.assert_array_equal(y, [7, 8])
    src.close()
    gray = source(data_layer("db", 1, "transform_param { force_gray: true }"), tmp_path)
    assert gray.top_shapes()[0] == (1, 1, 4, 5)
    gray.close()


def test_data_rejects_leveldb(tmp_path):
    write_raw_lmdb(tmp_path / "db", images_uint8(1), [0])
    with pytest.raises(data.DataError, match="LEVELDB is not supported.*LMDB"):
        source(data_layer("db", 1, backend="backend: LEVELDB"), tmp_path)
    (tmp_path / "ldb").mkdir()
    (tmp_path / "ldb" / "CURRENT").write_text("MANIFEST-000001\n")
    with pytest.raises(data.DataError, match="LevelDB"):
        source(data_layer("ldb", 1, backend=""), tmp_path)
    # backend unset (Caffe's default LEVELDB) but the folder is an LMDB: read it
    source(data_layer("db", 1, backend=""), tmp_path).close()
    with pytest.raises(data.DataError, match="not found"):
        source(data_layer("nowhere", 1), tmp_path)


def test_data_resume_reads_the_same_batches(tmp_path):
    write_raw_lmdb(tmp_path / "db", images_uint8(7, 1, 8, 8), range(7))
    text = data_layer("db", 3, "transform_param { crop_size: 5 mirror: true }")
    a = source(text, tmp_path)
    for _ in range(2):
        a.next_batch()
    st = a.state()
    expect = [a.next_batch() for _ in range(4)]
    b = source(text, tmp_path, seed=12345)           # another seed: the state brings its own
    b.next_batch()
    b.set_state(st)
    got = [b.next_batch() for _ in range(4)]
    for e, g in zip(expect, got):
        np.testing.assert_array_equal(e[0], g[0])
        np.testing.assert_array_equal(e[1], g[1])
    import json
    assert json.loads(json.dumps(st)) == st           # snapshot-friendly
    a.close()
    b.close()


def test_data_rand_skip_is_seeded(tmp_path):
    write_raw_lmdb(tmp_path / "db", images_uint8(20, 1, 2, 2), range(20))
    text = data_layer("db", 1).replace("backend: LMDB", "backend: LMDB rand_skip: 15")
    firsts = {int(source(text, tmp_path, seed=s).next_batch()[1][0]) for s in range(8)}
    assert len(firsts) > 1 and max(firsts) < 15
    assert source(text, tmp_path, seed=3).next_batch()[1][0] == \
        source(text, tmp_path, seed=3).next_batch()[1][0]


# ----------------------------------------------------------------------------- transform

def transform_param(**kw):
    p = caffe_pb2.TransformationParameter()
    for k, v in kw.items():
        if k == "mean_value":
            p.mean_value.extend(v)
        else:
            setattr(p, k, v)
    return p


def test_transform_scale_mean_value_order():
    x = images_uint8(4, 3, 5, 5)
    t = Transformer(transform_param(scale=0.5, mean_value=[10, 20, 30]), "TEST")
    out = t(x, np.random.default_rng(0))
    ref = (x.astype(np.float32) - np.array([10, 20, 30], np.float32)[:, None, None]) * \
        np.float32(0.5)
    np.testing.assert_array_equal(out, ref)
    one = Transformer(transform_param(mean_value=[100]), "TEST")(x, np.random.default_rng(0))
    np.testing.assert_array_equal(one, x.astype(np.float32) - 100)
    with pytest.raises(data.DataError, match="2 mean_value"):
        Transformer(transform_param(mean_value=[1, 2]), "TEST").output_shape((3, 5, 5))


def test_transform_centre_crop_mean_file_in_test(tmp_path):
    x = images_uint8(3, 2, 7, 6)
    mean = np.random.default_rng(2).random((1, 2, 7, 6)).astype(np.float32) * 50
    prototxt.write_blobproto(mean, tmp_path / "mean.binaryproto", legacy=True)
    t = Transformer(transform_param(crop_size=4, mean_file="mean.binaryproto", scale=2.0),
                    "TEST", str(tmp_path))
    assert t.output_shape((2, 7, 6)) == (2, 4, 4)
    out = t(x, np.random.default_rng(0))
    a, b = (7 - 4) // 2, (6 - 4) // 2
    ref = (x[:, :, a:a + 4, b:b + 4].astype(np.float32) - mean[0, :, a:a + 4, b:b + 4]) * \
        np.float32(2)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(data.DataError, match="mean_file or mean_value"):
        Transformer(transform_param(mean_file="mean.binaryproto", mean_value=[1]), "TEST",
                    str(tmp_path))
    with pytest.raises(data.DataError, match="mean_file image has shape"):
        t.output_shape((2, 8, 6))
    with pytest.raises(data.DataError, match="crop_size 4 is larger"):
        Transformer(transform_param(crop_size=4), "TEST").output_shape((1, 3, 9))


def test_transform_random_crop_mirror_mean_in_caffe_order():
    """Each output item is, for some window and flip, (crop(x) - crop(mean)) * scale then
    mirrored: the mean is subtracted at the source pixel, before mirroring."""
    x = images_uint8(40, 2, 6, 7, seed=3)
    mean = np.random.default_rng(4).random((2, 6, 7)).astype(np.float32) * 100
    t = Transformer(transform_param(crop_size=4, mirror=True, scale=0.25), "TRAIN")
    t.mean = mean
    out = t(x, np.random.default_rng(7))
    offsets, flips = set(), []
    for i in range(len(x)):
        matches = []
        for a in range(6 - 4 + 1):
            for b in range(7 - 4 + 1):
                win = (x[i, :, a:a + 4, b:b + 4].astype(np.float32) -
                       mean[:, a:a + 4, b:b + 4]) * np.float32(0.25)
                for flip in (False, True):
                    if np.array_equal(out[i], win[..., ::-1] if flip else win):
                        matches.append((a, b, flip))
        assert matches, f"item {i} is no window of its image"
        offsets.add(matches[0][:2])
        flips.append(matches[0][2])
    assert len(offsets) > 3 and 0 < sum(flips) < len(flips)       # random, both ways
    np.testing.assert_array_equal(out, t(x, np.random.default_rng(7)))   # seeded


def test_transform_mirror_in_test_and_identity():
    x = images_uint8(30, 1, 3, 4)
    out = Transformer(transform_param(mirror=True), "TEST")(x, np.random.default_rng(0))
    flipped = [np.array_equal(o, xi[..., ::-1]) for o, xi in zip(out, x.astype(np.float32))]
    same = [np.array_equal(o, xi) for o, xi in zip(out, x.astype(np.float32))]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    t = Transformer(None, "TRAIN")
    assert t.identity
    np.testing.assert_array_equal(t(x, None), x.astype(np.float32))


def test_data_layer_applies_transform(tmp_path):
    ims = images_uint8(4, 3, 6, 6)
    write_raw_lmdb(tmp_path / "db", ims, range(4))
    src = source(data_layer("db", 4, "transform_param { crop_size: 4 scale: 0.5 "
                                     "mean_value: 1 mean_value: 2 mean_value: 3 }"),
                 tmp_path, phase="TEST")
    x, _ = src.next_batch()
    ref = (ims[:, :, 1:5, 1:5].astype(np.float32) -
           np.float32([1, 2, 3])[:, None, None]) * np.float32(0.5)
    np.testing.assert_array_equal(x, ref)
    src.close()


# ----------------------------------------------------------------------------- HDF5Data

def write_h5(path, x, y):
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=x)
        f.create_dataset("label", data=y)


def hdf5_layer(batch, shuffle=False, extra=""):
    return f"""layer {{ name: "h" type: "HDF5Data" top: "data" top: "label" {extra}
                 hdf5_data_param {{ source: "list.txt" batch_size: {batch}
                                    shuffle: {str(shuffle).lower()} }} }}"""


def test_hdf5_files_in_order_across_boundaries(tmp_path):
    x = np.arange(7 * 2 * 3, dtype=np.float64).reshape(7, 2, 3)
    y = np.arange(7, dtype=np.int32)
    (tmp_path / "sub").mkdir()
    write_h5(tmp_path / "sub" / "a.h5", x[:4], y[:4])
    write_h5(tmp_path / "sub" / "b.h5", x[4:], y[4:])
    (tmp_path / "list.txt").write_text("sub/a.h5\n\nsub/b.h5\n")
    src = source(hdf5_layer(3), tmp_path)
    assert src.top_shapes() == [(3, 2, 3), (3,)]
    rows = np.concatenate([src.next_batch()[1] for _ in range(4)])
    np.testing.assert_array_equal(rows, [0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4])
    src2 = source(hdf5_layer(7), tmp_path)
    a, b = src2.next_batch()
    np.testing.assert_array_equal(a, x.astype(np.float32))


def test_hdf5_shuffle_is_a_seeded_permutation_per_epoch(tmp_path):
    for k in range(3):
        r = np.arange(5 * k, 5 * k + 5)
        write_h5(tmp_path / f"{k}.h5", r[:, None].astype(np.float32) * 10, r)
    (tmp_path / "list.txt").write_text("0.h5\n1.h5\n2.h5\n")
    src = source(hdf5_layer(5, shuffle=True), tmp_path, seed=1)
    epochs = [np.concatenate([src.next_batch()[1] for _ in range(3)]) for _ in range(2)]
    for e in epochs:
        assert sorted(e) == list(range(15))
    assert not np.array_equal(epochs[0], epochs[1])
    assert not np.array_equal(epochs[0], np.arange(15))
    again = source(hdf5_layer(5, shuffle=True), tmp_path, seed=1)
    np.testing.assert_array_equal(np.concatenate([again.next_batch()[1] for _ in range(3)]),
                                  epochs[0])
    st = again.state()
    x, y = again.next_batch()
    np.testing.assert_array_equal(x[:, 0], y * 10)      # rows stay together
    again.set_state(st)
    np.testing.assert_array_equal(again.next_batch()[1], y)


def test_a_malformed_position_changes_nothing(tmp_path):
    """set_state is all or nothing: a saved HDF5 position outside the files, or with a
    missing or mistyped field, is a DataError and the source reads on from where it
    was (seed, generator and position as before)."""
    for k in range(2):
        r = np.arange(3 * k, 3 * k + 3)
        write_h5(tmp_path / f"{k}.h5", r[:, None].astype(np.float32), r)
    (tmp_path / "list.txt").write_text("0.h5\n1.h5\n")
    src = source(hdf5_layer(2, shuffle=True), tmp_path, seed=3)
    twin = source(hdf5_layer(2, shuffle=True), tmp_path, seed=3)
    src.next_batch(), twin.next_batch()
    good = src.state()
    bad_states = [dict(good, file=2), dict(good, row=3), dict(good, row=-1),
                  dict(good, epoch=-1), dict(good, seed="x"),
                  {k: v for k, v in good.items() if k != "row"},
                  dict(good, rng={"bit_generator": "PCG64"}), dict(good, seed=99, row=7)]
    for bad in bad_states:
        with pytest.raises(data.DataError, match="HDF5Data"):
            src.set_state(bad)
        assert src.state() == good, bad
    for _ in range(4):
        for a, b in zip(src.next_batch(), twin.next_batch()):
            np.testing.assert_array_equal(a, b)


def test_hdf5_errors(tmp_path):
    write_h5(tmp_path / "a.h5", np.zeros((2, 3)), np.zeros(2))
    (tmp_path / "list.txt").write_text("a.h5\n")
    with pytest.raises(data.DataError, match="does not transform"):
        source(hdf5_layer(1, extra="transform_param { scale: 2 }"), tmp_path)
    bad = hdf5_layer(1).replace('top: "label"', 'top: "labels"')
    with pytest.raises(data.DataError, match="no dataset 'labels'.*data, label"):
        source(bad, tmp_path)
    (tmp_path / "list.txt").write_text("missing.h5\n")
    with pytest.raises(data.DataError, match="line 1"):
        source(hdf5_layer(1), tmp_path)


# ----------------------------------------------------------------------------- ImageData

def write_images(folder, n, fmt, size=(5, 4), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays, lines = [], []
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        name = f"im{i}.{fmt}"
        Image.fromarray(a, mode).save(folder / name, **({"quality": 100} if fmt == "jpg"
                                                        else {}))
        arrays.append(a)
        lines.append(f"{name} {i % 3}")
    return arrays, lines


def image_layer(batch, extra="", params=""):
    return f"""layer {{ name: "img" type: "ImageData" top: "data" top: "label" {extra}
                 image_data_param {{ source: "list.txt" batch_size: {batch} {params} }} }}"""


def test_image_data_png_root_folder_labels(tmp_path):
    arrays, lines = write_images(tmp_path / "imgs", 5, "png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    src = source(image_layer(2, params='root_folder: "imgs/"'), tmp_path)
    assert src.top_shapes() == [(2, 3, 4, 5), (2,)]
    x, y = src.next_batch()
    np.testing.assert_array_equal(x[1], arrays[1][..., ::-1].transpose(2, 0, 1))   # BGR
    np.testing.assert_array_equal(y, [0, 1])
    labels = np.concatenate([src.next_batch()[1] for _ in range(2)])
    np.testing.assert_array_equal(labels, [2, 0, 1, 0])                  # wraps
    assert src.state()["epoch"] == 1


def test_image_data_jpeg_gray_resize_shuffle(tmp_path):
    _, lines = write_images(tmp_path, 6, "jpg", size=(9, 7))
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    params = "is_color: false new_height: 4 new_width: 3 shuffle: true"
    src = source(image_layer(3, params=params), tmp_path, seed=4)
    assert src.top_shapes() == [(3, 1, 4, 3), (3,)]
    x, _ = src.next_batch()
    assert x.min() >= 0 and x.max() <= 255
    orders = []
    for _ in range(3):
        src.next_batch()
        orders.append(list(src._perm[1]))
    assert sorted(orders[0]) == list(range(6))
    with pytest.raises(data.DataError, match="together"):
        source(image_layer(3, params="new_height: 4"), tmp_path)


def test_image_data_mixed_sizes_and_bad_list(tmp_path):
    write_images(tmp_path, 1, "png", size=(5, 4))
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "list.txt").write_text("im0.png 1\nsmall.png 2\n")
    src = source(image_layer(2), tmp_path)
    with pytest.raises(data.DataError, match="small.png.*new_height"):
        src.next_batch()
    (tmp_path / "list.txt").write_text("im0.png one\n")
    with pytest.raises(data.DataError, match="line 1.*integer label"):
        source(image_layer(1), tmp_path)


# ----------------------------------------------------------------------------- DummyData, MemoryData

def test_dummy_data_fillers_and_shapes(tmp_path):
    text = """layer { name: "dummy" type: "DummyData" top: "a" top: "b"
                dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
                  data_filler { type: "constant" value: 1.5 }
                  data_filler { type: "gaussian" std: 2 } } }"""
    src = source(text, tmp_path, seed=9)
    assert src.top_shapes() == [(2, 3), (4,)]
    a1, b1 = src.next_batch()
    a2, b2 = src.next_batch()
    np.testing.assert_array_equal(a1, np.full((2, 3), 1.5, np.float32))
    a1[...] = 0
    np.testing.assert_array_equal(a2, np.full((2, 3), 1.5, np.float32))
    assert not np.array_equal(b1, b2)
    again = source(text, tmp_path, seed=9)
    np.testing.assert_array_equal(again.next_batch()[1], b1)
    legacy = source("""layer { name: "d" type: "DummyData" top: "x" top: "y"
                       dummy_data_param { num: 2 channels: 3 height: 4 width: 5 } }""",
                    tmp_path)
    assert legacy.top_shapes() == [(2, 3, 4, 5)] * 2
    assert not legacy.next_batch()[0].any()
    with pytest.raises(data.DataError, match="2 shape"):
        source("""layer { name: "d" type: "DummyData" top: "x" top: "y" top: "z"
                  dummy_data_param { shape { dim: 1 } shape { dim: 2 } } }""", tmp_path)


def test_memory_data_set_arrays(tmp_path):
    text = """layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }"""
    src = source(text, tmp_path)
    assert src.top_shapes() == [(2, 1, 2, 3), (2,)]
    with pytest.raises(data.DataError, match="set_input_arrays"):
        src.next_batch()
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 1, 2, 3)
    src.set_arrays(x, np.array([5, 6, 7, 8]))
    x[...] = -1                                          # copied
    a, b = src.next_batch()
    np.testing.assert_array_equal(b, [5, 6])
    assert a[0, 0, 0, 0] == 0
    np.testing.assert_array_equal(src.next_batch()[1], [7, 8])
    np.testing.assert_array_equal(src.next_batch()[1], [5, 6])
    with pytest.raises(data.DataError, match="multiple of the batch size"):
        src.set_arrays(np.zeros((3, 1, 2, 3)), np.zeros(3))
    with pytest.raises(data.DataError, match=r"shape \(n, 1, 2, 3\)"):
        src.set_arrays(np.zeros((2, 1, 3, 2)), np.zeros(2))


def test_memory_data_through_prefetcher(tmp_path):
    """How the Net's set_input_arrays works: before any forward, or later (the queued
    batches of the old arrays are dropped)."""
    text = """layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                memory_data_param { batch_size: 1 channels: 1 height: 1 width: 1 } }"""
    with Prefetcher(source(text, tmp_path), 2, name="mem (MemoryData)") as pf:
        with pytest.raises(DataSourceError, match=r"mem \(MemoryData\).*set_input_arrays"):
            pf.get()
        with pf.paused() as s:
            s.set_arrays(np.zeros((3, 1, 1, 1)), [1, 2, 3])
        assert [pf.get()[1][0] for _ in range(2)] == [1, 2]
        with pf.paused() as s:
            s.set_arrays(np.zeros((2, 1, 1, 1)), [8, 9])
        assert [pf.get()[1][0] for _ in range(3)] == [8, 9, 8]


# ----------------------------------------------------------------------------- ExternalData

PY_SOURCE = '''
import numpy as np

class Ramp:
    """param_str: the batch size."""
    def __init__(self, param_str, phase, seed):
        self.batch, self.phase, self.k = int(param_str), phase, 0
        self.rng = np.random.default_rng(seed)

    def top_shapes(self):
        return [(self.batch, 2), (self.batch,)]

    def next_batch(self):
        k = self.k
        self.k += self.batch
        return [np.arange(k, k + self.batch)[:, None] * np.ones(2), self.rng.random(self.batch)]

    def state(self):
        return {"k": self.k, "rng": self.rng.bit_generator.state}

    def set_state(self, st):
        self.k, self.rng.bit_generator.state = st["k"], st["rng"]

class Wrong(Ramp):
    def next_batch(self):
        return [np.zeros((1, 2))]
'''


def test_external_python_source(tmp_path):
    (tmp_path / "ramp_source.py").write_text(PY_SOURCE)
    text = """layer { name: "ext" type: "ExternalData" top: "x" top: "r"
                python_param { module: "ramp_source" layer: "Ramp" param_str: "3" } }"""
    src = source(text, tmp_path)
    assert src.top_shapes() == [(3, 2), (3,)] and src.impl.phase == "TRAIN"
    x, r = src.next_batch()
    assert x.dtype == np.float32 and x[2, 1] == 2
    st = src.state()
    nxt = src.next_batch()
    src.set_state(st)
    np.testing.assert_array_equal(src.next_batch()[1], nxt[1])
    wrong = source(text.replace('"Ramp"', '"Wrong"'), tmp_path)
    with pytest.raises(data.DataError, match="returned 1 arrays.*declares 2"):
        wrong.next_batch()
    with pytest.raises(data.DataError, match="no class 'Nope'"):
        source(text.replace('"Ramp"', '"Nope"'), tmp_path)
    with pytest.raises(data.DataError, match="lib:"):
        source(text.replace('"ramp_source"', '"libx.so"'), tmp_path)


@pytest.fixture(scope="module")
def counter_lib(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("clib") / "libcounter.so"
    src = os.path.join(ROOT, "examples", "external_data", "counter_source.c")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-I", include_dir(),
                    src, "-o", str(out)], check=True)
    return out


def lib_layer(lib, param_str="batch=4 channels=2", name="counter"):
    return f"""layer {{ name: "{name}" type: "ExternalData" top: "data" top: "label" top: "noise"
                 python_param {{ module: "lib:{lib}" param_str: "{param_str}" }} }}"""


def test_external_c_source_three_tops(counter_lib, tmp_path):
    assert os.path.exists(header_path())
    src = source(lib_layer(counter_lib), tmp_path, seed=11)
    assert src.top_shapes() == [(4, 2, 2, 2), (4,), (4, 1)]
    x, y, z = src.next_batch()
    np.testing.assert_array_equal(x.reshape(4, -1), np.arange(4)[:, None] * 1000 +
                                  np.arange(8))
    np.testing.assert_array_equal(y, [0, 1, 2, 3])
    assert z.shape == (4, 1) and ((0 <= z) & (z < 1)).all()
    st = src.state()
    nxt = src.next_batch()
    np.testing.assert_array_equal(nxt[1], [4, 5, 6, 7])
    other = source(lib_layer(counter_lib), tmp_path, seed=11)
    np.testing.assert_array_equal(other.next_batch()[2], z)      # seeded
    other.set_state(st)
    for a, b in zip(other.next_batch(), nxt):
        np.testing.assert_array_equal(a, b)
    src.close()
    other.close()
    # relative to the prototxt's folder
    shutil.copy(counter_lib, tmp_path / "libc.so")
    source(lib_layer("libc.so"), tmp_path).close()


def test_external_c_source_errors(counter_lib, tmp_path):
    with pytest.raises(data.DataError, match="unknown parameter 'colour'"):
        source(lib_layer(counter_lib, "colour=1"), tmp_path)
    with pytest.raises(data.DataError, match="batch and channels must be positive"):
        source(lib_layer(counter_lib, "batch=0"), tmp_path)
    bad = lib_layer(counter_lib).replace('param_str', 'layer: "other" param_str')
    with pytest.raises(data.DataError, match="does not export other_create"):
        source(bad, tmp_path)
    src = source(lib_layer(counter_lib, "batch=2 fail_at=5"), tmp_path)
    with Prefetcher(src, 4, name="counter (ExternalData)") as pf:
        assert pf.get()[1][0] == 0 and pf.get()[1][0] == 2
        with pytest.raises(DataSourceError, match=r"counter \(ExternalData\).*sample 5 "
                                                  r"failed as asked"):
            pf.get()
    # this prefetcher's thread ended (other tests' nets may still await collection)
    assert not [t for t in prefetch_threads() if "counter (ExternalData)" in t.name]


# ----------------------------------------------------------------------------- tools

def test_convert_imageset_raw_and_encoded_then_mean(tmp_path):
    arrays, lines = write_images(tmp_path / "imgs", 5, "png", size=(6, 5))
    _, jlines = write_images(tmp_path / "imgs", 1, "jpg", size=(6, 5), seed=1)
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    n = tools.convert_imageset(tmp_path / "list.txt", tmp_path / "imgs", tmp_path / "raw")
    assert n == 5
    keys = [k for k, _ in formats.iter_lmdb(tmp_path / "raw")]
    assert keys[0] == b"00000000_im0.png"
    src = source(data_layer("raw", 5), tmp_path)
    x, y = src.next_batch()
    np.testing.assert_array_equal(x, np.stack([a[..., ::-1].transpose(2, 0, 1)
                                               for a in arrays]))
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1])
    src.close()
    mean = tools.compute_image_mean(tmp_path / "raw", tmp_path / "mean.binaryproto")
    np.testing.assert_allclose(mean[0], x.mean(axis=0), rtol=1e-6)
    blob = caffe_pb2.BlobProto()
    blob.ParseFromString((tmp_path / "mean.binaryproto").read_bytes())
    assert (blob.num, blob.channels, blob.height, blob.width) == (1, 3, 5, 6)
    np.testing.assert_array_equal(prototxt.read_blobproto(tmp_path / "mean.binaryproto"), mean)

    (tmp_path / "list2.txt").write_text("\n".join(lines[:2] + jlines) + "\n")
    tools.convert_imageset(tmp_path / "list2.txt", tmp_path / "imgs", tmp_path / "enc",
                           encoded=True, shuffle=True, seed=3)
    values = [formats.parse_datum(v) for _, v in formats.iter_lmdb(tmp_path / "enc")]
    assert all(d.encoded for d in values)
    files = {(tmp_path / "imgs" / ln.split()[0]).read_bytes() for ln in lines[:2] + jlines}
    assert {d.data for d in values} == files                 # the files as they are
    src = source(data_layer("enc", 3, "transform_param { mean_file: \"mean.binaryproto\" }"),
                 tmp_path)
    assert src.top_shapes()[0] == (3, 3, 5, 6)
    src.close()

    tools.convert_imageset(tmp_path / "list.txt", tmp_path / "imgs", tmp_path / "small",
                           resize_height=3, resize_width=4, gray=True, encoded=True)
    d = formats.parse_datum(next(formats.iter_lmdb(tmp_path / "small"))[1])
    assert formats.datum_to_array(d).shape == (1, 3, 4)
    with pytest.raises(data.DataError, match="already exists"):
        tools.convert_imageset(tmp_path / "list.txt", tmp_path / "imgs", tmp_path / "raw")


# ----------------------------------------------------------------------------- Net

NET = """
name: "tiny"
layer { name: "mnist" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  data_param { source: "db" batch_size: 4 backend: LMDB prefetch: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_net_with_data_layer_feeds_batches(tmp_path):
    from symnet.net import Net
    ims, labels = images_uint8(10, 1, 4, 4, seed=5), np.arange(10) % 3
    write_raw_lmdb(tmp_path / "db", ims, labels)
    (tmp_path / "net.prototxt").write_text(NET)
    net = Net(str(tmp_path / "net.prototxt"), phase="TRAIN", backend="numpy")
    assert net.blobs["data"].shape == (4, 1, 4, 4)
    order = [i % 10 for i in range(12)]
    losses = []
    for k in range(3):
        out = net.forward()
        idx = order[4 * k:4 * k + 4]
        np.testing.assert_array_equal(net.blobs["data"].data,
                                      ims[idx].astype(np.float32) * np.float32(1 / 256))
        np.testing.assert_array_equal(net.blobs["label"].data, labels[idx])
        losses.append(float(out["loss"]))
    assert all(np.isfinite(losses))
    feeder = net._feeders[0][1]
    st = feeder.state()
    assert st["epoch"] == 1 and st["index"] == 2
    assert len(prefetch_threads()) == 1

    # a resumed net reads the batch the first one would read next
    net.forward()
    expect = net.blobs["data"].data.copy()
    net2 = Net(str(tmp_path / "net.prototxt"), phase="TRAIN", backend="numpy")
    net2._feeders[0][1].set_state(st)
    net2.forward()
    np.testing.assert_array_equal(net2.blobs["data"].data, expect)

    net.close()
    del net, net2
    gc.collect()
    deadline = time.monotonic() + 2
    while prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prefetch_threads() == []


def test_net_data_layer_error_names_the_layer(tmp_path):
    from symnet.net import Net
    from symnet.layers.registry import LayerError
    (tmp_path / "net.prototxt").write_text(NET)
    with pytest.raises(LayerError, match=r"mnist.*data_param.source 'db' not found"):
        Net(str(tmp_path / "net.prototxt"), phase="TRAIN", backend="numpy")


# ----------------------------------------------------------------------------- example

def test_make_digits_db(tmp_path):
    pytest.importorskip("sklearn")
    script = os.path.join(ROOT, "examples", "mnist", "make_digits_db.py")
    subprocess.run([sys.executable, script, "--out", str(tmp_path), "--hdf5"], check=True,
                   capture_output=True)
    train = list(formats.iter_lmdb(tmp_path / "digits_train_lmdb"))
    test = list(formats.iter_lmdb(tmp_path / "digits_test_lmdb"))
    assert (len(train), len(test)) == (1497, 300)
    d = formats.parse_datum(train[0][1])
    im = formats.datum_to_array(d)
    assert im.shape == (1, 28, 28) and im.dtype == np.uint8 and im.max() > 100
    assert not im[:, :4].any() and 0 <= d.label <= 9
    labels = [formats.parse_datum(v).label for _, v in train]
    assert set(labels) == set(range(10))
    src = source("""layer { name: "h" type: "HDF5Data" top: "data" top: "label"
                    hdf5_data_param { source: "digits_test_h5.txt" batch_size: 300 } }""",
                 tmp_path)
    x, y = src.next_batch()
    test_images = np.stack([formats.datum_to_array(formats.parse_datum(v)) for _, v in test])
    np.testing.assert_array_equal(x, test_images.astype(np.float32) / 256)
    np.testing.assert_array_equal(y, [formats.parse_datum(v).label for _, v in test])


def test_set_seed_sets_default_seeds(tmp_path):
    text = """layer { name: "noise" type: "DummyData" top: "a"
                dummy_data_param { shape { dim: 5 } data_filler { type: "uniform" } } }"""
    try:
        data.set_seed(1)
        a = source(text, tmp_path).next_batch()[0]
        b = source(text, tmp_path).next_batch()[0]
        c = source(text, tmp_path, phase="TEST").next_batch()[0]
        data.set_seed(2)
        d = source(text, tmp_path).next_batch()[0]
    finally:
        data.set_seed(0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert source(text, tmp_path).seed == data.layer_seed("noise", "TRAIN", base=0)


def test_net_reshape_keeps_the_data_layers_position(tmp_path):
    """Caffe's Net::Reshape re-sizes the layers; a data layer goes on from where it was
    (its reader thread and position are the layer's, not the shapes'). A rebuild here
    (net.reshape(), a Filter re-sizing the net) keeps the source and its prefetcher."""
    (tmp_path / "ramp_source.py").write_text(PY_SOURCE)
    text = f"""layer {{ name: "ext" type: "ExternalData" top: "x" top: "r"
                python_param {{ module: "{tmp_path / 'ramp_source.py'}" layer: "Ramp"
                                param_str: "3" }} }}
               layer {{ name: "in" type: "Input" top: "z" input_param {{ shape {{ dim: 2 }} }} }}
               layer {{ name: "sq" type: "Power" bottom: "z" top: "z2" power_param {{ power: 2 }} }}"""
    import symnet as sn
    net = sn.Net(text, sn.TRAIN, backend="cpu")
    firsts = []
    for k in range(4):
        net.forward()
        firsts.append(float(net.blobs["x"].data[0, 0]))
        if k == 1:
            net.blobs["z"].reshape(5)
            net.reshape()
    assert firsts == [0.0, 3.0, 6.0, 9.0]
    assert net.blobs["z2"].data.shape == (5,)
    net.close()
