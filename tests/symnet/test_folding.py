"""BatchNorm / Scale folding and param-derived plan steps.

A whole-net forward that no backward follows computes a Convolution (or InnerProduct)
followed by BatchNorm with global statistics (and Scale) as one product with
W' = W * s[c], b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps), where Caffe's
BatchNorm divides its stored sums by the scale factor blob (0 when that blob is 0:
BatchNormLayer::Forward_cpu, `scale_factor = blobs_[2] == 0 ? 0 : 1 / blobs_[2]`,
then y = (x - mean) / sqrt(var + eps)); Scale multiplies by gamma and adds beta. W'
and b' are param-derived steps of the plan: run again only when a weight changes
(SyncedMemory versions), so these tests change weights through every path pycaffe
offers and check the next forward against the NumPy reference, and count the runs.
"""
import os
import pathlib
import sys

import numpy as np
import pytest

import symnet as sn
from symnet.net import Net, TEST, TRAIN
from symnet.runtime.blob import Blob, flatten_blobs
from symnet.runtime.memory import SyncedMemory

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "caffe"))
import caffe_corpus_help as H  # noqa: E402

BACKENDS = ["cpu", "cuda-emu"]


# ------------------------------------------------------------ memory versions

def test_versions_change_on_every_write_path():
    m = SyncedMemory((4,))
    v = m.version
    m.host_read()
    assert m.version == v
    m.host_write()
    assert m.version != v
    flat = SyncedMemory((8,))
    a, b = flat.view(0, (4,)), flat.view(4, (4,))
    seen = {a.version, b.version, flat.version}
    assert len(seen) == 1
    for write in (lambda: a.host_write(), lambda: flat.host_write(), lambda: b.fill_zero(),
                  lambda: a.copy_from(m)):
        before = (a.version, b.version, flat.version)
        write()
        after = (a.version, b.version, flat.version)
        assert len(set(after)) == 1 and after[0] != before[0]
    dev = sn.runtime.memory.get_device("cuda-emu")
    for write in (lambda: a.device_write(dev), lambda: flat.device_overwrite(dev),
                  lambda: b.device_overwrite(dev)):
        v = flat.version
        write()
        assert flat.version != v and a.version == flat.version
    v = flat.version
    a.device_read(dev)
    a.host_read()
    assert flat.version == v
    assert SyncedMemory((4,)).version not in (v, m.version)


def test_blob_data_is_a_write_read_data_is_not():
    blob = Blob((3,))
    v = blob.data_mem.version
    blob.read_data()
    assert blob.data_mem.version == v
    blob.data[...] = 1          # pycaffe's net.params[...][i].data[...] = x
    assert blob.data_mem.version != v
    v = blob.data_mem.version
    blob.data = np.ones(3, np.float32)
    assert blob.data_mem.version != v
    blobs = [Blob((2,)), Blob((3,))]
    flat, _, _ = flatten_blobs(blobs, diff=False)
    v = blobs[1].data_mem.version
    blobs[0].data[...] = 2      # a sibling view: conservatively changed too
    assert blobs[1].data_mem.version != v and flat.version == blobs[1].data_mem.version


# ------------------------------------------------------------ nets

CHAIN = """
name: "chain"
input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 24 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" BN2 }
layer { name: "sc2" type: "Scale" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 16 kernel_size: 1 } }
layer { name: "bn3" type: "BatchNorm" bottom: "conv3" top: "conv3" }
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc"
  inner_product_param { num_output: 10 TRANSPOSE } }
layer { name: "bnf" type: "BatchNorm" bottom: "fc" top: "fc" }
layer { name: "scf" type: "Scale" bottom: "fc" top: "fc" scale_param { bias_term: true } }
"""
CHAINS = [("conv1", "bn1", "sc1"), ("conv2", "bn2", "sc2"), ("conv3", "bn3"),
          ("fc", "bnf", "scf")]


