"""Net behaviours pycaffe scripts rely on, as Caffe has them.

- Net::Forward reshapes every layer first: after ``net.blobs['data'].reshape(...)``,
  ``forward()`` re-sizes the net (no explicit ``net.reshape()``).
- pycaffe's ``forward(end=)`` returns the tops of ``end``; ``backward(start=, end=)`` is
  Caffe's BackwardFromTo (layers start down to end, from the diffs their tops hold), so
  running it layer by layer from the last to the first gives what Backward() gives;
  ``backward()`` before any forward runs on the zeros the blobs hold.
- the before/after forward/backward hooks (Net::add_before_forward, ...) are called with
  each layer's index, around that layer.
- ``share_with`` is ShareTrainedLayersWith (the same memory); ``blob_loss_weights``,
  ``_inputs``, ``_outputs``; ``forward_all`` batches and pads as pycaffe's;
  ``save_hdf5`` / ``load_hdf5`` use Net::ToHDF5's layout (data/<layer>/<i>).
- layer names need not be unique, and each layer keeps its own blobs.
"""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

import symnet as sn

MODELS = pathlib.Path(__file__).parents[1] / "data" / "models"
DEPLOY = MODELS / "mnist_input_shape" / "lenet.prototxt"
TRAIN = MODELS / "bvlc_mnist" / "lenet_train_test.prototxt"
BACKENDS = ["cpu", "cuda-emu"]


def deploy(batch, backend="cpu"):
    return sn.Net(str(DEPLOY), sn.TEST, backend=backend,
                  input_shapes={"data": (batch, 1, 28, 28)})


def copy_params(src, dst):
    for name, blobs in src.params.items():
        for a, b in zip(dst.params[name], blobs):
            a.data[...] = b.data


def train_net(backend="cpu", batch=4):
    net = sn.Net(str(TRAIN), sn.TRAIN, backend=backend,
                 input_shapes={"data": (batch, 1, 28, 28), "label": (batch,)})
    rng = np.random.default_rng(0)
    net.blobs["data"].data[...] = rng.random((batch, 1, 28, 28), dtype=np.float32)
    net.blobs["label"].data[...] = rng.integers(0, 10, batch)
    return net


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_resizes_after_an_input_reshape(backend):
    net = deploy(2, backend)
    net.blobs["data"].reshape(3, 1, 28, 28)
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    net.blobs["data"].data[...] = x
    out = net.forward()
    assert out["prob"].shape == (3, 10)
    ref = deploy(3)
    copy_params(net, ref)
    np.testing.assert_allclose(out["prob"], ref.forward(data=x)["prob"], rtol=1e-5,
                               atol=1e-7)


