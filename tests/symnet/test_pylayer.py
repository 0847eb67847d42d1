"""Caffe Python layers, symbolic custom layers in prototxt, check_layer (issue 6)."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import symnet as sn
from symnet.layers import LayerError

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pylayers")
BACKENDS = ["numpy", "cpu", "cuda-emu"]


@pytest.fixture(autouse=True)
def layer_dir(monkeypatch):
    monkeypatch.syspath_prepend(HERE)


def net_text(*layers, shape=(2, 3, 4, 5), force_backward=True):
    dims = " ".join(f"dim: {d}" for d in shape)
    head = [f'force_backward: {"true" if force_backward else "false"}',
            f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}',
            f'layer {{ name: "target" type: "Input" top: "target" input_param {{ shape {{ {dims} }} }} }}']
    return "\n".join(head + list(layers))


def python_layer(name, bottoms, top, module, cls, param_str="", extra=""):
    b = " ".join(f'bottom: "{x}"' for x in bottoms)
    ps = f' param_str: \'{param_str}\'' if param_str else ""
    return (f'layer {{ name: "{name}" type: "Python" {b} top: "{top}" {extra} '
            f'python_param {{ module: "{module}" layer: "{cls}"{ps} }} }}')


def run(text, backend, data, target, phase=sn.TRAIN, **kw):
    net = sn.Net(text, phase, backend=backend, **kw)
    net.forward(data=data, target=target)
    net.backward()
    return net


def arrays(shape=(2, 3, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape).astype(np.float32),
            rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_caffe_example_layer_unchanged(backend):
    text = net_text(python_layer("ten", ["data"], "ten", "caffe_example", "MyLayer"),
                    'layer { name: "loss" type: "EuclideanLoss" bottom: "ten" '
                    'bottom: "target" top: "loss" }')
    x, t = arrays()
    net = run(text, backend, x, t)
    np.testing.assert_allclose(net.blobs["ten"].data, 10 * x, rtol=1e-6)
    want_loss = np.sum((10 * x - t) ** 2) / x.shape[0] / 2
    np.testing.assert_allclose(net.blobs["loss"].data, want_loss, rtol=1e-5)
    np.testing.assert_allclose(net.blobs["data"].diff, 10 * (10 * x - t) / x.shape[0],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_loss_layer_with_loss_weight(backend):
    text = net_text('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                    'convolution_param { num_output: 3 kernel_size: 1 '
                    'weight_filler { type: "gaussian" std: 0.3 } } }',
                    python_layer("loss", ["conv", "target"], "loss", "caffe_style",
                                 "EuclideanLossLayer", extra="loss_weight: 2"))
    x, t = arrays()
    net = sn.Net(text, sn.TRAIN, backend=backend)
    w = net.params["conv"][0].data.copy()
    b = net.params["conv"][1].data.copy()
    net.forward(data=x, target=t)
    net.backward()
    conv = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b.reshape(1, -1, 1, 1)
    d = conv - t
    np.testing.assert_allclose(net.blobs["loss"].data, np.sum(d ** 2) / 2 / 2, rtol=1e-5)
    gw = 2 * np.einsum("nohw,nchw->oc", d / 2, x)
    np.testing.assert_allclose(net.params["conv"][0].diff[:, :, 0, 0], gw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_python_layer_with_learnable_blobs(backend):
    text = net_text(python_layer("ss", ["data"], "ss", "caffe_style", "ScaleShift",
                                 param_str='{"a": 2.0, "b": 0.5}'),
                    'layer { name: "loss" type: "EuclideanLoss" bottom: "ss" '
                    'bottom: "target" top: "loss" }')
    x, t = arrays()
    net = run(text, backend, x, t)
    a, b = net.params["ss"][0].data, net.params["ss"][1].data
    np.testing.assert_allclose(a, 2.0)
    d = (2 * x + 0.5 - t) / x.shape[0]
    np.testing.assert_allclose(net.params["ss"][0].diff, (d * x).sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.params["ss"][1].diff, d.sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)
    # diffs accumulate across backward calls, as Caffe's param diffs do
    net.backward()
    np.testing.assert_allclose(net.params["ss"][1].diff, 2 * d.sum(axis=(0, 2, 3)),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_symbolic_layers_by_type_and_through_python(backend):
    text = net_text('layer { name: "sq" type: "TestSquarePlus" bottom: "data" top: "sq" }',
                    python_layer("aff", ["sq"], "aff", "symlayers", "affine",
                                 param_str="init: 3.0"),
                    'layer { name: "loss" type: "EuclideanLoss" bottom: "aff" '
                    'bottom: "target" top: "loss" }')
    x, t = arrays()
    net = run(text, backend, x, t, layer_modules=["symlayers"])
    y = 3.0 * (x * x + 1.0) + 0.1
    np.testing.assert_allclose(net.blobs["aff"].data, y, rtol=1e-5)
    d = (y - t) / x.shape[0]
    np.testing.assert_allclose(net.blobs["data"].diff, d * 3.0 * 2 * x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.params["aff"][0].diff, (d * (x * x + 1)).sum((0, 2, 3)),
                               rtol=1e-4, atol=1e-4)
    if backend != "numpy":
        # symbolic layers fuse with their neighbours: no host step; one kernel for both
        # layers, one for the loss's sum, one for its scaling
        fwd = [fn for key, (fn, *_) in net._fns.items() if key[0] == "forward"][0]
        kinds = [r["kind"] for r in fwd.report()]
        assert "host" not in kinds
        assert kinds.count("kernel") <= 3
        assert any(any("'sq'" in o for o in r["ops"]) and any("'aff'" in o for o in r["ops"])
                   for r in fwd.report())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_net_matches_reference(backend):
    text = net_text('layer { name: "sq" type: "TestSquarePlus" bottom: "data" top: "sq" }',
                    python_layer("ss", ["sq"], "ss", "caffe_style", "ScaleShift",
                                 param_str='{"a": 0.5, "b": -1.0}'),
                    'layer { name: "th" type: "TanH" bottom: "ss" top: "ss" }',
                    python_layer("ten", ["ss"], "ten", "caffe_example", "MyLayer"),
                    'layer { name: "loss" type: "EuclideanLoss" bottom: "ten" '
                    'bottom: "target" top: "loss" }')
    x, t = arrays(seed=3)
    ref = run(text, "numpy", x, t, layer_modules=["symlayers"])
    got = run(text, backend, x, t, layer_modules=["symlayers"])
    for name in ("sq", "ss", "ten", "loss"):
        np.testing.assert_allclose(got.blobs[name].data, ref.blobs[name].data, rtol=1e-5,
                                   atol=1e-6)
    np.testing.assert_allclose(got.blobs["data"].diff, ref.blobs["data"].diff, rtol=1e-4,
                               atol=1e-6)
    for a, b in zip(got.params["ss"], ref.params["ss"]):
        np.testing.assert_allclose(a.diff, b.diff, rtol=1e-4, atol=1e-5)


def test_check_layer_python_and_symbolic():
    from caffe_example import MyLayer
    assert sn.check_layer(MyLayer, [(2, 3, 4, 5)])["checked"] == 120
    from caffe_style import ScaleShift
    assert sn.check_layer(ScaleShift, [(2, 3, 2, 2)], param_str='{"a": 1.5}')["checked"] > 0
    import symlayers  # noqa: F401
    assert sn.check_layer("TestAffine", [(2, 3, 2, 2)]).checked > 0

    class Wrong(MyLayer):
        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = 9 * top[0].diff
    with pytest.raises(sn.GradientError, match="bottom 0"):
        sn.check_layer(Wrong, [(2, 3, 1, 1)])


@pytest.mark.parametrize("module, cls, match", [
    ("no_such_module_xyz", "X", "no_such_module_xyz.*not found"),
    ("caffe_example", "NoSuchClass", "has no class or layer 'NoSuchClass'"),
    ("caffe_style", "NeverSized", "reshape\\(\\) never sized top 0"),
    ("caffe_style", "WrongShape", "forward\\(\\) changed top 0 to shape \\(3,\\)"),
])
def test_errors_name_layer_module_and_cause(module, cls, match):
    text = net_text(python_layer("bad", ["data"], "bad", module, cls))
    x, t = arrays()
    with pytest.raises(LayerError, match=match) as info:
        net = sn.Net(text, sn.TEST, backend="numpy")
        net.forward(data=x, target=t)
    assert "'bad' (Python)" in str(info.value)


def test_failing_forward_leaves_net_usable():
    text = net_text(python_layer("bad", ["data"], "bad", "caffe_style", "Raises"))
    net = sn.Net(text, sn.TEST, backend="numpy")
    x, t = arrays()
    for _ in range(2):      # the layer's own exception type (as in Caffe)
        with pytest.raises(RuntimeError, match="'bad' .*forward\\(\\): deliberate failure"):
            net.forward(data=x, target=t)
    assert net.blobs["data"].data.shape == x.shape


def test_import_caffe_alias_is_symnet_caffe():
    import caffe_style  # noqa: F401 - imported through the alias
    import symnet.caffe
    assert sys.modules["caffe"] is symnet.caffe


def test_param_str_parsing_never_evaluates():
    from symnet.pylayer import parse_param_str
    assert parse_param_str('{"a": 1, "b": [1, 2]}', "w") == {"a": 1, "b": [1, 2]}
    assert parse_param_str("a: 1.5, name: conv, flag: true", "w") == \
        {"a": 1.5, "name": "conv", "flag": True}
    assert parse_param_str("x: __import__('os')", "w") == {"x": "__import__('os')"}
    with pytest.raises(LayerError, match="not key: value"):
        parse_param_str("justtext", "w")


def test_net_layers_gives_the_python_layers_own_instance():
    """pycaffe's net.layers[i] of a Python layer is the object the user's class made
    (its attributes included), as in Caffe."""
    text = net_text(python_layer("ss", ["data"], "ss", "caffe_style", "ScaleShift",
                                 param_str='{"a": 2.0, "b": 0.5}'))
    net = sn.Net(text, sn.TRAIN, backend="cpu")
    import caffe_style
    layer = net.layers[list(net._layer_names).index("ss")]
    assert isinstance(layer, caffe_style.ScaleShift)
    assert net.layer_dict["ss"] is layer
    np.testing.assert_allclose(layer.blobs[0].data, 2.0)
    assert layer.blobs[0] is net.params["ss"][0]


def test_param_str_options_are_checked():
    """param_str of a symbolic layer: a key the layer does not take is an error listing
    the ones it takes; a boolean option takes only true or false (JSON's or Python's
    spelling), never any string."""
    def build(param_str):
        text = net_text(python_layer("neg", ["data"], "neg", "symlayers", "maybe_negate",
                                     param_str=param_str))
        return sn.Net(text, sn.TEST, backend="numpy", layer_modules=["symlayers"])
    with pytest.raises(LayerError, match=r"sets 'negat', which .* takes negate"):
        build("negat: true")
    with pytest.raises(LayerError, match=r"'negate' is 'yes'; expected true or false"):
        build("negate: yes")
    x = arrays()[0]
    for spelling in ("negate: true", "negate: True", '{"negate": true}'):
        np.testing.assert_array_equal(build(spelling).forward(data=x)["neg"], -x)
    np.testing.assert_array_equal(build("negate: False").forward(data=x)["neg"], x)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_without_tops_runs_at_every_forward(backend):
    """Caffe runs a Python layer with no tops at each forward (Net::ForwardFromTo calls
    every layer) and never its backward (it contributes to no loss)."""
    import caffe_style
    caffe_style.Recorder.seen = []
    text = net_text('layer { name: "sq" type: "Power" bottom: "data" top: "sq" '
                    'power_param { power: 2 } }',
                    'layer { name: "rec" type: "Python" bottom: "sq" '
                    'python_param { module: "caffe_style" layer: "Recorder" } }',
                    'layer { name: "loss" type: "EuclideanLoss" bottom: "sq" '
                    'bottom: "target" top: "loss" }')
    net = sn.Net(text, sn.TRAIN, backend=backend)
    x, t = arrays()
    for k in range(3):
        net.forward(data=x + k, target=t)
        assert len(caffe_style.Recorder.seen) == k + 1
        np.testing.assert_allclose(caffe_style.Recorder.seen[-1], (x + k) ** 2, rtol=1e-6)
    net.backward()
    net.forward_backward(data=x, target=t)
    assert len(caffe_style.Recorder.seen) == 4
    np.testing.assert_allclose(net.blobs["data"].diff, 2 * x * (x * x - t) / x.shape[0],
                               rtol=1e-4, atol=1e-5)
    assert net.outputs == ["loss"]
    assert "rec" not in net.params