def chain_net(backend, bn2="", transpose=False, phase=TEST):
    text = CHAIN.replace("BN2", bn2).replace(
        "TRANSPOSE", "transpose: true" if transpose else "")
    net = Net(text, phase, backend=backend)
    H.randomize_params(net, seed=3)
    # the scale factor blob: a moving-average factor (sums divided by it), and 0 in bn2
    # (Caffe then normalizes with mean 0, variance 0: x / sqrt(eps))
    for name, f in (("bn1", 0.25), ("bn3", 7.0), ("bnf", 1.5)):
        for b in net.params[name][:2]:
            b.data[...] *= f
        net.params[name][2].data[...] = f
    net.params["bn2"][2].data[...] = 0
    return net


def copy_params(src, dst):
    """Like caffe_corpus_help.copy_params, reading src with read_data (``.data`` is a
    write, which would make every next forward compute the folded weights again)."""
    for name, blobs in dst.params.items():
        for a, b in zip(src.params[name], blobs):
            b.data[...] = a.read_data()


def reference(net, inputs):
    """The same net and weights, run by the NumPy reference (never folded)."""
    ref = Net(net.param, net.phase, backend="numpy",
              input_shapes={b: net.blobs[b].shape for b in net.inputs})
    copy_params(net, ref)
    out = ref.forward(**inputs)
    return {k: v.copy() for k, v in out.items()}, ref


def forward_fn(net):
    keys = [k for k in net._fns if k[-1] == "folded"]
    assert len(keys) == 1, list(net._fns)
    return net._fns[keys[0]][0]


def derived_runs(net):
    return forward_fn(net)._impl.executor.derived_runs


def products_computed(net):
    """How many convolutions and matmuls the folded forward's plan computes: once per
    layer (a folded chain must not also compute the chain it replaces)."""
    plan = forward_fn(net)._impl.plan
    return len({op for st in plan.steps for op in st.ops
                if op.startswith(("conv2d#", "matmul#"))})


