"""Caffe's semantics where symnet used to differ (issue 13, item 5).

Each test says what Caffe does (from Caffe's sources) and checks symnet does the same.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import numpy as np
import pytest

import symnet as sn
from symnet import fillers
from symnet import functions as F
from symnet.data import base as data_base


# ----------------------------------------------------------------------------- filler RNG

@pytest.fixture
def keep_streams():
    """Put the process-wide streams back as they were, so test order does not matter."""
    saved = (fillers._STREAM[0], F._rng, data_base.base_seed())
    yield
    fillers._STREAM[0], F._rng = saved[0], saved[1]
    data_base.set_base_seed(saved[2])


def test_filler_stream_same_seed_same_values_successive_fills_differ(keep_streams):
    """Caffe: every filler draws from the one process-wide generator (Caffe::rng_stream)
    that Caffe::set_random_seed seeds; successive fills continue the stream, so two blobs
    (and two nets) filled in turn differ, and the same seed replays the same values."""
    xavier = fillers.xavier()
    fillers.set_random_seed(1234)
    a1 = xavier((20, 30), fillers.rng())
    a2 = xavier((20, 30), fillers.rng())
    fillers.set_random_seed(1234)
    b1 = xavier((20, 30), fillers.rng())
    b2 = xavier((20, 30), fillers.rng())
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)
    fillers.set_random_seed(1235)
    c1 = xavier((20, 30), fillers.rng())
    assert not np.array_equal(a1, c1)
    # the values are xavier's: uniform in [-sqrt(3 / fan_in), sqrt(3 / fan_in)]
    bound = np.sqrt(3.0 / 30)
    assert np.abs(a1).max() <= bound and np.abs(a1).max() > 0.9 * bound


def test_rng_is_one_generator_until_reseeded(keep_streams):
    fillers.set_random_seed(5)
    g = fillers.rng()
    assert isinstance(g, np.random.Generator)
    assert fillers.rng() is g
    first = g.random(4)
    fillers.set_random_seed(5)
    assert fillers.rng() is not g
    np.testing.assert_array_equal(fillers.rng().random(4), first)


def test_set_random_seed_seeds_everything(keep_streams):
    """Caffe::set_random_seed seeds the one generator everything random draws from: so
    does one call here (weight fillers, the functional front end's params, the data
    layers' base seed)."""
    def param_value():
        return F.param("w", (3, 4), {"type": "gaussian", "std": 1.0}).op.get_value().copy()

    fillers.set_random_seed(77)
    p1, p2 = param_value(), param_value()
    fillers.set_random_seed(77)
    q1 = param_value()
    np.testing.assert_array_equal(p1, q1)
    assert not np.array_equal(p1, p2)
    assert data_base.base_seed() == 77
    fillers.set_random_seed(78)
    assert data_base.base_seed() == 78


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (1.5, TypeError),
                                         ("3", TypeError), (True, TypeError)])
def test_set_random_seed_rejects_bad_seeds(keep_streams, seed, error):
    before = fillers.rng()
    with pytest.raises(error, match="set_random_seed: seed must be"):
        fillers.set_random_seed(seed)
    assert fillers.rng() is before


def test_stream_is_seeded_with_zero_at_import():
    """Reproducible by default (where Caffe would seed from the clock): a fresh process
    draws what numpy's generator seeded with 0 draws, run after run."""
    code = ("import json\nfrom symnet import fillers\n"
            "print(json.dumps(fillers.xavier()((5, 7), fillers.rng()).tolist()))")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=env, check=True, timeout=120).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    expected = fillers.xavier()((5, 7), np.random.default_rng(0))
    np.testing.assert_array_equal(np.array(json.loads(runs[0]), np.float32), expected)


# ----------------------------------------------------------------------------- Python layers

