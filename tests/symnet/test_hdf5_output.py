"""HDF5Output against Caffe's HDF5OutputLayer (BVLC caffe, hdf5_output_layer.cpp,
util/hdf5.cpp).

What Caffe does, written down here and checked below:

* LayerSetUp: ``H5Fcreate(file_name, H5F_ACC_TRUNC)``: when the net is built the file
  is created, or an existing one truncated, holding no dataset.
* Forward: CHECK that data and label have the same num, copy them into blobs shaped
  ``(num, channels, height, width)`` (the legacy accessors: missing axes are 1, more
  than 4 axes is a CHECK failure) and ``H5LTmake_dataset_float`` them as ``data`` and
  ``label``.
* A second forward calls ``H5LTmake_dataset_float`` for ``data`` again; the dataset
  exists, the call fails and Caffe stops ("Failed to make float dataset data").
  symnet raises a DataError instead and the file keeps the first batch.
* ExactNumBottomBlobs 2, ExactNumTopBlobs 0, no learnable blobs, Backward does nothing.

symnet writes each state of the file atomically (a temporary file renamed over it).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import symnet as sn
from symnet import data
from symnet.layers import LayerError

h5py = pytest.importorskip("h5py")

BACKENDS = ["numpy", "cpu", "cuda-emu"]


def net_text(path, data_shape=(2, 3, 4), label_shape=(2,), extra=""):
    dims = lambda s: " ".join(f"dim: {d}" for d in s)      # noqa: E731
    return f"""
layer {{ name: "in" type: "Input" top: "x" top: "y"
        input_param {{ shape {{ {dims(data_shape)} }} shape {{ {dims(label_shape)} }} }} }}
{extra}
layer {{ name: "out" type: "HDF5Output" bottom: "x" bottom: "y"
        hdf5_output_param {{ file_name: "{path}" }} }}
"""


def datasets(path):
    with h5py.File(path, "r") as f:
        return {k: (f[k].dtype, f[k][()]) for k in f}


def leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith(".symnet-tmp")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_build_truncates_forward_writes_second_forward_fails(tmp_path, backend):
    path = tmp_path / "out.h5"
    with h5py.File(path, "w") as f:                       # an older file: truncated
        f["old"] = np.ones(3)
    net = sn.Net(net_text(path), sn.TEST, backend=backend)
    assert datasets(path) == {}
    x = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    y = np.array([3, 7], np.float32)
    net.forward(x=x, y=y)
    got = datasets(path)
    assert sorted(got) == ["data", "label"]
    assert got["data"][0] == np.float32 and got["label"][0] == np.float32
    # legacy 4-D shapes: (2, 3, 4) -> (2, 3, 4, 1), (2,) -> (2, 1, 1, 1)
    np.testing.assert_array_equal(got["data"][1], x.reshape(2, 3, 4, 1))
    np.testing.assert_array_equal(got["label"][1], y.reshape(2, 1, 1, 1))
    with pytest.raises(data.DataError) as info:
        net.forward(x=x + 1, y=y + 1)
    msg = str(info.value)
    assert "HDF5Output 'out'" in msg and str(path) in msg and "second forward" in msg, msg
    np.testing.assert_array_equal(datasets(path)["data"][1], x.reshape(2, 3, 4, 1))
    assert leftovers(tmp_path) == []
    # a new net starts the file over, as a new Caffe net does
    sn.Net(net_text(path), sn.TEST, backend=backend)
    assert datasets(path) == {}


def test_four_axes_and_two_axes(tmp_path):
    path = tmp_path / "o.h5"
    net = sn.Net(net_text(path, (3, 2, 2, 2), (3, 5)), sn.TEST, backend="cpu")
    x = np.arange(24, dtype=np.float32).reshape(3, 2, 2, 2)
    y = np.arange(15, dtype=np.float32).reshape(3, 5)
    net.forward(x=x, y=y)
    got = datasets(path)
    np.testing.assert_array_equal(got["data"][1], x)
    np.testing.assert_array_equal(got["label"][1], y.reshape(3, 5, 1, 1))


def test_in_a_training_net_without_changing_gradients(tmp_path):
    path = tmp_path / "o.h5"
    body = """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "t" top: "loss" }
"""
    inputs = """
