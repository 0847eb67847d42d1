"""Error messages: bad shapes name the op, the shapes seen and the shapes expected (and
the tensors' names); unknown sympy functions; wrong arguments."""
import re

import numpy as np
import pytest
import sympy as sp

import symnet as sn
from symnet.errors import ShapeError, StateError


@pytest.fixture(autouse=True)
def fresh_graph():
    with sn.graph_scope() as g:
        yield g


def esc(s):
    return re.escape(s)


# ------------------------------------------------------------------ shapes

def test_broadcast_mismatch():
    x, y = sn.input("x", (3, 4)), sn.input("y", (2, 4))
    with pytest.raises(sn.ShapeError, match=esc("elementwise 'add'")) as e:
        x + y
    msg = str(e.value)
    assert "[(3, 4), (2, 4)]" in msg and "do not broadcast" in msg
    assert "'x' (3, 4)" in msg and "'y' (2, 4)" in msg
    with pytest.raises(sn.ShapeError, match=r"elementwise 'maximum'.*\(5,\).*\(3, 4\)"):
        sn.maximum(x, np.ones(5))
    with pytest.raises(sn.ShapeError, match=r"elementwise 'ew'.*\[\(3, 4\), \(2, 4\)\]"):
        sn.elementwise(lambda a, b: a * 2, x, y)     # y is unused but still broadcast


def test_matmul_k_mismatch():
    a, b = sn.input("a", (2, 3, 4)), sn.input("b", (5, 3))
    with pytest.raises(sn.ShapeError, match=esc("matmul: got argument shapes [(2, 3, 4), "
                                                "(5, 3)], expected (..., m, k) and (..., k, n)"
                                                " with equal k, but k is 4 on the left and 5")):
        a @ b
    with pytest.raises(sn.ShapeError, match="matmul.*batch axes that broadcast"):
        sn.input("c", (2, 3, 4)) @ sn.input("d", (3, 4, 5))
    with pytest.raises(sn.ShapeError, match="matmul.*at least 2-d"):
        a @ sn.input("v", (4,))


def test_conv_channel_mismatch():
    x = sn.input("data", (1, 3, 8, 8))
    w = sn.param("conv1_w", (4, 2, 3, 3))
    with pytest.raises(sn.ShapeError) as e:
        sn.conv2d(x, w)
    msg = str(e.value)
    assert msg.startswith("conv2d(")
    assert "[(1, 3, 8, 8), (4, 2, 3, 3)]" in msg
    assert "weights of shape (4, 3, kh, kw)" in msg
    assert "'data'" in msg and "'conv1_w'" in msg


def test_conv_group_mismatch():
    x = sn.input("x", (1, 6, 8, 8))
    with pytest.raises(sn.ShapeError, match=r"conv2d\(.*group=4\).*divisible by group 4"):
        sn.conv2d(x, sn.param("w", (8, 1, 3, 3)), group=4)
    with pytest.raises(sn.ShapeError, match=esc("weights of shape (6, 3, kh, kw)")):
        sn.conv2d(x, sn.param("w2", (6, 2, 3, 3)), group=2)
    with pytest.raises(sn.ShapeError, match="conv_transpose2d.*divisible by group 4"):
        sn.conv_transpose2d(x, sn.param("w3", (6, 1, 3, 3)), group=4)