def check(out, ref, rtol=2e-4, atol=2e-5):
    assert out.keys() == ref.keys()
    for k in ref:
        scale = np.abs(ref[k]).max()
        np.testing.assert_allclose(out[k], ref[k], rtol=rtol, atol=atol * max(scale, 1.0),
                                   err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("transpose", [False, True])
def test_folded_chain_matches_reference(backend, transpose):
    net = chain_net(backend, transpose=transpose)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert net._folded == CHAINS
    assert products_computed(net) == 4
    ref, _ = reference(net, {"data": x})
    check(out, ref)
    # the folded plan has param-derived steps and they ran once
    assert forward_fn(net)._impl.plan.derived
    assert derived_runs(net) > 0


def test_fold_switch(monkeypatch):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    monkeypatch.setenv("SYMNET_FOLD_BN", "0")
    net = chain_net("cpu")
    out = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert not [k for k in net._fns if k[-1] == "folded"]
    assert not getattr(net, "_folded", None)
    monkeypatch.setenv("SYMNET_FOLD_BN", "1")
    folded = net.forward(data=x)
    assert net._folded == CHAINS
    check(folded, out)


def _change_and_check(net, x, changes, backend):
    """Apply ``changes`` (callables on net), then the next forward equals the
    reference of the changed weights; the forward after it runs nothing derived."""
    for change in changes:
        change(net)
    runs = derived_runs(net)
    out = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert derived_runs(net) > runs
    ref, _ = reference(net, {"data": x})
    check(out, ref)
    runs = derived_runs(net)
    again = net.forward(data=x)
    assert derived_runs(net) == runs
    check(again, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_changes_through_pycaffe_are_seen(backend):
    net = chain_net(backend)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    net.forward(data=x)
    runs = derived_runs(net)
    net.forward(data=x * 2)         # nothing changed: nothing derived runs
    assert derived_runs(net) == runs
    _ = net.params["conv1"][0].read_data()
    net.forward(data=x)
    assert derived_runs(net) == runs

    def conv_weight(n):
        n.params["conv2"][0].data[0, 1, 1, 1] += 0.5

    def bn_mean(n):
        n.params["bn1"][0].data[3] -= 0.7

    def scale_gamma(n):
        n.params["scf"][0].data[2] *= -2.0

    def bn_factor(n):       # from 0 (x / sqrt(eps)) to a moving-average factor
        n.params["bn2"][2].data[...] = 2.0

    for change in (conv_weight, bn_mean, scale_gamma, bn_factor):
        _change_and_check(net, x, [change], backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_from_and_shared_test_net_after_training(backend, tmp_path):
    net = chain_net(backend)
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 9)).astype(np.float32)
    net.forward(data=x)
    # weights from a file: another net's values
    other = chain_net("cpu")
    H.randomize_params(other, seed=11)
    path = str(tmp_path / "w.caffemodel")
    other.save(path)
    _change_and_check(net, x, [lambda n: n.copy_from(path)], backend)


SOLVER_NET = """
name: "trainable"
layer { name: "data" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  include { phase: TRAIN } }
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_solver_training_with_shared_test_net(backend, tmp_path):
    """The solver's flat parameter buffers (views) are written by each step; the test
    net shares them (share_with) and its folded weights follow."""
    net_file = tmp_path / "net.prototxt"
    net_file.write_text(SOLVER_NET)
    solver_file = tmp_path / "solver.prototxt"
    solver_file.write_text(f'net: "{net_file}"\nbase_lr: 0.5\nmomentum: 0.9\n'
                           'lr_policy: "fixed"\nmax_iter: 10\ntest_iter: 1\n'
                           'test_interval: 1000\nsnapshot_after_train: false\n')
    solver = sn.get_solver(str(solver_file), backend=backend)
    train, test = solver.net, solver.test_nets[0]
    # TRAIN phase: batch statistics and a loss: nothing is folded there
    assert not getattr(train, "_folded", None)
    # a moving-average factor in the statistics, as after training
    for b, v in zip(train.params["bn1"], (0.3, 2.0, 2.0)):
        b.data[...] = v
    test.forward()
    assert test._folded == [("conv1", "bn1", "sc1")]
    runs = derived_runs(test)
    test.forward()
    assert derived_runs(test) == runs
    solver.step(2)
    assert derived_runs(test) >= runs          # (the solver's own test pass may run)
    runs = derived_runs(test)
    out = {k: v.copy() for k, v in test.forward().items()}
    data = test.blobs["data"].read_data().copy()
    ref_net = Net(test.param, TEST, backend="numpy")
    copy_params(test, ref_net)
    ref = ref_net.forward(data=data)
    check({"prob": out["prob"]}, {"prob": ref["prob"]})
    # the weights moved: W' and b' were computed again
    assert derived_runs(test) > runs or runs == 0
    before = train.params["conv1"][0].read_data().copy()
    solver.step(1)
    assert not np.array_equal(before, train.params["conv1"][0].read_data())
    runs = derived_runs(test)
    test.forward()
    assert derived_runs(test) > runs


@pytest.mark.parametrize("backend", BACKENDS)
def test_not_folded_with_backward_or_batch_statistics(backend):
    # force_backward: a backward may follow, every version is kept: no folding
    net = Net(CHAIN.replace("BN2", "").replace("TRANSPOSE", "")
              .replace('name: "chain"', 'name: "chain" force_backward: true'),
              TEST, backend=backend)
    H.randomize_params(net, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    out = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert not getattr(net, "_folded", None)
    assert not [k for k in net._fns if k[-1] == "folded"]
    ref, _ = reference(net, {"data": x})
    check(out, ref)
    # TRAIN phase, batch statistics (no loss, so forward only): the BatchNorm updates its
    # sums and normalizes with the batch's: not folded, equal to the reference
    net = chain_net(backend, phase=TRAIN)
    out = {k: v.copy() for k, v in net.forward(data=x).items()}
    assert not getattr(net, "_folded", None) or not net._folded
    ref, _ = reference(chain_net(backend, phase=TRAIN), {"data": x})
    check(out, ref)
    # use_global_stats false in TEST phase: same
    net = chain_net(backend, bn2="batch_norm_param { use_global_stats: false }")
    net.forward(data=x)
    assert ("conv2", "bn2", "sc2") not in net._folded and ("conv1", "bn1", "sc1") in net._folded


def test_visible_intermediate_values_are_not_folded():
    """A BatchNorm with a top of its own: the convolution's blob is the net's to show."""
    text = CHAIN.replace('bottom: "conv1" top: "conv1" }', 'bottom: "conv1" top: "bn1out" }', 1)
    text = text.replace('name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"',
                        'name: "sc1" type: "Scale" bottom: "bn1out" top: "bn1out"')
    text = text.replace('name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"',
                        'name: "relu1" type: "ReLU" bottom: "bn1out" top: "bn1out"')
    text = text.replace('type: "Convolution" bottom: "conv1" top: "conv2"',
                        'type: "Convolution" bottom: "bn1out" top: "conv2"')
    net = Net(text.replace("BN2", "").replace("TRANSPOSE", ""), TEST, backend="cpu")
    H.randomize_params(net, seed=3)
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    net.forward(data=x)
    assert ("conv1", "bn1", "sc1") not in net._folded
    assert ("conv2", "bn2", "sc2") in net._folded
    ref, ref_net = reference(net, {"data": x})
    np.testing.assert_allclose(net.blobs["conv1"].data, ref_net.blobs["conv1"].data,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.blobs["bn1out"].data, ref_net.blobs["bn1out"].data,
                               rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ Winograd weights

def test_winograd_weights_cached_and_transformed_again(monkeypatch):
    monkeypatch.setenv("SYMNET_WINOGRAD", "4")
    text = """
name: "wg"
input: "data" input_shape { dim: 1 dim: 16 dim: 12 dim: 12 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""
    net = Net(text, TEST, backend="cpu")
    H.randomize_params(net, seed=5)
    x = np.random.default_rng(4).standard_normal((1, 16, 12, 12)).astype(np.float32)
    out = net.forward(data=x)["conv"].copy()
    key = [k for k in net._fns if k[0] == "forward"][0]
    fn = net._fns[key][0]
    plan, ex = fn._impl.plan, fn._impl.executor
    names = [plan.steps[i].name for steps, _ in plan.derived for i in steps]
    assert any("winograd4_weights" in nm for nm in names), names
    ref, _ = reference(net, {"data": x})
    check({"conv": out}, ref)
    runs = ex.derived_runs
    net.forward(data=x)
    assert ex.derived_runs == runs
    net.params["conv"][0].data[2, 5] *= -3.0
    out = net.forward(data=x)["conv"].copy()
    assert ex.derived_runs == runs + 1
    ref, _ = reference(net, {"data": x})
    check({"conv": out}, ref)


def test_param_as_numpy_array_always_runs():
    wv = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    w = sn.param("w", (4, 3, 3, 3), value=wv)
    x = sn.input("x", (1, 3, 6, 6))
    y = sn.conv2d(x, w * 2.0, pad=1)
    f = sn.function([x], [y], backend="cpu")
    g = sn.function([x], [y], backend="numpy")
    xv = np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(f(xv), g(xv), rtol=1e-4, atol=1e-4)
    ex = f._impl.executor
    assert ex.plan.derived
    mem = SyncedMemory.wrap(wv.copy())
    ex.run([xv], [mem])
    runs = ex.derived_runs
    ex.run([xv], [mem])
    assert ex.derived_runs == runs
    for k in range(2):          # a NumPy array: no version, always computed
        (out,) = ex.run([xv], [wv * (k + 2)])
        assert ex.derived_runs == runs + k + 1
        np.testing.assert_allclose(out, g(xv)[0] * (k + 2), rtol=1e-4, atol=1e-4)
    mem.host_write()[...] = -wv
    (out,) = ex.run([xv], [mem])
    np.testing.assert_allclose(out, -g(xv)[0], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------ corpus nets

def corpus_net(name, size, backend):
    param = H.load_net_param(name)
    net = Net(param, TEST, backend=backend, input_shapes={"data": (1, 3, size, size)})
    H.randomize_params(net, 0)
    inputs = H.stand_in_values(net, np.random.default_rng(1))
    H.calibrate_batch_norm(param, net, inputs, backend="cpu")
    return net, inputs


@pytest.mark.parametrize("backend", BACKENDS)
def test_mobilenet_folded_matches_reference(backend):
    net, inputs = corpus_net("mobilenet/mobilenet_deploy.prototxt", 32, backend)
    out = {k: v.copy() for k, v in net.forward(**inputs).items()}
    out["fc7"] = net.blobs["fc7"].read_data().copy()
    assert len(net._folded) == 27
    assert products_computed(net) == 28
    ref, ref_net = reference(net, inputs)
    ref["fc7"] = ref_net.blobs["fc7"].read_data().copy()
    check(out, ref, rtol=1e-3, atol=1e-4)
    net.params["conv5_3/sep"][0].data[7] *= 1.5
    net.params["conv5_3/sep/bn"][0].data[7] += 0.5
    net.params["conv5_3/sep/scale"][0].data[7] *= -1.0
    out = {k: v.copy() for k, v in net.forward(**inputs).items()}
    out["fc7"] = net.blobs["fc7"].read_data().copy()
    ref2, ref_net = reference(net, inputs)
    ref2["fc7"] = ref_net.blobs["fc7"].read_data().copy()
    assert not np.allclose(ref2["fc7"], ref["fc7"], rtol=1e-3, atol=1e-3)
    check(out, ref2, rtol=1e-3, atol=1e-4)


def test_resnet50_folded_matches_unfolded(monkeypatch):
    """ResNet-50 at 224 x 224 (its pool5 needs 7 x 7): the folded cpu forward against
    the unfolded one (itself checked against the NumPy reference in
    tests/caffe/test_net_corpus.py)."""
    net, inputs = corpus_net("resnet/ResNet-50-deploy.prototxt", 224, "cpu")
    out = {k: v.copy() for k, v in net.forward(**inputs).items()}
    assert len(net._folded) == 53
    assert products_computed(net) == 54
    monkeypatch.setenv("SYMNET_FOLD_BN", "0")
    plain = {k: v.copy() for k, v in net.forward(**inputs).items()}
    check(out, plain, rtol=1e-3, atol=1e-5)


def test_mobilenet_v2_tops_of_their_own_are_not_folded():
    """MobileNet v2's BatchNorm layers write tops of their own (conv1 -> conv1/bn, the
    Scale and ReLU in place on conv1/bn): the convolution's blob is one the net shows,
    so nothing is folded, and the values equal the reference."""
    net, inputs = corpus_net("mobilenet/mobilenet_v2_deploy.prototxt", 32, "cpu")
    net.forward(**inputs)
    assert net._folded == []
    ref, ref_net = reference(net, inputs)
    for name in ("conv1", "conv1/bn", "conv2_1/expand"):
        np.testing.assert_allclose(net.blobs[name].read_data(), ref_net.blobs[name].data,
                                   rtol=1e-3, atol=1e-4, err_msg=name)


def test_weight_written_through_a_kept_array_is_seen():
    """pycaffe scripts may keep ``w = net.params[...][0].data`` and write through it
    between forwards (Caffe's CPU mode reads that memory): while the array is kept,
    every forward recomputes the folded weights; once it is dropped they are cached."""
    import gc
    net = chain_net("cpu")
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 9)).astype(np.float32)
    net.forward(data=x)
    w, g = net.params["conv1"][0].data, net.params["sc1"][0].data
    for k in range(3):
        w[...] *= 1.5
        g[...] += 0.25
        out = {k_: v.copy() for k_, v in net.forward(data=x).items()}
        ref, _ = reference(net, {"data": x})
        check(out, ref)
    del w, g
    gc.collect()
    net.forward(data=x)
    runs = derived_runs(net)
    net.forward(data=x)
    net.forward(data=x)
    assert derived_runs(net) == runs