layer { name: "in" type: "Input" top: "x" top: "t"
        input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
"""
    writer = """
layer { name: "out" type: "HDF5Output" bottom: "ip" bottom: "t"
        hdf5_output_param { file_name: "%s" } }
""" % path
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    t = rng.normal(size=(4, 2)).astype(np.float32)
    with_out = sn.Net(inputs + body + writer, sn.TRAIN, backend="cpu")
    plain = sn.Net(inputs + body, sn.TRAIN, backend="cpu")
    for a, b in zip(with_out.params["ip"], plain.params["ip"]):
        a.data[...] = b.data
    assert [l.type for l in with_out.layers][-1] == "HDF5Output"
    assert with_out.layers[-1].blobs == [] and "out" not in with_out.params
    for net in (with_out, plain):
        net.forward_backward(x=x, t=t)
    np.testing.assert_array_equal(with_out.params["ip"][0].diff, plain.params["ip"][0].diff)
    ip = plain.blobs["ip"].data
    got = datasets(path)
    np.testing.assert_allclose(got["data"][1], ip.reshape(4, 2, 1, 1), rtol=1e-6)
    np.testing.assert_array_equal(got["label"][1], t.reshape(4, 2, 1, 1))
    # forward then backward: the backward does not run the layer again (a second run
    # would be a second write, refused)
    again = sn.Net(inputs + body + writer, sn.TRAIN, backend="cpu")
    again.forward(x=x, t=t)
    again.backward()
    assert sorted(datasets(path)) == ["data", "label"]


def test_pycaffe_net(tmp_path):
    import symnet.caffe as caffe
    path = tmp_path / "o.h5"
    (tmp_path / "net.prototxt").write_text(net_text("o.h5"))
    cwd = os.getcwd()
    os.chdir(tmp_path)                         # Caffe: file_name relative to the cwd
    try:
        net = caffe.Net("net.prototxt", caffe.TEST)
    finally:
        os.chdir(cwd)
    assert datasets(path) == {}
    net.blobs["x"].data[...] = 2.5
    net.blobs["y"].data[...] = [1, 0]
    net.forward()                              # writes the file opened at setup
    got = datasets(path)
    assert (got["data"][1] == 2.5).all() and got["data"][1].shape == (2, 3, 4, 1)
    np.testing.assert_array_equal(got["label"][1].ravel(), [1, 0])


def test_a_failed_write_leaves_the_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "o.h5"
    net = sn.Net(net_text(path), sn.TEST, backend="cpu")
    calls = []

    def failing(self, name, **kw):
        calls.append(name)
        if name == "label":
            raise RuntimeError("disk full while writing")
        return real(self, name, **kw)
    real = h5py.Group.create_dataset
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        net.forward(x=np.ones((2, 3, 4), np.float32), y=np.zeros(2, np.float32))
    assert calls == ["data", "label"]
    assert datasets(path) == {}                   # the state before: nothing half-written
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("text, words", [
    ('layer { name: "out" type: "HDF5Output" bottom: "x" '
     'hdf5_output_param { file_name: "@F@" } }', "2 bottoms"),
    ('layer { name: "out" type: "HDF5Output" bottom: "x" bottom: "y" top: "z" '
     'hdf5_output_param { file_name: "@F@" } }', "no tops"),
    ('layer { name: "out" type: "HDF5Output" bottom: "x" bottom: "y" }',
     "hdf5_output_param.file_name (not set)"),
])
def test_layer_errors(tmp_path, text, words):
    inputs = ('layer { name: "in" type: "Input" top: "x" top: "y" input_param { '
              'shape { dim: 2 dim: 3 } shape { dim: 2 } } }\n')
    with pytest.raises(LayerError) as info:
        sn.Net(inputs + text.replace("@F@", str(tmp_path / "o.h5")), sn.TEST, backend="numpy")
    msg = str(info.value)
    assert msg.startswith("layer 'out' (HDF5Output)") and words in msg, msg
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.parametrize("shapes, words", [
    (((2, 3, 1, 1, 1), (2,)), "at most 4 axes"),
    (((2, 3), (3,)), "same num"),
])
def test_shape_errors(tmp_path, shapes, words):
    with pytest.raises(LayerError) as info:
        sn.Net(net_text(tmp_path / "o.h5", *shapes), sn.TEST, backend="numpy")
    assert words in str(info.value) and "layer 'out' (HDF5Output)" in str(info.value)


def test_without_h5py_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"HDF5Output needs h5py: pip install 'symnet\[data\]'"):
        sn.Net(net_text(tmp_path / "o.h5"), sn.TEST, backend="numpy")