LAYER_MODULE = '''
import caffe


class ValueFromTheLayer(ValueError):
    """An exception type of the user's own, built from one message."""


class Fails(caffe.Layer):
    def setup(self, bottom, top):
        self.where = self.param_str

    def reshape(self, bottom, top):
        if self.where == "reshape":
            raise IndexError("reshape went wrong")
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.where == "forward-keyerror":
            raise KeyError("missing")
        if self.where == "forward-two-args":
            raise UnicodeDecodeError("utf-8", b"\\xff", 0, 1, "invalid start byte")
        if self.where == "forward-own":
            err = ValueFromTheLayer("own type")
            err.code = 7
            raise err
        if self.where == "forward-chained":
            try:
                {}["k"]
            except KeyError as e:
                raise RuntimeError("while looking up k") from e
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = top[0].diff / 0 if self.where != "backward" else 1 // 0


class SetupFails:
    def setup(self, bottom, top):
        raise ValueError("param_str needs a size")
'''

PY_NET = """force_backward: true
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}
layer {{ name: "fail_here" type: "Python" bottom: "data" top: "out"
        python_param {{ module: "semantics_layers" layer: "{cls}" param_str: "{where}" }} }}
"""


@pytest.fixture
def layer_module(tmp_path, monkeypatch):
    path = tmp_path / "semantics_layers.py"
    path.write_text(LAYER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "semantics_layers", raising=False)
    yield str(path)
    sys.modules.pop("semantics_layers", None)


def _raised_in_layer(error, path, text):
    """The traceback still reaches the line of the layer's module that raised."""
    frame = traceback.extract_tb(error.__traceback__)[-1]
    assert os.path.samefile(frame.filename, path)
    assert text in frame.line


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("where, etype, message, line", [
    ("reshape", IndexError, "reshape(): reshape went wrong", 'raise IndexError'),
    ("forward-own", None, "forward(): own type", "raise err"),
    ("forward-chained", RuntimeError, "forward(): while looking up k", "raise RuntimeError"),
])
def test_python_layer_exception_keeps_its_type(layer_module, backend, where, etype,
                                               message, line):
    """Caffe: a Python layer's methods are called through boost::python; what they raise
    propagates (error_already_set) through Net::Forward to the caller of net.forward()
    as the same Python exception type. symnet keeps the type and the traceback and
    prefixes the message with the layer's name and module."""
    with pytest.raises(Exception) as info:      # reshape runs when the net is built too
        net = sn.Net(PY_NET.format(cls="Fails", where=where), sn.TRAIN, backend=backend)
        net.forward(data=np.ones((2, 3), np.float32))
    e = info.value
    if etype is None:
        assert type(e).__name__ == "ValueFromTheLayer"
        assert type(e).__module__ == "semantics_layers"
        assert e.code == 7                              # the instance's attributes too
    else:
        assert type(e) is etype
    assert str(e) == f"layer 'fail_here' (Python) in <string>: module 'semantics_layers': " \
                     f"{message}"
    _raised_in_layer(e, layer_module, line)
    if where == "forward-chained":                      # its cause stays
        assert type(e.__cause__) is KeyError and e.__cause__.args == ("k",)


@pytest.mark.parametrize("where, etype, args", [
    ("forward-keyerror", KeyError, ("missing",)),
    ("forward-two-args", UnicodeDecodeError, None),
])
def test_python_layer_exception_not_built_from_a_message_gets_a_note(layer_module, where,
                                                                     etype, args):
    """A type whose arguments are not one message (KeyError's str is the key's repr;
    UnicodeDecodeError takes five) is raised unchanged, the layer and module in a note."""
    net = sn.Net(PY_NET.format(cls="Fails", where=where), sn.TRAIN, backend="numpy")
    with pytest.raises(etype) as info:
        net.forward(data=np.ones((2, 3), np.float32))
    e = info.value
    assert type(e) is etype
    if args is not None:
        assert e.args == args
    else:
        assert e.reason == "invalid start byte" and e.object == b"\xff"
    assert e.__notes__ == ["raised in layer 'fail_here' (Python) in <string>: module "
                           "'semantics_layers': forward()"]
    _raised_in_layer(e, layer_module, "raise ")


