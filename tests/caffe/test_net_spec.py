"""pycaffe's net_spec semantics (python/caffe/net_spec.py in BVLC/caffe).

What pycaffe does, and these tests check:
* ``L.<Type>(..., ntop=0)`` returns the layer function itself (no Top); assigned to a
  NetSpec it becomes a layer named after the attribute, with its bottoms and no top;
  not assigned, it is named ``<Type><count>``.
* ``ntop=1`` returns one Top, ``ntop=k`` a tuple of k Tops.
* ``Function.__init__`` raises TypeError when an input is not a Top (pycaffe's message:
  "<type> input <i> is not a Top (type is <type>)").
"""
from __future__ import annotations

import numpy as np
import pytest

import symnet as sn
from symnet.caffe import NetSpec, layers as L, to_proto
from symnet.caffe.net_spec import Function, Top


def _input(dims):
    return L.Input(shape=dict(dim=list(dims)))


def test_ntop_zero_layer_named_after_attribute_has_no_top():
    n = NetSpec()
    n.data = _input([2, 3])
    n.label = _input([2])
    n.silence = L.Silence(n.data, n.label, ntop=0)
    assert isinstance(n.silence, Function) and n.silence.tops == ()
    net = n.to_proto()
    assert [lp.name for lp in net.layer] == ["data", "label", "silence"]
    silence = net.layer[2]
    assert silence.type == "Silence"
    assert list(silence.bottom) == ["data", "label"]
    assert list(silence.top) == []


def test_ntop_zero_layer_unassigned_gets_an_automatic_name():
    n = NetSpec()
    n.data = _input([2, 3])
    first = L.Silence(n.data, ntop=0)
    second = L.Silence(n.data, ntop=0)
    net = to_proto(first, second)
    assert [(lp.name, lp.type, list(lp.top)) for lp in net.layer] == [
        ("Input1", "Input", ["Input1"]), ("Silence1", "Silence", []),
        ("Silence2", "Silence", [])]


def test_ntop_one_and_several():
    n = NetSpec()
    n.data = _input([4, 6])
    assert isinstance(n.data, Top)
    parts = L.Slice(n.data, ntop=3, slice_param=dict(axis=1, slice_point=[1, 3]))
    assert isinstance(parts, tuple) and len(parts) == 3
    assert all(isinstance(p, Top) for p in parts)
    n.a, n.b, n.c = parts
    net = n.to_proto()
    assert list(net.layer[1].top) == ["a", "b", "c"]
    assert list(net.layer[1].slice_param.slice_point) == [1, 3]


def test_ntop_zero_net_runs():
    """The NetSpec with a Silence layer builds and runs as a symnet Net."""
    n = NetSpec()
    n.data = _input([2, 3])
    n.relu = L.ReLU(n.data)
    n.silence = L.Silence(n.relu, ntop=0)
    net = sn.Net(str(n.to_proto()), sn.TEST, backend="numpy")
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    out = net.forward(data=x)
    np.testing.assert_array_equal(net.blobs["relu"].data, np.maximum(x, 0))
    assert "silence" in list(net._layer_names)
    assert out == {}      # Caffe: a blob a layer consumes is not a net output


@pytest.mark.parametrize("bad, what", [
    (3, "int 3"),
    ("data", "str 'data'"),
    (np.zeros(3, np.float32), "numpy.ndarray"),
    (None, "NoneType None"),
])
def test_input_not_a_top_is_a_type_error(bad, what):
    n = NetSpec()
    n.data = _input([2, 3])
    with pytest.raises(TypeError, match=rf"Convolution input 1 is not a Top: got {what}"):
        L.Convolution(n.data, bad, num_output=2, kernel_size=1)


def test_tuple_of_tops_and_topless_layer_as_input_are_type_errors():
    n = NetSpec()
    n.data = _input([4, 6])
    parts = L.Slice(n.data, ntop=2)
    with pytest.raises(TypeError, match="ReLU input 0 is not a Top: got a tuple of 2 Tops"):
        L.ReLU(parts)
    silence = L.Silence(n.data, ntop=0)
    with pytest.raises(TypeError, match="ReLU input 0 is not a Top: got a Silence layer "
                                        "with ntop=0"):
        L.ReLU(silence)
    L.Concat(*parts)     # unpacked: fine


def test_netspec_entry_not_a_top_is_a_type_error():
    n = NetSpec()
    n.data = _input([2, 3])
    n.oops = 5
    with pytest.raises(TypeError, match="NetSpec entry 'oops' is not a Top"):
        n.to_proto()
    with pytest.raises(TypeError, match="to_proto argument 1 is not a Top"):
        to_proto(n.data, "x")


def test_keys_vals_update_delitem():
    """pycaffe's NetSpec helpers: keys(), vals(), update(name, params), del n[name]."""
    n = NetSpec()
    n.data = _input([2, 3])
    n.ip = L.InnerProduct(n.data, num_output=4)
    assert n.keys() == ["data", "ip"]
    assert n.vals() == [n.data, n.ip]
    n.update("ip", {"num_output": 7})
    assert n.to_proto().layer[1].inner_product_param.num_output == 7
    del n["ip"]
    assert n.keys() == ["data"]
    assert [lp.name for lp in n.to_proto().layer] == ["data"]


def test_layers_object_answers_only_layer_names():
    """``caffe.layers`` stands in sys.modules; module-protocol names (``__file__``,
    ``__path__``...) must be missing attributes, not layer factories, or tools that scan
    sys.modules (hypothesis, inspect) fail on it."""
    from symnet.caffe import layers as L
    for name in ("__file__", "__path__", "__spec__", "__wrapped__"):
        assert not hasattr(L, name)
    assert callable(L.Convolution)