def test_forward_end_returns_the_tops_of_end():
    net = deploy(1)
    out = net.forward(end="ip1")
    assert list(out) == ["ip1"]
    out = net.forward(end="pool2", blobs=["conv1"])
    assert list(out) == ["pool2", "conv1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_layer_by_layer_equals_backward(backend):
    whole, steps = train_net(backend), train_net(backend)
    copy_params(whole, steps)
    for net in (whole, steps):
        net.forward()
        net.clear_param_diffs()
    whole.backward()
    names = steps._layer_names
    for i in range(len(names) - 1, -1, -1):      # Caffe's BackwardFromTo(i, i) in turn
        steps.backward(start=names[i], end=names[i])
    for b in ("conv1", "pool1", "conv2", "pool2", "ip1", "ip2"):
        np.testing.assert_allclose(steps.blobs[b].diff, whole.blobs[b].diff, rtol=1e-5,
                                   atol=1e-7, err_msg=b)
    for name, blobs in whole.params.items():
        for k, (a, b) in enumerate(zip(steps.params[name], blobs)):
            np.testing.assert_allclose(a.diff, b.diff, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{name}[{k}]")


def test_backward_range_returns_the_bottoms_of_end():
    net = train_net()
    net.forward()
    out = net.backward(start="loss", end="ip2")
    assert list(out) == ["ip1"]
    assert np.any(out["ip1"])


def test_backward_before_forward_runs_on_zeros():
    net = train_net()
    net.blobs["data"].data[...] = 0
    net.backward()                      # Caffe: on the zeros the blobs hold
    for blobs in net.params.values():
        for b in blobs:
            assert np.isfinite(b.diff).all()


def test_hooks_run_around_each_layer():
    net = train_net()
    seen = []
    net.before_forward(lambda i: seen.append(("bf", i)))
    net.after_forward(lambda i: seen.append(("af", i, net.blobs[net.layers[i].tops[0]]
                                             .data.copy())))
    net.before_backward(lambda i: seen.append(("bb", i)))
    net.after_backward(lambda i: seen.append(("ab", i)))
    net.forward()
    n = len(net.layers)
    assert [s[:2] for s in seen] == [(k, i) for i in range(n) for k in ("bf", "af")]
    ip1 = net._layer_names.index("ip1")
    conv1 = [s[2] for s in seen if s[:2] == ("af", net._layer_names.index("conv1"))][0]
    ref = train_net()
    copy_params(net, ref)
    ref.forward()
    np.testing.assert_allclose(conv1, ref.blobs["conv1"].data, rtol=1e-5, atol=1e-7)
    assert ip1 > 0
    seen.clear()
    net.backward()
    assert seen == [(k, i) for i in range(n - 1, -1, -1) for k in ("bb", "ab")]


def test_share_with_shares_memory():
    a, b = deploy(1), deploy(1)
    b.share_with(a)
    a.params["conv1"][0].data[...] = 0.5
    np.testing.assert_array_equal(b.params["conv1"][0].data, 0.5)
    assert b.params["ip2"][1].data_mem is a.params["ip2"][1].data_mem


def test_blob_loss_weights_and_io_indices():
    net = train_net()
    assert net.blob_loss_weights["loss"] == 1.0
    assert all(w == 0.0 for b, w in net.blob_loss_weights.items() if b != "loss")
    names = list(net.blobs)
    assert [names[i] for i in net._inputs] == net.inputs
    assert [names[i] for i in net._outputs] == net.outputs


def test_forward_all_batches_and_drops_the_padding():
    net = deploy(2)
    x = np.random.default_rng(2).random((5, 1, 28, 28), dtype=np.float32)
    got = net.forward_all(data=x)
    assert got["prob"].shape == (5, 10)
    one = deploy(1)
    copy_params(net, one)
    for i in range(5):
        np.testing.assert_allclose(got["prob"][i], one.forward(data=x[i:i + 1])["prob"][0],
                                   rtol=1e-5, atol=1e-7)


def test_hdf5_round_trip(tmp_path):
    h5py = pytest.importorskip("h5py")
    a, b = deploy(1), deploy(1)
    path = tmp_path / "net.h5"
    a.save_hdf5(str(path))
    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == ["conv1", "conv2", "ip1", "ip2"]
        np.testing.assert_array_equal(f["data/conv1/0"][...], a.params["conv1"][0].data)
    b.load_hdf5(str(path))
    for name, blobs in a.params.items():
        for x, y in zip(blobs, b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)


def test_hdf5_save_is_atomic(tmp_path, monkeypatch):
    """save_hdf5 writes a temporary file beside the target and renames it over it: a
    failure while writing leaves the previous file whole and no temporary file."""
    h5py = pytest.importorskip("h5py")
    a = deploy(1)
    path = tmp_path / "net.h5"
    a.save_hdf5(str(path))
    before = path.read_bytes()
    calls = []
    real = h5py.Group.create_dataset

    def failing(self, name, *args, **kw):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, *args, **kw)
    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="No space left"):
        a.save_hdf5(str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.h5"]


def test_hdf5_load_is_all_or_nothing(tmp_path):
    """A file whose last layer does not fit is refused naming the file and the layer,
    and no earlier layer was overwritten; a truncated file is refused before the HDF5
    library reads it."""
    h5py = pytest.importorskip("h5py")
    from symnet.formats.weights import WeightsError
    a, b = deploy(1), deploy(1)
    path = tmp_path / "net.h5"
    a.save_hdf5(str(path))
    with h5py.File(path, "a") as f:
        del f["data/ip2/1"]
        f["data/ip2/1"] = np.zeros(3, np.float32)
    before = {k: [x.data.copy() for x in v] for k, v in b.params.items()}
    with pytest.raises(WeightsError, match=r"net\.h5: layer 'ip2'.*blob 1 has shape \[3\]"):
        b.load_hdf5(str(path))
    cut = tmp_path / "cut.h5"
    a.save_hdf5(str(cut))
    cut.write_bytes(cut.read_bytes()[:3000])
    with pytest.raises(WeightsError, match="cut.h5"):
        b.load_hdf5(str(cut))
    for k, v in b.params.items():
        for x, y in zip(v, before[k]):
            np.testing.assert_array_equal(x.data, y)


def test_layers_of_the_same_name_keep_their_own_blobs():
    text = """
    input: "data" input_shape { dim: 1 dim: 4 }
    layer { name: "fc" type: "InnerProduct" bottom: "data" top: "a"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b"
            inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
    """
    net = sn.Net(text, sn.TEST, backend="cpu")
    first, second = [l.blobs[0] for l in net.layers if l.name == "fc"]
    assert first is not second
    first.data[...] = 1.0
    assert not np.all(second.data == 1.0)


def test_forward_backward_all_matches_per_batch_calls():
    text = DEPLOY.read_text() + "\nforce_backward: true\n"
    net = sn.Net(text, sn.TEST, backend="cpu", input_shapes={"data": (2, 1, 28, 28)})
    rng = np.random.default_rng(3)
    x = rng.random((3, 1, 28, 28), dtype=np.float32)
    g = rng.standard_normal((3, 10)).astype(np.float32)
    outs, diffs = net.forward_backward_all(data=x, prob=g)
    assert outs["prob"].shape == (3, 10) and diffs["data"].shape == (3, 1, 28, 28)
    one = sn.Net(text, sn.TEST, backend="cpu", input_shapes={"data": (1, 1, 28, 28)})
    copy_params(net, one)
    for i in range(3):
        p = one.forward(data=x[i:i + 1])["prob"]
        d = one.backward(prob=g[i:i + 1])["data"]
        np.testing.assert_allclose(outs["prob"][i], p[0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(diffs["data"][i], d[0], rtol=1e-4, atol=1e-7)


CLS_NET = """
name: "cls"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 60 dim: 2 } shape { dim: 60 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy"
        include { phase: TEST } }
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_test_net_accuracy_tracks_training(backend):
    """The pycaffe tutorial loop: solver.step(1), then test_nets[0].forward() measured by
    hand. Test nets share the train net's weights (Caffe's ShareTrainedLayersWith), so
    the measured accuracy is the current weights' accuracy, which rises with training."""
    rng = np.random.default_rng(5)
    centres = np.array([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]], np.float32)
    label = np.repeat(np.arange(3), 20).astype(np.float32)
    data = (centres[label.astype(int)] + 0.5 * rng.standard_normal((60, 2))).astype(np.float32)
    text = (f"net_param {{ {CLS_NET} }}\nbase_lr: 0.1 momentum: 0.9 lr_policy: \"fixed\" "
            "max_iter: 100 test_iter: 1 test_interval: 1000 test_initialization: false "
            "random_seed: 3\n")
    solver = sn.get_solver(text, backend=backend)
    test = solver.test_nets[0]
    seen = []
    for _ in range(15):
        solver.net.blobs["data"].data[...] = data
        solver.net.blobs["label"].data[...] = label
        solver.step(1)
        acc = float(test.forward(data=data, label=label)["accuracy"])
        w, b = (p.data.astype(np.float64) for p in solver.net.params["ip"])
        want = np.mean(np.argmax(data @ w.T + b, axis=1) == label)
        assert acc == pytest.approx(want, abs=1e-6)
        seen.append(acc)
    assert seen[-1] >= 0.9 and seen[-1] > seen[0] - 1e-9


def test_weights_load_all_or_nothing(tmp_path):
    """An empty caffemodel, or one whose second layer does not fit, changes nothing."""
    from symnet.formats.weights import WeightsError
    net = deploy(1)
    before = {n: [b.data.copy() for b in blobs] for n, blobs in net.params.items()}
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"holds no weights for this net.*0 bytes.*conv1"):
        net.copy_from(str(empty))
    other = deploy(1)
    other.params["conv1"][0].data[...] = 7.0
    path = tmp_path / "bad.caffemodel"
    other.save(str(path))
    from symnet.formats.proto import caffe_pb2
    msg = caffe_pb2.NetParameter()
    msg.ParseFromString(path.read_bytes())
    ip1 = [lp for lp in msg.layer if lp.name == "ip1"][0]
    ip1.blobs[0].shape.dim[0] = 3                  # no longer fits
    del ip1.blobs[0].data[:]
    ip1.blobs[0].data.extend([0.0] * (3 * 800))
    path.write_bytes(msg.SerializeToString())
    with pytest.raises(WeightsError, match="ip1"):
        net.copy_from(str(path))
    for n, blobs in net.params.items():
        for b, a in zip(blobs, before[n]):
            np.testing.assert_array_equal(b.data, a)
