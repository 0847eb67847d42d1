"""The graph: a networkx MultiDiGraph whose edge keys are argument positions, shape
inference at construction, names, verify, scopes and Tensor handles."""
import networkx as nx
import numpy as np
import pytest

import symnet as sn
from symnet import ops
from snhelp import close


@pytest.fixture
def g():
    with sn.graph_scope() as graph:
        yield graph


def test_is_multidigraph_and_x_times_x_keeps_two_edges(g):
    x = sn.input("x", (3,))
    y = x * x
    assert isinstance(g.nx, nx.MultiDiGraph)
    edges = sorted(g.nx.in_edges(y.id, keys=True))
    assert edges == [(x.id, y.id, 0), (x.id, y.id, 1)]
    assert g.args(y.id) == [x.id, x.id]
    assert y.args == [x, x]
    close(sn.function([x], y, backend="numpy")(np.array([1.0, 2.0, -3.0])), [1, 4, 9])


def test_edge_keys_are_argument_positions(g):
    x, y = sn.input("x", (2,)), sn.input("y", (2,))
    a, b = x - y, y - x
    assert g.nx.has_edge(x.id, a.id, key=0) and g.nx.has_edge(y.id, a.id, key=1)
    assert g.nx.has_edge(y.id, b.id, key=0) and g.nx.has_edge(x.id, b.id, key=1)
    out = sn.function([x, y], [a, b], backend="numpy")(np.array([3.0, 1.0]), np.ones(2))
    close(out[0], [2, 0])
    close(out[1], [-2, 0])


def test_shapes_inferred_at_construction(g):
    x = sn.input("x", (2, 3, 8, 8))
    w = sn.param("w", (4, 3, 3, 3))
    y = sn.max_pool2d(sn.conv2d(x, w, pad=1), 3, 2)
    assert y.shape == (2, 4, 4, 4) and g.shape(y.id) == y.shape
    z = y.flatten() @ sn.param("fc", (64, 10))
    assert z.shape == (2, 10) and z.ndim == 2 and z.size == 20 and len(z) == 2
    assert z.dtype == "float32"


def test_names_and_labels(g):
    x = sn.input("data", (2, 2))
    assert x.name == "data" and x.label() == "'data'"
    y = sn.exp(x)
    assert y.name is None and y.label() == f"<elementwise #{y.id}>"
    y.name = "conv1/relu"
    assert g.nx.nodes[y.id]["name"] == "conv1/relu" and "'conv1/relu'" in repr(y)
    c = sn.constant(np.ones(2), name="ones")
    assert c.name == "ones" and isinstance(c.op, ops.Constant)


def test_params_and_constants_hold_values(g):
    w = sn.param("w", (2, 3), filler=sn.fillers.constant(0.5))
    np.testing.assert_array_equal(w.value, np.full((2, 3), 0.5, np.float32))
    w.value = np.arange(6).reshape(2, 3)
    assert w.value.dtype == np.float32
    x = sn.input("x", (3,))
    f = sn.function([x], w * x, backend="numpy")
    close(f(np.ones(3)), np.arange(6).reshape(2, 3))
    w.value = np.zeros((2, 3))                      # params are read at call time
    close(f(np.ones(3)), 0)
    c = sn.constant(np.ones(3))
    with pytest.raises(sn.GraphError, match="cannot be changed"):
        c.value = np.zeros(3)
    with pytest.raises(sn.ShapeError, match="expected"):
        w.value = np.zeros(4)


def test_numpy_arrays_become_constants_python_numbers_inline(g):
    x = sn.input("x", (3,))
    y = x * np.arange(3) + 2.5
    kinds = [g.op(n).kind for n in g.ancestors([y.id])]
    assert kinds.count("constant") == 1
    assert all(g.op(n).kind != "constant" or g.shape(n) == (3,) for n in g.nx.nodes)


def test_unused_arguments_are_dropped(g):
    x, y = sn.input("x", (3,)), sn.input("y", (3,))
    z = sn.elementwise(lambda a, b: a * 2, x, y)
    assert z.args == [x] and z.shape == (3,)
    z2 = sn.elementwise(lambda a, b: a * 2, x, sn.input("big", (4, 3)))
    assert z2.shape == (4, 3)        # the dropped argument still broadcasts the shape


def test_verify(g):
    x = sn.input("x", (3, 4))
    y = (sn.tanh(x) @ sn.param("w", (4, 2))).sum(axis=0)
    g.verify()
    g.verify([y.id])
    u, v, k = next(iter(g.nx.in_edges(y.id, keys=True)))
    g.nx.remove_edge(u, v, k)
    with pytest.raises(sn.GraphError, match=r"sum.*has 0 arguments, expected 1"):
        g.verify([y.id])


def test_ancestors_topological_and_deterministic(g):
    x = sn.input("x", (2,))
    a, b = sn.exp(x), sn.sin(x)
    out = a * b + a
    order = g.ancestors([out.id])
    pos = {n: i for i, n in enumerate(order)}
    for u, v in g.nx.subgraph(order).edges():
        assert pos[u] < pos[v]
    assert order == g.ancestors([out.id])


def test_scopes_and_default_graph():
    outer = sn.default_graph()
    with sn.graph_scope() as g1:
        assert sn.default_graph() is g1
        with sn.graph_scope() as g2:
            assert sn.input("x", (1,)).graph is g2
        assert sn.default_graph() is g1
        mine = sn.Graph()
        with sn.graph_scope(mine):
            assert sn.input("y", (1,)).graph is mine
    assert sn.default_graph() is outer


def test_tensor_handles(g):
    x = sn.input("x", (3,))
    assert x == sn.Tensor(g, x.id) and hash(x) == hash(sn.Tensor(g, x.id))
    assert (x == 3) is False                          # identity, not elementwise
    assert len({x, sn.Tensor(g, x.id)}) == 1
    with pytest.raises(TypeError, match="cannot be iterated"):
        list(x)
    with pytest.raises(TypeError, match="0-d"):
        len(x.sum())
    assert +x is x


def test_outputs_are_fresh_arrays(g):
    x = sn.input("x", (3,))
    w = sn.param("w", (3,), filler=sn.fillers.constant(1.0))
    f = sn.function([x], [x * 1, w, sn.zeros((2, 3))], backend="numpy")
    a = np.ones(3, np.float32)
    same, wv, z = f(a)
    assert not np.shares_memory(same, a) and not np.shares_memory(wv, w.value)
    for r in (same, wv, z):
        assert r.flags.writeable and r.flags.c_contiguous and r.dtype == np.float32
    z[...] = 5                                    # a broadcast result is writable


def test_scalar_input_can_be_fed(g):
    s = sn.input("s", ())
    close(sn.function([s], s * 2, backend="numpy")(np.float32(1.5)), 3.0)