def test_conv_and_pool_size_errors():
    x = sn.input("x", (1, 2, 2, 2))
    with pytest.raises(sn.ShapeError, match="at least as large as the dilated kernel"):
        sn.conv2d(x, sn.param("w", (1, 2, 2, 2)), dilation=2)
    with pytest.raises(sn.ShapeError, match=r"output_padding \(2, 2\).*stride \(2, 2\)"):
        sn.conv_transpose2d(x, sn.param("w2", (2, 1, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(sn.ShapeError, match=r"maxpool.*\[\(4, 4\)\].*4-d tensor"):
        sn.max_pool2d(sn.input("y", (4, 4)), 2)
    with pytest.raises(sn.ShapeError, match="last window along axis 2 starts at 6 of 5"):
        sn.max_pool2d(sn.input("z", (1, 1, 5, 5)), 1, 3)
    with pytest.raises(ValueError, match="pad .* smaller than kernel"):
        sn.avg_pool2d(sn.input("u", (1, 1, 5, 5)), 2, pad=2)


def test_layout_errors():
    x = sn.input("x", (3, 4))
    with pytest.raises(sn.ShapeError, match=esc("reshape of 'x': cannot infer -1 in (5, -1) "
                                                "from 12 elements (shape (3, 4))")):
        x.reshape(5, -1)
    with pytest.raises(sn.ShapeError, match=esc("reshape(shape=(5, 3)): got argument "
                                                "shapes [(3, 4)], expected 15 elements")):
        x.reshape(5, 3)
    with pytest.raises(sn.ShapeError, match="index 3 out of range for axis 0 of size 3"):
        x[3]
    with pytest.raises(sn.ShapeError, match=esc("too many indices (1, 2, 3)")):
        x[1, 2, 3]
    with pytest.raises(sn.GraphError, match="use symnet.gather"):
        x[x]
    with pytest.raises(sn.GraphError, match="boolean index True"):
        x[True]
    with pytest.raises(sn.ShapeError, match=r"concat\(axis=0\).*\[\(3, 4\), \(3, 5\)\]"):
        sn.concat([x, sn.input("y", (3, 5))], 0)
    with pytest.raises(sn.ShapeError, match="axis 1 of size 4 is not divisible into 3"):
        sn.split(x, 3, axis=1)
    with pytest.raises(sn.ShapeError, match="axis 2 out of range for a 2-d tensor"):
        x.sum(axis=2)
    with pytest.raises(sn.ShapeError, match="transpose.*permutation"):
        x.transpose(0, 0)
    with pytest.raises(sn.ShapeError, match="1 pairs for a 2-d tensor"):
        sn.pad(x, [(1, 1)])


def test_index_op_errors():
    x = sn.input("x", (3, 4))
    with pytest.raises(sn.ShapeError, match=r"gather\(axis=1\).*\[\(3, 4\), \(2, 4\)\]"):
        sn.gather(x, sn.input("i", (2, 4)), 1)
    with pytest.raises(sn.ShapeError, match="at least k=5 elements"):
        sn.topk(x, 5)


def test_leaf_errors():
    with pytest.raises(sn.ShapeError, match=esc("input 'n': negative size in shape (2, -1)")):
        sn.input("n", (2, -1))
    with pytest.raises(sn.ShapeError, match=esc("param 'p': value has shape (3,), "
                                                "expected (2,)")):
        sn.param("p", (2,), value=np.ones(3))


# ------------------------------------------------------------------ sympy functions

def test_unknown_sympy_function():
    x = sn.input("x", (3,))
    with pytest.raises(sn.UnsupportedFunctionError, match="sympy function 'gamma' has no rule"):
        sn.elementwise(sp.gamma, x)
    with pytest.raises(sn.UnsupportedFunctionError, match="'loggamma'"):
        sn.elementwise(lambda a: sp.exp(a) + sp.loggamma(a), x)
    with pytest.raises(sn.UnsupportedFunctionError, match="uses symbol 'q'"):
        sn.elementwise(lambda a: a + sp.Symbol("q"), x)
    with pytest.raises(sn.UnsupportedFunctionError, match="'Integral'"):
        sn.elementwise(lambda a: sp.Integral(a, a), x)


# ------------------------------------------------------------------ arguments

def test_non_tensor_arguments():
    x = sn.input("x", (3,))
    with pytest.raises(sn.GraphError, match="argument 'a' of type str is not a Tensor"):
        x + "a"
    with pytest.raises(sn.GraphError, match="elementwise 'exp': argument None"):
        sn.exp(None)
    with pytest.raises(TypeError, match="truth value of a symbolic Tensor"):
        if x > 0:
            pass


def test_function_missing_input():
    x, y = sn.input("x", (3,)), sn.input("y", (3,))
    with pytest.raises(sn.GraphError, match=r"depend on input 'y' \(shape \(3,\)\), which "
                                            r"is not among the inputs \['x'\]"):
        sn.function([x], [x + y], backend="numpy")


def test_function_non_tensor_and_non_input():
    x = sn.input("x", (3,))
    with pytest.raises(sn.GraphError, match="function: 3.0 is not a Tensor"):
        sn.function([x], [3.0], backend="numpy")
    with pytest.raises(sn.GraphError, match="is not a Tensor"):
        sn.function([np.ones(3)], [x], backend="numpy")
    with pytest.raises(sn.GraphError, match="not an input"):
        sn.function([x * 2], [x], backend="numpy")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        sn.function([x], [x], backend="nope")


def test_function_wrong_call_arguments():
    x = sn.input("x", (3, 4))
    f = sn.function([x], x * 2, backend="numpy", name="double")
    with pytest.raises(sn.ShapeError, match=esc("function 'double': input 'x' got shape "
                                                "(4, 3), expected (3, 4)")):
        f(np.ones((4, 3)))
    with pytest.raises(sn.GraphError, match=esc("got 2 arrays for 1 inputs ['x']")):
        f(np.ones((3, 4)), np.ones(2))
    with pytest.raises(sn.GraphError, match="got 0 arrays"):
        f()


def test_mixed_graphs():
    x = sn.input("x", (3,))
    with sn.graph_scope():
        q = sn.input("q", (3,))
        with pytest.raises(sn.GraphError, match="argument 'q' belongs to another graph"):
            x + q


def test_graph_verify_names_op_and_shapes(fresh_graph):
    x = sn.input("x", (3, 4))
    y = sn.tanh(x) @ sn.input("w", (4, 2))
    fresh_graph.nx.nodes[y.id]["shape"] = (3, 3)          # corrupt the recorded shape
    with pytest.raises(sn.ShapeError, match=r"matmul \(node \d+\): recorded shape \(3, 3\) "
                                            r"but arguments \[\(3, 4\), \(4, 2\)\] give "
                                            r"\(3, 2\)"):
        fresh_graph.verify()


def test_gradcheck_argument_errors():
    with pytest.raises(sn.GraphError, match=r"params \['W'\] were not created by fn; it "
                                            r"created \['w'\]"):
        sn.gradcheck(lambda t: t * sn.param("w", (3,)), [np.ones(3)], params=["W"])
    with pytest.raises(sn.GraphError, match="fn must return a Tensor"):
        sn.gradcheck(lambda t: 3.0, [np.ones(3)])


# ------------------------------------------------------------------ strict calls
def _fn(backend="cpu"):
    with sn.graph_scope():
        x = sn.input("x", (3, 4))
        return sn.function([x], [x * 2.0, x + 1.0], backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-emu"])
def test_out_arrays_that_share_memory_are_refused(backend):
    """The same array for two outputs would keep only one of them."""
    fn = _fn(backend)
    x = np.ones((3, 4), np.float32)
    a = np.empty((3, 4), np.float32)
    with pytest.raises(ShapeError, match="out arrays 0 and 1 share memory"):
        fn(x, out=[a, a])
    big = np.empty((2, 3, 4), np.float32)
    with pytest.raises(ShapeError, match="share memory"):
        fn(x, out=[big[0], big[0].reshape(3, 4)])
    fn(x, out=[big[0], big[1]])                       # disjoint views are fine
    np.testing.assert_array_equal(big, [x * 2, x + 1])


def test_shared_out_memory_is_found_among_many_outputs():
    """Overlaps are found by sorting the arrays' byte ranges, not pair by pair: the
    shared pair may be anywhere in the list."""
    with sn.graph_scope():
        x = sn.input("x", (4,))
        fn = sn.function([x], [x + float(k) for k in range(6)], backend="numpy")
    pool = np.empty((8, 4), np.float32)
    outs = [pool[k] for k in (5, 0, 3, 7, 1, 2)]
    fn(np.ones(4, np.float32), out=outs)
    np.testing.assert_array_equal(pool[[5, 0, 3, 7, 1, 2]], 1 + np.arange(6)[:, None] +
                                  np.zeros(4))
    outs[4] = pool.reshape(-1)[26:30]                 # straddles rows 6 and 7 (outs[3])
    with pytest.raises(ShapeError, match="out arrays 3 and 4 share memory"):
        fn(np.ones(4, np.float32), out=outs)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "cuda-emu"])
def test_read_only_out_array_is_refused(backend, tmp_path):
    fn = _fn(backend)
    path = tmp_path / "ro.bin"
    np.zeros((3, 4), np.float32).tofile(path)
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=(3, 4))
    with pytest.raises(ShapeError, match="read-only"):
        fn(np.ones((3, 4), np.float32), out=[ro, np.empty((3, 4), np.float32)])


IP_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 5 } }
"""


def test_param_blob_reshaped_smaller_is_refused_not_read_past():
    net = sn.Net(IP_NET, sn.TEST, backend="cpu")
    net.forward()
    net.params["ip"][0].reshape(1, 1)
    with pytest.raises(ShapeError, match=r"param 'ip_0' now has shape \(1, 1\)"):
        net.forward()


def test_a_closed_net_refuses_to_run():
    net = sn.Net(IP_NET, sn.TEST, backend="cpu")
    net.forward()
    net.close()
    for call in (net.forward, net.backward, net.forward_backward):
        with pytest.raises(StateError, match="after close"):
            call()


BASE_NET = ('layer { name: "data" type: "Input" top: "data" '
            'input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }\n')


@pytest.mark.parametrize("params, match", [
    ("num_output: 4 kernel_size: 3 group: 0",
     r"layer 'c' \(Convolution\).*group 0: must be >= 1"),
    ("num_output: 2147483647 kernel_size: 3",
     r"layer 'c' \(Convolution\).*param blob 0 of shape \(2147483647, 4, 3, 3\) needs "
     + f"{4 * 2147483647 * 4 * 3 * 3:,} bytes"),
])
def test_bad_convolution_parameters_name_the_layer(params, match):
    text = BASE_NET + ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                       'convolution_param { %s } }' % params)
    with pytest.raises(sn.layers.LayerError, match=match):
        sn.Net(text, sn.TEST, backend="numpy")


def test_a_huge_input_names_the_layer_and_the_bytes():
    text = ('layer { name: "in" type: "Input" top: "x" '
            'input_param { shape { dim: 1000000000 dim: 1000 } } }')
    with pytest.raises(sn.layers.LayerError,
                       match=r"layer 'in' \(Input\).*top 'x'.*4,000,000,000,000 bytes"):
        sn.Net(text, sn.TEST, backend="numpy")


@pytest.mark.parametrize("layer, match", [
    ('type: "Tile" tile_param { axis: 1 tiles: 2000000000 }', r"\(Tile\).*top 'y' of shape "
     r"\(1, 8000000000, 8, 8\) needs 2,048,000,000,000 bytes"),
    ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1000000 }',
     r"\(Convolution\).*top 'y' of shape \(1, 4, 2000006, 2000006\)"),
    ('type: "Deconvolution" convolution_param { num_output: 4 kernel_size: 3 '
     'stride: 1000000 }', r"\(Deconvolution\).*top 'y' of shape \(1, 4, 7000003, 7000003\)"),
    ('type: "Pooling" pooling_param { kernel_size: 2000000 pad: 1999999 }',
     r"\(Pooling\).*top 'y' of shape \(1, 4, 2000007, 2000007\)"),  # (8 + 2p - k) + 1
])
def test_a_top_too_large_for_memory_names_the_layer(layer, match):
    """Valid parameters (Caffe takes them) whose top would not fit in memory: a
    LayerError with the layer, the top, its shape and bytes, before any allocation."""
    text = BASE_NET + 'layer { name: "L" bottom: "data" top: "y" %s }' % layer
    with pytest.raises(sn.layers.LayerError, match=r"layer 'L' " + match):
        sn.Net(text, sn.TEST, backend="numpy")


def test_a_data_source_top_over_the_limit_names_the_layer(monkeypatch):
    monkeypatch.setenv("SYMNET_MAX_BLOB_BYTES", "1000000")
    text = ('layer { name: "d" type: "DummyData" top: "x" dummy_data_param { '
            'shape { dim: 1000 dim: 1000 } } }')
    with pytest.raises(sn.layers.LayerError,
                       match=r"layer 'd' \(DummyData\).*top 'x' of shape \(1000, 1000\) "
                             r"needs 4,000,000 bytes, more than the limit of 1,000,000"):
        sn.Net(text, sn.TEST, backend="numpy")