def test_python_layer_backward_and_setup_exceptions_keep_their_type(layer_module):
    net = sn.Net(PY_NET.format(cls="Fails", where="backward"), sn.TRAIN, backend="numpy")
    net.forward(data=np.ones((2, 3), np.float32))
    net.blobs["out"].diff[...] = 1
    with pytest.raises(ZeroDivisionError, match=r"'fail_here' .*'semantics_layers': "
                                                r"backward\(\): integer division") as info:
        net.backward()
    _raised_in_layer(info.value, layer_module, "1 // 0")
    with pytest.raises(ValueError) as info:
        sn.Net(PY_NET.format(cls="SetupFails", where=""), sn.TRAIN, backend="numpy")
    assert type(info.value) is ValueError               # not symnet's LayerError
    assert "'fail_here' (Python)" in str(info.value)
    assert str(info.value).endswith("setup(): param_str needs a size")


def test_amended_copy_keeps_attributes_and_identity_rules():
    from symnet.pylayer import _amended
    e = OSError("disk full")
    new = _amended(e, "ctx")
    assert type(new) is OSError and str(new) == "ctx: disk full"
    e = OSError(28, "No space left")                    # two args: the same object, a note
    assert _amended(e, "ctx") is e and e.__notes__ == ["raised in ctx"]


# ----------------------------------------------------------------------------- DummyData

def _dummy_source(param, tops=("data", "label")):
    from symnet import data
    from symnet.formats import prototxt
    top_text = " ".join(f'top: "{t}"' for t in tops)
    lp = prototxt.parse_net(f'layer {{ name: "dummy" type: "DummyData" {top_text} '
                            f'dummy_data_param {{ {param} }} }}').layer[0]
    return data.create(lp, "TRAIN", ".", seed=3)


@pytest.mark.parametrize("param, constant", [
    # one filler per top: constant by type (FillerParameter.type defaults to "constant")
    ('shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "gaussian" std: 1 } '
     'data_filler { type: "constant" value: 4 }', {1: 4.0}),
    ('shape { dim: 2 dim: 3 } shape { dim: 2 } data_filler { type: "uniform" } '
     'data_filler { value: -2 }', {1: -2.0}),
    # no filler: Caffe uses constant 0 for every top
    ("num: 2 channels: 1 height: 2 width: 2", {0: 0.0, 1: 0.0}),
    # one filler for every top
    ('shape { dim: 3 } data_filler { type: "constant" value: 1.5 }', {0: 1.5, 1: 1.5}),
    ('shape { dim: 3 } data_filler { type: "xavier" }', {}),
])
def test_dummy_data_declares_its_constant_tops(param, constant):
    """Caffe's DummyDataLayer::LayerSetUp: refill_[i] is false exactly when top i's
    filler type is "constant" (no data_filler: constant 0; one filler: for every top);
    those tops are filled once in LayerSetUp and Forward_cpu never writes them again,
    the others are refilled by every Forward."""
    src = _dummy_source(param)
    got = src.constant_tops()
    assert sorted(got) == sorted(constant)
    for i, value in constant.items():
        np.testing.assert_array_equal(got[i], np.full(src.top_shapes()[i], value, np.float32))
    got_again = src.constant_tops()
    for i in got:                      # copies: writing one changes nothing
        got[i][...] = 99
        assert not (got_again[i] == 99).any()
    # next_batch still returns every top (the source's contract is unchanged)
    b1, b2 = src.next_batch(), src.next_batch()
    assert [b.shape for b in b1] == src.top_shapes()
    for i in range(2):
        if i in constant:
            np.testing.assert_array_equal(b1[i], np.full(src.top_shapes()[i], constant[i]))
        else:
            assert not np.array_equal(b1[i], b2[i])


def test_prefetcher_leaves_constant_tops_out_when_asked():
    """The feeder side of Caffe's rule: a constant top comes once (constant_tops(), for
    the net to write when it is built), never with the batches."""
    from symnet.runtime.prefetch import Prefetcher
    src = _dummy_source('shape { dim: 2 dim: 3 } shape { dim: 2 } '
                        'data_filler { type: "gaussian" std: 1 } '
                        'data_filler { type: "constant" value: 7 }')
    reference = _dummy_source('shape { dim: 2 dim: 3 } shape { dim: 2 } '
                              'data_filler { type: "gaussian" std: 1 } '
                              'data_filler { type: "constant" value: 7 }')
    with Prefetcher(src, depth=2, name="dummy") as feeder:
        consts = feeder.constant_tops()
        assert list(consts) == [1]
        np.testing.assert_array_equal(consts[1], np.full((2,), 7, np.float32))
        for _ in range(3):
            data_, label = feeder.get(skip_constant=True)
            assert label is None
            np.testing.assert_array_equal(data_, reference.next_batch()[0])
        data_, label = feeder.get()                  # default: every top, as before
        ref = reference.next_batch()
        np.testing.assert_array_equal(data_, ref[0])
        np.testing.assert_array_equal(label, ref[1])
        with feeder.paused():                        # a pause keeps the rule
            pass
        assert feeder.get(skip_constant=True)[1] is None


def test_sources_without_constant_tops_are_unchanged():
    from symnet.runtime.prefetch import Prefetcher
    src = _dummy_source('shape { dim: 4 } data_filler { type: "gaussian" std: 1 }')
    with Prefetcher(src, depth=1, name="dummy") as feeder:
        assert feeder.constant_tops() == {}
        batch = feeder.get(skip_constant=True)
        assert all(isinstance(b, np.ndarray) and b.shape == (4,) for b in batch)


class _NoConstantMethod:
    """A source written before constant_tops existed (no such method)."""

    def next_batch(self):
        return [np.ones(2, np.float32)]


def test_prefetcher_accepts_sources_without_the_method():
    from symnet.runtime.prefetch import Prefetcher
    with Prefetcher(_NoConstantMethod(), depth=1) as feeder:
        assert feeder.constant_tops() == {}
        np.testing.assert_array_equal(feeder.get(skip_constant=True)[0], np.ones(2))


# ------------------------------------------------------------------ nets
IP_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "uniform" min: -1 max: 1 } } }
"""


def test_nets_built_in_turn_draw_weights_from_one_stream():
    """Caffe: fillers draw from the process-wide generator Caffe::set_random_seed seeds:
    two nets built in turn get different weights, the same seed the same weights."""
    def weights():
        net = sn.Net(IP_NET, sn.TEST, backend="numpy")
        return [b.data.copy() for b in net.params["ip"]]
    saved = fillers._STREAM[0]
    try:
        fillers.set_random_seed(21)
        first, second = weights(), weights()
        fillers.set_random_seed(21)
        again = weights()
    finally:
        fillers._STREAM[0] = saved
    for a, b, c in zip(first, second, again):
        assert not np.array_equal(a, b)
        np.testing.assert_array_equal(a, c)


DUMMY_NET = """
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { num: 5 channels: 4 height: 1 width: 1
                           num: 5 channels: 1 height: 1 width: 1
                           data_filler { type: "gaussian" std: 1 }
                           data_filler { type: "constant" value: 3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }
"""


def _softmax_loss(x, labels):
    x = x.reshape(len(labels), -1).astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels.astype(int)]))


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-emu"])
def test_dummy_data_constant_top_keeps_values_written_from_python(backend):
    """Caffe's DummyDataLayer fills a constant-filler top once, in LayerSetUp; Forward
    never writes it again; gaussian tops are refilled by every Forward. pycaffe's
    test_net.py writes labels right after building the net and relies on it."""
    net = sn.Net(DUMMY_NET, sn.TRAIN, backend=backend)
    np.testing.assert_array_equal(net.blobs["label"].data, np.full((5, 1, 1, 1), 3.0))
    labels = np.array([0, 1, 2, 3, 1], np.float32).reshape(5, 1, 1, 1)
    net.blobs["label"].data[...] = labels
    seen = []
    for _ in range(2):
        loss = float(net.forward()["loss"])
        np.testing.assert_array_equal(net.blobs["label"].data, labels)
        x = net.blobs["data"].data.copy()
        seen.append(x)
        assert loss == pytest.approx(_softmax_loss(x, labels.ravel()), rel=1e-5)
    assert not np.array_equal(seen[0], seen[1])
    labels[...] = np.array([3, 3, 0, 0, 2], np.float32).reshape(5, 1, 1, 1)
    net.blobs["label"].data[...] = labels
    loss = float(net.forward()["loss"])
    np.testing.assert_array_equal(net.blobs["label"].data, labels)
    assert loss == pytest.approx(_softmax_loss(net.blobs["data"].data, labels.ravel()),
                                 rel=1e-5)
    net.reshape()
    net.forward()                       # Caffe's Reshape refills nothing
    np.testing.assert_array_equal(net.blobs["label"].data, labels)


def test_solver_random_seed_seeds_the_weights(tmp_path):
    """Caffe's Solver::Init calls Caffe::set_random_seed(random_seed) before building the
    nets: the same seed gives the same weights, another seed other weights."""
    saved = fillers._STREAM[0]
    try:
        def solver(seed):
            text = (f'net_param {{ {IP_NET} }}\nbase_lr: 0.1 lr_policy: "fixed" '
                    f"max_iter: 1 random_seed: {seed}\n")
            return sn.get_solver(text, backend="numpy").net.params["ip"][0].data.copy()
        a, b, c = solver(5), solver(5), solver(6)
    finally:
        fillers._STREAM[0] = saved
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ---------------------------------------------------------------- in-place blobs
# Caffe (net.cpp, Init): each layer erases its bottoms from a std::set<string> of
# available blobs and inserts its tops; what is left are the outputs, in name order.
# Versions of a blob written in place share the blob's one memory, so a script sees
# the newest value in the blob, and a layer reads what the blob holds when it runs.
IN_PLACE = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
layer { name: "twice" type: "Power" bottom: "x" top: "x" power_param { scale: 2 } }
layer { name: "copy" type: "Power" bottom: "x" top: "b" }
layer { name: "shift" type: "Power" bottom: "b" top: "b" power_param { shift: 1 } }
"""


def test_outputs_follow_caffes_available_blob_rule():
    assert sn.Net(IN_PLACE, sn.TEST, backend="numpy").outputs == ["b"]   # ends in place
    text = IN_PLACE + 'layer { name: "a" type: "Power" bottom: "b" top: "a" }'
    assert sn.Net(text, sn.TEST, backend="numpy").outputs == ["a"]
    two = """
    layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 } } }
    layer { name: "z" type: "Power" bottom: "x" top: "zeta" }
    layer { name: "a" type: "Power" bottom: "x" top: "alpha" }
    layer { name: "r" type: "ReLU" bottom: "alpha" top: "alpha" }
    """
    net = sn.Net(two, sn.TEST, backend="numpy")
    assert list(net.blobs) == ["x", "zeta", "alpha"]
    assert net.outputs == ["alpha", "zeta"]


def test_in_place_layers_on_an_input_blob_read_what_was_set(backend):
    net = sn.Net(IN_PLACE, sn.TEST, backend=backend)
    x = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    want = np.maximum(x, 0) * 2
    out = net.forward(x=x)
    np.testing.assert_array_equal(net.blobs["x"].data, want)
    np.testing.assert_array_equal(out["b"], want + 1)
    # set through the blob, as pycaffe scripts do
    net.blobs["x"].data[...] = -x
    np.testing.assert_array_equal(net.forward()["b"], np.maximum(-x, 0) * 2 + 1)


def test_a_partial_forward_leaves_the_newest_value_in_the_blob(backend):
    """forward(end=) stopping inside an in-place chain shows that layer's value in the
    blob; forward(start=) reads what the blob holds (what a script wrote there)."""
    net = sn.Net(IN_PLACE, sn.TEST, backend=backend)
    x = np.array([[-1, 2, 3], [4, -5, 6]], np.float32)
    net.blobs["x"].data[...] = x
    np.testing.assert_array_equal(net.forward(end="relu")["x"], np.maximum(x, 0))
    np.testing.assert_array_equal(net.blobs["x"].data, np.maximum(x, 0))
    net.blobs["x"].data[...] = 5 * x              # the script replaces the ReLU output
    out = net.forward(start="twice")
    np.testing.assert_array_equal(net.blobs["x"].data, 10 * x)
    np.testing.assert_array_equal(out["b"], 10 * x + 1)
    # hooks see each layer's value in the blob, as in Caffe
    seen = []
    net.after_forward(lambda i: seen.append(net.blobs["x"].data.copy()))
    net.forward(x=x)
    np.testing.assert_array_equal(seen[1], np.maximum(x, 0))
    np.testing.assert_array_equal(seen[2], np.maximum(x, 0) * 2)
